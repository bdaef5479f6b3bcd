//! Capture refuses, loudly and early, what it cannot read exactly: settings that a session can
//! switch for itself.

mod common;

use std::time::{Duration, Instant};

use common::{Federation, Spec};

const SCHEMA: &str = "CREATE TABLE person (id INT NOT NULL PRIMARY KEY, name VARCHAR(100) NOT NULL, note VARCHAR(100) NULL) ENGINE=InnoDB";
const CONFIG: &str = "[entities.person]\ntable = \"person\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"person\"]\n";

/// Starts capture at A, runs `session_sql` in one session at A, and returns capture's log
/// once it exited (it must).
async fn capture_stops_on(test: &str, session_sql: &str) -> String {
    let mut fed = Federation::new(test, Spec { schema: SCHEMA, entities_and_routes: CONFIG, ..Spec::default() }).await;
    let mut child = fed.command("a", &["capture"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    fed.exec("a", "INSERT INTO person VALUES (1, 'before', NULL)").await;
    // One connection, so the session settings apply to the statements after them.
    let mut conn = fed.pool("a").acquire().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(session_sql.to_string())).execute(&mut *conn).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "capture kept running after {session_sql}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(!status.success(), "capture must fail: {log}");
    fed.assert_running();
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_writing_statements_stops_capture_naming_binlog_format() {
    let log = capture_stops_on("stmt", "SET SESSION binlog_format = 'STATEMENT'; UPDATE person SET note = 'x' WHERE id = 1").await;
    assert!(log.contains("binlog_format=ROW"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_writing_minimal_row_images_stops_capture_naming_the_row_image() {
    let log = capture_stops_on("minimal", "SET SESSION binlog_row_image = 'MINIMAL'; UPDATE person SET note = 'y' WHERE id = 1").await;
    assert!(log.contains("binlog_row_image=FULL"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_reset_position_moves_capture_to_the_servers_current_position() {
    let mut fed = Federation::new("reset", Spec { schema: SCHEMA, entities_and_routes: CONFIG, ..Spec::default() }).await;
    // Written while capture does not run: normally captured at its start...
    fed.exec("a", "INSERT INTO person VALUES (1, 'before reset', NULL)").await;
    // ...but the operator moves the position to now (as after a purged binlog).
    let out = fed.command("a", &["init", "--reset-position"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("capture will start at GTID position"));
    fed.start("a", &["capture"]);
    fed.start("b", &["apply"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    fed.exec("a", "INSERT INTO person VALUES (2, 'after reset', NULL)").await;
    let pb = fed.pool("b").clone();
    fed.wait_for(Duration::from_secs(60), "the row written after the reset", || {
        let pb = pb.clone();
        async move { common::rows(&pb, "SELECT id FROM person").await == vec![vec!["2".to_string()]] }
    })
    .await;
}
