//! Faults: the binlog connection cut in the middle of a burst, and binlog rotation while capture
//! is disconnected. Each ends with A and B equal and no change applied twice.

mod common;

use std::time::Duration;

use common::{Federation, Spec};

/// A person table whose every applied insert, update and delete B counts (applied_events):
/// a change applied twice would show.
const SCHEMA: &str = include_str!("fixtures/counted_person.sql");
const CONFIG: &str = "[entities.person]\ntable = \"person\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"person\"]\n";
const WAIT: Duration = Duration::from_secs(90);

/// Gives site A's sitesync a MariaDB user of its own, so its connections can be found.
async fn own_user(fed: &Federation) -> String {
    let user = format!("sf_{}", std::process::id());
    for host in ["localhost", "127.0.0.1"] {
        fed.exec("a", &format!("CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY 'pw'")).await;
        fed.exec("a", &format!("GRANT ALL ON *.* TO '{user}'@'{host}'")).await;
    }
    let text = std::fs::read_to_string(&fed.config_path).unwrap();
    let url = format!("{}/{}", common::server_url(0), fed.app_db);
    let mine = url.replacen("root@", &format!("{user}:pw@"), 1);
    std::fs::write(&fed.config_path, text.replacen(&url, &mine, 1)).unwrap();
    user
}

/// Kills the server side of `user`'s binlog connections (the dump threads); returns how many.
async fn cut_binlog_connection(fed: &Federation, user: &str) -> usize {
    let threads = fed
        .rows("a", &format!("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%' AND USER = '{user}'"))
        .await;
    for row in &threads {
        fed.exec("a", &format!("KILL {}", row[0])).await;
    }
    threads.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_connection_cut_mid_burst_and_rotation_lose_nothing_and_apply_once() {
    const ROWS: i32 = 600;
    let mut fed = Federation::new("faults", Spec { schema: SCHEMA, entities_and_routes: CONFIG, ..Spec::default() }).await;
    let user = own_user(&fed).await;
    fed.start("a", &["capture"]);
    fed.start("b", &["apply"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pool = fed.pool("a").clone();
    let writer = tokio::spawn(async move {
        for i in 0..ROWS {
            common::exec(&pool, &format!("INSERT INTO person (id, name) VALUES ({i}, 'p{i}')")).await;
            common::exec(&pool, &format!("UPDATE person SET n = n + 1 WHERE id = {i}")).await;
            if i == ROWS / 2 {
                // Rotation in the middle of the burst (and likely while disconnected).
                common::exec(&pool, "FLUSH BINARY LOGS").await;
            }
        }
    });
    // Cut the binlog connection three times during the burst.
    let mut cuts = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cuts += cut_binlog_connection(&fed, &user).await;
    }
    writer.await.unwrap();
    assert!(cuts >= 2, "the test must really cut the connection (cut {cuts} times)");
    let pb = fed.pool("b").clone();
    fed.wait_for(WAIT, "B holds every row after the cuts", || {
        let pb = pb.clone();
        async move {
            common::rows(&pb, "SELECT COUNT(*), CAST(SUM(n) AS CHAR) FROM person").await == vec![vec![ROWS.to_string(), ROWS.to_string()]]
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fed.scalar("b", "SELECT n FROM applied_events").await, 2 * ROWS as i64, "each change applied exactly once");
    // The same process reconnected each time: it never exited.
    fed.assert_running();
}
