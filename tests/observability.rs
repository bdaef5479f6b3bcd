//! Observability on the real stack: the live `/metrics` of running sites pass `promtool check
//! metrics`, the alert rules pass `promtool check rules` and their unit tests, and a real
//! Prometheus scraping two running sites answers every query of the Grafana dashboard with data.
//!
//! Needs `promtool` and `prometheus` on PATH (Debian package `prometheus`; `tests/run.sh` installs
//! it). A missing tool fails the test: nothing here skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Federation, Spec};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SCHEMA: &str =
    "CREATE TABLE person (id INT NOT NULL PRIMARY KEY, name VARCHAR(100) NOT NULL, n INT NOT NULL DEFAULT 0) ENGINE=InnoDB";

const TWO_WAY: &str = common::PERSON_TWO_WAY;

const WAIT: Duration = Duration::from_secs(60);

/// The metric families of DESIGN.md's contract, plus the other ones sitesync documents.
const FAMILIES: &[&str] = &[
    "sitesync_capture_events_total",
    "sitesync_capture_source_timestamp_seconds",
    "sitesync_apply_records_total",
    "sitesync_apply_lag_seconds",
    "sitesync_dead_letters",
    "sitesync_build_info",
    "sitesync_capture_transactions_total",
    "sitesync_errors_total",
    "sitesync_export_source_timestamp_seconds",
];

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------------------------
// Tools

/// Runs `promtool args...` (with `stdin` piped in when given); fails loudly if it is missing.
fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR")).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run promtool ({e}): install Debian's `prometheus` package (apt-get install -y prometheus; tests/run.sh does it)")
    });
    if let Some(text) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed with {}:\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus server of ours, killed when dropped (also when the test panics).
struct PrometheusServer {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl PrometheusServer {
    fn start(dir: &Path, scrape: &[(String, String)]) -> PrometheusServer {
        std::fs::create_dir_all(dir).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut targets = String::new();
        for (site, target) in scrape {
            targets.push_str(&format!("      - targets: [\"{target}\"]\n        labels: {{ site: {site} }}\n"));
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: sitesync\n    honor_labels: true\n    static_configs:\n{targets}",
            repo_path("deploy/prometheus/alerts.yml").display()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("prometheus.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run prometheus ({e}): install Debian's `prometheus` package (apt-get install -y prometheus; tests/run.sh does it)")
            });
        PrometheusServer { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the server's log if it died.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("prometheus exited with {status}; log:\n{}", self.log());
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.assert_running();
            if let Ok((200, _)) = http_get(&self.addr, "/-/ready").await {
                return;
            }
            assert!(Instant::now() < deadline, "prometheus not ready within {WAIT:?}; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// GET of an API path; the JSON answer (whatever its status: errors are JSON too).
    async fn api(&self, path_and_query: &str) -> Value {
        let (status, body) =
            http_get(&self.addr, path_and_query).await.unwrap_or_else(|e| panic!("GET {path_and_query} from prometheus: {e}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path_and_query}: HTTP {status}, not JSON ({e}): {body}"))
    }

    /// An instant query: panics unless Prometheus accepts it; returns the result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let answer = self.api(&format!("/api/v1/query?query={}", url_encode(promql))).await;
        assert_eq!(answer["status"], "success", "prometheus refused `{promql}`: {answer}");
        match &answer["data"]["result"] {
            Value::Array(series) => series.clone(),
            // A scalar or string result is one value.
            other => vec![other.clone()],
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP and the exposition format, by hand (std + tokio only)

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A minimal HTTP/1.1 GET: status and body (Content-Length, chunked or read to close).
async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("GET {path} from {addr}: {what}"));
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await??;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).ok_or_else(|| bad("no status line"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if name == "content-length" {
            length = value.parse::<usize>().ok();
        }
    }
    if chunked {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| bad("truncated chunk size"))?;
            let size_text = String::from_utf8_lossy(&rest[..eol]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 {
                return Err(bad("truncated chunk"));
            }
            decoded.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = decoded;
    } else if let Some(n) = length {
        if body.len() < n {
            return Err(bad("truncated body"));
        }
        body.truncate(n);
    }
    Ok((status, String::from_utf8(body).map_err(|_| bad("body is not UTF-8"))?))
}

/// One sample of the Prometheus text format.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut labels = Vec::new();
        let mut rest = &line[name_end..];
        if rest.starts_with('{') {
            let mut chars = rest.char_indices().skip(1).peekable();
            let end;
            loop {
                // label name
                let mut key = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c == '=' || c == '}' {
                        break;
                    }
                    if c != ',' && !c.is_whitespace() {
                        key.push(c);
                    }
                    chars.next();
                }
                match chars.next() {
                    Some((i, '}')) => {
                        end = i + 1;
                        break;
                    }
                    Some((_, '=')) => {}
                    _ => panic!("bad exposition line: {line}"),
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "bad exposition line: {line}");
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => panic!("bad exposition line: {line}"),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => panic!("bad exposition line: {line}"),
                    }
                }
                labels.push((key, value));
            }
            rest = &rest[end..];
        }
        let value = rest.split_whitespace().next().unwrap_or_else(|| panic!("no value: {line}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in: {line}")),
        };
        samples.push(Sample { name, labels, value });
    }
    samples
}

/// Sum of the samples named `name` whose labels include `labels`; None when there is none.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse_exposition(text)
        .into_iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v)))
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

async fn scrape(addr: &str) -> Option<String> {
    match http_get(addr, "/metrics").await {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// A federation doing some work

/// Two sites `a` and `b`, each `sitesync run` with its own `listen`, after inserts, updates and
/// deletes in both directions and one dead letter at `b` (a CHECK constraint only `b` has).
/// Returns the federation and (site, listen address) of each site.
async fn busy_federation(test: &str) -> (Federation, Vec<(String, String)>) {
    let mut fed = Federation::new(test, Spec { sites: &["a", "b"], schema: SCHEMA, entities_and_routes: TWO_WAY, ..Spec::default() }).await;
    let sites: Vec<(String, String)> = fed.sites.iter().map(|s| (s.clone(), format!("127.0.0.1:{}", free_port()))).collect();
    let mut toml = std::fs::read_to_string(&fed.config_path).unwrap();
    for (site, addr) in &sites {
        let header = format!("[sites.{site}]\n");
        assert!(toml.contains(&header), "harness config lacks {header}");
        toml = toml.replace(&header, &format!("{header}listen = \"{addr}\"\n"));
    }
    // Continuous verification, so that its panels have data.
    toml.push_str("\n[verify]\ninterval = \"5s\"\n");
    // An export stream at a, so that the export panel has data.
    toml.push_str("\n[export]\nentities = [\"person\"]\nsites = [\"a\"]\n");
    std::fs::write(&fed.config_path, toml).unwrap();
    fed.exec("b", "ALTER TABLE person ADD CONSTRAINT n_small CHECK (n < 1000)").await;

    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    for (site, addr) in &sites {
        let addr = addr.clone();
        fed.wait_for(WAIT, &format!("{site} ready on {addr}"), || {
            let addr = addr.clone();
            async move {
                let ready = matches!(http_get(&addr, "/readyz").await, Ok((200, _)));
                let healthy = matches!(http_get(&addr, "/healthz").await, Ok((200, _)));
                ready && healthy
            }
        })
        .await;
    }

    fed.exec("a", "INSERT INTO person (id, name, n) VALUES (1, 'Alice', 1), (2, 'Bob', 2), (3, 'Carol', 3)").await;
    fed.exec("a", "UPDATE person SET n = n + 10 WHERE id < 3").await;
    fed.exec("a", "DELETE FROM person WHERE id = 3").await;
    // b refuses this one (n < 1000 there): a dead letter at b, an apply error.
    fed.exec("a", "INSERT INTO person (id, name, n) VALUES (4, 'Too big for b', 5000)").await;
    fed.exec("b", "INSERT INTO person (id, name, n) VALUES (100, 'From b', 7)").await;

    let (a, b) = (sites[0].1.clone(), sites[1].1.clone());
    fed.wait_for(WAIT, "applied records both ways and one dead letter at b", || {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let (Some(ma), Some(mb)) = (scrape(&a).await, scrape(&b).await) else { return false };
            let applied = |text: &str, site: &str, origin: &str| {
                metric(text, "sitesync_apply_records_total", &[("site", site), ("origin", origin), ("outcome", "applied")])
            };
            applied(&mb, "b", "a") >= Some(5.0)
                && applied(&ma, "a", "b") >= Some(1.0)
                && metric(&mb, "sitesync_dead_letters", &[("site", "b")]) == Some(1.0)
                && metric(&ma, "sitesync_capture_events_total", &[("site", "a")]) >= Some(7.0)
                && metric(&mb, "sitesync_capture_events_total", &[("site", "b")]) >= Some(1.0)
        }
    })
    .await;
    assert_eq!(fed.rows("a", "SELECT id, name FROM person WHERE id = 100").await, vec![vec!["100".to_string(), "From b".to_string()]]);
    assert_eq!(
        fed.rows("b", "SELECT id FROM person ORDER BY id").await,
        vec![vec!["1".to_string()], vec!["2".to_string()], vec!["100".to_string()]]
    );
    (fed, sites)
}

// ---------------------------------------------------------------------------------------------
// The dashboard

fn dashboard() -> Value {
    let path = repo_path("grafana/sitesync.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested.iter());
        }
    }
    out
}

/// (panel title, expr) of every query target.
fn panel_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in all_panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((p["title"].as_str().unwrap_or("?").to_string(), expr.to_string()));
            }
        }
    }
    out
}

/// The dashboard's variables and Grafana's interval macros replaced by concrete values.
fn substitute(dashboard: &Value, expr: &str) -> String {
    let mut q = expr.replace("$__rate_interval", "10s").replace("${__rate_interval}", "10s");
    for (var, value) in [("__interval", "2s"), ("__range", "5m")] {
        q = q.replace(&format!("${{{var}}}"), value).replace(&format!("${var}"), value);
    }
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap();
        for form in [format!("${{{name}:regex}}"), format!("${{{name}}}"), format!("[[{name}]]"), format!("${name}")] {
            q = q.replace(&form, ".*");
        }
    }
    assert!(!q.contains('$'), "unknown variable left in `{q}` (from `{expr}`)");
    q
}

// ---------------------------------------------------------------------------------------------
// Tests

/// (a) A live scrape after replication passes `promtool check metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_check_metrics() {
    let (mut fed, sites) = busy_federation("obs_lint").await;
    let mut seen = std::collections::BTreeSet::new();
    for (site, addr) in &sites {
        let (status, body) = http_get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200, "/metrics of {site}");
        for family in FAMILIES {
            if body.contains(&format!("# TYPE {family} ")) {
                seen.insert(*family);
            }
        }
        assert_eq!(metric(&body, "sitesync_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0), "{site}: {body}");
        let out = promtool(&["check", "metrics"], Some(&body));
        assert_success(&format!("promtool check metrics on the /metrics of {site}:\n{body}\n"), &out);
        let complaints = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(complaints.trim().is_empty(), "promtool check metrics complains about {site}'s metrics:\n{complaints}");
    }
    let missing: Vec<_> = FAMILIES.iter().filter(|f| !seen.contains(*f)).collect();
    assert!(missing.is_empty(), "metric families never exported by either site: {missing:?}");
    assert_eq!(http_get(&sites[0].1, "/nothing-here").await.unwrap().0, 404);
    fed.assert_running();
}

/// Every metric sitesync defines, each with one series (labelled metrics only appear once used),
/// passes `promtool check metrics`: the families that a short run leaves empty are linted too.
#[test]
fn every_defined_metric_passes_promtool_check_metrics() {
    let m = sitesync::telemetry::Metrics::new();
    m.capture_events.with_label_values(&["a", "person", "c"]).inc();
    m.capture_source_timestamp.with_label_values(&["a"]).set(1.7e9);
    m.apply_records.with_label_values(&["a", "b", "person", "applied"]).inc();
    m.apply_lag.with_label_values(&["a", "b"]).set(0.5);
    m.dead_letters.with_label_values(&["a"]).set(0);
    m.capture_transactions.with_label_values(&["a", "published"]).inc();
    m.errors.with_label_values(&["a", "database"]).inc();
    m.component_running.with_label_values(&["a", "capture"]).set(1);
    m.capture_delay.with_label_values(&["a"]).observe(0.3);
    m.capture_publish_duration.with_label_values(&["a"]).observe(0.004);
    m.apply_latency.with_label_values(&["a", "b"]).observe(1.2);
    m.apply_batch_duration.with_label_values(&["a"]).observe(0.02);
    m.apply_batch_records.with_label_values(&["a"]).observe(12.0);
    m.export_source_timestamp.with_label_values(&["a"]).set(1.7e9);
    let text = m.render();
    for family in FAMILIES {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} is not defined:\n{text}");
    }
    let out = promtool(&["check", "metrics"], Some(&text));
    assert_success(&format!("promtool check metrics on:\n{text}\n"), &out);
    let complaints = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(complaints.trim().is_empty(), "promtool check metrics complains:\n{complaints}");
}

/// (b) The alert rules and the example scrape configuration are valid, and the rules' unit tests pass.
#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let out = promtool(&["check", "rules", "deploy/prometheus/alerts.yml"], None);
    assert_success("promtool check rules deploy/prometheus/alerts.yml", &out);
    let out = promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"], None);
    assert_success("promtool test rules deploy/prometheus/alerts_test.yml", &out);
    let out = promtool(&["check", "config", "deploy/prometheus/prometheus.yml"], None);
    assert_success("promtool check config deploy/prometheus/prometheus.yml", &out);

    // Every alert of alerts.yml has a unit test that expects it to fire.
    let rules = std::fs::read_to_string(repo_path("deploy/prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(repo_path("deploy/prometheus/alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(str::trim).collect();
    assert!(alerts.len() >= 4, "alerts.yml: {alerts:?}");
    for alert in alerts {
        let tested = tests.lines().filter(|l| l.trim() == format!("alertname: {alert}")).count();
        assert!(tested >= 2, "alerts_test.yml must test {alert} both firing and not firing");
    }
}

/// (c) A real Prometheus scrapes two running sites; every query of the Grafana dashboard parses
/// and returns data, the dashboard's variables find the sites, and the alert rules evaluate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_answers_every_dashboard_query_with_data() {
    let dash = dashboard();
    let exprs = panel_exprs(&dash);
    assert!(exprs.len() >= 8, "dashboard has only {} queries", exprs.len());

    let (mut fed, sites) = busy_federation("obs_prom").await;
    let mut prom = PrometheusServer::start(&fed.dir.join("prometheus"), &sites);
    prom.wait_ready().await;

    // Both targets scraped.
    let deadline = Instant::now() + WAIT;
    loop {
        prom.assert_running();
        let up = prom.query("up{job=\"sitesync\"} == 1").await;
        if up.len() == sites.len() {
            break;
        }
        if Instant::now() > deadline {
            fed.dump_logs();
            panic!("prometheus did not scrape both sites: {up:?}; targets: {}", prom.api("/api/v1/targets").await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every panel query: accepted at once, with data once there are enough samples.
    for (title, expr) in &exprs {
        let q = substitute(&dash, expr);
        let deadline = Instant::now() + WAIT;
        loop {
            let series = prom.query(&q).await;
            if !series.is_empty() {
                break;
            }
            fed.assert_running();
            prom.assert_running();
            assert!(Instant::now() < deadline, "panel `{title}`: `{q}` returned no series within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // The variables: site from any sitesync series, job from build info.
    let sites_found = prom.api(&format!("/api/v1/label/site/values?match[]={}", url_encode("{__name__=~\"sitesync_.+\"}"))).await;
    for (site, _) in &sites {
        assert!(
            sites_found["data"].as_array().is_some_and(|v| v.iter().any(|s| s == site.as_str())),
            "variable `site` would not offer {site}: {sites_found}"
        );
    }
    let jobs = prom.api(&format!("/api/v1/label/job/values?match[]={}", url_encode("sitesync_build_info"))).await;
    assert_eq!(jobs["data"], serde_json::json!(["sitesync"]), "variable `job`: {jobs}");

    // The alert rules load and evaluate without error against the live series; the new dead
    // letter at b is reported.
    let deadline = Instant::now() + WAIT;
    loop {
        let rules = prom.api("/api/v1/rules").await;
        let all: Vec<&Value> =
            rules["data"]["groups"].as_array().into_iter().flatten().flat_map(|g| g["rules"].as_array().into_iter().flatten()).collect();
        assert!(all.len() >= 4, "alert rules not loaded: {rules}");
        let bad: Vec<&&Value> = all.iter().filter(|r| r["health"] == "err").collect();
        assert!(bad.is_empty(), "alert rules fail on live data: {bad:?}");
        let evaluated = all.iter().all(|r| r["health"] == "ok");
        let alerts = prom.api("/api/v1/alerts").await;
        let active: Vec<(String, String)> = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| (a["labels"]["alertname"].as_str().unwrap_or("").to_string(), a["labels"]["site"].as_str().unwrap_or("").to_string()))
            .collect();
        if evaluated && active.contains(&("SitesyncDeadLettersGrowing".to_string(), "b".to_string())) {
            assert!(
                !active.iter().any(|(name, _)| name == "SitesyncTargetDown" || name == "SitesyncCaptureStalled"),
                "healthy sites raise alerts: {alerts}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "rules not evaluated or SitesyncDeadLettersGrowing not active for b: {rules}\n{alerts}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    fed.assert_running();
    prom.assert_running();
}

/// (d) The dashboard file is importable into Grafana 10 and shows every metric of the contract.
#[test]
fn dashboard_is_importable_and_covers_the_metrics() {
    let dash = dashboard();
    let ds = "${DS_PROMETHEUS}";
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS" && i["type"] == "datasource" && i["pluginId"] == "prometheus"),
        "__inputs must declare DS_PROMETHEUS, a prometheus data source: {inputs:?}"
    );
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "uid");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    assert!(dash["schemaVersion"].as_i64().unwrap_or(0) >= 36, "schemaVersion of Grafana 10");
    assert!(dash["id"].is_null(), "id must be null in a file meant for import");

    let vars = dash["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("variable {name} missing"));
    let dsv = var("DS_PROMETHEUS");
    assert_eq!((dsv["type"].as_str(), dsv["query"].as_str()), (Some("datasource"), Some("prometheus")));
    let site = var("site");
    assert_eq!(site["type"], "query");
    assert!(site["definition"].as_str().is_some_and(|d| d.starts_with("label_values(") && d.ends_with(", site)")), "{site}");
    assert_eq!(site["datasource"]["uid"], ds);
    assert_eq!(site["includeAll"], true);

    let mut ids = std::collections::HashSet::new();
    for p in all_panels(&dash) {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(ids.insert(p["id"].as_i64().expect("panel id")), "duplicate panel id in `{title}`");
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_i64(), "panel `{title}`: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], ds, "panel `{title}` data source");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel `{title}` has no targets"));
        assert!(!targets.is_empty(), "panel `{title}` has no targets");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], ds, "panel `{title}` target data source");
            assert!(t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "panel `{title}` has an empty query");
        }
    }
    let all: String = panel_exprs(&dash).into_iter().map(|(_, e)| e + "\n").collect();
    for family in FAMILIES.iter().chain(&["up"]) {
        assert!(all.contains(family), "no panel shows {family}");
    }
}
