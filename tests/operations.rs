//! Operating sitesync: secrets never reach the output, `/readyz` follows the real state of the
//! site's database, and SIGTERM drains and exits 0 without losing anything.
//!
//! The shared stack servers get databases and one test user of their own (never a global
//! setting); the database that is stopped and started again is a throwaway `mariadbd` of this
//! test.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Federation, Spec};
use sqlx::mysql::MySqlPoolOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::scratch::Scratch;

// ---- helpers

/// A person table whose every applied insert, update and delete B counts (applied_events):
/// a change applied twice would show.
const SCHEMA: &str = include_str!("fixtures/counted_person.sql");

const TWO_WAY: &str = "[entities.person]\ntable = \"person\"\n\n[[routes]]\nfrom = [\"*\"]\nto = [\"*\"]\nentities = [\"person\"]\n";
const ONE_WAY: &str = "[entities.person]\ntable = \"person\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"person\"]\n";

const WAIT: Duration = Duration::from_secs(60);

fn sitesync(config: &Path, site: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sitesync"));
    c.arg("--config").arg(config).arg("--site").arg(site).args(args);
    c.env_remove("SITESYNC_CONFIG").env_remove("SITESYNC_SITE").env_remove("SITESYNC_LOG");
    c
}

/// A background `sitesync` whose stdout and stderr go to `log`.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd.stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap();
        Proc { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("sitesync exited with {status} {what}; its log:\n{}", self.output());
        }
    }

    /// SIGTERM; the exit status and how long the process took to exit (at most `limit`).
    fn terminate(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.wait(limit, started)
    }

    /// Waits for the exit (killing it after `limit`, which fails the test).
    fn wait(&mut self, limit: Duration, started: Instant) -> (std::process::ExitStatus, Duration) {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("sitesync did not exit within {limit:?}; its log:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a `sitesync` command to its end; (exit code, stdout + stderr).
async fn finish(cmd: Command, log: PathBuf, limit: Duration) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let mut p = Proc::spawn(cmd, log);
        let (status, _) = p.wait(limit, Instant::now());
        (status.code().unwrap_or(-1), p.output())
    })
    .await
    .unwrap()
}

/// GET `path`: status code and body (None when nothing answers).
async fn http(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
    };
    tokio::time::timeout(Duration::from_secs(10), ask).await.ok().flatten()
}

/// Polls `/readyz` until it answers `code`; how long that took and the body.
async fn readyz_becomes(addr: SocketAddr, code: u16, within: Duration, p: &mut Proc) -> (Duration, String) {
    let started = Instant::now();
    let mut last = None;
    loop {
        let got = http(addr, "/readyz").await;
        if let Some((c, body)) = &got {
            if *c == code {
                return (started.elapsed(), body.clone());
            }
        }
        p.assert_alive(&format!("while /readyz should become {code}"));
        last = got.or(last);
        assert!(started.elapsed() < within, "/readyz not {code} within {within:?}; last answer {last:?}; log:\n{}", p.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every file under `dir` except the configuration files.
fn all_output(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.extension().is_some_and(|e| e == "log") {
            out.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap_or_default()));
        }
    }
    out
}

/// Host and port of a stack server URL (`mysql://user[:pw]@host:port`).
fn host_port(url: &str) -> String {
    url.rsplit_once('@').map(|(_, hp)| hp.to_string()).unwrap_or_else(|| url.trim_start_matches("mysql://").to_string())
}

/// Rewrites the `mysql` of `[sites.<site>]` in the federation file at `from` and writes it to `to`.
fn with_mysql(from: &Path, to: &Path, site: &str, mysql: &str) {
    let text = std::fs::read_to_string(from).unwrap();
    let header = format!("[sites.{site}]\n");
    let start = text.find(&header).unwrap() + header.len();
    let line_end = start + text[start..].find('\n').unwrap();
    assert!(text[start..line_end].starts_with("mysql = "), "unexpected harness layout: {}", &text[start..line_end]);
    let text = format!("{}mysql = \"{mysql}\"{}", &text[..start], &text[line_end..]);
    std::fs::write(to, text).unwrap();
}

async fn count(pool: &sqlx::MySqlPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap()
}

// ---- (a) secrets

/// A user with a known password at stack server A, reached through `${VAR}`, `${file:/path}`
/// and `${credential:NAME}`: `run`, `check`, `init` and failing starts (wrong password, no
/// database, bad URL, a password file missing), in text and JSON logs and at debug level, never
/// print the password, nor the URL that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_errors() {
    let mut fed =
        Federation::new("secrets", Spec { sites: &["a", "b"], schema: SCHEMA, entities_and_routes: TWO_WAY, ..Spec::default() }).await;
    let tag = fed.app_db.trim_start_matches("t_secrets_").to_string();
    let user = format!("sstest_{tag}");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let password = format!("Kq7pw{nanos}Zx_{tag}");
    let wrong = format!("Wr0ng{nanos}Yv_{tag}");
    let (app, ctl) = (fed.app_db.clone(), fed.control_db.clone());
    fed.exec(
        "a",
        &format!(
            "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}';
             GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'127.0.0.1';
             GRANT SELECT, INSERT, UPDATE, DELETE ON `{app}`.* TO '{user}'@'127.0.0.1';
             GRANT ALL ON `{ctl}`.* TO '{user}'@'127.0.0.1'"
        ),
    )
    .await;
    let server = host_port(&common::server_url(0));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = fed.dir.clone();
    let good = dir.join("secret.toml");
    with_mysql(&fed.config_path, &good, "a", &format!("mysql://{user}:${{SSTEST_PASSWORD}}@{server}/{app}"));
    let nodb = dir.join("secret-nodb.toml");
    with_mysql(&fed.config_path, &nodb, "a", &format!("mysql://{user}:${{SSTEST_PASSWORD}}@127.0.0.1:{closed}/{app}"));
    let badurl = dir.join("secret-badurl.toml");
    with_mysql(&fed.config_path, &badurl, "a", &format!("mysql://{user}:${{SSTEST_PASSWORD}}@{server}:notaport/{app}"));
    // The same password from a file (with the trailing newline editors leave) and as a systemd
    // credential; a wrong one from a file; a file that is not there.
    let secret_file = dir.join("a.password");
    std::fs::write(&secret_file, format!("{password}\n")).unwrap();
    let wrong_file = dir.join("a.wrong-password");
    std::fs::write(&wrong_file, format!("{wrong}\n")).unwrap();
    let credentials = dir.join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::write(credentials.join("sitesync-a"), &password).unwrap();
    let fromfile = dir.join("secret-file.toml");
    with_mysql(&fed.config_path, &fromfile, "a", &format!("mysql://{user}:${{file:{}}}@{server}/{app}", secret_file.display()));
    let wrongfile = dir.join("secret-wrongfile.toml");
    with_mysql(&fed.config_path, &wrongfile, "a", &format!("mysql://{user}:${{file:{}}}@{server}/{app}", wrong_file.display()));
    let nofile = dir.join("secret-nofile.toml");
    let absent = dir.join("not-there.password");
    with_mysql(&fed.config_path, &nofile, "a", &format!("mysql://{user}:${{file:{}}}@{server}/{app}", absent.display()));
    let credential = dir.join("secret-credential.toml");
    with_mysql(&fed.config_path, &credential, "a", &format!("mysql://{user}:${{credential:sitesync-a}}@{server}/{app}"));

    let cmd = |config: &Path, pw: &str, args: &[&str], json: bool, debug: bool| {
        let mut c = sitesync(config, "a", args);
        c.env("SSTEST_PASSWORD", pw);
        if json {
            c.arg("--log-format").arg("json");
        }
        if debug {
            c.env("SITESYNC_LOG", "debug");
        }
        c
    };
    let log = |name: &str| dir.join(format!("secret-{name}.log"));
    let quick = Duration::from_secs(60);

    // Working: check, init, and run in both log formats while rows travel both ways.
    let (code, out) = finish(cmd(&good, &password, &["check"], false, false), log("check-text"), quick).await;
    assert_eq!(code, 0, "check with the least-privilege user:\n{out}");
    let (code, out) = finish(cmd(&good, &password, &["check"], true, true), log("check-json"), quick).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = finish(cmd(&good, &password, &["init"], true, true), log("init-json"), quick).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = finish(cmd(&fromfile, "", &["check"], false, true), log("check-file"), quick).await;
    assert_eq!(code, 0, "check with the password from a file:\n{out}");
    let mut c = cmd(&credential, "", &["check"], true, true);
    c.env("CREDENTIALS_DIRECTORY", &credentials);
    let (code, out) = finish(c, log("check-credential"), quick).await;
    assert_eq!(code, 0, "check with the password as a systemd credential:\n{out}");
    fed.start("b", &["run"]);
    for (round, json, config) in [(0, false, &good), (1, true, &good), (2, true, &fromfile)] {
        let mut a = Proc::spawn(cmd(config, &password, &["run"], json, true), log(&format!("run-{round}")));
        tokio::time::sleep(Duration::from_millis(500)).await;
        fed.exec("a", &format!("INSERT INTO person (id, name) VALUES ({}, 'from a')", 10 + round)).await;
        fed.exec("b", &format!("INSERT INTO person (id, name) VALUES ({}, 'from b')", 20 + round)).await;
        let (pa, pb) = (fed.pool("a").clone(), fed.pool("b").clone());
        let want = 2 * (round + 1) as i64;
        let deadline = Instant::now() + WAIT;
        while count(&pa, "SELECT COUNT(*) FROM person").await < want || count(&pb, "SELECT COUNT(*) FROM person").await < want {
            a.assert_alive("while replicating");
            fed.assert_running();
            assert!(Instant::now() < deadline, "rows did not travel; log:\n{}", a.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, _) = a.terminate(Duration::from_secs(30));
        assert!(status.success(), "run stopped with {status}:\n{}", a.output());
        if json {
            assert!(a.output().lines().filter(|l| !l.trim().is_empty()).all(|l| l.starts_with('{')), "JSON logs only:\n{}", a.output());
        }
    }

    // A password file that is not there: the key and the path, and that it is missing.
    for args in [&["check"][..], &["run"]] {
        let (code, out) = finish(cmd(&nofile, "", args, false, true), log(&format!("nofile-{}", args[0])), quick).await;
        assert_ne!(code, 0, "{args:?} without its password file:\n{out}");
        assert!(out.contains("sites.a.mysql") && out.contains(&absent.display().to_string()) && out.contains("missing"), "{out}");
    }
    let mut c = cmd(&credential, "", &["check"], false, false);
    c.env_remove("CREDENTIALS_DIRECTORY");
    let (code, out) = finish(c, log("nocredentials"), quick).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("sites.a.mysql") && out.contains("CREDENTIALS_DIRECTORY"), "{out}");

    // Failing starts: wrong password, no database, a URL that does not parse.
    let failing: [(&str, &Path, &str, &str); 4] = [
        ("wrongpw", &good, &wrong, "Access denied"),
        ("wrongpw-file", &wrongfile, "", "Access denied"),
        ("nodb", &nodb, &password, "onnection refused"),
        ("badurl", &badurl, &password, "sites.a.mysql"),
    ];
    for (name, config, pw, says) in failing {
        for json in [false, true] {
            if name == "nodb" {
                // A server that is down may come back: `run` waits for it, saying so, and stops
                // cleanly when asked (a refused login or a bad URL cannot mend: it exits).
                let mut p = Proc::spawn(cmd(config, pw, &["run"], json, true), log(&format!("{name}-run-{json}")));
                let deadline = Instant::now() + quick;
                while !p.output().contains("waiting for the database") {
                    p.assert_alive("while its database is down");
                    assert!(Instant::now() < deadline, "run should say it waits for its database:\n{}", p.output());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let (status, _) = p.terminate(Duration::from_secs(30));
                assert!(status.success(), "run waiting for its database stops cleanly on SIGTERM: {status}\n{}", p.output());
                continue;
            }
            let (code, out) = finish(cmd(config, pw, &["run"], json, true), log(&format!("{name}-run-{json}")), quick).await;
            assert_ne!(code, 0, "run must fail ({name}):\n{out}");
            let _ = says;
        }
        let (code, out) = finish(cmd(config, pw, &["check"], false, false), log(&format!("{name}-check")), quick).await;
        assert_eq!(code, 1, "{out}");
        assert!(out.lines().any(|l| l.starts_with("FAIL database: ") && l.contains(says)), "check ({name}) should say `{says}`:\n{out}");
    }

    fed.stop(0);
    for (file, text) in all_output(&dir) {
        for (what, secret) in [("password", password.as_str()), ("wrong password", wrong.as_str()), ("URL", &format!("{user}:") as &str)] {
            assert!(!text.contains(secret), "{file} shows the {what}:\n{text}");
        }
    }
    fed.exec("a", &format!("DROP USER '{user}'@'127.0.0.1'")).await;
}

// ---- (b) readiness

/// `/readyz` is 200 while the site runs, 503 within seconds of its database going away (the
/// process stays up and keeps retrying), and 200 again once the database is back; capture
/// then carries on from where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database() {
    let mut flags = vec!["--server-id=21"];
    flags.extend_from_slice(&["--log-bin=mysql-bin", "--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL"]);
    let mut db = Scratch::new("readyz", &flags);
    // The federation: site `a` on the throwaway server, site `b` on stack server B.
    let fed = Federation::new("readyz", Spec { sites: &["b"], schema: SCHEMA, entities_and_routes: TWO_WAY, ..Spec::default() }).await;
    let app = fed.app_db.clone();
    db.exec(&format!("CREATE DATABASE `{app}`")).await;
    let pool = MySqlPoolOptions::new().max_connections(1).connect(&format!("{}/{app}", db.url())).await.unwrap();
    for stmt in SCHEMA.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
        common::exec(&pool, stmt).await;
    }
    pool.close().await;
    let listen: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = fed.dir.join("readyz.toml");
    let text = std::fs::read_to_string(&fed.config_path).unwrap();
    let server_id = 3_000_000 + std::process::id() % 10_000 * 10; // apart from the harness's ids
    let text = text.replacen(
        "[sites.b]\n",
        &format!("[sites.a]\nmysql = \"{}/{app}\"\nserver_id = {server_id}\nlisten = \"{listen}\"\n\n[sites.b]\n", db.url()),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let (code, out) = finish(sitesync(&config, "a", &["init"]), fed.dir.join("readyz-init.log"), WAIT).await;
    assert_eq!(code, 0, "{out}");

    let mut a = Proc::spawn(sitesync(&config, "a", &["run"]), fed.dir.join("readyz-run.log"));
    let (took, _) = readyz_becomes(listen, 200, WAIT, &mut a).await;
    eprintln!("/readyz 200 {took:?} after start");

    db.stop();
    let (took, body) = readyz_becomes(listen, 503, Duration::from_secs(15), &mut a).await;
    eprintln!("/readyz 503 {took:?} after the database stopped: {body}");
    assert!(body.contains("database") || body.contains("capture"), "{body}");
    // Down for a while: the process waits for its database instead of exiting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.assert_alive("while its database was down");
    assert_eq!(http(listen, "/readyz").await.map(|(c, _)| c), Some(503));
    assert_eq!(http(listen, "/healthz").await.map(|(c, _)| c), Some(200), "alive while not ready");

    db.restart();
    let (took, _) = readyz_becomes(listen, 200, WAIT, &mut a).await;
    eprintln!("/readyz 200 {took:?} after the database came back");

    // Capture streams again: a row written now reaches Kafka.
    db.exec(&format!("INSERT INTO `{app}`.person (id, name) VALUES (1, 'after the restart')")).await;
    let mut records = 0;
    let deadline = Instant::now() + WAIT;
    while records < 1 {
        a.assert_alive("after the database came back");
        assert!(Instant::now() < deadline, "the row written after the restart never reached Kafka; log:\n{}", a.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
        records = fed.topic_records("a");
    }
    let (status, took) = a.terminate(Duration::from_secs(30));
    assert!(status.success(), "run stopped with {status} after {took:?}:\n{}", a.output());

    // `apply` alone: an idle applier does not touch its database, so only `/readyz`'s own
    // probe of the database can tell it is gone.
    let mut a = Proc::spawn(sitesync(&config, "a", &["apply"]), fed.dir.join("readyz-apply.log"));
    readyz_becomes(listen, 200, WAIT, &mut a).await;
    db.stop();
    let (took, body) = readyz_becomes(listen, 503, Duration::from_secs(15), &mut a).await;
    eprintln!("apply: /readyz 503 {took:?} after the database stopped: {body}");
    assert!(body.contains("database unreachable"), "{body}");
    assert!(!body.contains(&db.url()), "{body}");
    db.restart();
    let (took, _) = readyz_becomes(listen, 200, WAIT, &mut a).await;
    eprintln!("apply: /readyz 200 {took:?} after the database came back");
    let (status, _) = a.terminate(Duration::from_secs(30));
    assert!(status.success(), "apply stopped with {status}:\n{}", a.output());
}

// ---- (c) SIGTERM

/// SIGTERM to both sites in the middle of a burst: each exits 0 within 15 s; after a restart
/// the target equals the source and every change was applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_drains_exits_zero_and_loses_nothing() {
    const ROWS: i32 = 1200;
    const LIMIT: Duration = Duration::from_secs(15);
    let fed =
        Federation::new("sigterm", Spec { sites: &["a", "b"], schema: SCHEMA, entities_and_routes: ONE_WAY, ..Spec::default() }).await;
    let run =
        |fed: &Federation, site: &str, n: usize| Proc::spawn(fed.command(site, &["run"]), fed.dir.join(format!("{site}-run-{n}.log")));
    // Started means: capture streams the binlog, apply consumes.
    let wait_started = |a: &mut Proc, b: &mut Proc| {
        let deadline = Instant::now() + WAIT;
        while !(a.output().contains("streaming the binlog") && b.output().contains("applying")) {
            a.assert_alive("while starting");
            b.assert_alive("while starting");
            assert!(Instant::now() < deadline, "not started; logs:\n{}\n{}", a.output(), b.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut a = run(&fed, "a", 0);
    let mut b = run(&fed, "b", 0);
    wait_started(&mut a, &mut b);

    let pa = fed.pool("a").clone();
    let writer = tokio::spawn(async move {
        for chunk in (0..ROWS).collect::<Vec<_>>().chunks(5) {
            let values: Vec<String> = chunk.iter().map(|i| format!("({i}, 'p{i}')")).collect();
            common::exec(&pa, &format!("INSERT INTO person (id, name) VALUES {}", values.join(", "))).await;
            let ids: Vec<String> = chunk.iter().map(|i| i.to_string()).collect();
            common::exec(&pa, &format!("UPDATE person SET n = n + 1 WHERE id IN ({})", ids.join(","))).await;
        }
    });
    let pb = fed.pool("b").clone();
    for (round, target) in [ROWS / 4, ROWS / 2].into_iter().enumerate() {
        let deadline = Instant::now() + WAIT;
        while count(&pb, "SELECT COUNT(*) FROM person").await < target as i64 {
            a.assert_alive("during the burst");
            b.assert_alive("during the burst");
            assert!(Instant::now() < deadline, "no progress at B; logs:\n{}\n{}", a.output(), b.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Both at once, while A's capture publishes and B's apply writes.
        let started = Instant::now();
        for p in [&a, &b] {
            let _ = Command::new("kill").arg("-TERM").arg(p.child.id().to_string()).status();
        }
        let (status_a, took_a) = a.wait(Duration::from_secs(60), started);
        let (status_b, took_b) = b.wait(Duration::from_secs(60), started);
        eprintln!("SIGTERM at {target} rows at B: a exited {status_a} after {took_a:?}, b {status_b} after {took_b:?}");
        assert!(status_a.success(), "a exited with {status_a}:\n{}", a.output());
        assert!(status_b.success(), "b exited with {status_b}:\n{}", b.output());
        assert!(took_a < LIMIT && took_b < LIMIT, "exits took {took_a:?} and {took_b:?}:\n{}\n{}", a.output(), b.output());
        assert!(a.output().contains("stopped cleanly") && b.output().contains("stopped cleanly"));
        a = run(&fed, "a", round + 1);
        b = run(&fed, "b", round + 1);
        wait_started(&mut a, &mut b);
    }
    writer.await.unwrap();
    let pa = fed.pool("a").clone();
    let q = "SELECT id, name, n FROM person ORDER BY id";
    let deadline = Instant::now() + WAIT;
    while common::rows(&pa, q).await != common::rows(&pb, q).await {
        a.assert_alive("after the restart");
        b.assert_alive("after the restart");
        assert!(Instant::now() < deadline, "B not equal to A after the SIGTERMs; logs:\n{}\n{}", a.output(), b.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(fed.scalar("b", "SELECT COUNT(*) FROM person").await, ROWS as i64);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fed.scalar("b", "SELECT n FROM applied_events").await, 2 * ROWS as i64, "each change applied exactly once");
    for p in [&mut a, &mut b] {
        let (status, _) = p.terminate(Duration::from_secs(30));
        assert!(status.success());
    }
}

/// SIGTERM while Kafka does not answer and captured records wait for its acknowledgement: the
/// process must still exit within 15 s (systemd and Kubernetes kill it soon after), keeping
/// only the acknowledged position, so the records are published at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_kafka_unreachable_exits_in_bounded_time_and_loses_nothing() {
    const ROWS: i64 = 20;
    let fed =
        Federation::new("sigkafka", Spec { sites: &["a", "b"], schema: SCHEMA, entities_and_routes: ONE_WAY, ..Spec::default() }).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nokafka = fed.dir.join("nokafka.toml");
    let text = std::fs::read_to_string(&fed.config_path).unwrap();
    std::fs::write(
        &nokafka,
        text.replacen(&format!("bootstrap_servers = \"{}\"", common::kafka()), &format!("bootstrap_servers = \"127.0.0.1:{closed}\""), 1),
    )
    .unwrap();

    let mut a = Proc::spawn(sitesync(&nokafka, "a", &["capture"]), fed.dir.join("a-capture-nokafka.log"));
    let deadline = Instant::now() + WAIT;
    while !a.output().contains("streaming the binlog") {
        a.assert_alive("before streaming");
        assert!(Instant::now() < deadline, "capture never streamed:\n{}", a.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let values: Vec<String> = (0..ROWS).map(|i| format!("({i}, 'p{i}')")).collect();
    fed.exec("a", &format!("INSERT INTO person (id, name) VALUES {}", values.join(", "))).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, took) = a.terminate(Duration::from_secs(60 * 6));
    eprintln!("capture with Kafka down exited {status} after {took:?}");
    assert!(took < Duration::from_secs(15), "SIGTERM took {took:?} with Kafka down:\n{}", a.output());
    assert!(status.success(), "{status}:\n{}", a.output());

    // Kafka back: the records held back are published, and applied at B.
    let mut a = Proc::spawn(sitesync(&fed.config_path, "a", &["capture"]), fed.dir.join("a-capture.log"));
    let mut b = Proc::spawn(sitesync(&fed.config_path, "b", &["apply"]), fed.dir.join("b-apply.log"));
    let pb = fed.pool("b").clone();
    let deadline = Instant::now() + WAIT;
    while count(&pb, "SELECT COUNT(*) FROM person").await < ROWS {
        a.assert_alive("after Kafka came back");
        b.assert_alive("after Kafka came back");
        assert!(Instant::now() < deadline, "rows captured while Kafka was down never arrived:\n{}\n{}", a.output(), b.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in [&mut a, &mut b] {
        let (status, _) = p.terminate(Duration::from_secs(30));
        assert!(status.success());
    }
}
