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

/// A source server of this test only, with a binlog capture can read.
fn own_server(name: &str) -> common::scratch::Scratch {
    common::scratch::Scratch::new(
        name,
        &[
            "--log-bin=mysql-bin",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL",
            "--server-id=77",
            "--gtid-domain-id=7",
            "--log-bin-compress=OFF",
            "--character-set-server=utf8mb4",
        ],
    )
}

/// Waits until `child` exits; its stderr.
async fn exits(child: &mut std::process::Child, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let mut log = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
            panic!("{what}: capture kept running:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(!status.success(), "{what}: capture must fail: {log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_binlog_events_switched_on_at_run_time_stop_capture() {
    let server = own_server("compress");
    let servers = [Some(server.url())];
    let fed = Federation::new("compress", Spec { schema: SCHEMA, entities_and_routes: CONFIG, servers: &servers, ..Spec::default() }).await;
    let mut capture = fed.command("a", &["capture"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    fed.exec("a", "SET GLOBAL log_bin_compress = ON").await;
    fed.exec("a", &format!("INSERT INTO person VALUES (1, '{}', NULL)", "x".repeat(90))).await;
    fed.exec("a", &format!("UPDATE person SET note = '{}' WHERE id = 1", "y".repeat(90))).await;
    let log = exits(&mut capture, "compressed events").await;
    assert!(log.contains("log_bin_compress=OFF"), "{log}");
    // And a start against such a server is refused before streaming.
    let out = fed.command("a", &["capture"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("log_bin_compress"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_resume_position_is_refused_with_its_remedy() {
    let server = own_server("purged");
    let servers = [Some(server.url())];
    let fed = Federation::new("purged", Spec { schema: SCHEMA, entities_and_routes: CONFIG, servers: &servers, ..Spec::default() }).await;
    // Capture stopped; changes happen; the server purges the binlog that held them.
    fed.exec("a", "INSERT INTO person VALUES (1, 'lost', NULL)").await;
    fed.exec("a", "FLUSH BINARY LOGS").await;
    let current: Vec<Vec<String>> = fed.rows("a", "SHOW MASTER STATUS").await;
    // MariaDB keeps a file until its binlog checkpoint is written: purge until it is gone.
    for _ in 0..50 {
        fed.exec("a", &format!("PURGE BINARY LOGS TO '{}'", current[0][0])).await;
        if fed.rows("a", "SHOW BINARY LOGS").await.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(fed.rows("a", "SHOW BINARY LOGS").await.len(), 1, "the server did not purge its old binlogs");
    let mut capture = fed.command("a", &["capture"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let log = exits(&mut capture, "purged position").await;
    assert!(log.contains("no longer has the binlog") && log.contains("init --reset-position"), "{log}");
    // The remedy works: capture starts at the current position.
    assert!(fed.command("a", &["init", "--reset-position"]).status().unwrap().success());
    let mut capture = fed.command("a", &["capture"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(capture.try_wait().unwrap().is_none(), "capture runs after the reset");
    let _ = capture.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_readers_with_one_server_id_stop_with_the_setting_to_change() {
    let fed = Federation::new("dupid", Spec { schema: SCHEMA, entities_and_routes: CONFIG, ..Spec::default() }).await;
    let mut first = fed.command("a", &["capture"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut second = fed.command("a", &["capture"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // One of the two is kicked off by the server and must say why.
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        if second.try_wait().unwrap().is_some() {
            break exits(&mut second, "second reader").await;
        }
        if first.try_wait().unwrap().is_some() {
            break exits(&mut first, "first reader").await;
        }
        assert!(Instant::now() < deadline, "both readers kept running with one server_id");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = first.kill();
    let _ = second.kill();
    assert!(log.contains("server_id"), "{log}");
}
