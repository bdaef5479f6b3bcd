//! Observability: metric names (the contract of DESIGN.md), their registry, the health flags,
//! behind `/metrics`, `/healthz` and `/readyz` (served by `crate::http`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// `outcome` of `sitesync_apply_records_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Written.
    Applied,
    /// Deliberately not written (a duplicate, on_delete = ignore, nothing to do).
    Skipped,
    /// Not written: the local row holds a later version (last writer wins).
    ConflictLost,
    /// Stored as a dead letter.
    DeadLetter,
    /// Dropped: its transaction's first record never arrived (a capture bug).
    Dropped,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Skipped => "skipped",
            Outcome::ConflictLost => "conflict_lost",
            Outcome::DeadLetter => "dead_letter",
            Outcome::Dropped => "dropped",
        }
    }
}

/// `kind` of `sitesync_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A database error that is retried.
    Database,
    /// A Kafka error that is retried.
    Kafka,
    /// A value capture could not decode exactly (its entity stopped).
    Decode,
    /// A transaction the local database refused (it became a dead letter).
    Apply,
    /// Records that break the transaction framing.
    Protocol,
    /// Kafka refused this site's login.
    KafkaAuthentication,
    /// Kafka's ACLs refused this site's user an operation.
    KafkaAuthorization,
    /// The TLS handshake with Kafka failed.
    KafkaTls,
}

impl ErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Database => "database",
            ErrorKind::Kafka => "kafka",
            ErrorKind::Decode => "decode",
            ErrorKind::Apply => "apply",
            ErrorKind::Protocol => "protocol",
            ErrorKind::KafkaAuthentication => "kafka_authentication",
            ErrorKind::KafkaAuthorization => "kafka_authorization",
            ErrorKind::KafkaTls => "kafka_tls",
        }
    }

    /// The kind of a Kafka refusal.
    pub fn of_refusal(r: &crate::kafka::Refusal) -> Self {
        match r {
            crate::kafka::Refusal::Authentication(_) => ErrorKind::KafkaAuthentication,
            crate::kafka::Refusal::Authorization(_) => ErrorKind::KafkaAuthorization,
            crate::kafka::Refusal::Tls(_) => ErrorKind::KafkaTls,
        }
    }
}

/// `component` of `sitesync_component_running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// Binlog to Kafka.
    Capture,
    /// Kafka to the local database.
    Apply,
    /// The export stream (`[export]`): the binlog to the Debezium-shaped export topics.
    Export,
}

impl Component {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Capture => "capture",
            Component::Apply => "apply",
            Component::Export => "export",
        }
    }
}

/// Every metric sitesync exports. Names and labels of the first six are DESIGN.md's contract.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `sitesync_capture_events_total{site,entity,op}`: row changes published.
    pub capture_events: IntCounterVec,
    /// `sitesync_capture_source_timestamp_seconds{site}`: commit time of the last captured transaction
    /// (the last binlog heartbeat while the source is idle, so its age means "capture is behind").
    pub capture_source_timestamp: GaugeVec,
    /// `sitesync_apply_records_total{site,origin,entity,outcome}`.
    pub apply_records: IntCounterVec,
    /// `sitesync_apply_lag_seconds{site,origin}`.
    pub apply_lag: GaugeVec,
    /// `sitesync_dead_letters{site}`.
    pub dead_letters: IntGaugeVec,
    /// `sitesync_build_info{version}`.
    pub build_info: IntGaugeVec,
    /// `sitesync_capture_transactions_total{site,kind}`: binlog transactions read, by kind.
    pub capture_transactions: IntCounterVec,
    /// `sitesync_errors_total{site,kind}`: errors by kind (database, kafka, decode, apply).
    pub errors: IntCounterVec,
    /// `sitesync_component_running{site,component}`: 1 while `capture` / `apply` runs (the
    /// `/readyz` flags as a metric, so that Prometheus sees readiness); 0 while it retries.
    pub component_running: IntGaugeVec,
    /// `sitesync_capture_delay_seconds{site}`: wall clock minus commit time when capture reads a
    /// transaction's commit (how far behind the binlog capture reads). Binlog timestamps are whole
    /// seconds, so values carry up to 1 s of rounding.
    pub capture_delay: HistogramVec,
    /// `sitesync_capture_publish_duration_seconds{site}`: from handing a record to the Kafka
    /// producer until Kafka acknowledged it.
    pub capture_publish_duration: HistogramVec,
    /// `sitesync_apply_latency_seconds{site,origin}`: end to end, origin commit to local commit,
    /// once per source transaction applied (duplicates not counted).
    pub apply_latency: HistogramVec,
    /// `sitesync_apply_batch_duration_seconds{site}`: one local apply transaction, begin to commit.
    pub apply_batch_duration: HistogramVec,
    /// `sitesync_apply_batch_records{site}`: records per local apply transaction.
    pub apply_batch_records: HistogramVec,
    /// `sitesync_capture_entity_stopped{site,entity}`: 1 while the entity's capture is stopped
    /// alone (its table's rows could not be read; see `control::stopped`), else 0.
    pub capture_entity_stopped: IntGaugeVec,
    /// `sitesync_verify_rows_total{site,origin,entity}`: rows of the origin compared by
    /// continuous verification.
    pub verify_rows: IntCounterVec,
    /// `sitesync_verify_differences{site,origin,entity}`: differences that remained after the
    /// last verification of the pair (0 once repaired).
    pub verify_differences: IntGaugeVec,
    /// `sitesync_verify_repaired_total{site,origin,entity}`: rows a repair healed.
    pub verify_repaired: IntCounterVec,
    /// `sitesync_verify_last_pass_timestamp_seconds{site}`: when the last complete pass over
    /// every origin and entity ended.
    pub verify_last_pass: GaugeVec,
    /// `sitesync_export_source_timestamp_seconds{site}`: commit time of the last transaction the
    /// export stream (`[export]`) read; it trails capture's while the export catches up.
    pub export_source_timestamp: GaugeVec,
}

impl Metrics {
    /// Counts one error of `kind` at `site`.
    pub fn error(&self, site: &str, kind: ErrorKind) {
        self.errors.with_label_values(&[site, kind.as_str()]).inc();
    }

    /// `n` records of `origin`'s `entity` applied at `site` with `outcome`.
    pub fn records(&self, site: &str, origin: &str, entity: &str, outcome: Outcome, n: u64) {
        self.apply_records.with_label_values(&[site, origin, entity, outcome.as_str()]).inc_by(n);
    }

    /// Whether `component` runs at `site`.
    pub fn running(&self, site: &str, component: Component, running: bool) {
        self.component_running.with_label_values(&[site, component.as_str()]).set(running as i64);
    }

    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("registered once");
            h
        };
        // Seconds, from a fast local commit to an origin that was down for an hour.
        const DELAY: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
        const DURATION: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        const RECORDS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0];
        let m = Metrics {
            capture_events: counter("sitesync_capture_events_total", "Row changes published to Kafka.", &["site", "entity", "op"]),
            capture_source_timestamp: gauge("sitesync_capture_source_timestamp_seconds", "Commit time of the last transaction captured, seconds since the epoch; while the source is idle, the time of its last binlog heartbeat.", &["site"]),
            apply_records: counter("sitesync_apply_records_total", "Records consumed by the applier, by outcome (applied, skipped, conflict_lost, dead_letter; dropped: a record whose transaction's start never arrived, a bug to report).", &["site", "origin", "entity", "outcome"]),
            apply_lag: gauge("sitesync_apply_lag_seconds", "How far this site's applied state is behind the origin's commits; 0 when caught up.", &["site", "origin"]),
            dead_letters: int_gauge("sitesync_dead_letters", "Dead letters waiting.", &["site"]),
            build_info: int_gauge("sitesync_build_info", "Always 1; the version label says which sitesync runs.", &["version"]),
            capture_transactions: counter("sitesync_capture_transactions_total", "Binlog transactions read by capture, by kind (published, echo, unrelated).", &["site", "kind"]),
            errors: counter("sitesync_errors_total", "Errors by kind (database, kafka, decode, apply, protocol: records that break the transaction framing).", &["site", "kind"]),
            component_running: int_gauge("sitesync_component_running", "1 while the component (capture, apply, export) runs, 0 while it is down or retrying.", &["site", "component"]),
            capture_delay: histogram("sitesync_capture_delay_seconds", "Wall clock minus commit time when capture reads a transaction's commit.", &["site"], DELAY),
            capture_publish_duration: histogram("sitesync_capture_publish_duration_seconds", "Time from handing a record to the Kafka producer until Kafka acknowledged it.", &["site"], DURATION),
            apply_latency: histogram("sitesync_apply_latency_seconds", "Origin commit to local commit, per source transaction applied.", &["site", "origin"], DELAY),
            apply_batch_duration: histogram("sitesync_apply_batch_duration_seconds", "Duration of one local apply transaction, begin to commit.", &["site"], DURATION),
            apply_batch_records: histogram("sitesync_apply_batch_records", "Records per local apply transaction.", &["site"], RECORDS),
            capture_entity_stopped: int_gauge("sitesync_capture_entity_stopped", "1 while the entity's capture is stopped alone (its rows could not be read), until `sitesync resume` catches it up.", &["site", "entity"]),
            verify_rows: counter("sitesync_verify_rows_total", "Rows of the origin compared by continuous verification.", &["site", "origin", "entity"]),
            verify_differences: int_gauge("sitesync_verify_differences", "Differences with the origin left after the last verification of the entity (0 when equal or repaired).", &["site", "origin", "entity"]),
            verify_repaired: counter("sitesync_verify_repaired_total", "Rows healed by verification's repairs.", &["site", "origin", "entity"]),
            verify_last_pass: gauge("sitesync_verify_last_pass_timestamp_seconds", "End of the last complete verification pass over every origin and entity, seconds since the epoch.", &["site"]),
            export_source_timestamp: gauge("sitesync_export_source_timestamp_seconds", "Commit time of the last transaction the export stream ([export]) read, seconds since the epoch; it trails capture's while the export catches up.", &["site"]),
            registry,
        };
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

/// One series of a metric: its labels and value.
pub struct Series {
    /// Label name -> value.
    pub labels: std::collections::HashMap<String, String>,
    /// The counter's or gauge's value.
    pub value: f64,
}

impl Metrics {
    /// Every series of `collector` (read without creating any: `with_label_values` would
    /// export a zero for a series nobody reports).
    pub fn series(collector: &dyn prometheus::core::Collector) -> Vec<Series> {
        let mut out = Vec::new();
        for family in collector.collect() {
            for m in family.get_metric() {
                let labels = m.get_label().iter().map(|l| (l.name().to_string(), l.value().to_string())).collect();
                let value = if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                };
                out.push(Series { labels, value });
            }
        }
        out
    }

    /// Records applied at `site`, by origin, since the process started.
    pub fn applied_by_origin(&self, site: &str) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for s in Self::series(&self.apply_records) {
            if s.labels.get("site").map(String::as_str) == Some(site) && s.labels.get("outcome").map(String::as_str) == Some("applied") {
                *out.entry(s.labels.get("origin").cloned().unwrap_or_default()).or_insert(0) += s.value as u64;
            }
        }
        out
    }

    /// `sitesync_apply_lag_seconds` of `site`, by origin (only origins that reported one).
    pub fn lag_by_origin(&self, site: &str) -> std::collections::BTreeMap<String, f64> {
        Self::series(&self.apply_lag)
            .into_iter()
            .filter(|s| s.labels.get("site").map(String::as_str) == Some(site))
            .map(|s| (s.labels.get("origin").cloned().unwrap_or_default(), s.value))
            .collect()
    }

    /// `sitesync_capture_source_timestamp_seconds` of `site`, if capture reported one.
    pub fn source_timestamp(&self, site: &str) -> Option<f64> {
        Self::of_site(&self.capture_source_timestamp, site)
    }

    /// `sitesync_export_source_timestamp_seconds` of `site`, if the export stream reported one.
    pub fn export_timestamp(&self, site: &str) -> Option<f64> {
        Self::of_site(&self.export_source_timestamp, site)
    }

    /// Whether `component` reported itself running at `site`.
    pub fn is_running(&self, site: &str, component: Component) -> bool {
        Self::series(&self.component_running).into_iter().any(|s| {
            s.labels.get("site").map(String::as_str) == Some(site)
                && s.labels.get("component").map(String::as_str) == Some(component.as_str())
                && s.value == 1.0
        })
    }

    /// The value of a per-site gauge, if `site` has one.
    fn of_site(gauge: &GaugeVec, site: &str) -> Option<f64> {
        Self::series(gauge).into_iter().find(|s| s.labels.get("site").map(String::as_str) == Some(site)).map(|s| s.value)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Health flags set by the running components, and the probe of the site's database and Kafka,
/// read by `/readyz`.
#[derive(Default)]
pub struct Health {
    /// Capture is expected to run in this process.
    pub capture_enabled: AtomicBool,
    /// Capture is connected and streaming.
    pub capture_running: AtomicBool,
    /// Apply is expected to run in this process.
    pub apply_enabled: AtomicBool,
    /// Apply is consuming and its database answers.
    pub apply_running: AtomicBool,
    /// Probes the site's database and Kafka on `/readyz` (set once by `sitesync run`; without
    /// it, readiness is the flags alone).
    pub probe: std::sync::OnceLock<ReadinessProbe>,
    /// Entities whose capture stopped alone, with why: `/readyz` stays ready (the others
    /// replicate) and lists them.
    pub stopped_entities: std::sync::Mutex<Vec<String>>,
    /// Why the export stream (`[export]`) last stopped, and when (ms), until it streams again:
    /// it does not make the site unready (replication goes on), the console shows it.
    pub export_error: std::sync::Mutex<Option<(i64, String)>>,
}

impl Health {
    /// Ready when every enabled component runs (the flags alone; see [`Health::check_ready`]).
    pub fn ready(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        if self.capture_enabled.load(Ordering::Relaxed) && !self.capture_running.load(Ordering::Relaxed) {
            missing.push("capture not running");
        }
        if self.apply_enabled.load(Ordering::Relaxed) && !self.apply_running.load(Ordering::Relaxed) {
            missing.push("apply not running");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join(", "))
        }
    }

    /// Gives `/readyz` its probe of the database and Kafka of `site` (first call wins).
    pub fn set_probe(&self, probe: ReadinessProbe) {
        let _ = self.probe.set(probe);
    }

    /// What `/readyz` answers: every enabled component runs, and (with a probe) the site's
    /// database answers `SELECT 1` and Kafka answers a metadata request, each within
    /// [`ReadinessProbe::TIMEOUT`]; probe results are reused for [`ReadinessProbe::CACHE`].
    pub async fn check_ready(&self) -> Result<(), String> {
        let flags = self.ready();
        let probed = match self.probe.get() {
            Some(p) => p.check().await,
            None => Ok(()),
        };
        match (flags, probed) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(format!("{a}, {b}")),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }
}

/// `/readyz`'s own look at what the components depend on: the site's database and Kafka.
/// The component flags only change when a component notices a failure (an idle applier would
/// not notice its database is gone); the probe asks both every time, with short timeouts.
pub struct ReadinessProbe {
    site: String,
    mysql: crate::config::Secret,
    kafka: crate::config::KafkaConfig,
    topic: String,
    group: String,
    state: tokio::sync::Mutex<ProbeState>,
}

#[derive(Default)]
struct ProbeState {
    conn: Option<mysql_async::Conn>,
    consumer: Option<Arc<rdkafka::consumer::BaseConsumer<crate::kafka::Reporting>>>,
    last: Option<(std::time::Instant, Result<(), String>)>,
}

impl ReadinessProbe {
    /// How long the database and Kafka may each take to answer.
    pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
    /// How long one probe result is reused (`/readyz` may be polled often).
    pub const CACHE: std::time::Duration = std::time::Duration::from_secs(1);

    /// The probe of `site`'s database and of the federation's Kafka (`site` must exist).
    pub fn new(config: &crate::config::Config, site: &str) -> Self {
        ReadinessProbe {
            site: site.to_string(),
            mysql: config.sites[site].mysql.clone(),
            kafka: config.kafka.clone(),
            topic: config.topic_of(site),
            group: crate::kafka::group_of(config, site, "readyz"),
            state: tokio::sync::Mutex::new(ProbeState::default()),
        }
    }

    /// Ok when the database and Kafka both answer; otherwise what does not.
    pub async fn check(&self) -> Result<(), String> {
        let mut state = self.state.lock().await;
        if let Some((at, result)) = &state.last {
            if at.elapsed() < Self::CACHE {
                return result.clone();
            }
        }
        let ProbeState { conn, consumer, .. } = &mut *state;
        let (db, kafka) = tokio::join!(self.database(conn), self.kafka(consumer));
        let result = match (db, kafka) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(format!("{a}, {b}")),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if let Err(why) = &result {
            tracing::debug!(site = %self.site, why = %why, "not ready");
        }
        state.last = Some((std::time::Instant::now(), result.clone()));
        result
    }

    async fn database(&self, conn: &mut Option<mysql_async::Conn>) -> Result<(), String> {
        use mysql_async::prelude::Queryable;
        if let Some(c) = conn.as_mut() {
            if let Ok(Ok(())) = tokio::time::timeout(Self::TIMEOUT, c.query_drop("SELECT 1")).await {
                return Ok(());
            }
            *conn = None;
        }
        // Never the URL in a message: it holds the password.
        let dsn = crate::mysql::dsn::Dsn::parse(self.mysql.expose())
            .map_err(|e| format!("database unreachable: sites.{}.mysql is not usable: {e}", self.site))?;
        let attempt = async {
            let mut c = crate::mysql::dsn::connect(&dsn).await?;
            c.query_drop("SELECT 1").await?;
            Ok::<_, mysql_async::Error>(c)
        };
        match tokio::time::timeout(Self::TIMEOUT, attempt).await {
            Ok(Ok(c)) => {
                *conn = Some(c);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("database unreachable: {e}")),
            Err(_) => Err(format!("database unreachable: no answer within {} s", Self::TIMEOUT.as_secs())),
        }
    }

    async fn kafka(&self, consumer: &mut Option<Arc<rdkafka::consumer::BaseConsumer<crate::kafka::Reporting>>>) -> Result<(), String> {
        if let Some(r) = crate::kafka::refusal() {
            return Err(format!("kafka refused: {r}"));
        }
        let client = match consumer {
            Some(c) => c.clone(),
            None => {
                let config = crate::kafka::consumer_config(&self.kafka, &self.group).map_err(|e| format!("kafka unreachable: {e}"))?;
                let c: rdkafka::consumer::BaseConsumer<crate::kafka::Reporting> =
                    crate::kafka::create(&config, "creating the readiness probe").map_err(|e| format!("kafka unreachable: {e}"))?;
                let c = Arc::new(c);
                *consumer = Some(c.clone());
                c
            }
        };
        let topic = self.topic.clone();
        let asked = tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            let answer = client.fetch_metadata(Some(&topic), ReadinessProbe::TIMEOUT).map(|_| ());
            // Nothing else polls this client: drop the error events it queued meanwhile.
            for _ in 0..1000 {
                if client.poll(std::time::Duration::ZERO).is_none() {
                    break;
                }
            }
            answer
        })
        .await;
        match asked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("kafka unreachable: {e}")),
            Err(e) => Err(format!("kafka probe failed: {e}")),
        }
    }
}
