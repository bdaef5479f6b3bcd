//! The end-to-end path on the real stack: capture at one site, Kafka, apply at another.

mod common;

use std::time::Duration;

use common::{Federation, Spec};

const SCHEMA: &str = "
CREATE TABLE person (
  id INT NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  email VARCHAR(200) NULL,
  score DECIMAL(10,2) NULL,
  n INT NOT NULL DEFAULT 0,
  born DATETIME(3) NULL,
  photo BLOB NULL
) ENGINE=InnoDB;
CREATE TABLE applied_events (id INT NOT NULL PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB;
INSERT INTO applied_events VALUES (1, 0);
CREATE TRIGGER person_ins AFTER INSERT ON person FOR EACH ROW UPDATE applied_events SET n = n + 1 WHERE id = 1;
CREATE TRIGGER person_upd AFTER UPDATE ON person FOR EACH ROW UPDATE applied_events SET n = n + 1 WHERE id = 1;
CREATE TRIGGER person_del AFTER DELETE ON person FOR EACH ROW UPDATE applied_events SET n = n + 1 WHERE id = 1
";

const TWO_WAY: &str = common::PERSON_TWO_WAY;

const WAIT: Duration = Duration::from_secs(60);

async fn two_sites(test: &str) -> Federation {
    Federation::new(test, Spec { sites: &["a", "b"], schema: SCHEMA, entities_and_routes: TWO_WAY, ..Spec::default() }).await
}

async fn wait_equal(fed: &mut Federation, what: &str) {
    let (pa, pb) = (fed.pool("a").clone(), fed.pool("b").clone());
    fed.wait_for(WAIT, what, || {
        let (pa, pb) = (pa.clone(), pb.clone());
        async move {
            let q = "SELECT id, name, COALESCE(email,'NULL'), COALESCE(CAST(score AS CHAR),'NULL'), n, COALESCE(CAST(born AS CHAR),'NULL'), COALESCE(HEX(photo),'NULL') FROM person ORDER BY id";
            common::rows(&pa, q).await == common::rows(&pb, q).await
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_update_delete_arrive_in_both_directions() {
    let mut fed = two_sites("crud").await;
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    // Give both captures a moment to start streaming before the first write.
    tokio::time::sleep(Duration::from_millis(500)).await;

    fed.exec("a", "INSERT INTO person (id, name, email, score, born, photo) VALUES (1, 'Alice', 'a@x', 12.50, '2001-02-03 04:05:06.789', x'00FF10'), (2, '李雷', NULL, -3.00, NULL, NULL)").await;
    let pb = fed.pool("b").clone();
    fed.wait_for(WAIT, "A's inserts at B", || {
        let pb = pb.clone();
        async move { common::rows(&pb, "SELECT COUNT(*) FROM person").await == vec![vec!["2".to_string()]] }
    })
    .await;
    wait_equal(&mut fed, "A's inserts identical at B").await;

    fed.exec("a", "UPDATE person SET name = 'Alice Li', n = n + 1 WHERE id = 1").await;
    fed.exec("a", "DELETE FROM person WHERE id = 2").await;
    wait_equal(&mut fed, "A's update and delete at B").await;
    assert_eq!(fed.rows("b", "SELECT id, name FROM person").await, vec![vec!["1".to_string(), "Alice Li".to_string()]]);

    fed.exec("b", "INSERT INTO person (id, name) VALUES (3, 'Bob')").await;
    fed.exec("b", "UPDATE person SET email = 'alice@b' WHERE id = 1").await;
    wait_equal(&mut fed, "B's insert and update at A").await;
    fed.exec("b", "DELETE FROM person WHERE id = 3").await;
    wait_equal(&mut fed, "B's delete at A").await;
    assert_eq!(
        fed.rows("a", "SELECT id, name, email FROM person").await,
        vec![vec!["1".to_string(), "Alice Li".to_string(), "alice@b".to_string()]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_way_route_echoes_nothing_and_converges_after_bursts() {
    let mut fed = two_sites("echo").await;
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    for i in 0..50 {
        fed.exec("a", &format!("INSERT INTO person (id, name) VALUES ({i}, 'a{i}')")).await;
    }
    fed.exec("a", "UPDATE person SET n = n + 1 WHERE id < 25").await;
    let pb = fed.pool("b").clone();
    fed.wait_for(WAIT, "A's burst at B", || {
        let pb = pb.clone();
        async move {
            common::rows(&pb, "SELECT COUNT(*), CAST(SUM(n) AS CHAR) FROM person").await == vec![vec!["50".to_string(), "25".to_string()]]
        }
    })
    .await;
    // B applied everything; give its capture time to (wrongly) publish anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fed.topic_records("b"), 0, "B's topic must stay empty while only A's application writes");
    assert_eq!(fed.topic_records("a"), 75);

    // Bursts at both sites, on disjoint and on shared rows.
    let (pa, pb) = (fed.pool("a").clone(), fed.pool("b").clone());
    let wa = tokio::spawn(async move {
        for i in 100..200 {
            common::exec(&pa, &format!("INSERT INTO person (id, name) VALUES ({i}, 'a{i}')")).await;
        }
        common::exec(&pa, "UPDATE person SET email = 'from-a' WHERE id BETWEEN 0 AND 9").await;
    });
    let wb = tokio::spawn(async move {
        for i in 200..300 {
            common::exec(&pb, &format!("INSERT INTO person (id, name) VALUES ({i}, 'b{i}')")).await;
        }
        common::exec(&pb, "UPDATE person SET score = 1.5 WHERE id BETWEEN 20 AND 29").await;
        common::exec(&pb, "DELETE FROM person WHERE id BETWEEN 40 AND 44").await;
    });
    wa.await.unwrap();
    wb.await.unwrap();
    wait_equal(&mut fed, "both sites equal after bursts at both").await;
    assert_eq!(fed.scalar("a", "SELECT COUNT(*) FROM person").await, 245);
}

/// Writes `rows` inserts (and one update per row) at A in small transactions.
async fn burst(pool: sqlx::MySqlPool, from: i32, rows: i32) {
    for chunk in (from..from + rows).collect::<Vec<_>>().chunks(5) {
        let values: Vec<String> = chunk.iter().map(|i| format!("({i}, 'p{i}')")).collect();
        common::exec(&pool, &format!("INSERT INTO person (id, name) VALUES {}", values.join(", "))).await;
        common::exec(
            &pool,
            &format!("UPDATE person SET n = n + 1 WHERE id IN ({})", chunk.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")),
        )
        .await;
    }
}

async fn exactly_once_after_kill(test: &str, kill_capture: bool) {
    const ROWS: i32 = 1500;
    let mut fed =
        Federation::new(test, Spec { sites: &["a", "b"], schema: SCHEMA, entities_and_routes: common::PERSON_A_TO_B, ..Spec::default() })
            .await;
    let mut capture = fed.start("a", &["capture"]);
    let mut apply = fed.start("b", &["apply"]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let writer = tokio::spawn(burst(fed.pool("a").clone(), 0, ROWS));
    // Kill in the middle of the burst, twice, and restart each time.
    let pb = fed.pool("b").clone();
    for target in [ROWS / 4, ROWS / 2] {
        let pb2 = pb.clone();
        fed.wait_for(WAIT, "progress at B before the kill", || {
            let pb = pb2.clone();
            async move {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM person").fetch_one(&pb).await.unwrap();
                n >= target as i64
            }
        })
        .await;
        if kill_capture {
            fed.kill9(capture);
            capture = fed.start("a", &["capture"]);
        } else {
            fed.kill9(apply);
            apply = fed.start("b", &["apply"]);
        }
    }
    writer.await.unwrap();
    wait_equal(&mut fed, "B equal to A after the kills").await;
    // Every row change at A is one insert and one update: a change applied twice at B would
    // fire B's triggers again and push the count past 2 * ROWS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fed.scalar("b", "SELECT n FROM applied_events").await, 2 * ROWS as i64, "each change applied exactly once");
    assert_eq!(fed.scalar("b", "SELECT CAST(SUM(n) AS SIGNED) FROM person").await, ROWS as i64);
    let _ = (capture, apply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_killed_mid_burst_loses_nothing_and_applies_once() {
    exactly_once_after_kill("killcap", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applier_killed_mid_burst_loses_nothing_and_applies_once() {
    exactly_once_after_kill("killapp", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_reads_zero_when_idle_and_grows_when_the_origin_capture_stops() {
    let mut fed =
        Federation::new("lag", Spec { sites: &["a", "b"], schema: SCHEMA, entities_and_routes: common::PERSON_A_TO_B, ..Spec::default() })
            .await;
    let addr = fed.listen("b");
    let capture = fed.start("a", &["capture"]);
    fed.start("b", &["apply"]);
    fed.exec("a", "INSERT INTO person (id, name) VALUES (1, 'x')").await;
    // A loaded CI machine may drop one scrape: try a few times before calling it missing.
    let lag = move || {
        (0..5).find_map(|attempt| {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            common::http_get(addr, "/metrics").and_then(|m| common::metric(&m, "sitesync_apply_lag_seconds", &["origin=\"a\""]))
        })
    };
    fed.wait_for(WAIT, "lag 0 on an idle federation (capture heartbeats)", || async move { lag() == Some(0.0) }).await;
    // Idle for longer than any grace: still (about) 0, because A's capture says it is caught up.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(lag().is_some_and(|l| l < 3.5), "an idle origin must not look like lag: {:?}", lag());
    }
    // A's capture stops: B's view of A grows, even though nothing arrives.
    fed.kill9(capture);
    fed.wait_for(WAIT, "lag grows while the origin's capture is stopped", || async move { lag().is_some_and(|l| l >= 6.0) }).await;
    fed.start("a", &["capture"]);
    fed.wait_for(WAIT, "lag back to 0 after the capture restarts", || async move { lag() == Some(0.0) }).await;

    // A stalled applier (its row locked by another session at B) shows a growing lag too.
    let mut blocker = fed.pool("b").begin().await.unwrap();
    sqlx::query("SELECT * FROM person WHERE id = 1 FOR UPDATE").fetch_all(&mut *blocker).await.unwrap();
    fed.exec("a", "UPDATE person SET name = 'y' WHERE id = 1").await;
    fed.wait_for(WAIT, "lag grows while apply waits for a lock", || async move { lag().is_some_and(|l| l >= 6.0) }).await;
    blocker.rollback().await.unwrap();
    fed.wait_for(WAIT, "lag back to 0 once the lock is gone", || async move { lag() == Some(0.0) }).await;
    assert_eq!(fed.rows("b", "SELECT name FROM person WHERE id = 1").await, vec![vec!["y".to_string()]]);
}
