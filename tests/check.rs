//! `sitesync check` against each failing condition, each made real: throwaway MariaDB servers
//! of this test (binlog off; binlog settings changed with SET GLOBAL on our own server only;
//! users with too few grants; a binlog reader already connected with the site's server_id),
//! a closed Kafka port, and a site that was never initialised. Each FAIL must name the setting
//! and say how to fix it; exit code 1 on any FAIL, 0 when everything passes.
//!
//! The shared stack servers are only read and given databases of their own: no global setting
//! of theirs is changed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::mysql::MySqlPoolOptions;

use common::scratch::{free_port, Scratch};

// ---- configurations and `sitesync check`

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Names of one test: databases, topic prefix, binlog client ids, its directory.
struct Names {
    app_db: String,
    control_db: String,
    prefix: String,
    dir: PathBuf,
    server_id: u32,
}

impl Names {
    fn new(test: &str) -> Names {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let unique = format!("{test}_{}_{n}", std::process::id() % 100_000);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("check-{unique}"));
        std::fs::create_dir_all(&dir).unwrap();
        Names {
            app_db: format!("t_{unique}"),
            control_db: format!("c_{unique}"),
            prefix: format!("test.{unique}"),
            dir,
            // Apart from the harness's ids (100 000 to 1 100 000), so no other test's reader uses them.
            server_id: 2_000_000 + (std::process::id() % 10_000) * 100 + n * 2,
        }
    }

    /// Writes the federation file: site `a` at `a_server` with `a_server_id`, site `b` on stack
    /// server B; one table both ways. Returns its path.
    fn config(&self, kafka: &str, a_server: &str, a_server_id: u32) -> PathBuf {
        let text = format!(
            "[federation]\nname = \"check\"\ntopic_prefix = \"{prefix}\"\ndatabase = \"{app}\"\ncontrol_database = \"{ctl}\"\n\n\
             [kafka]\nbootstrap_servers = \"{kafka}\"\n\n\
             [sites.a]\nmysql = \"{a_server}/{app}\"\nserver_id = {a_server_id}\n\n\
             [sites.b]\nmysql = \"{b}/{app}\"\nserver_id = {b_id}\n\n\
             [entities.person]\ntable = \"person\"\n\n[[routes]]\nfrom = [\"*\"]\nto = [\"*\"]\nentities = [\"person\"]\n",
            prefix = self.prefix,
            app = self.app_db,
            ctl = self.control_db,
            b = common::server_url(1),
            b_id = self.server_id + 1,
        );
        let path = self.dir.join("sitesync.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn sitesync(config: &Path, site: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sitesync"));
    c.arg("--config").arg(config).arg("--site").arg(site).args(args);
    c.env_remove("SITESYNC_CONFIG").env_remove("SITESYNC_SITE").env_remove("SITESYNC_LOG");
    c
}

/// Output of one `sitesync check`.
struct Checked {
    code: i32,
    out: String,
    took: Duration,
}

impl Checked {
    fn failed(&self) -> Vec<&str> {
        let mut names: Vec<&str> =
            self.out.lines().filter_map(|l| l.strip_prefix("FAIL ")).filter_map(|l| l.split_once(':')).map(|(n, _)| n).collect();
        names.dedup();
        names
    }

    /// The FAIL line of `name`, which must contain every one of `fixes`.
    fn assert_fails(&self, name: &str, fixes: &[&str]) {
        assert_eq!(self.code, 1, "check must exit 1 on a FAIL:\n{}", self.out);
        let prefix = format!("FAIL {name}: ");
        let line = self.out.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no `{prefix}` line in:\n{}", self.out));
        for fix in fixes {
            assert!(line.contains(fix), "`{line}` should contain `{fix}`");
        }
    }

    fn assert_passes(&self) {
        assert_eq!(self.code, 0, "check should pass:\n{}", self.out);
        assert!(self.failed().is_empty(), "{}", self.out);
        // WARN passes: the stack's servers offer no TLS, which check points out.
        assert!(
            self.out.lines().filter(|l| !l.ends_with("0 failed")).all(|l| l.starts_with("PASS ") || l.starts_with("WARN database tls")),
            "{}",
            self.out
        );
    }
}

async fn check(config: &Path, site: &str) -> Checked {
    let started = Instant::now();
    let mut cmd = sitesync(config, site, &["check"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let c = Checked {
        code: out.status.code().unwrap_or(-1),
        out: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        took: started.elapsed(),
    };
    eprintln!("---- sitesync check ({:.1} s, exit {}):\n{}", c.took.as_secs_f64(), c.code, c.out);
    c
}

async fn init(config: &Path, site: &str) {
    let mut cmd = sitesync(config, site, &["init"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert!(out.status.success(), "init: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

const BINLOG_FLAGS: &[&str] = &["--log-bin=mysql-bin", "--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL"];

// ---- the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_off_fails_with_how_to_switch_it_on() {
    let db = Scratch::new("nobinlog", &["--server-id=12", "--binlog-format=ROW"]);
    let names = Names::new("nobinlog");
    db.exec(&format!("CREATE DATABASE `{}`; CREATE TABLE `{}`.person (id INT PRIMARY KEY)", names.app_db, names.app_db)).await;
    let config = names.config(&common::kafka(), &db.url(), names.server_id);
    let c = check(&config, "a").await;
    c.assert_fails("binlog", &["log_bin is OFF", "log_bin = mysql-bin", "restart the server"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_settings_grants_and_server_ids_each_fail_with_their_fix() {
    let mut flags = vec!["--server-id=11"];
    flags.extend_from_slice(BINLOG_FLAGS);
    let db = Scratch::new("settings", &flags);
    let names = Names::new("settings");
    let (app, ctl) = (names.app_db.clone(), names.control_db.clone());
    db.exec(&format!("CREATE DATABASE `{app}`; CREATE TABLE `{app}`.person (id INT PRIMARY KEY, name VARCHAR(50))")).await;
    let config = names.config(&common::kafka(), &db.url(), names.server_id);
    init(&config, "a").await;
    check(&config, "a").await.assert_passes();

    // Binlog settings, one at a time, on this test's own server.
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "binlog_format = 'STATEMENT'",
            "binlog_format = 'ROW'",
            "binlog_format",
            &["is STATEMENT", "SET GLOBAL binlog_format = 'ROW'", "binlog_format = ROW under [mysqld]"],
        ),
        ("binlog_format = 'MIXED'", "binlog_format = 'ROW'", "binlog_format", &["is MIXED", "SET GLOBAL binlog_format = 'ROW'"]),
        (
            "binlog_row_image = 'MINIMAL'",
            "binlog_row_image = 'FULL'",
            "binlog_row_image",
            &["is MINIMAL", "SET GLOBAL binlog_row_image = 'FULL'", "binlog_row_image = FULL under [mysqld]"],
        ),
        (
            "binlog_row_metadata = 'MINIMAL'",
            "binlog_row_metadata = 'FULL'",
            "binlog_row_metadata",
            &["is MINIMAL", "SET GLOBAL binlog_row_metadata = 'FULL'", "binlog_row_metadata = FULL under [mysqld]"],
        ),
        (
            "binlog_row_metadata = 'NO_LOG'",
            "binlog_row_metadata = 'FULL'",
            "binlog_row_metadata",
            &["is NO_LOG", "SET GLOBAL binlog_row_metadata = 'FULL'"],
        ),
        ("log_bin_compress = ON", "log_bin_compress = OFF", "log_bin_compress", &["is ON", "SET GLOBAL log_bin_compress = 'OFF'"]),
    ];
    for (set, restore, name, fixes) in cases {
        db.exec(&format!("SET GLOBAL {set}")).await;
        let c = check(&config, "a").await;
        db.exec(&format!("SET GLOBAL {restore}")).await;
        c.assert_fails(name, fixes);
        assert_eq!(c.failed(), vec![*name], "only {name} fails after SET GLOBAL {set}:\n{}", c.out);
    }
    check(&config, "a").await.assert_passes();

    // The site's binlog client id equal to the server's own.
    let same = names.config(&common::kafka(), &db.url(), 11);
    let c = check(&same, "a").await;
    c.assert_fails("server_id", &["sites.a.server_id = 11 equals the server's own @@server_id", "set sites.a.server_id to a number"]);
    assert_eq!(c.failed(), vec!["server_id"], "{}", c.out);

    // Another binlog reader already connected with the site's id: a running capture.
    let config = names.config(&common::kafka(), &db.url(), names.server_id);
    let log = names.dir.join("capture.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut capture = sitesync(&config, "a", &["capture"]).stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap();
    let ours = names.server_id.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !db.rows("SHOW SLAVE HOSTS").await.iter().any(|r| r[0] == ours) {
        if let Some(status) = capture.try_wait().unwrap() {
            panic!("capture exited with {status}:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(
            Instant::now() < deadline,
            "capture never registered as a binlog reader:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = check(&config, "a").await;
    let _ = Command::new("kill").arg("-TERM").arg(capture.id().to_string()).status();
    let status = capture.wait().unwrap();
    assert!(status.success(), "capture stopped with {status}");
    c.assert_fails(
        "server_id",
        &[&format!("a binlog reader with server_id {ours} is already connected"), "SHOW SLAVE HOSTS", "set sites.a.server_id to a number"],
    );
    assert_eq!(c.failed(), vec!["server_id"], "{}", c.out);
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.rows("SHOW SLAVE HOSTS").await.iter().any(|r| r[0] == ours) {
        assert!(Instant::now() < deadline, "the stopped capture is still listed as a binlog reader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check(&config, "a").await.assert_passes();

    // Users with too few grants.
    let port = db.port;
    let user_cases: &[(&str, String, Vec<&str>, Vec<String>)] = &[
        (
            "partial",
            format!("GRANT REPLICATION SLAVE ON *.* TO 'partial'@'127.0.0.1'; GRANT SELECT ON `{app}`.* TO 'partial'@'127.0.0.1'; GRANT ALL ON `{ctl}`.* TO 'partial'@'127.0.0.1'"),
            vec!["grant application"],
            vec![format!("missing INSERT, UPDATE, DELETE on `{app}`.*"), format!("GRANT SELECT, INSERT, UPDATE, DELETE ON `{app}`.* TO 'partial'@'127.0.0.1';")],
        ),
        (
            "norepl",
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON `{app}`.* TO 'norepl'@'127.0.0.1'; GRANT ALL ON `{ctl}`.* TO 'norepl'@'127.0.0.1'"),
            vec!["grant replication"],
            vec!["missing REPLICATION SLAVE on *.*".to_string(), "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'norepl'@'127.0.0.1';".to_string()],
        ),
        (
            "noctl",
            format!("GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'noctl'@'127.0.0.1'; GRANT SELECT, INSERT, UPDATE, DELETE ON `{app}`.* TO 'noctl'@'127.0.0.1'"),
            vec!["grant control", "control tables"],
            vec![format!("missing SELECT, INSERT, UPDATE, DELETE, CREATE on `{ctl}`.*"), format!("GRANT ALL ON `{ctl}`.* TO 'noctl'@'127.0.0.1';")],
        ),
    ];
    for (user, grants, failing, fixes) in user_cases {
        db.exec(&format!("CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'pw-{user}'; {grants}")).await;
        let url = format!("mysql://{user}:pw-{user}@127.0.0.1:{port}");
        let c = check(&names.config(&common::kafka(), &url, names.server_id), "a").await;
        let fixes: Vec<&str> = fixes.iter().map(String::as_str).collect();
        c.assert_fails(failing[0], &fixes);
        assert_eq!(&c.failed(), failing, "{}", c.out);
        assert!(!c.out.contains(&format!("pw-{user}")), "the password must not be printed:\n{}", c.out);
    }
    // The least-privilege user of the README passes (replicas are not listed without
    // REPLICATION MASTER ADMIN, which the check says).
    db.exec(&format!(
        "CREATE USER 'least'@'127.0.0.1' IDENTIFIED BY 'pw-least'; GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'least'@'127.0.0.1'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON `{app}`.* TO 'least'@'127.0.0.1'; GRANT ALL ON `{ctl}`.* TO 'least'@'127.0.0.1'"
    ))
    .await;
    let c = check(&names.config(&common::kafka(), &format!("mysql://least:pw-least@127.0.0.1:{port}"), names.server_id), "a").await;
    c.assert_passes();
    assert!(c.out.contains("REPLICATION MASTER ADMIN"), "{}", c.out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninitialised_site_then_all_pass_after_init_and_kafka_unreachable_fails_fast() {
    let names = Names::new("stack");
    let server = common::server_url(0);
    let root = MySqlPoolOptions::new().max_connections(1).connect(&server).await.expect("stack server A (deploy/local/stack.sh up)");
    common::exec(&root, &format!("CREATE DATABASE `{}`", names.app_db)).await;
    common::exec(&root, &format!("CREATE TABLE `{}`.person (id INT PRIMARY KEY, name VARCHAR(50))", names.app_db)).await;
    let config = names.config(&common::kafka(), &server, names.server_id);

    // Never initialised: no control tables, no topics.
    let c = check(&config, "a").await;
    c.assert_fails("control tables", &[&format!("missing in `{}`", names.control_db), "apply_offsets", "run `sitesync init --site a`"]);
    c.assert_fails("topic", &[&format!("{}.a", names.prefix), "does not exist: run `sitesync init`"]);
    assert_eq!(c.failed(), vec!["control tables", "topic"], "{}", c.out);
    for topic in ["a", "b", "a.heartbeat", "b.heartbeat", "control"] {
        let t = format!("FAIL topic: {}.{topic} (", names.prefix);
        assert!(c.out.lines().any(|l| l.starts_with(&t)), "no `{t}` in:\n{}", c.out);
    }

    // A table the configuration names but the database lacks.
    common::exec(&root, &format!("RENAME TABLE `{0}`.person TO `{0}`.people", names.app_db)).await;
    let c = check(&config, "a").await;
    c.assert_fails("tables", &[&format!("missing in `{}`: person (entities.person)", names.app_db), "create them"]);
    common::exec(&root, &format!("RENAME TABLE `{0}`.people TO `{0}`.person", names.app_db)).await;

    init(&config, "a").await;
    let c = check(&config, "a").await;
    c.assert_passes();
    for name in [
        "database",
        "binlog",
        "binlog_format",
        "binlog_row_image",
        "binlog_row_metadata",
        "gtid",
        "server_id",
        "grant replication",
        "control tables",
        "kafka",
        "topic",
    ] {
        assert!(c.out.contains(&format!("PASS {name}: ")), "no PASS {name}:\n{}", c.out);
    }

    // Kafka that does not answer: a FAIL within a few seconds, not a hang.
    let closed = free_port();
    let unreachable = names.config(&format!("127.0.0.1:{closed}"), &server, names.server_id);
    let c = check(&unreachable, "a").await;
    c.assert_fails("kafka", &[&format!("no answer from 127.0.0.1:{closed}"), "check kafka.bootstrap_servers", "that the brokers run"]);
    assert_eq!(c.failed(), vec!["kafka"], "{}", c.out);
    assert!(c.took < Duration::from_secs(10), "check took {:?} with Kafka unreachable", c.took);

    // A database that does not answer: one FAIL that names host, port and user, not the URL.
    let nodb = names.config(&common::kafka(), &format!("mysql://nobody:hunter2@127.0.0.1:{closed}"), names.server_id);
    let c = check(&nodb, "a").await;
    c.assert_fails("database", &[&format!("cannot connect to 127.0.0.1:{closed} as user `nobody`"), "check sites.a.mysql"]);
    assert!(!c.out.contains("hunter2") && !c.out.contains("nobody:"), "the URL must not be printed:\n{}", c.out);

    common::exec(&root, &format!("DROP DATABASE `{}`", names.app_db)).await;
    common::exec(&root, &format!("DROP DATABASE IF EXISTS `{}`", names.control_db)).await;
}
