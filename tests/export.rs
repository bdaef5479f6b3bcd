//! The export stream read by stock Kafka Connect sinks: Debezium's JDBC sink (Kafka Connect
//! standalone, JsonConverter with schemas) fills a warehouse table that must equal the exporting
//! site's table row for row, through inserts at the type edges, updates, a primary-key change,
//! deletes, rows applied from another site, an excluded column and a filter; Kafka's
//! FileStreamSink reads the same topic (the embedded schema parses).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{output_text, Federation, Spec};

const SCHEMA: &str = "CREATE TABLE item (
  id INT AUTO_INCREMENT PRIMARY KEY,
  code VARCHAR(40) NOT NULL UNIQUE,
  tiny TINYINT NOT NULL DEFAULT 0,
  small SMALLINT UNSIGNED NULL,
  mid MEDIUMINT NULL,
  big BIGINT NULL,
  ubig BIGINT UNSIGNED NULL,
  price DECIMAL(14,4) NULL,
  ratio DOUBLE NULL,
  made DATETIME(6) NULL,
  seen DATETIME NULL,
  day DATE NULL,
  dur TIME(2) NULL,
  note TEXT NULL,
  data BLOB NULL,
  kind ENUM('a','b','c') NULL,
  doc JSON NULL,
  flag BIT(1) NULL,
  avatar VARBINARY(64) NULL,
  is_temp TINYINT NOT NULL DEFAULT 0
)";

const CONFIG: &str = r#"
[entities.item]
table = "item"
key = ["code"]
exclude = ["avatar"]
filter = "is_temp = 0"

[[routes]]
from = ["*"]
to = ["*"]
entities = ["item"]

[export]
entities = ["item"]
sites = ["a"]
"#;

/// The warehouse's table: the exported columns (not `avatar`), the same types.
const WAREHOUSE: &str = "CREATE TABLE item (
  id INT PRIMARY KEY, code VARCHAR(40) NOT NULL, tiny TINYINT NOT NULL DEFAULT 0, small SMALLINT UNSIGNED NULL,
  mid MEDIUMINT NULL, big BIGINT NULL, ubig BIGINT UNSIGNED NULL, price DECIMAL(14,4) NULL, ratio DOUBLE NULL,
  made DATETIME(6) NULL, seen DATETIME NULL, day DATE NULL, dur TIME(2) NULL, note TEXT NULL, data BLOB NULL,
  kind ENUM('a','b','c') NULL, doc JSON NULL, flag BIT(1) NULL, is_temp TINYINT NOT NULL DEFAULT 0
)";

/// Every exported column as text, comparable across the two servers.
const ROWS: &str = "SELECT CAST(id AS CHAR), code, CAST(tiny AS CHAR), CAST(small AS CHAR), CAST(mid AS CHAR), CAST(big AS CHAR), \
                    CAST(ubig AS CHAR), CAST(price AS CHAR), CAST(ratio AS CHAR), CAST(made AS CHAR), CAST(seen AS CHAR), CAST(day AS CHAR), \
                    CAST(dur AS CHAR), note, HEX(data), CAST(kind AS CHAR), CAST(doc AS CHAR), CAST(flag + 0 AS CHAR), CAST(is_temp AS CHAR) \
                    FROM item ORDER BY id";

fn connect_libs() -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/connect/libs.sh")).output().expect("deploy/connect/libs.sh");
    assert!(out.status.success(), "resolving Kafka Connect: {}", output_text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Connect {
    child: Child,
    log: PathBuf,
    rest: u16,
}

impl Connect {
    fn start(dir: &Path, connectors: &[(&str, String)]) -> Connect {
        let libs = connect_libs();
        let rest = common::scratch::free_port();
        let worker = dir.join("worker.properties");
        std::fs::write(
            &worker,
            format!(
                "bootstrap.servers={}\nkey.converter=org.apache.kafka.connect.json.JsonConverter\nkey.converter.schemas.enable=true\n\
                 value.converter=org.apache.kafka.connect.json.JsonConverter\nvalue.converter.schemas.enable=true\n\
                 offset.storage.file.filename={}\noffset.flush.interval.ms=1000\nlisteners=http://127.0.0.1:{rest}\nplugin.discovery=only_scan\n",
                common::kafka(),
                dir.join("connect.offsets").display()
            ),
        )
        .unwrap();
        let mut args = vec![worker.display().to_string()];
        for (name, props) in connectors {
            let path = dir.join(format!("{name}.properties"));
            std::fs::write(&path, props).unwrap();
            args.push(path.display().to_string());
        }
        let log = dir.join("connect.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("java")
            .args(["-Xms128m", "-Xmx512m", "-Dorg.slf4j.simpleLogger.defaultLogLevel=info", "-cp", &format!("{libs}/*")])
            .arg("org.apache.kafka.connect.cli.ConnectStandalone")
            .args(&args)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("java");
        Connect { child, log, rest }
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    fn status(&self, connector: &str) -> String {
        common::http_get(std::net::SocketAddr::from(([127, 0, 0, 1], self.rest)), &format!("/connectors/{connector}/status"))
            .unwrap_or_default()
    }
}

impl Drop for Connect {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debeziums_jdbc_sink_keeps_a_warehouse_equal_to_the_exporting_site() {
    // History at a from before sitesync: only `snapshot --export` brings it to the export stream.
    let history = |i: usize, _: &str| {
        if i == 0 {
            "INSERT INTO item (code, note, price, is_temp) VALUES ('old-1', 'history', 2.5, 0), ('old-2', 'history', NULL, 0), ('old-temp', 'history', NULL, 1)".to_string()
        } else {
            String::new()
        }
    };
    let mut fed = Federation::new("export", Spec { schema: SCHEMA, entities_and_routes: CONFIG, seed: history, ..Spec::default() }).await;
    let topic = format!("{}.export.a.{}.item", fed.topic_prefix, fed.app_db);
    // The warehouse: a database of the third server.
    let wh_db = format!("wh_{}", fed.app_db);
    let wh_server = common::server_url(2);
    let root = sqlx::mysql::MySqlPoolOptions::new().max_connections(1).connect(&wh_server).await.unwrap();
    common::exec(&root, &format!("CREATE DATABASE `{wh_db}`")).await;
    let wh = sqlx::mysql::MySqlPoolOptions::new().max_connections(2).connect(&format!("{wh_server}/{wh_db}")).await.unwrap();
    common::exec(&wh, WAREHOUSE).await;

    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    // Edges of every type, NULLs, text beyond the BMP, bytes with NUL. (Not a negative TIME or one
    // past 24 h: Debezium's JDBC sink binds io.debezium.time.MicroTime as java.time.LocalTime and
    // fails on them, whoever produced the record; schemas/export.md says so.)
    fed.exec(
        "a",
        "INSERT INTO item (code, tiny, small, mid, big, ubig, price, ratio, made, seen, day, dur, note, data, kind, doc, flag, avatar) VALUES \
         ('min', -128, 0, -8388608, -9223372036854775808, 0, -9999999999.9999, -1.7976931348623157e308, '1000-01-01 00:00:00.000001', '1970-01-01 00:00:01', '1000-01-01', '00:00:00.01', '', x'00', 'a', '[]', b'0', x'01'), \
         ('max', 127, 65535, 8388607, 9223372036854775807, 18446744073709551615, 9999999999.9999, 5e-324, '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07', '9999-12-31', '23:59:59.99', '中文😀 \"quoted\"', x'00FF10', 'c', '{\"k\": [1, 2.50]}', b'1', x'02'), \
         ('nulls', 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    .await;
    fed.exec("a", "INSERT INTO item (code, is_temp, note) VALUES ('temporary', 1, 'never leaves the site')").await;
    fed.exec("b", "INSERT INTO item (code, price, note, kind) VALUES ('from-b', 1.5, 'made at b, applied at a', 'b')").await;
    fed.wait_rows("a", "SELECT note FROM item WHERE code = 'from-b'", &[&["made at b, applied at a"]]).await;
    fed.exec("a", "UPDATE item SET price = 0.0001, note = 'updated', made = '2024-02-29 12:00:00.5' WHERE code = 'max'").await;
    fed.exec("a", "UPDATE item SET id = id + 1000 WHERE code = 'min'").await; // a primary-key change
    fed.exec("a", "INSERT INTO item (code, note) VALUES ('gone', 'deleted later')").await;
    fed.exec("a", "DELETE FROM item WHERE code = 'gone'").await;
    fed.exec("b", "UPDATE item SET note = 'updated at b' WHERE code = 'from-b'").await;
    fed.wait_rows("a", "SELECT note FROM item WHERE code = 'from-b'", &[&["updated at b"]]).await;
    // The export stream's history, received rows included; the filtered one stays home.
    let out = fed.command("a", &["snapshot", "--export"]).output().unwrap();
    assert!(out.status.success(), "snapshot --export: {}", output_text(&out));
    assert!(output_text(&out).contains("6 rows published"), "{}", output_text(&out));

    let dir = fed.dir.join("connect");
    std::fs::create_dir_all(&dir).unwrap();
    let file_out = dir.join("file-sink.txt");
    let jdbc = format!(
        "name=warehouse\nconnector.class=io.debezium.connector.jdbc.JdbcSinkConnector\ntasks.max=1\ntopics={topic}\n\
         connection.url=jdbc:mariadb://127.0.0.1:3309/{wh_db}\nconnection.username=root\nconnection.password=\n\
         insert.mode=upsert\ndelete.enabled=true\nprimary.key.mode=record_key\nschema.evolution=none\n\
         collection.name.format=item\n"
    );
    let file = format!(
        "name=file\nconnector.class=org.apache.kafka.connect.file.FileStreamSinkConnector\ntasks.max=1\ntopics={topic}\nfile={}\n",
        file_out.display()
    );
    let mut connect = Connect::start(&dir, &[("warehouse", jdbc), ("file", file)]);

    // The warehouse converges to the site's table (excluded column and filtered row left out).
    let expected_sql = ROWS.replace("FROM item", "FROM item WHERE is_temp = 0");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let want = fed.rows("a", &expected_sql).await;
        let got = common::rows(&wh, ROWS).await;
        if want == got && want.len() == 6 {
            break;
        }
        fed.assert_running();
        // (A sink task that failed never recovers: say why at once.)
        let exited = connect.exited() || connect.status("warehouse").contains("\"state\":\"FAILED\"");
        if Instant::now() > deadline || exited {
            panic!(
                "the warehouse did not converge:\nsite a:   {want:?}\nwarehouse: {got:?}\nstatus: {}\nconnect log:\n{}",
                connect.status("warehouse"),
                connect.log().lines().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = connect.status("warehouse");
    assert!(status.contains("\"state\":\"RUNNING\"") && !status.contains("FAILED"), "{status}");

    // The file sink read every record of the topic: each change, and a tombstone after each delete.
    let records = fed.topic_records_of(&topic);
    let deadline = Instant::now() + Duration::from_secs(60);
    let lines = loop {
        let text = std::fs::read_to_string(&file_out).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() as i64 >= records || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(lines.len() as i64, records, "file sink lines:\n{}\nstatus: {}", lines.join("\n"), connect.status("file"));
    // 3 + 1 (b's row) + 1 + (d, tombstone, c) + 1 + (d, tombstone) + 1 = 12 records, and the
    // snapshot's 6 (`op` r: the 4 rows of now and the 2 of history that pass the filter).
    assert_eq!(records, 18, "{}", lines.join("\n"));
    assert_eq!(lines.iter().filter(|l| l.as_str() == "null").count(), 2, "two tombstones:\n{}", lines.join("\n"));
    assert!(lines.iter().all(|l| l == "null" || l.starts_with("Struct{")), "{}", lines.join("\n"));
    assert!(!lines.iter().any(|l| l.contains("temporary") || l.contains("avatar")), "{}", lines.join("\n"));
    let check = fed.command("a", &["check"]).output().unwrap();
    assert!(
        output_text(&check).contains(&format!("PASS topic: {topic} (1 partition(s), this site's export stream")),
        "{}",
        output_text(&check)
    );
    // The export's own binlog client id is judged like capture's (here both are connected).
    assert!(output_text(&check).contains("export server_id: a binlog reader with server_id"), "{}", output_text(&check));
}

/// Threads of process `pid` as (name, nice).
fn threads(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_string();
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // After the parenthesised name: state is field 3, nice field 19.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let nice = rest.split_whitespace().nth(16).and_then(|n| n.parse().ok()).unwrap_or(0);
        out.push((name, nice));
    }
    out
}

/// The export stream reads the binlog apart from capture: a checkpoint row of its own, its
/// threads (and its Kafka client's) at nice 10 while capture's stay at 0, and a kill -9 in the
/// middle of a burst loses no change of the export topic (at least once: repeats allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_stream_keeps_its_own_checkpoint_and_priority_and_loses_nothing_when_killed() {
    let mut fed = Federation::new("export_kill", Spec { schema: SCHEMA, entities_and_routes: CONFIG, ..Spec::default() }).await;
    let topic = format!("{}.export.a.{}.item", fed.topic_prefix, fed.app_db);
    let listen = fed.listen("a");
    let run = fed.start("a", &["run"]);
    let pid = fed.pid(run);
    let running = || {
        common::http_get(listen, "/metrics")
            .and_then(|body| common::metric(&body, "sitesync_component_running", &["site=\"a\"", "component=\"export\""]))
    };
    fed.wait_for(Duration::from_secs(60), "the export stream to stream", || async { running() == Some(1.0) }).await;
    let threads = threads(pid);
    let export_threads: Vec<&(String, i64)> = threads.iter().filter(|(_, nice)| *nice == 10).collect();
    assert!(threads.iter().any(|(name, nice)| name == "sitesync-export" && *nice == 10), "{threads:?}");
    assert!(export_threads.iter().any(|(name, _)| name.starts_with("rdk:")), "the export's Kafka client runs at its priority: {threads:?}");
    assert!(threads.iter().any(|(name, nice)| name.starts_with("rdk:") && *nice == 0), "capture's Kafka client does not: {threads:?}");

    let burst = |from: usize, to: usize| {
        (from..to)
            .map(|t| {
                let rows: Vec<String> = (0..25).map(|r| format!("('k-{t}-{r}', {r}, 'burst')")).collect();
                format!("INSERT INTO item (code, tiny, note) VALUES {}", rows.join(", "))
            })
            .collect::<Vec<_>>()
    };
    for sql in burst(0, 20) {
        fed.exec("a", &sql).await;
    }
    fed.kill9(run); // capture and the export stream in the middle of the burst
    for sql in burst(20, 40) {
        fed.exec("a", &sql).await;
    }
    let run = fed.start("a", &["run"]);
    for sql in burst(40, 50) {
        fed.exec("a", &sql).await;
    }
    let expected: std::collections::BTreeSet<String> = (0..50).flat_map(|t| (0..25).map(move |r| format!("k-{t}-{r}"))).collect();
    let created = |fed: &Federation| -> std::collections::BTreeSet<String> {
        fed.topic_payloads_of(&topic)
            .into_iter()
            .filter_map(|(_, value)| value)
            .map(|v| serde_json::from_slice::<serde_json::Value>(&v).unwrap())
            .filter(|v| v["payload"]["op"] == "c")
            .filter_map(|v| v["payload"]["after"]["code"].as_str().map(str::to_string))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = created(&fed);
        if got.is_superset(&expected) {
            break;
        }
        fed.assert_running();
        assert!(Instant::now() < deadline, "the export topic lacks {} of {} rows", expected.difference(&got).count(), expected.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Its own row in capture_checkpoint, beside capture's: it resumed from there.
    let control = fed.control_db.clone();
    let keys = fed.rows("a", &format!("SELECT site FROM `{control}`.capture_checkpoint ORDER BY site")).await;
    assert_eq!(keys, vec![vec!["a".to_string()], vec!["a*export".to_string()]]);
    assert!(fed.logs_contain("resuming from the checkpoint site=a stream=Export"), "the export stream resumed from its own checkpoint");
    // `status` shows where the export is, beside capture.
    let status = fed.command("a", &["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["export"]["gtid"].as_str().is_some_and(|g| !g.is_empty()), "{status}");
    assert!(status["export"]["behind_capture_seconds"].is_number(), "{status}");
    let text = output_text(&fed.command("a", &["status"]).output().unwrap());
    assert!(text.contains("export checkpoint   gtid "), "{text}");
    // And the console's overview.
    let overview = common::http(listen, "GET", "/api/v1/overview", &[], "").json();
    assert_eq!(overview["export"]["running"], true, "{overview}");
    assert!(overview["export"]["checkpoint_gtid"].as_str().is_some_and(|g| !g.is_empty()), "{overview}");
    assert!(overview["export"]["last_source_commit_ms"].is_number(), "{overview}");
    fed.stop(run);
}

/// A definite failure of the export stream (its table no longer fits the configuration) stops the
/// export alone: replication of the other entities goes on, the overview and the metrics say why,
/// and the export does not move past the change it could not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_export_stream_leaves_replication_going_and_says_why() {
    let schema = format!("{SCHEMA};\n{}", common::PEOPLE_SCHEMA);
    let config = format!("{CONFIG}\n{}", common::PEOPLE_BOTH_WAYS);
    let mut fed = Federation::new("export_fails", Spec { schema: &schema, entities_and_routes: &config, ..Spec::default() }).await;
    let topic = format!("{}.export.a.{}.item", fed.topic_prefix, fed.app_db);
    let listen = fed.listen("a");
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    fed.exec("a", "INSERT INTO item (code, note) VALUES ('before', 'exported')").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fed.topic_records_of(&topic) < 1 {
        fed.assert_running();
        assert!(Instant::now() < deadline, "the first row never reached the export topic");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The entity's key column goes: capture stops `item` alone, the export stream stops.
    fed.exec("a", "ALTER TABLE item DROP COLUMN code").await;
    fed.exec("a", "INSERT INTO item (note) VALUES ('after the change')").await;
    let overview = || common::http(listen, "GET", "/api/v1/overview", &[], "").json();
    fed.wait_for(Duration::from_secs(60), "the overview to say why the export stopped", || async {
        overview()["export"]["last_error"]["message"].as_str().is_some_and(|m| m.contains("export of entity `item`") && m.contains("code"))
    })
    .await;
    let o = overview();
    assert_eq!(o["export"]["running"], false, "{o}");
    let metrics = common::http_get(listen, "/metrics").unwrap();
    assert_eq!(common::metric(&metrics, "sitesync_component_running", &["site=\"a\"", "component=\"export\""]), Some(0.0));
    assert_eq!(common::metric(&metrics, "sitesync_component_running", &["site=\"a\"", "component=\"capture\""]), Some(1.0));
    assert!(fed.logs_contain("the export stream stopped; replication goes on"));

    // Replication goes on.
    fed.exec("a", "INSERT INTO person (token, name) VALUES ('p1', 'Replicated while the export is down')").await;
    fed.wait_rows("b", "SELECT name FROM person", &[&["Replicated while the export is down"]]).await;
    assert_eq!(fed.topic_records_of(&topic), 1, "nothing past the change the export could not read");
    fed.assert_running();
}
