//! Schema changes while streaming: the origin changes its table first, the operator applies the
//! same DDL at the other site later, as LIMS upgrades do. No value lands in the wrong column or
//! is lost; a row whose columns the target lacks waits, never half-applied.

mod common;

use std::time::Duration;

use common::{Federation, Spec};

const SCHEMA: &str =
    "CREATE TABLE person (id INT NOT NULL PRIMARY KEY, a VARCHAR(20) NOT NULL, b VARCHAR(20) NULL, c INT NULL) ENGINE=InnoDB";
const CONFIG: &str = "[entities.person]\ntable = \"person\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"person\"]\n";
const WAIT: Duration = Duration::from_secs(60);
const ALL: &str = "SELECT * FROM person ORDER BY id";

async fn wait_equal(fed: &mut Federation, what: &str) {
    let (pa, pb) = (fed.pool("a").clone(), fed.pool("b").clone());
    fed.wait_for(WAIT, what, || {
        let (pa, pb) = (pa.clone(), pb.clone());
        async move { common::rows(&pa, ALL).await == common::rows(&pb, ALL).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_at_the_origin_then_at_the_target_loses_and_misplaces_nothing() {
    let mut fed = Federation::new("ddl", Spec { schema: SCHEMA, entities_and_routes: CONFIG, ..Spec::default() }).await;
    let mut capture = fed.start("a", &["capture"]);
    fed.start("b", &["apply"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    fed.exec("a", "INSERT INTO person VALUES (1, 'a1', 'b1', 1)").await;
    wait_equal(&mut fed, "before any DDL").await;

    // ADD COLUMN at A first: rows using it wait at B until B has the column too.
    fed.exec("a", "ALTER TABLE person ADD COLUMN d VARCHAR(20) NULL").await;
    fed.exec("a", "INSERT INTO person VALUES (2, 'a2', 'b2', 2, 'd2')").await;
    fed.exec("a", "UPDATE person SET a = 'a1x' WHERE id = 1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fed.scalar("b", "SELECT COUNT(*) FROM person").await, 1, "the new row waits for its column");
    assert_eq!(
        fed.rows("b", "SELECT a FROM person WHERE id = 1").await,
        vec![vec!["a1".to_string()]],
        "later changes wait behind it, in order"
    );
    fed.exec("b", "ALTER TABLE person ADD COLUMN d VARCHAR(20) NULL").await;
    wait_equal(&mut fed, "after ADD COLUMN at both").await;

    // One ALTER that drops a column and adds another (same count), RENAME, MODIFY: at both.
    for (ddl, insert) in [
        (
            "ALTER TABLE person DROP COLUMN b, ADD COLUMN e VARCHAR(20) NULL AFTER a",
            "INSERT INTO person (id, a, e, c, d) VALUES (10, 'a10', 'e10', 10, 'd10')",
        ),
        ("ALTER TABLE person RENAME COLUMN c TO n", "INSERT INTO person (id, a, e, n, d) VALUES (11, 'a11', 'e11', 11, 'd11')"),
        (
            "ALTER TABLE person MODIFY COLUMN a VARCHAR(50) NOT NULL",
            "INSERT INTO person (id, a, e, n, d) VALUES (12, 'a-longer-than-twenty-chars', 'e12', 12, 'd12')",
        ),
    ] {
        fed.exec("a", ddl).await;
        fed.exec("a", insert).await;
        fed.exec("b", ddl).await;
        wait_equal(&mut fed, ddl).await;
    }

    // Capture stopped across a DDL decodes the older events with the columns they had.
    fed.kill9(capture);
    fed.exec("a", "INSERT INTO person (id, a, e, n, d) VALUES (100, 'old-shape', 'e100', 100, 'd100')").await;
    fed.exec("a", "ALTER TABLE person DROP COLUMN e, ADD COLUMN f INT NULL").await;
    fed.exec("a", "INSERT INTO person (id, a, n, d, f) VALUES (101, 'new-shape', 101, 'd101', 5)").await;
    capture = fed.start("a", &["capture"]);
    // The old-shape row arrives with its old columns, values in place; the new one waits.
    let pb = fed.pool("b").clone();
    fed.wait_for(WAIT, "the row written before the DDL", || {
        let pb = pb.clone();
        async move {
            common::rows(&pb, "SELECT a, e, n, d FROM person WHERE id = 100").await
                == vec![vec!["old-shape".to_string(), "e100".into(), "100".into(), "d100".into()]]
        }
    })
    .await;
    assert_eq!(fed.scalar("b", "SELECT COUNT(*) FROM person WHERE id = 101").await, 0);
    fed.exec("b", "ALTER TABLE person DROP COLUMN e, ADD COLUMN f INT NULL").await;
    wait_equal(&mut fed, "after a DDL read by a restarted capture").await;
    assert_eq!(
        fed.rows("b", "SELECT id, a, n, d, COALESCE(f, 'NULL') FROM person WHERE id >= 100 ORDER BY id").await,
        vec![
            vec!["100", "old-shape", "100", "d100", "NULL"].into_iter().map(String::from).collect::<Vec<_>>(),
            vec!["101", "new-shape", "101", "d101", "5"].into_iter().map(String::from).collect(),
        ]
    );
    let _ = capture;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_waited_too_long_is_a_dead_letter_and_replays_once_the_column_exists() {
    let mut fed =
        Federation::new("replay", Spec { schema: SCHEMA, entities_and_routes: CONFIG, ref_wait_seconds: 2, ..Spec::default() }).await;
    fed.start("a", &["capture"]);
    fed.start("b", &["run"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    fed.exec("a", "ALTER TABLE person ADD COLUMN z VARCHAR(20) NULL").await;
    fed.exec("a", "INSERT INTO person (id, a, z) VALUES (1, 'a1', 'z1')").await;
    let ctl = fed.control_db.clone();
    let pb = fed.pool("b").clone();
    let q = format!("SELECT COUNT(*) FROM `{ctl}`.dead_letters WHERE reason LIKE '%`z`%'");
    fed.wait_for(WAIT, "the row becomes a dead letter naming the missing column", || {
        let (pb, q) = (pb.clone(), q.clone());
        async move { common::rows(&pb, &q).await == vec![vec!["1".to_string()]] }
    })
    .await;
    // Still missing: replay keeps it and says why.
    let out = fed.command("b", &["dlq", "replay"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("still fails"));
    fed.exec("b", "ALTER TABLE person ADD COLUMN z VARCHAR(20) NULL").await;
    let out = fed.command("b", &["dlq", "replay"]).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(fed.rows("b", "SELECT a, z FROM person").await, vec![vec!["a1".to_string(), "z1".to_string()]]);
    assert_eq!(fed.scalar("b", &format!("SELECT COUNT(*) FROM `{ctl}`.dead_letters")).await, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fed.topic_records("b"), 0, "a replayed row is not echoed back");
}
