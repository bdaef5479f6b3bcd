//! `sitesync verify`: compares this site with the sites it receives from, through the control
//! channel and this site's own database only. The origins' running processes answer
//! ([`responder`]); `--direct` ([`direct`]) opens every database itself instead.
//!
//! A pass, per origin and entity:
//! 1. **Buckets.** Both sites hash every row of the compared set into the same buckets by
//!    natural key (not key ranges: with per-site ids and references inside keys, no order of
//!    rows is the same at two sites, but a hash of the canonical key is) and exchange each
//!    bucket's row count and sum of row digests. Memory holds the bucket table.
//! 2. **Rows.** Only for buckets that differ: the origin sends its rows' digests (with a hash
//!    per column), this site compares them with its own rows of those buckets.
//! 3. **Again.** A suspect row is read again at both sites after this site's applier has
//!    caught up with everything the origin had published when it answered; it is a difference
//!    only if both sides still hold exactly what they held before. A row that changes at every
//!    look is reported as unsettled, not as a difference.
//! 4. **Repair** (`--repair`): the origin republishes its current rows of the differing keys as
//!    snapshot records limited to those rows; this site's applier applies them with every rule
//!    it has; a last look counts what was repaired.

pub mod canonical;
pub mod continuous;
pub mod direct;
pub mod responder;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::AssertSqlSafe;

use crate::channel::{self, Body, Channel, ChannelError, RowDigest};
use crate::config::{Config, OnDelete};
use crate::control::{self, Control};
use canonical::{bucket_of, BucketSums, Collect, Scan, ScanError, Side, Sums, Wanted};

/// Why verification could not run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The request names something the configuration lacks.
    #[error("{0}")]
    Config(String),
    /// The control channel failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// Reading rows failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// This site's database failed.
    #[error("{what}: {message}")]
    Database {
        /// What was done.
        what: String,
        /// The error.
        message: String,
    },
    /// The other site could not answer.
    #[error("site `{site}` could not answer: {message}")]
    Refused {
        /// The other site.
        site: String,
        /// Its reason.
        message: String,
    },
}

/// What kind of difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The origin's row is not here.
    Missing,
    /// Both have the row, with other values.
    Different,
    /// The row came from the origin, which no longer has it (and deletes propagate).
    Gone,
}

impl Kind {
    /// As the text output says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing here",
            Kind::Different => "different",
            Kind::Gone => "gone at the origin",
        }
    }
}

/// One difference found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// What kind.
    pub kind: Kind,
    /// Natural key (canonical text).
    pub key: String,
    /// The columns that differ (for `different`).
    pub columns: Vec<String>,
    /// A repair healed it.
    pub repaired: bool,
}

/// The outcome for one origin and entity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PairReport {
    /// The origin compared with.
    pub origin: String,
    /// The entity.
    pub entity: String,
    /// Rows of the origin compared (its rows this site should hold).
    pub compared: u64,
    /// Buckets of the pass, and how many differed.
    pub buckets: u32,
    /// Buckets whose checksums differed.
    pub buckets_differing: u32,
    /// Rows still changing at every look (neither reported nor repaired).
    pub unsettled: u64,
    /// The differences, repaired or not.
    pub differences: Vec<Finding>,
}

impl PairReport {
    /// Differences of `kind`.
    pub fn count(&self, kind: Kind) -> usize {
        self.differences.iter().filter(|f| f.kind == kind).count()
    }

    /// Differences a repair healed.
    pub fn repaired(&self) -> usize {
        self.differences.iter().filter(|f| f.repaired).count()
    }

    /// Differences that remain.
    pub fn remaining(&self) -> usize {
        self.differences.iter().filter(|f| !f.repaired).count()
    }
}

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only these entities (default: every entity routed to this site).
    pub entities: Vec<String>,
    /// Only against these origins (default: every origin of this site).
    pub against: Vec<String>,
    /// Have the origins republish what differs.
    pub repair: bool,
}

/// Limits how fast a scan reads: `rows_per_second`, and pauses while `lag` says this site's
/// applier is far behind (its database is busy enough).
pub struct Pace {
    per_second: f64,
    started: Instant,
    rows: u64,
    lag: Option<Lag>,
    max_lag: f64,
}

/// This site's apply lag behind its origins now, in seconds (from the process's metrics).
pub type Lag = std::sync::Arc<dyn Fn() -> f64 + Send + Sync>;

impl Pace {
    /// At most `rows_per_second`; with `lag`, waits while it exceeds `max_lag` seconds.
    pub fn new(rows_per_second: u64, lag: Option<Lag>, max_lag: f64) -> Self {
        Self { per_second: rows_per_second.max(1) as f64, started: Instant::now(), rows: 0, lag, max_lag }
    }

    /// One row read.
    pub async fn tick(&mut self) {
        self.rows += 1;
        if !self.rows.is_multiple_of(500) {
            return;
        }
        let due = self.started + Duration::from_secs_f64(self.rows as f64 / self.per_second);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        if let Some(lag) = &self.lag {
            let paused = Instant::now();
            while lag() > self.max_lag && paused.elapsed() < Duration::from_secs(600) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // The pause does not count as reading time.
            self.started += paused.elapsed();
        }
    }
}

/// Buckets for a table of `rows` rows: about 16 rows each, a power of two.
pub fn buckets_for(rows: u64) -> u32 {
    ((rows / 16).clamp(16, 1 << 16) as u32).next_power_of_two()
}

/// Whether `kind` of difference at `o`/`t` (the origin's and this site's copy of one key)
/// is one: None when they agree, or when replication does not promise the row here.
fn classify(o: Option<&RowDigest>, t: Option<&RowDigest>, on_delete: &OnDelete) -> Option<(Kind, Vec<String>)> {
    match (o, t) {
        (Some(o), Some(t)) => {
            if !o.replicated || o.digest == t.digest {
                return None;
            }
            let theirs: HashMap<&str, &str> = t.columns.iter().map(|(c, h)| (c.as_str(), h.as_str())).collect();
            let columns = o.columns.iter().filter(|(c, h)| theirs.get(c.as_str()) != Some(&h.as_str())).map(|(c, _)| c.clone()).collect();
            Some((Kind::Different, columns))
        }
        (Some(o), None) if o.owned => Some((Kind::Missing, Vec::new())),
        (None, Some(t)) if t.owned && *on_delete == OnDelete::Propagate => Some((Kind::Gone, Vec::new())),
        _ => None,
    }
}

/// A row that differed at the last look.
#[derive(Debug, Clone)]
struct Suspect {
    kind: Kind,
    columns: Vec<String>,
    origin_row: Option<RowDigest>,
    local_row: Option<RowDigest>,
}

impl Suspect {
    fn same_as(&self, other: &Suspect) -> bool {
        let digest = |r: &Option<RowDigest>| r.as_ref().map(|r| r.digest.clone());
        self.kind == other.kind
            && digest(&self.origin_row) == digest(&other.origin_row)
            && digest(&self.local_row) == digest(&other.local_row)
    }
}

/// Looks at a repaired or suspect row this many times at most.
const LOOKS: usize = 4;

/// Verifies `site` against its origins.
pub async fn verify(config: &Config, site: &str, options: &Options) -> Result<Vec<PairReport>, VerifyError> {
    for e in &options.entities {
        if !config.entities.contains_key(e) {
            return Err(VerifyError::Config(format!("--entity {e}: no such entity in {}", config.path.display())));
        }
    }
    for s in &options.against {
        if !config.sites.contains_key(s) {
            return Err(VerifyError::Config(format!("--against {s}: no such site in {}", config.path.display())));
        }
        if !config.origins_of(site).contains(s) {
            return Err(VerifyError::Config(format!(
                "--against {s}: no route in {} carries anything from {s} to {site}",
                config.path.display()
            )));
        }
    }
    let origins = if options.against.is_empty() { config.origins_of(site) } else { options.against.clone() };
    let mut verifier = Verifier::open(config, site).await?;
    let mut reports = Vec::new();
    for (origin, entity) in pairs(config, site) {
        if !origins.contains(&origin) || (!options.entities.is_empty() && !options.entities.contains(&entity)) {
            continue;
        }
        reports.push(verifier.pair(&origin, &entity, options.repair).await?);
    }
    Ok(reports)
}

/// Every (origin, entity) that some route carries to `site`, in a stable order.
pub fn pairs(config: &Config, site: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for origin in config.origins_of(site) {
        for entity in config.entities.keys() {
            if config.routes_entity(&origin, site, entity) {
                out.push((origin.clone(), entity.clone()));
            }
        }
    }
    out
}

/// This site's end of verification: its database, its control tables and the channel.
pub(crate) struct Verifier<'a> {
    config: &'a Config,
    site: &'a str,
    pool: sqlx::MySqlPool,
    ctl: Control,
    channel: Channel,
    lag: Option<Lag>,
}

impl<'a> Verifier<'a> {
    /// Connects to `site`'s own database (only its URL is used) and opens the channel.
    pub(crate) async fn open(config: &'a Config, site: &'a str) -> Result<Verifier<'a>, VerifyError> {
        let url = config.site(site).map_err(|e| VerifyError::Config(e.to_string()))?.mysql.expose();
        let pool = control::connect(site, url, 2)
            .await
            .map_err(|e| VerifyError::Database { what: format!("connecting to site `{site}`"), message: e.to_string() })?;
        let ctl = Control::new(pool.clone(), &config.federation.control_database);
        let channel = Channel::open(config, site).await?;
        Ok(Verifier { config, site, pool, ctl, channel, lag: None })
    }

    /// The control tables of this site.
    pub(crate) fn control(&self) -> &Control {
        &self.ctl
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.verify.timeout_seconds.max(1))
    }

    fn pace(&self) -> Pace {
        Pace::new(self.config.verify.rows_per_second, self.lag.clone(), self.config.verify.max_lag_seconds)
    }

    /// Reading pauses while `lag` exceeds `[verify] max_lag_seconds` (inside `sitesync run`,
    /// where the applier's lag is known).
    pub(crate) fn pause_while(&mut self, lag: Lag) {
        self.lag = Some(lag);
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::MySql>, VerifyError> {
        self.pool
            .acquire()
            .await
            .map_err(|e| VerifyError::Database { what: format!("connecting to site `{}`", self.site), message: e.to_string() })
    }

    /// Verifies (and with `repair` repairs) `entity` from `origin`.
    pub(crate) async fn pair(&mut self, origin: &str, entity: &str, repair: bool) -> Result<PairReport, VerifyError> {
        let side = Side::Target { origin: origin.to_string() };
        let db = self.config.database_of(self.site).to_string();
        let scan = Scan::plan(&self.pool, self.config, &db, &self.config.federation.control_database, entity, &side).await?;
        let table = crate::mysql::qualified(&db, &self.config.entities[entity].table);
        let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| VerifyError::Database { what: format!("counting {table}"), message: e.to_string() })?;
        let buckets = buckets_for(count as u64);
        let started = Instant::now();

        // 1. Buckets: the origin reads while this site does.
        let id = channel::request_id(self.site);
        self.channel.send(&id, origin, Body::BucketsRequest { entity: entity.to_string(), buckets }).await?;
        let mut local = BucketSums::new(&side, buckets);
        scan.run(&mut *self.conn().await?, &mut self.pace(), &mut local).await?;
        let local = local.sums;
        let mut remote: Sums = vec![(0, 0); buckets as usize];
        loop {
            match self.channel.answer(&id, origin, self.timeout()).await? {
                Body::Buckets { sums, last, .. } => {
                    for (b, n, sum) in sums {
                        if let (Some(slot), Ok(sum)) = (remote.get_mut(b as usize), u128::from_str_radix(&sum, 16)) {
                            *slot = (n, sum);
                        }
                    }
                    if last {
                        break;
                    }
                }
                Body::Failed { message } => return Err(VerifyError::Refused { site: origin.to_string(), message }),
                _ => {}
            }
        }
        let differing: Vec<u32> = (0..buckets).filter(|&b| local[b as usize] != remote[b as usize]).collect();
        let mut report = PairReport {
            origin: origin.to_string(),
            entity: entity.to_string(),
            compared: remote.iter().map(|(n, _)| n).sum(),
            buckets,
            buckets_differing: differing.len() as u32,
            ..Default::default()
        };
        tracing::info!(origin, entity, buckets, differing = differing.len(), seconds = started.elapsed().as_secs_f64(), "buckets compared");
        if differing.is_empty() {
            return Ok(report);
        }

        // 2. Rows of the differing buckets.
        let on_delete = self.config.entities[entity].on_delete.clone();
        let mut suspects = self.look(origin, entity, &scan, &side, buckets, &differing, None, &on_delete).await?;

        // 3. Again, after catching up, until both sides hold still.
        let mut confirmed: BTreeMap<String, Suspect> = BTreeMap::new();
        for _ in 0..LOOKS {
            if suspects.is_empty() {
                break;
            }
            self.catch_up(origin).await?;
            let keys: BTreeSet<String> = suspects.keys().cloned().collect();
            let which: BTreeSet<u32> = keys.iter().map(|k| bucket_of(k, buckets)).collect();
            let again =
                self.look(origin, entity, &scan, &side, buckets, &which.into_iter().collect::<Vec<_>>(), Some(&keys), &on_delete).await?;
            let mut next = BTreeMap::new();
            for (key, before) in suspects {
                match again.get(&key) {
                    None => {}
                    Some(now) if now.same_as(&before) => {
                        confirmed.insert(key, now.clone());
                    }
                    Some(now) => {
                        next.insert(key, now.clone());
                    }
                }
            }
            suspects = next;
        }
        report.unsettled = suspects.len() as u64;

        // 4. Repair through the origin's pipeline.
        let mut repaired = BTreeSet::new();
        if repair && !confirmed.is_empty() {
            let deleted = self.delete_gone(entity, &confirmed).await?;
            let rows: Vec<String> = confirmed
                .values()
                .filter(|s| matches!(s.kind, Kind::Missing | Kind::Different))
                .filter_map(|s| s.origin_row.as_ref().filter(|o| o.owned).and_then(|o| o.pk.clone()))
                .collect();
            let republished = !rows.is_empty();
            if republished {
                let id = channel::request_id(self.site);
                self.channel.send(&id, origin, Body::RepairRequest { entity: entity.to_string(), rows }).await?;
                match self.channel.answer(&id, origin, self.timeout() * 5).await? {
                    Body::Repaired { request, rows } => {
                        tracing::info!(origin, entity, request, rows, "the origin republished the differing rows")
                    }
                    Body::Failed { message } => return Err(VerifyError::Refused { site: origin.to_string(), message }),
                    other => {
                        return Err(VerifyError::Refused { site: origin.to_string(), message: format!("unexpected answer {other:?}") })
                    }
                }
            }
            if deleted > 0 || republished {
                self.catch_up(origin).await?;
                let keys: BTreeSet<String> = confirmed.keys().cloned().collect();
                let which: BTreeSet<u32> = keys.iter().map(|k| bucket_of(k, buckets)).collect();
                let after = self
                    .look(origin, entity, &scan, &side, buckets, &which.into_iter().collect::<Vec<_>>(), Some(&keys), &on_delete)
                    .await?;
                repaired = keys.into_iter().filter(|k| !after.contains_key(k)).collect();
            }
        }
        report.differences = confirmed
            .into_iter()
            .map(|(key, s)| Finding { kind: s.kind, repaired: repaired.contains(&key), key, columns: s.columns })
            .collect();
        Ok(report)
    }

    /// Compares the rows of buckets `which` (only `keys`, if given) at both sites.
    #[allow(clippy::too_many_arguments)]
    async fn look(
        &mut self,
        origin: &str,
        entity: &str,
        scan: &Scan,
        side: &Side,
        buckets: u32,
        which: &[u32],
        keys: Option<&BTreeSet<String>>,
        on_delete: &OnDelete,
    ) -> Result<BTreeMap<String, Suspect>, VerifyError> {
        let id = channel::request_id(self.site);
        self.channel.send(&id, origin, Body::RowsRequest { entity: entity.to_string(), buckets, which: which.to_vec() }).await?;
        let wanted = Wanted { side, buckets, wanted: which.iter().copied().collect(), keys };
        let mut collect = Collect { wanted, columns: &scan.columns, rows: Vec::new() };
        scan.run(&mut *self.conn().await?, &mut self.pace(), &mut collect).await?;
        let mut mine: HashMap<String, RowDigest> = collect.rows.into_iter().map(|r| (r.key.clone(), r)).collect();
        let mut found = BTreeMap::new();
        let mut note = |o: Option<RowDigest>, t: Option<RowDigest>| {
            let key = o.as_ref().or(t.as_ref()).map(|r| r.key.clone()).unwrap_or_default();
            if let Some((kind, columns)) = classify(o.as_ref(), t.as_ref(), on_delete) {
                found.insert(key, Suspect { kind, columns, origin_row: o, local_row: t });
            }
        };
        loop {
            match self.channel.answer(&id, origin, self.timeout()).await? {
                Body::Rows { rows, last, .. } => {
                    for o in rows {
                        if keys.is_some_and(|k| !k.contains(&o.key)) {
                            continue;
                        }
                        let t = mine.remove(&o.key);
                        note(Some(o), t);
                    }
                    if last {
                        break;
                    }
                }
                Body::Failed { message } => return Err(VerifyError::Refused { site: origin.to_string(), message }),
                _ => {}
            }
        }
        for (_, t) in mine {
            note(None, Some(t));
        }
        Ok(found)
    }

    /// Deletes here the rows the origin no longer has (`on_delete = "propagate"`): what the
    /// origin's delete would have done. The delete is this site's own change, so capture
    /// publishes it and the other sites that still hold the row follow.
    async fn delete_gone(&self, entity: &str, confirmed: &BTreeMap<String, Suspect>) -> Result<usize, VerifyError> {
        let gone: Vec<&str> = confirmed
            .values()
            .filter(|s| s.kind == Kind::Gone)
            .filter_map(|s| s.local_row.as_ref().and_then(|r| r.pk.as_deref()))
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let db = self.config.database_of(self.site);
        let table = &self.config.entities[entity].table;
        let described = crate::mysql::schema::load_sqlx(&self.pool, db, table)
            .await
            .map_err(|e| VerifyError::Database { what: format!("reading the schema of {table}"), message: e.to_string() })?;
        let Some([pk]) = described.as_ref().map(|t| t.primary_key.as_slice()) else {
            return Err(VerifyError::Config(format!("entities.{entity}: {table} has no one-column primary key to delete single rows by")));
        };
        for chunk in crate::mysql::session::statement_chunks(&gone, crate::mysql::session::MAX_STATEMENT_ROWS) {
            let sql = format!(
                "DELETE FROM {} WHERE {} IN ({})",
                crate::mysql::qualified(db, table),
                crate::mysql::quote(pk),
                vec!["?"; chunk.len()].join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for key in chunk {
                q = q.bind(*key);
            }
            q.execute(&self.pool).await.map_err(|e| VerifyError::Database {
                what: format!("deleting rows gone at the origin from {table}"),
                message: e.to_string(),
            })?;
        }
        tracing::info!(entity, rows = gone.len(), "deleted the rows the origin no longer has");
        Ok(gone.len())
    }

    /// Waits until this site's applier has applied everything the origin's topic holds now.
    async fn catch_up(&self, origin: &str) -> Result<(), VerifyError> {
        let topic = self.config.topic_of(origin);
        if let Caught::Behind { applied, end } = caught_up(&self.channel, &self.ctl, &topic, self.timeout()).await? {
            tracing::warn!(
                origin,
                topic,
                applied,
                end,
                "this site's applier is behind the origin: what is still in flight may show as different"
            );
        }
        Ok(())
    }
}

/// Whether this site's applier reached the end a topic had when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caught {
    /// Applied up to that end.
    Up,
    /// Still behind when the wait ended.
    Behind {
        /// Next offset to apply.
        applied: i64,
        /// The end waited for.
        end: i64,
    },
}

/// Waits (at most `timeout`) until this site's applier has applied `topic` up to its end now.
pub(crate) async fn caught_up(channel: &Channel, ctl: &Control, topic: &str, timeout: Duration) -> Result<Caught, VerifyError> {
    let end = channel.end_of(topic).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let offsets =
            ctl.load_offsets().await.map_err(|e| VerifyError::Database { what: "reading apply offsets".into(), message: e.to_string() })?;
        let applied = offsets.iter().filter(|o| o.topic == topic).map(|o| o.next).max().unwrap_or(0);
        if applied >= end {
            return Ok(Caught::Up);
        }
        if Instant::now() > deadline {
            return Ok(Caught::Behind { applied, end });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(key: &str, d: &str, owned: bool, replicated: bool) -> RowDigest {
        RowDigest {
            key: key.into(),
            pk: Some("1".into()),
            digest: d.into(),
            columns: vec![("a".into(), d.into()), ("b".into(), "same".into())],
            owned,
            replicated,
        }
    }

    #[test]
    fn only_what_replication_promises_is_a_difference() {
        let p = OnDelete::Propagate;
        assert_eq!(classify(Some(&digest("k", "1", true, true)), None, &p), Some((Kind::Missing, vec![])));
        assert_eq!(classify(Some(&digest("k", "1", false, true)), None, &p), None, "another site's row at the origin");
        assert_eq!(classify(Some(&digest("k", "1", true, true)), Some(&digest("k", "1", true, true)), &p), None);
        assert_eq!(
            classify(Some(&digest("k", "1", true, true)), Some(&digest("k", "2", false, true)), &p),
            Some((Kind::Different, vec!["a".into()]))
        );
        assert_eq!(
            classify(Some(&digest("k", "1", false, false)), Some(&digest("k", "2", true, true)), &p),
            None,
            "filtered at the origin"
        );
        assert_eq!(classify(None, Some(&digest("k", "1", true, true)), &p), Some((Kind::Gone, vec![])));
        assert_eq!(classify(None, Some(&digest("k", "1", true, true)), &OnDelete::Ignore), None, "kept by on_delete");
        assert_eq!(classify(None, Some(&digest("k", "1", false, true)), &p), None, "this site's own row");
    }

    #[test]
    fn bucket_counts_grow_with_the_table_within_bounds() {
        assert_eq!(buckets_for(0), 16);
        assert_eq!(buckets_for(1000), 64);
        assert_eq!(buckets_for(1_000_000), 65536);
        assert_eq!(buckets_for(u64::MAX), 65536);
    }
}
