//! The federation file: one TOML file, deployed unchanged at every site.
//!
//! Loading is three steps: parse TOML, expand `${VAR}` in every string from the environment, then
//! deserialize into typed structs and `Config::validate` them. Every problem found is reported
//! with the file and the key it concerns; the process does not start on any of them.

mod expand;
mod filter;
mod validate;

pub use filter::{Filter, FilterError};
pub use validate::schema_problems;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One problem in the configuration file, tied to the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, such as `entities.user.refs.creator_id`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// One or more problems, each naming its key.
    #[error("{}", render_problems(.path, .problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

fn render_problems(path: &Path, problems: &[ConfigProblem]) -> String {
    let mut out = format!("{}: {} problem(s) in the configuration", path.display(), problems.len());
    for p in problems {
        out.push_str(&format!("\n  {}: {}: {}", path.display(), p.key, p.message));
    }
    out
}

/// A string that must never appear in logs or error messages (passwords, connection URLs).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that needs it (opening a connection).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole federation file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names and databases shared by every site.
    pub federation: Federation,
    /// The Kafka cluster shared by every site.
    pub kafka: KafkaConfig,
    /// Every site, by id.
    #[serde(default)]
    pub sites: BTreeMap<String, SiteConfig>,
    /// Every replicated entity, by name.
    #[serde(default)]
    pub entities: BTreeMap<String, EntityConfig>,
    /// Who applies what from whom.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Apply-side tuning.
    #[serde(default)]
    pub apply: ApplyTuning,
    /// Capture-side tuning.
    #[serde(default)]
    pub capture: CaptureTuning,
    /// Verification between sites.
    #[serde(default)]
    pub verify: VerifyConfig,
    /// Opt-in export topics in Debezium's own shape, for Kafka Connect sinks.
    #[serde(default)]
    pub export: ExportConfig,
    /// The operator console `run` serves on `listen` (schemas/console-api.md).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Where the file was read from (for messages).
    #[serde(skip)]
    pub path: PathBuf,
    /// Sites whose connection URL names a variable that is not set, with the problem: an
    /// error only when that site's URL is used ([`Config::site`]).
    #[serde(skip)]
    pub unresolved: BTreeMap<String, ConfigProblem>,
}

/// `sites.<id>.mysql` -> `<id>`.
fn site_of_url_key(key: &str) -> Option<&str> {
    key.strip_prefix("sites.")?.strip_suffix(".mysql")
}

/// `[federation]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Federation {
    /// Federation name, written into `source.name` of every record.
    pub name: String,
    /// Site topics are `<topic_prefix>.<site id>`.
    pub topic_prefix: String,
    /// The application database at every site (a site may override it).
    pub database: String,
    /// sitesync's own tables, on each site's server.
    #[serde(default = "default_control_database")]
    pub control_database: String,
}

fn default_control_database() -> String {
    "sitesync".into()
}

/// `[kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Handed to librdkafka unchanged (TLS, SASL, tuning).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Partitions of each site topic created by `init`. One keeps a site's commit order total.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of the site topics created by `init`.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
}

fn default_partitions() -> i32 {
    1
}
fn default_replication() -> i32 {
    1
}

/// `[sites.<id>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// `mysql://user:password@host:port/db`; a secret because it holds the password.
    pub mysql: Secret,
    /// Binlog client id, unique among the server's replicas.
    pub server_id: u32,
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Overrides `federation.database` for this site.
    #[serde(default)]
    pub database: Option<String>,
}

/// What happens at other sites when a row is deleted at its origin.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum OnDelete {
    /// The delete is applied (default).
    #[default]
    Propagate,
    /// The delete is not applied: the row stays at other sites.
    Ignore,
    /// The delete becomes an update of these columns (deactivation).
    Set(BTreeMap<String, serde_json::Value>),
}

impl<'de> Deserialize<'de> for OnDelete {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Set { set: BTreeMap<String, toml::Value> },
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "propagate" => Ok(OnDelete::Propagate),
            Raw::Word(w) if w == "ignore" => Ok(OnDelete::Ignore),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "unknown on_delete `{w}`: expected \"propagate\", \"ignore\" or {{ set = {{ column = value }} }}"
            ))),
            Raw::Set { set } => {
                let mut out = BTreeMap::new();
                for (k, v) in set {
                    let json = serde_json::to_value(&v).map_err(serde::de::Error::custom)?;
                    out.insert(k, json);
                }
                Ok(OnDelete::Set(out))
            }
        }
    }
}

/// A reference column's target: `creator_id = "user"`, or with the values that mean "no
/// reference" spelled out: `parent_id = { entity = "tag", none = [0, -1] }`.
#[derive(Debug, Clone, PartialEq)]
pub struct RefTarget {
    /// The entity the column points to.
    pub entity: String,
    /// Values that point to no row and travel as themselves. NULL always does; the default is
    /// `[0]`, since LIMS2 and many schemas declare references `NOT NULL DEFAULT 0`.
    pub none: Vec<serde_json::Value>,
}

impl RefTarget {
    /// Whether `value` points to no row (NULL or a configured sentinel).
    pub fn is_none(&self, value: &serde_json::Value) -> bool {
        value.is_null() || self.none.iter().any(|n| same_scalar(n, value))
    }
}

/// Whether two JSON scalars hold the same value (`0`, `0.0` and `"0"` are the same id).
fn same_scalar(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.trim().to_string(),
        other => other.to_string(),
    };
    let (a, b) = (text(a), text(b));
    a == b || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if x == y)
}

impl<'de> Deserialize<'de> for RefTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Entity(String),
            Full(Full),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            entity: String,
            #[serde(default)]
            none: Option<Vec<toml::Value>>,
        }
        let expected = "an entity name (\"user\") or { entity = \"user\", none = [0] }";
        let raw = Raw::deserialize(d).map_err(|_| serde::de::Error::custom(format!("expected {expected}")))?;
        Ok(match raw {
            Raw::Entity(entity) => RefTarget { entity, none: vec![serde_json::Value::from(0)] },
            Raw::Full(Full { entity, none }) => {
                let none = match none {
                    None => vec![serde_json::Value::from(0)],
                    Some(values) => values
                        .into_iter()
                        .map(|v| match v {
                            toml::Value::Integer(_) | toml::Value::String(_) | toml::Value::Float(_) => {
                                serde_json::to_value(&v).map_err(serde::de::Error::custom)
                            }
                            other => Err(serde::de::Error::custom(format!(
                                "`none` holds numbers or strings (the values that mean \"no reference\"), not {}",
                                other.type_str()
                            ))),
                        })
                        .collect::<Result<_, _>>()?,
                };
                RefTarget { entity, none }
            }
        })
    }
}

/// Optional conflict resolution.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConflictConfig {
    /// Last writer wins by this column (larger value wins; ties broken by origin site id).
    pub version_column: String,
}

/// `[entities.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// The table in the application database.
    pub table: String,
    /// Natural key: how the same row is recognised at every site. Empty: the primary key.
    #[serde(default)]
    pub key: Vec<String>,
    /// Columns that never leave the site.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Only rows matching this condition are replicated.
    #[serde(default)]
    pub filter: Option<String>,
    /// What a delete does elsewhere.
    #[serde(default)]
    pub on_delete: OnDelete,
    /// Foreign-key columns and the entity each points to (with its "no reference" values).
    #[serde(default)]
    pub refs: BTreeMap<String, RefTarget>,
    /// Optional last-writer-wins.
    #[serde(default)]
    pub conflict: Option<ConflictConfig>,
    /// Many-to-one: a local column that records the origin site id of applied rows.
    #[serde(default)]
    pub origin_column: Option<String>,
}

/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Origin sites, or `*`.
    pub from: Vec<String>,
    /// Target sites, or `*`.
    pub to: Vec<String>,
    /// Entities carried by this route.
    pub entities: Vec<String>,
}

/// `[apply]`: tuning of the applier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplyTuning {
    /// At most this many records share one target transaction.
    pub batch_records: usize,
    /// How long a batch may wait for more records, in milliseconds.
    pub batch_wait_ms: u64,
    /// How long a transaction whose referenced rows have not arrived waits before it becomes a
    /// dead letter, in seconds.
    pub ref_wait_seconds: u64,
}

impl Default for ApplyTuning {
    fn default() -> Self {
        Self { batch_records: 2000, batch_wait_ms: 5, ref_wait_seconds: 300 }
    }
}

/// `[capture]`: tuning of the capture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureTuning {
    /// Records produced but not yet acknowledged by Kafka, at most (bounds memory).
    pub max_in_flight: usize,
    /// How often the acknowledged position is written to the control database, in milliseconds.
    pub checkpoint_interval_ms: u64,
    /// Rows read per snapshot chunk (memory holds one chunk).
    pub snapshot_chunk_rows: usize,
}

impl Default for CaptureTuning {
    fn default() -> Self {
        Self { max_in_flight: 20_000, checkpoint_interval_ms: 1000, snapshot_chunk_rows: 2000 }
    }
}

/// `[verify]`: comparing sites through the control channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Rows a site reads per second, at most, to answer or run a verification (its database
    /// serves the application first).
    pub rows_per_second: u64,
    /// Reading pauses while this site's apply lag behind any origin is above this many seconds.
    pub max_lag_seconds: f64,
    /// How long a site waits for another site's answer, in seconds.
    pub timeout_seconds: u64,
    /// Continuous verification: `sitesync run` verifies every origin and entity this often
    /// ("6h", "30m", "90s", "1d"); off when absent.
    pub interval: Option<String>,
    /// Continuous verification repairs what it finds.
    pub repair: bool,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self { rows_per_second: 20_000, max_lag_seconds: 10.0, timeout_seconds: 120, interval: None, repair: false }
    }
}

/// `[export]`: besides its replication topic, each exporting site's capture publishes every
/// change of the exported entities' tables (its own and those applied from other sites, as a
/// Debezium connector on that database would see them) to one topic per table, in Debezium's
/// naming and JSON shape with an embedded Connect schema (schemas/export.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Entities exported (none by default).
    pub entities: Vec<String>,
    /// Sites that export (every site when empty).
    pub sites: Vec<String>,
    /// The record shape: "debezium-json" (the JsonConverter with `schemas.enable=true`).
    pub format: Option<String>,
    /// The export stream reads the binlog on a connection of its own, as a binlog client with
    /// the site's `server_id` plus this (a server disconnects one of two readers sharing an id).
    pub server_id_offset: Option<u32>,
    /// "low" (the default): the export stream's threads run at a lower CPU priority (nice 10),
    /// so on a busy machine it trails and replication keeps its pace; "normal": as capture's.
    pub cpu_priority: Option<String>,
    /// While capture catches up a backlog (reads transactions committed more than a few seconds
    /// ago), the export stream waits for it, trailing it by up to this many seconds of source
    /// time, so the other sites get the backlog first; 0: it never waits. Default 600.
    pub trail_seconds: Option<u64>,
}

/// `[export] server_id_offset` when left out.
pub const EXPORT_SERVER_ID_OFFSET: u32 = 1_000_000;

/// `[console]`: the operator console's actions (replay, drop, re-request) need this token;
/// without it the console is read-only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// The operator token (from the environment: `"${SITESYNC_CONSOLE_TOKEN}"`).
    pub operator_token: Option<Secret>,
    /// Host names the console answers to besides IP addresses and `localhost` (a reverse
    /// proxy's name): any other `Host` is refused, so a DNS-rebinding page cannot read it.
    pub allowed_hosts: Vec<String>,
}

impl ExportConfig {
    /// Whether `site` exports anything.
    pub fn any_at(&self, site: &str) -> bool {
        !self.entities.is_empty() && (self.sites.is_empty() || self.sites.iter().any(|s| s == site))
    }

    /// The export stream's binlog client id at a site whose capture reads as `server_id`
    /// (None: it does not fit in 32 bits).
    pub fn server_id(&self, server_id: u32) -> Option<u32> {
        server_id.checked_add(self.server_id_offset.unwrap_or(EXPORT_SERVER_ID_OFFSET)).filter(|id| *id != 0)
    }

    /// How far the export stream may trail capture while capture catches up (see `trail_seconds`).
    pub fn trail(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.trail_seconds.unwrap_or(600))
    }

    /// Whether the export stream runs at a lower CPU priority than capture.
    pub fn low_priority(&self) -> bool {
        self.cpu_priority.as_deref() != Some("normal")
    }

    /// Whether `site` exports `entity`.
    pub fn exports(&self, site: &str, entity: &str) -> bool {
        self.any_at(site) && self.entities.iter().any(|e| e == entity)
    }
}

impl VerifyConfig {
    /// The continuous interval, if on (validated at load).
    pub fn interval(&self) -> Option<std::time::Duration> {
        self.interval.as_deref().and_then(|t| parse_duration(t).ok())
    }
}

/// "6h", "30m", "90s", "1d", "500ms" as a duration, or what is wrong with it.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: expected a whole number and a unit, as \"6h\", \"30m\", \"90s\", \"1d\""))?;
    let ms = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("`{text}`: unknown unit `{other}` (ms, s, m, h, d)")),
    };
    if n == 0 {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(std::time::Duration::from_millis(n.saturating_mul(ms)))
}

impl Config {
    /// Reads, expands and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses `text` as if read from `path`, taking `${VAR}` values from `env`.
    pub fn from_toml(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid { path: path.to_owned(), problems };
        let mut raw: toml::Value =
            toml::from_str(text).map_err(|e| invalid(vec![ConfigProblem { key: "(syntax)".into(), message: e.to_string() }]))?;
        let problems = expand::expand_env(&mut raw, env);
        // A site's connection URL is needed only by that site (and by `verify` against it):
        // jinan must not need qingdao's password. Those problems wait until the URL is used.
        let (deferred, problems): (Vec<ConfigProblem>, Vec<ConfigProblem>) =
            problems.into_iter().partition(|p| site_of_url_key(&p.key).is_some());
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let mut config: Config = serde_path_deserialize(raw).map_err(|p| invalid(vec![p]))?;
        config.path = path.to_owned();
        config.unresolved = deferred.into_iter().map(|p| (site_of_url_key(&p.key).expect("partitioned on it").to_string(), p)).collect();
        let problems = validate::validate(&config);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        Ok(config)
    }

    /// The site `id`, or an error naming the known ones (or the variable its URL lacks).
    pub fn site(&self, id: &str) -> Result<&SiteConfig, ConfigError> {
        if let Some(problem) = self.unresolved.get(id) {
            return Err(ConfigError::Invalid { path: self.path.clone(), problems: vec![problem.clone()] });
        }
        self.sites.get(id).ok_or_else(|| ConfigError::Invalid {
            path: self.path.clone(),
            problems: vec![ConfigProblem {
                key: format!("sites.{id}"),
                message: format!(
                    "--site `{id}` is not defined; defined sites: {}",
                    self.sites.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            }],
        })
    }

    /// The application database at `site`.
    pub fn database_of(&self, site: &str) -> &str {
        self.sites.get(site).and_then(|s| s.database.as_deref()).unwrap_or(&self.federation.database)
    }

    /// The Kafka topic holding the changes that originate at `site`.
    pub fn topic_of(&self, site: &str) -> String {
        format!("{}.{}", self.federation.topic_prefix, site)
    }

    /// The topic of requests and answers between sites (verify, repair): one partition.
    pub fn control_topic(&self) -> String {
        format!("{}.control", self.federation.topic_prefix)
    }

    /// The export topic of `site`'s table `db`.`table`: Debezium's `<topic.prefix>.<db>.<table>`
    /// with `<topic_prefix>.export.<site>` as its prefix; characters Kafka does not allow in a
    /// topic name become `_`, as Debezium does.
    pub fn export_topic_of(&self, site: &str, db: &str, table: &str) -> String {
        let safe = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect::<String>();
        format!("{}.export.{site}.{}.{}", self.federation.topic_prefix, safe(db), safe(table))
    }

    /// The export topics of `site` (one per exported entity).
    pub fn export_topics_of(&self, site: &str) -> Vec<String> {
        self.entities
            .iter()
            .filter(|(name, _)| self.export.exports(site, name))
            .map(|(_, e)| self.export_topic_of(site, self.database_of(site), &e.table))
            .collect()
    }

    /// The topic where `site`'s capture says, while idle, that it has read everything.
    pub fn heartbeat_topic_of(&self, site: &str) -> String {
        format!("{}.{}.heartbeat", self.federation.topic_prefix, site)
    }

    /// Whether changes of `entity` made at `origin` are applied at `target`.
    pub fn routes_entity(&self, origin: &str, target: &str, entity: &str) -> bool {
        origin != target
            && self
                .routes
                .iter()
                .any(|r| matches_site(&r.from, origin) && matches_site(&r.to, target) && r.entities.iter().any(|e| e == entity || e == "*"))
    }

    /// The sites whose changes `target` applies (some entity routed from them to it).
    pub fn origins_of(&self, target: &str) -> Vec<String> {
        self.sites.keys().filter(|origin| self.entities.keys().any(|e| self.routes_entity(origin, target, e))).cloned().collect()
    }

    /// A configuration error made of `problems` (for checks against live schemas).
    pub fn invalid(&self, problems: Vec<ConfigProblem>) -> ConfigError {
        ConfigError::Invalid { path: self.path.clone(), problems }
    }

    /// The entities whose changes at `site` some route carries elsewhere.
    pub fn captured_at(&self, site: &str) -> Vec<&str> {
        self.entities.keys().filter(|e| self.sites.keys().any(|target| self.routes_entity(site, target, e))).map(String::as_str).collect()
    }

    /// The entity whose table is `table`, if any.
    pub fn entity_by_table(&self, table: &str) -> Option<(&str, &EntityConfig)> {
        self.entities.iter().find(|(_, e)| e.table == table).map(|(n, e)| (n.as_str(), e))
    }
}

fn matches_site(list: &[String], site: &str) -> bool {
    list.iter().any(|s| s == "*" || s == site)
}

/// Deserializes with an error that names the key path, so a user sees `entities.user.on_delete`.
fn serde_path_deserialize(raw: toml::Value) -> Result<Config, ConfigProblem> {
    serde_path_to_error::deserialize::<_, Config>(raw).map_err(|e| ConfigProblem {
        key: match e.path().to_string() {
            p if p == "." => "(top level)".into(),
            p => p,
        },
        message: e.inner().to_string(),
    })
}

#[cfg(test)]
mod tests;
