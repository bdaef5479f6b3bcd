//! Test harness: a federation of real sites on the local stack (`deploy/local/stack.sh up`).
//!
//! Each test gets its own application and control databases at every site, its own topic
//! prefix and its own binlog client ids, so tests run side by side without touching each other.
//! A missing server fails the test loudly: nothing here skips.

#![allow(dead_code)]

pub mod kafka_node;
pub mod rng;
pub mod scratch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Row};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Server URL of stack site `n` (0 = A, 1 = B, 2 = C), from `stack.sh env` or the defaults.
pub fn server_url(n: usize) -> String {
    let (var, port) = [("SITESYNC_MYSQL_A", 3307), ("SITESYNC_MYSQL_B", 3308), ("SITESYNC_MYSQL_C", 3309)][n];
    std::env::var(var).unwrap_or_else(|_| format!("mysql://root@127.0.0.1:{port}"))
}

/// Kafka bootstrap servers.
pub fn kafka() -> String {
    std::env::var("SITESYNC_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A `person` entity replicated between every site.
pub const PERSON_TWO_WAY: &str =
    "[entities.person]\ntable = \"person\"\n\n[[routes]]\nfrom = [\"*\"]\nto = [\"*\"]\nentities = [\"person\"]\n";

/// A `person` entity replicated from site a to site b only.
pub const PERSON_A_TO_B: &str =
    "[entities.person]\ntable = \"person\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"person\"]\n";

/// The `[entities.*]` and `[[routes]]` of an example file in `config/`, and its site ids.
pub fn example(name: &str) -> (String, Vec<String>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut value: toml::Table = toml::from_str(&text).unwrap();
    let sites: Vec<String> = value["sites"].as_table().unwrap().keys().cloned().collect();
    for section in ["federation", "kafka", "sites"] {
        value.remove(section);
    }
    (toml::to_string(&value).unwrap(), sites)
}

/// A federation of sites for one test.
pub struct Federation {
    pub name: String,
    pub app_db: String,
    pub control_db: String,
    pub topic_prefix: String,
    pub sites: Vec<String>,
    pub config_path: PathBuf,
    pub dir: PathBuf,
    pools: HashMap<String, MySqlPool>,
    children: Vec<(String, Child)>,
    /// Children stopped on purpose (not a failure when found dead).
    ended: Vec<usize>,
    /// Kafka bootstrap servers of this federation.
    pub kafka: String,
    /// Each site's URL names a password variable that only that site's commands get.
    own_password_only: bool,
    /// Environment variables given to one site's commands only (its Kafka credentials, say).
    site_env: HashMap<String, Vec<(String, String)>>,
    /// Each site's server URL (without database), to drop the test's databases after it.
    servers: Vec<String>,
}

/// A table of people keyed by a token (local ids differ per site).
pub const PEOPLE_SCHEMA: &str =
    "CREATE TABLE person (id INT AUTO_INCREMENT PRIMARY KEY, token VARCHAR(40) NOT NULL UNIQUE, name VARCHAR(80) NOT NULL)";
/// [`PEOPLE_SCHEMA`]'s entity, between every pair of sites.
pub const PEOPLE_BOTH_WAYS: &str = r#"
[entities.person]
table = "person"
key = ["token"]

[[routes]]
from = ["*"]
to = ["*"]
entities = ["person"]
"#;

/// Builder input: site ids in stack order, entity and route TOML, schema SQL run at each site.
pub struct Spec<'a> {
    pub sites: &'a [&'a str],
    pub schema: &'a str,
    pub entities_and_routes: &'a str,
    /// `[apply] ref_wait_seconds`.
    pub ref_wait_seconds: u64,
    /// SQL run at site (index, id) after the schema and before `init`: history that exists
    /// before sitesync and is therefore not captured.
    pub seed: fn(usize, &str) -> String,
    /// Kafka of this federation (default: the stack's).
    pub kafka: Option<String>,
    /// Server URL per site, where not the stack's (a throwaway server of the test, say).
    pub servers: &'a [Option<String>],
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            sites: &["a", "b"],
            schema: "",
            entities_and_routes: "",
            ref_wait_seconds: 300,
            seed: |_, _| String::new(),
            kafka: None,
            servers: &[],
        }
    }
}

impl Federation {
    pub async fn new(test: &str, spec: Spec<'_>) -> Federation {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // The process id repeats across runs on a long-lived stack: a clock part keeps database
        // and topic names from meeting a previous run's leftovers.
        let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 100_000;
        let unique = format!("{}_{}_{}_{}", test, std::process::id() % 100_000, clock, n);
        let app_db = format!("t_{unique}");
        let control_db = format!("c_{unique}");
        let topic_prefix = format!("test.{unique}");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&unique);
        std::fs::create_dir_all(&dir).unwrap();

        let mut pools = HashMap::new();
        let mut servers = Vec::new();
        let mut toml = format!(
            "[federation]\nname = \"{test}\"\ntopic_prefix = \"{topic_prefix}\"\ndatabase = \"{app_db}\"\ncontrol_database = \"{control_db}\"\n\n\
             [kafka]\nbootstrap_servers = \"{}\"\n\n[apply]\nbatch_wait_ms = 2\nref_wait_seconds = {}\n\n[capture]\ncheckpoint_interval_ms = 200\nsnapshot_chunk_rows = 3\n\n",
            spec.kafka.clone().unwrap_or_else(kafka),
            spec.ref_wait_seconds
        );
        for (i, site) in spec.sites.iter().enumerate() {
            let server = spec.servers.get(i).cloned().flatten().unwrap_or_else(|| server_url(i));
            servers.push(server.clone());
            let pool =
                MySqlPoolOptions::new().max_connections(4).acquire_timeout(Duration::from_secs(10)).connect(&server).await.unwrap_or_else(
                    |e| panic!("site {site}: cannot connect to {server}: {e}. Is the local stack up? Run deploy/local/stack.sh up"),
                );
            exec(&pool, &format!("CREATE DATABASE `{app_db}` CHARACTER SET utf8mb4")).await;
            let pool = MySqlPoolOptions::new().max_connections(4).connect(&format!("{server}/{app_db}")).await.unwrap();
            for stmt in spec.schema.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
                exec(&pool, stmt).await;
            }
            let seed = (spec.seed)(i, site);
            if !seed.is_empty() {
                exec(&pool, &seed).await;
            }
            pools.insert(site.to_string(), pool);
            let server_id = 100_000 + (std::process::id() % 10_000) * 100 + n * 7 + i as u32;
            toml.push_str(&format!("[sites.{site}]\nmysql = \"{server}/{app_db}\"\nserver_id = {server_id}\n\n"));
        }
        toml.push_str(spec.entities_and_routes);
        let config_path = dir.join("sitesync.toml");
        std::fs::write(&config_path, toml).unwrap();
        let fed = Federation {
            name: test.to_string(),
            app_db,
            control_db,
            topic_prefix,
            sites: spec.sites.iter().map(|s| s.to_string()).collect(),
            config_path,
            dir,
            pools,
            children: Vec::new(),
            ended: Vec::new(),
            kafka: spec.kafka.clone().unwrap_or_else(kafka),
            own_password_only: false,
            site_env: HashMap::new(),
            servers,
        };
        for site in &fed.sites {
            let out = fed.command(site, &["init"]).output().unwrap();
            assert!(out.status.success(), "init at {site} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        fed
    }

    /// Gives `site` an HTTP listen address (a free loopback port) and returns it.
    pub fn listen(&self, site: &str) -> std::net::SocketAddr {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let header = format!("[sites.{site}]\n");
        let text = text.replacen(&header, &format!("{header}listen = \"{addr}\"\n"), 1);
        std::fs::write(&self.config_path, text).unwrap();
        addr
    }

    /// The variable holding `site`'s database password once [`Federation::own_password_only`].
    pub fn password_var(site: &str) -> String {
        format!("SITESYNC_TEST_PASSWORD_{}", site.to_uppercase())
    }

    /// From now on each site's URL takes its password from a variable of its own
    /// ([`Federation::password_var`]) that only that site's commands are given: a process that
    /// used another site's URL would stop naming the variable it lacks.
    pub fn own_password_only(&mut self) {
        let mut text = std::fs::read_to_string(&self.config_path).unwrap();
        for site in &self.sites {
            let header = format!("[sites.{site}]\nmysql = \"");
            let at = text.find(&header).unwrap_or_else(|| panic!("no URL of {site} in {}", self.config_path.display())) + header.len();
            let rest = &text[at..];
            let (scheme, after) = rest.split_once("://").expect("a URL");
            let (user, after) = after.split_once('@').expect("user@host");
            let user = user.split(':').next().unwrap().to_string();
            let replaced = format!("{scheme}://{user}:${{{}}}@{after}", Self::password_var(site));
            text = format!("{}{replaced}", &text[..at]);
        }
        std::fs::write(&self.config_path, text).unwrap();
        self.own_password_only = true;
    }

    /// A `sitesync` command for `site`.
    pub fn command(&self, site: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sitesync"));
        c.arg("--config").arg(&self.config_path).arg("--site").arg(site).args(args);
        c.env_remove("SITESYNC_CONFIG").env_remove("SITESYNC_SITE");
        if self.own_password_only {
            for s in &self.sites {
                c.env_remove(Self::password_var(s));
            }
            // The stack's root has no password: the site's own variable is set, empty.
            c.env(Self::password_var(site), "");
        }
        for (k, v) in self.site_env.get(site).into_iter().flatten() {
            c.env(k, v);
        }
        c
    }

    /// Gives `key=value` to `site`'s commands from now on (replacing an earlier value).
    pub fn set_site_env(&mut self, site: &str, key: &str, value: &str) {
        let vars = self.site_env.entry(site.to_string()).or_default();
        vars.retain(|(k, _)| k != key);
        vars.push((key.to_string(), value.to_string()));
    }

    /// Starts `sitesync <args>` at `site` in the background; logs go to the test's directory.
    pub fn start(&mut self, site: &str, args: &[&str]) -> usize {
        let log = self.dir.join(format!("{site}-{}-{}.log", args.join("-"), self.children.len()));
        let file = std::fs::File::create(&log).unwrap();
        let child = self.command(site, args).stdout(Stdio::from(file.try_clone().unwrap())).stderr(Stdio::from(file)).spawn().unwrap();
        self.children.push((log.display().to_string(), child));
        self.children.len() - 1
    }

    /// The process id of a background process.
    pub fn pid(&self, handle: usize) -> u32 {
        self.children[handle].1.id()
    }

    /// SIGKILL: no chance to flush or checkpoint.
    pub fn kill9(&mut self, handle: usize) {
        let child = &mut self.children[handle].1;
        child.kill().unwrap();
        child.wait().unwrap();
        self.ended.push(handle);
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, handle: usize) -> std::process::ExitStatus {
        self.ended.push(handle);
        let child = &mut self.children[handle].1;
        unsafe_sigterm(child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails the test if a background process died (with its log).
    pub fn assert_running(&mut self) {
        for (i, (log, child)) in self.children.iter_mut().enumerate() {
            if self.ended.contains(&i) {
                continue;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("sitesync exited with {status}; log {log}:\n{}", std::fs::read_to_string(&*log).unwrap_or_default());
            }
        }
    }

    pub fn pool(&self, site: &str) -> &MySqlPool {
        &self.pools[site]
    }

    pub async fn exec(&self, site: &str, sql: &str) {
        exec(self.pool(site), sql).await
    }

    /// Rows of `sql` as strings (NULL as "NULL"), for comparisons.
    pub async fn rows(&self, site: &str, sql: &str) -> Vec<Vec<String>> {
        rows(self.pool(site), sql).await
    }

    pub async fn scalar(&self, site: &str, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_string())).fetch_one(self.pool(site)).await.unwrap()
    }

    /// Waits until `check` returns true, failing with `what` and the logs after `timeout`.
    pub async fn wait_for<F, Fut>(&mut self, timeout: Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if check().await {
                return;
            }
            self.assert_running();
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("timed out after {timeout:?} waiting for: {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `sql` at `site` returns `expected` (rows of text), for up to a minute.
    pub async fn wait_rows(&mut self, site: &str, sql: &str, expected: &[&[&str]]) {
        let pool = self.pool(site).clone();
        let expected: Vec<Vec<String>> = expected.iter().map(|r| r.iter().map(|s| s.to_string()).collect()).collect();
        let what = format!("{site}: {sql} = {expected:?}");
        self.wait_for(Duration::from_secs(60), &what, || {
            let (pool, expected) = (pool.clone(), expected.clone());
            async move { rows(&pool, sql).await == expected }
        })
        .await;
    }

    /// Whether any sitesync log of this federation contains `needle`.
    pub fn logs_contain(&self, needle: &str) -> bool {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .any(|e| std::fs::read_to_string(e.path()).unwrap_or_default().contains(needle))
    }

    pub fn dump_logs(&self) {
        for (log, _) in &self.children {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("---- {log} (last 40 lines)\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }

    /// Kafka high watermark of `site`'s topic (the number of records it ever held).
    pub fn topic_records(&self, site: &str) -> i64 {
        self.topic_records_of(&format!("{}.{site}", self.topic_prefix))
    }

    /// Records in partition 0 of `topic`.
    pub fn topic_records_of(&self, topic: &str) -> i64 {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", &self.kafka).create().unwrap();
        let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap();
        high - low
    }

    /// Every record `topic` (partition 0) holds now, as (key, payload; None for a tombstone).
    pub fn topic_payloads_of(&self, topic: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{Message, Offset, TopicPartitionList};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .set("group.id", format!("test-reader-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(low)).unwrap();
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while (out.len() as i64) < high - low {
            assert!(std::time::Instant::now() < deadline, "reading {topic}: {} of {} records", out.len(), high - low);
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                out.push((m.key().unwrap_or_default().to_vec(), m.payload().map(<[u8]>::to_vec)));
            }
        }
        out
    }

    /// Table contents at `site`, ordered, every column as text (HEX for exactness).
    pub async fn table(&self, site: &str, table: &str, order_by: &str) -> Vec<Vec<String>> {
        self.rows(site, &format!("SELECT * FROM `{table}` ORDER BY {order_by}")).await
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A passed test's databases go (the stack's servers would otherwise grow by every run's);
        // a failed one's stay, to look at.
        if std::thread::panicking() {
            return;
        }
        let (servers, dbs) = (self.servers.clone(), [self.app_db.clone(), self.control_db.clone()]);
        // Drop runs inside the test's runtime: the cleanup gets a thread and a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async {
                for server in servers.iter().collect::<std::collections::BTreeSet<_>>() {
                    let pool = MySqlPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(3)).connect(server).await;
                    // A server of the test's own may be gone already: nothing to drop there.
                    let Ok(pool) = pool else { continue };
                    // Never wait long on a lock a killed process's connection still holds.
                    let _ = sqlx::raw_sql(AssertSqlSafe("SET SESSION lock_wait_timeout = 5".to_string())).execute(&pool).await;
                    for db in &dbs {
                        let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{db}`"))).execute(&pool).await;
                    }
                    pool.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}

/// Runs `sql` as an application does: a deadlock or lock wait with the applier is retried.
pub async fn exec_as_application(pool: &MySqlPool, sql: &str) {
    for attempt in 0.. {
        match sqlx::query(AssertSqlSafe(sql.to_string())).execute(pool).await {
            Ok(_) => return,
            Err(sqlx::Error::Database(e)) if attempt < 20 && matches!(e.code().as_deref(), Some("40001" | "HY000")) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

/// A command's stdout and stderr, for messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

pub async fn exec(pool: &MySqlPool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string())).execute(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub async fn rows(pool: &MySqlPool, sql: &str) -> Vec<Vec<String>> {
    let rows = sqlx::raw_sql(AssertSqlSafe(sql.to_string())).fetch_all(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    if let Ok(v) = r.try_get::<Option<String>, _>(i) {
                        return v.unwrap_or_else(|| "NULL".into());
                    }
                    if let Ok(v) = r.try_get::<Option<i64>, _>(i) {
                        return v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into());
                    }
                    if let Ok(v) = r.try_get::<Option<u64>, _>(i) {
                        return v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into());
                    }
                    if let Ok(v) = r.try_get::<Option<Vec<u8>>, _>(i) {
                        return v.map(|v| v.iter().map(|b| format!("{b:02X}")).collect()).unwrap_or_else(|| "NULL".into());
                    }
                    panic!("{sql}: column {i} has a type the harness cannot show; select it as text")
                })
                .collect()
        })
        .collect()
}

/// GET `path` from `addr`; the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// An HTTP answer: status, headers (names lower case), body.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.body))
    }
}

/// `method path` at `addr` with `headers` and `body`; panics if the server does not answer.
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> HttpAnswer {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let out = String::from_utf8_lossy(&out).to_string();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{method} {path}: no HTTP answer: {out}"));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).expect("a status line");
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string())).collect();
    HttpAnswer { status, headers, body: body.to_string() }
}

/// The value of the sample of `metric` whose labels contain every `label="value"` given.
pub fn metric(body: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
