//! Tables of every shape a MySQL user can create (issue 16): what the origin stored, the target
//! stores; what the target truly cannot hold becomes a dead letter naming the column.

mod common;

use std::time::Duration;

use common::{Federation, Spec};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_value_the_origin_stored_outside_strict_mode_is_stored_and_a_narrower_column_is_a_dead_letter() {
    let mut fed = Federation::new(
        "generated",
        Spec {
            sites: &["a", "b"],
            schema: "CREATE TABLE t (id INT PRIMARY KEY, i INT NOT NULL, gen INT AS (i + 1) VIRTUAL, note VARCHAR(10) NOT NULL DEFAULT '') ENGINE=InnoDB",
            entities_and_routes: "[entities.t]\ntable = \"t\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"t\"]\n",
            // b's note is narrower than a's: a value that fits at a does not fit at b.
            seed: |_, site| if site == "b" { "ALTER TABLE t MODIFY note VARCHAR(3) NOT NULL DEFAULT ''".into() } else { String::new() },
            ..Spec::default()
        },
    )
    .await;
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The application's session runs without strict mode: gen overflows, and a stores the row.
    fed.exec("a", "SET SESSION sql_mode = ''; INSERT INTO t (id, i) VALUES (1, 2147483647); UPDATE t SET i = 2147483647, note = 'x' WHERE id = 1; INSERT INTO t (id, i) VALUES (2, 5)").await;
    let pool = fed.pool("b").clone();
    fed.wait_for(WAIT, "both rows at b", || {
        let pool = pool.clone();
        async move {
            common::rows(&pool, "SELECT id, i, note FROM t ORDER BY id").await == vec![vec!["1", "2147483647", "x"], vec!["2", "5", ""]]
        }
    })
    .await;

    // A value that b's own column cannot hold is caught, and the dead letter names the column.
    fed.exec("a", "INSERT INTO t (id, i, note) VALUES (3, 1, 'too long')").await;
    let ctl = fed.control_db.clone();
    let sql = format!("SELECT reason FROM `{ctl}`.dead_letters");
    fed.wait_for(WAIT, "a dead letter for note", || {
        let (pool, sql) = (pool.clone(), sql.clone());
        async move { common::rows(&pool, &sql).await.iter().any(|r| r[0].contains("'note'")) }
    })
    .await;
    assert_eq!(fed.scalar("b", "SELECT COUNT(*) FROM t WHERE id = 3").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_dropped_at_both_sites_leaves_the_rest_of_an_earlier_change_to_apply() {
    let mut fed = Federation::new(
        "dropped",
        Spec {
            sites: &["a", "b"],
            schema: "CREATE TABLE t (id INT PRIMARY KEY, x INT NULL, v INT NOT NULL) ENGINE=InnoDB",
            entities_and_routes: "[entities.t]\ntable = \"t\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"t\"]\n",
            ..Spec::default()
        },
    )
    .await;
    fed.start("a", &["run"]);
    let b = fed.start("b", &["run"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    fed.exec("a", "INSERT INTO t VALUES (1, 1, 1), (2, 2, 2)").await;
    fed.wait_rows("b", "SELECT id, x, v FROM t ORDER BY id", &[&["1", "1", "1"], &["2", "2", "2"]]).await;

    // b's sitesync is down while a changes x and v, then both sites drop x, then a changes v.
    assert!(fed.stop(b).success());
    fed.exec("a", "UPDATE t SET x = 5, v = 9 WHERE id = 1").await;
    for site in ["a", "b"] {
        fed.exec(site, "ALTER TABLE t DROP COLUMN x").await;
    }
    fed.exec("a", "UPDATE t SET v = 10 WHERE id = 1").await;
    fed.start("b", &["run"]);
    fed.wait_rows("b", "SELECT id, v FROM t ORDER BY id", &[&["1", "10"], &["2", "2"]]).await;
    let ctl = fed.control_db.clone();
    assert_eq!(fed.scalar("b", &format!("SELECT COUNT(*) FROM `{ctl}`.parked")).await, 0);
    assert_eq!(fed.scalar("b", &format!("SELECT COUNT(*) FROM `{ctl}`.dead_letters")).await, 0);

    // A column added at both sites while streaming is found, not waited for.
    for site in ["b", "a"] {
        fed.exec(site, "ALTER TABLE t ADD COLUMN y VARCHAR(10) NULL").await;
    }
    fed.exec("a", "UPDATE t SET y = 'new', v = 11 WHERE id = 2").await;
    fed.wait_rows("b", "SELECT id, v, y FROM t WHERE id = 2", &[&["2", "11", "new"]]).await;
    assert!(!fed.logs_contain("`y` does not exist"), "no wait for a column the table has");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_tables_of_an_earlier_sitesync_get_their_new_columns_from_init() {
    let fed = Federation::new(
        "upgrade",
        Spec {
            sites: &["a", "b"],
            schema: "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB",
            entities_and_routes: "[entities.t]\ntable = \"t\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"t\"]\n",
            ..Spec::default()
        },
    )
    .await;
    let ctl = fed.control_db.clone();
    // row_versions as the release before last-writer-wins stamps created it.
    fed.exec("b", &format!("ALTER TABLE `{ctl}`.row_versions DROP COLUMN depth, DROP COLUMN row_version, DROP COLUMN content")).await;
    let out = fed.command("b", &["apply"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "apply must not start on tables it cannot use");
    assert!(err.contains("row_versions.depth") && err.contains("sitesync init"), "names the column and the fix: {err}");

    let out = fed.command("b", &["init"]).output().unwrap();
    assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
    let columns = fed
        .rows("b", &format!("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{ctl}' AND TABLE_NAME = 'row_versions' AND COLUMN_NAME IN ('depth', 'row_version', 'content') ORDER BY 1"))
        .await;
    assert_eq!(columns, vec![vec!["content"], vec!["depth"], vec!["row_version"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_backticks_quotes_and_spaces_replicate() {
    let mut fed = Federation::new(
        "idents",
        Spec {
            sites: &["a", "b"],
            schema: "CREATE TABLE `a``b` (`id``x` INT PRIMARY KEY, `it's \"v\"` VARCHAR(20) NOT NULL, `sk``ip` INT NOT NULL DEFAULT 0, `t``mp` TINYINT NOT NULL DEFAULT 0) ENGINE=InnoDB",
            entities_and_routes: "[entities.odd]\ntable = \"a`b\"\nexclude = [\"sk`ip\"]\nfilter = \"`t``mp` = 0\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"odd\"]\n",
            // History at a, published by the snapshot below.
            seed: |_, site| if site == "a" { "INSERT INTO `a``b` VALUES (1, 'history', 7, 0)".into() } else { String::new() },
            ..Spec::default()
        },
    )
    .await;
    let out = fed.command("a", &["check"]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("configured table(s) present"), "{report}");
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    fed.exec("a", "INSERT INTO `a``b` VALUES (2, 'live', 7, 0), (3, 'temporary', 7, 1); UPDATE `a``b` SET `it's \"v\"` = 'live, changed' WHERE `id``x` = 2").await;
    let out = fed.command("a", &["snapshot"]).output().unwrap();
    assert!(out.status.success(), "snapshot at a: {}", String::from_utf8_lossy(&out.stderr));
    fed.wait_rows(
        "b",
        "SELECT `id``x`, `it's \"v\"`, `sk``ip` FROM `a``b` ORDER BY 1",
        &[&["1", "history", "0"], &["2", "live, changed", "0"]],
    )
    .await;
    fed.exec("a", "DELETE FROM `a``b` WHERE `id``x` = 1").await;
    fed.wait_rows("b", "SELECT `id``x` FROM `a``b` ORDER BY 1", &[&["2"]]).await;
    let out = fed.command("b", &["verify"]).output().unwrap();
    assert!(out.status.success(), "verify: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Issue 16, part 3: one entity's table becomes undecodable mid-stream (a cp932 byte sequence
/// that is a second spelling of a character); the other two go on, the stopped one says so
/// everywhere, and after the fix and `sitesync resume` its changes since the stop arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_table_stops_its_entity_alone_and_resumes_where_it_stopped() {
    let mut fed = Federation::new(
        "isolated",
        Spec {
            sites: &["a", "b"],
            schema: "CREATE TABLE t1 (id INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB;\n\
                     CREATE TABLE t2 (id INT PRIMARY KEY, v VARCHAR(10) CHARACTER SET cp932 NOT NULL DEFAULT '', n INT NOT NULL) ENGINE=InnoDB;\n\
                     CREATE TABLE t3 (id INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB",
            entities_and_routes: "[entities.t1]\ntable = \"t1\"\n\n[entities.t2]\ntable = \"t2\"\n\n[entities.t3]\ntable = \"t3\"\n\n\
                                  [[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"t1\", \"t2\", \"t3\"]\n",
            ..Spec::default()
        },
    )
    .await;
    let http = fed.listen("a");
    let a = fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    fed.exec("a", "INSERT INTO t1 VALUES (1, 1); INSERT INTO t2 VALUES (1, 'ok', 1); INSERT INTO t3 VALUES (1, 1)").await;
    fed.wait_rows("b", "SELECT (SELECT COUNT(*) FROM t1) + (SELECT COUNT(*) FROM t2) + (SELECT COUNT(*) FROM t3)", &[&["3"]]).await;

    // 0xED40 is stored, but cp932 spells its character 0xFA5C too: no record can carry it.
    fed.exec("a", "INSERT INTO t2 VALUES (2, x'ED40', 2)").await;
    fed.exec("a", "UPDATE t2 SET n = 10 WHERE id = 1; INSERT INTO t1 VALUES (2, 2); INSERT INTO t3 VALUES (2, 2)").await;
    fed.exec("a", "BEGIN; INSERT INTO t1 VALUES (3, 3); INSERT INTO t2 VALUES (3, 'mixed', 3); INSERT INTO t3 VALUES (3, 3); COMMIT").await;
    fed.exec("a", "DELETE FROM t2 WHERE id = 1").await;
    fed.wait_rows(
        "b",
        "SELECT id FROM t1 UNION ALL SELECT 10 + id FROM t3 ORDER BY 1",
        &[&["1"], &["2"], &["3"], &["11"], &["12"], &["13"]],
    )
    .await;
    fed.assert_running();
    assert_eq!(fed.rows("b", "SELECT id, n FROM t2").await, vec![vec!["1", "1"]], "t2 stopped at the undecodable row");
    assert!(fed.logs_contain("capture of this entity stopped"), "a log line says so");
    let status = fed.command("a", &["status"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.contains("entity t2  STOPPED") && status.contains("0xED40") && status.contains("binlog "), "{status}");
    // HTTP on a loaded test machine may take a few tries (the first /readyz builds its Kafka probe).
    let get = |path: &str| {
        (0..20)
            .find_map(|_| {
                common::http_get(http, path).or_else(|| {
                    std::thread::sleep(Duration::from_millis(500));
                    None
                })
            })
            .unwrap_or_else(|| panic!("{path} at {http} does not answer"))
    };
    let metrics = get("/metrics");
    assert_eq!(common::metric(&metrics, "sitesync_capture_entity_stopped", &["entity=\"t2\""]), Some(1.0), "{metrics}");
    let ready = get("/readyz");
    assert!(ready.starts_with("ready") && ready.contains("stopped: entity t2"), "{ready}");

    // A restart keeps it stopped; the fix here: t2's text column stays at its site.
    assert!(fed.stop(a).success());
    let config = std::fs::read_to_string(&fed.config_path)
        .unwrap()
        .replace("[entities.t2]\ntable = \"t2\"\n", "[entities.t2]\ntable = \"t2\"\nexclude = [\"v\"]\n");
    std::fs::write(&fed.config_path, config).unwrap();
    fed.start("a", &["run"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fed.exec("a", "INSERT INTO t1 VALUES (4, 4)").await;
    fed.wait_rows("b", "SELECT COUNT(*) FROM t1", &[&["4"]]).await;
    assert_eq!(fed.rows("b", "SELECT id, n FROM t2").await, vec![vec!["1", "1"]], "still stopped after a restart");

    let out = fed.command("a", &["resume", "--entity", "t2"]).output().unwrap();
    assert!(out.status.success(), "resume: {}", String::from_utf8_lossy(&out.stderr));
    // Every change to t2 since the stop, in order; t1 and t3 not again.
    fed.wait_rows("b", "SELECT id, n FROM t2 ORDER BY id", &[&["2", "2"], &["3", "3"]]).await;
    fed.exec("a", "INSERT INTO t2 VALUES (5, 'new', 5)").await;
    fed.wait_rows("b", "SELECT id, n FROM t2 ORDER BY id", &[&["2", "2"], &["3", "3"], &["5", "5"]]).await;
    let status = fed.command("a", &["status"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(!status.contains("entity t2"), "t2 caught up: {status}");
    assert_eq!(fed.rows("b", "SELECT COUNT(*), CAST(SUM(n) AS SIGNED) FROM t1").await, vec![vec!["4", "10"]]);
    assert_eq!(fed.rows("b", "SELECT COUNT(*), CAST(SUM(n) AS SIGNED) FROM t3").await, vec![vec!["3", "6"]]);
    assert_eq!(fed.scalar("b", &format!("SELECT COUNT(*) FROM `{}`.dead_letters", fed.control_db)).await, 0);
    fed.assert_running();
}

/// Rows the applier creates by primary key (the set-based path) are recorded as received, and
/// rows the site's own application writes are not: a snapshot here then leaves the first to
/// their origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_applier_creates_by_primary_key_are_recorded_as_received() {
    let mut fed = Federation::new(
        "received",
        Spec {
            sites: &["a", "b"],
            schema: "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL) ENGINE=InnoDB",
            entities_and_routes:
                "[entities.t]\ntable = \"t\"\n\n[[routes]]\nfrom = [\"a\", \"b\"]\nto = [\"a\", \"b\"]\nentities = [\"t\"]\n",
            // History at b that b owns.
            seed: |_, site| if site == "b" { "INSERT INTO t VALUES (5000, 'b history')".into() } else { String::new() },
            ..Spec::default()
        },
    )
    .await;
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let many: Vec<String> = (1..=300).map(|i| format!("({i}, 'a{i}')")).collect();
    fed.exec("a", &format!("INSERT INTO t VALUES {}", many.join(", "))).await;
    fed.exec("a", "INSERT INTO t VALUES (301, 'alone'); UPDATE t SET v = 'changed' WHERE id = 7").await;
    fed.exec("b", "INSERT INTO t VALUES (1000, 'b own')").await;
    fed.wait_rows("b", "SELECT COUNT(*) FROM t", &[&["303"]]).await;
    fed.wait_rows("a", "SELECT COUNT(*) FROM t WHERE id = 1000", &[&["1"]]).await;
    let ctl = fed.control_db.clone();
    let received = format!("SELECT COUNT(*), CAST(MIN(CAST(local_key AS SIGNED)) AS SIGNED), CAST(MAX(CAST(local_key AS SIGNED)) AS SIGNED), MIN(origin), MAX(origin) FROM `{ctl}`.received_rows WHERE entity = 't'");
    assert_eq!(fed.rows("b", &received).await, vec![vec!["301", "1", "301", "a", "a"]], "b received a's 301 rows, not its own");
    assert_eq!(fed.rows("a", &received).await, vec![vec!["1", "1000", "1000", "b", "b"]], "a received b's row");
    let out = fed.command("b", &["snapshot"]).output().unwrap();
    assert!(out.status.success(), "snapshot at b: {}", String::from_utf8_lossy(&out.stderr));
    // b's snapshot brings a its history row, and nothing a wrote comes back changed.
    fed.wait_rows("a", "SELECT v FROM t WHERE id IN (7, 1000, 5000) ORDER BY id", &[&["changed"], &["b own"], &["b history"]]).await;
}
