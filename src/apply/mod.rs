//! Apply: consumes the topics of the sites routed to this one and writes their changes into the
//! local database.
//!
//! Delivery contract:
//! - a source transaction is applied atomically, and only once its last record arrived; several
//!   neighbouring source transactions may share one local transaction;
//! - the Kafka offsets are written in that same local transaction (first, which also marks the
//!   transaction as sitesync's so that local capture does not echo it), and consumption resumes
//!   from them: nothing is applied twice and nothing is skipped after a crash;
//! - a transaction that capture published twice is recognised by its GTID and skipped;
//! - records from this site, addressed to another site, or of entities not routed here are
//!   skipped; a record that cannot be applied (unreadable, of an entity the configuration does
//!   not name, a message key or natural key not its own, a column name no table can have, a
//!   value the column cannot hold: `vet.rs`) becomes a dead letter with its reason, and the
//!   stream goes on.

mod assemble;
mod fast;
#[cfg(test)]
mod fuzz;
pub mod inspect;
mod keyed;
mod lag;
mod parking;
mod replay;
mod target;
mod vet;
mod writer;

pub use replay::replay;
pub use target::TargetTable;
pub use writer::{BatchWrite, EntityPlan, Outcome, Plans};

use sqlx::{MySql, Transaction};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::control::{self, Control, ControlError, NewDeadLetter, NewParked, Progress};
use crate::position::TxnId;
use crate::record::{self, ChangeRecord, RecordHead};
use crate::shutdown::Shutdown;
use crate::telemetry::{Component, ErrorKind, Health, Metrics};
use assemble::{CompleteTxn, Incoming};
use fast::FastError;

/// Why a record or the applier failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The local database failed in a way that may pass (connection, deadlock, lock timeout).
    #[error("local database: {0}")]
    Database(#[source] sqlx::Error),
    /// The record cannot be applied as it is (bad value, missing column): a dead letter.
    #[error("{0}")]
    Definite(String),
    /// The record references rows that have not arrived here yet.
    #[error("waiting: {0}")]
    Wait(String),
    /// The record has a column the local table lacks (a schema change not applied here yet,
    /// or one the origin has since undone).
    #[error("{message}")]
    MissingColumn {
        /// The column, where known.
        column: Option<String>,
        /// What is missing where.
        message: String,
    },
    /// The local schema does not fit the configuration.
    #[error("{0}")]
    Schema(String),
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// The control database failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The configuration is unusable here.
    #[error("{0}")]
    Config(String),
    /// Kafka failed at start-up (metadata).
    #[error(transparent)]
    Transport(#[from] crate::kafka::TransportError),
    /// Shutdown was asked for while a failed step waited to be retried.
    #[error("stopped while retrying")]
    Stopped,
}

impl ApplyError {
    /// Sorts a database error: errors about the data are definite, the rest may pass.
    pub fn classify(e: sqlx::Error) -> ApplyError {
        if let sqlx::Error::Database(db) = &e {
            let code = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|m| m.number());
            match code {
                // Deadlock, lock wait timeout, server shutting down, read-only: retry.
                Some(1213 | 1205 | 1053 | 1290 | 1836) => return ApplyError::Database(e),
                // Unknown column: the table changed since it was read; read it again and wait.
                Some(1054) => return ApplyError::MissingColumn { column: None, message: format!("local table changed: {}", db.message()) },
                Some(_) => return ApplyError::Definite(format!("local database refused the change: {}", db.message())),
                None => {}
            }
        }
        ApplyError::Database(e)
    }

    /// What apply does about this error: its one policy, used wherever apply sorts errors.
    pub(super) fn policy(&self) -> Policy {
        match self {
            ApplyError::Database(_) | ApplyError::Kafka(_) | ApplyError::Control(_) | ApplyError::Transport(_) => Policy::Retry,
            ApplyError::Wait(_) | ApplyError::MissingColumn { .. } => Policy::Wait,
            ApplyError::Definite(_) | ApplyError::Schema(_) => Policy::DeadLetter,
            ApplyError::Config(_) | ApplyError::Stopped => Policy::Stop,
        }
    }
}

/// What apply does about an error (see [`ApplyError::policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Policy {
    /// It may pass (a lost connection, a deadlock, Kafka): the same work again after a pause.
    Retry,
    /// Something has not arrived yet (a referenced row, a column of a schema change): the
    /// transaction is parked, tried again, and a dead letter after `apply.ref_wait_seconds`.
    Wait,
    /// The change can never apply as it is (a value the column cannot hold, a table that does
    /// not fit the configuration): a dead letter with the reason, and apply goes on.
    DeadLetter,
    /// Apply cannot go on (configuration, shutdown): it stops with the message.
    Stop,
}

/// What apply needs from the process.
pub struct ApplyContext {
    /// The federation file.
    pub config: Arc<Config>,
    /// This site's id.
    pub site: String,
    /// Metrics.
    pub metrics: Metrics,
    /// Health flags.
    pub health: Arc<Health>,
    /// Stop signal.
    pub shutdown: Shutdown,
}

struct Applier {
    ctx: Arc<ApplyContext>,
    control: Control,
    plans: Plans,
    /// Rows written by parked transactions, per origin ([`scoped`]): later changes of the same
    /// origin to them wait behind.
    parked_keys: HashSet<String>,
    /// Heartbeat topic -> origin site.
    heartbeat_origins: HashMap<String, String>,
    /// How far behind each origin this site is (reported by a task of its own).
    lag: Arc<lag::Lag>,
    /// A record named a column a local table lacks: read the tables again before retrying.
    schema_changed: std::sync::atomic::AtomicBool,
    /// Topic -> origin site.
    origins: HashMap<String, String>,
    /// Source transactions still arriving.
    assembler: assemble::Assembler,
    /// (origin, stream) -> last applied sequence.
    progress: HashMap<(String, String), u64>,
    /// Columns of the latest record seen per (origin, entity), while some change of that
    /// entity waits for a column this site lacks: the origin may have dropped it since.
    columns_seen: std::sync::Mutex<ColumnsSeen>,
}

/// What the latest records of an origin's entity carried (see [`Applier::dropped_at_origin`]).
#[derive(Default)]
struct ColumnsSeen {
    /// (origin, entity) pairs whose records are watched.
    watched: HashSet<(String, String)>,
    /// (origin, entity) -> the latest watched record's transaction and its columns.
    latest: HashMap<(String, String), (TxnId, HashSet<String>)>,
}

/// Runs apply until shutdown or a definite error.
pub async fn run(ctx: ApplyContext) -> Result<(), ApplyError> {
    let ctx = Arc::new(ctx);
    let config = ctx.config.clone();
    let site_cfg = config.site(&ctx.site).map_err(|e| ApplyError::Config(e.to_string()))?;
    let url = site_cfg.mysql.expose();
    let connect = || control::connect(&ctx.site, url, 4);
    let Some(pool) =
        crate::shutdown::retry_while_unreachable(&ctx.shutdown, "the database", &ctx.site, ControlError::is_unreachable, connect).await
    else {
        return Ok(());
    };
    let pool = pool?;
    let control = Control::new(pool.clone(), &config.federation.control_database);
    let missing = control.missing_tables().await?;
    if !missing.is_empty() {
        return Err(ApplyError::Config(format!(
            "control database `{}` lacks {}: run `sitesync init --site {}`",
            config.federation.control_database,
            missing.join(", "),
            ctx.site
        )));
    }

    let origins: Vec<String> = config.origins_of(&ctx.site);
    if origins.is_empty() {
        tracing::warn!(site = %ctx.site, "no route leads to this site: apply has nothing to do");
    }
    let plans = load_plans(&config, &ctx.site, &pool, &origins).await?;

    let consumer: crate::kafka::StreamingConsumer = crate::kafka::create(
        &crate::kafka::consumer_config(&config.kafka, &crate::kafka::group_of(&config, &ctx.site, "apply"))
            .map_err(|e| ApplyError::Config(e.to_string()))?,
        "creating the consumer",
    )
    .map_err(ApplyError::Transport)?;
    let stored: HashMap<(String, i32), i64> = control.load_offsets().await?.into_iter().map(|o| ((o.topic, o.partition), o.next)).collect();
    let topics: Vec<String> = origins.iter().map(|o| config.topic_of(o)).collect();
    // A topic created a moment ago (init, a broker still loading) may not be in the metadata
    // yet: look again for a while before calling it missing.
    // Kafka down at start: wait for it, not ready, as apply does when it goes down later.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let partitions = loop {
        let Some(found) = metadata(&ctx, &topics).await else { return Ok(()) };
        let found = found?;
        if found.iter().all(|(_, n)| n.is_some()) || std::time::Instant::now() > deadline || ctx.shutdown.is_triggered() {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut tpl = TopicPartitionList::new();
    for (topic, count) in &partitions {
        let count = count
            .ok_or_else(|| ApplyError::Config(format!("topic {topic} does not exist: run `sitesync init` at its site (or here) first")))?;
        for p in 0..count as i32 {
            let offset = match stored.get(&(topic.clone(), p)) {
                Some(o) => Offset::Offset(*o),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, p, offset).map_err(ApplyError::Kafka)?;
        }
    }
    // Heartbeats of the origins' captures: only new ones matter.
    let heartbeat_topics: Vec<String> = origins.iter().map(|o| config.heartbeat_topic_of(o)).collect();
    let Some(hb) = metadata(&ctx, &heartbeat_topics).await else { return Ok(()) };
    let hb = hb?;
    for (topic, count) in hb {
        match count {
            Some(n) => {
                for p in 0..n as i32 {
                    tpl.add_partition_offset(&topic, p, Offset::End).map_err(ApplyError::Kafka)?;
                }
            }
            None => {
                tracing::warn!(site = %ctx.site, topic = %topic, "heartbeat topic missing (run `sitesync init`): lag of an idle origin cannot be told from a stopped one")
            }
        }
    }
    consumer.assign(&tpl).map_err(ApplyError::Kafka)?;

    let progress = control.load_progress().await?.into_iter().map(|p| ((p.origin, p.stream), p.seq)).collect();
    let parked = control.list_parked().await?;
    let parked_keys = parked.iter().flat_map(|p| p.row_keys.lines().map(|k| scoped(&p.origin, k)).collect::<Vec<_>>()).collect();
    let mut applier = Applier {
        ctx: ctx.clone(),
        control,
        plans,
        parked_keys,
        origins: origins.iter().map(|o| (config.topic_of(o), o.clone())).collect(),
        assembler: assemble::Assembler::default(),
        progress,
        heartbeat_origins: origins.iter().map(|o| (config.heartbeat_topic_of(o), o.clone())).collect(),
        lag: {
            let lag = lag::Lag::new(&origins);
            lag.clone().report(ctx.metrics.clone(), ctx.site.clone(), ctx.shutdown.clone());
            lag
        },
        schema_changed: std::sync::atomic::AtomicBool::new(false),
        columns_seen: Default::default(),
    };
    applier.set_running(true);
    applier.refresh_dead_letter_gauge().await;
    tracing::info!(site = %ctx.site, origins = ?origins, "applying");
    let result = applier.consume(&consumer).await;
    applier.set_running(false);
    match result {
        Err(ApplyError::Stopped) => Ok(()),
        other => other,
    }
}

/// The partition counts of `topics` (None: no such topic), waiting while Kafka cannot be
/// reached; None once shutdown is asked for.
async fn metadata(ctx: &ApplyContext, topics: &[String]) -> Option<Result<Vec<(String, Option<usize>)>, ApplyError>> {
    let attempt = || {
        let (kafka, topics) = (ctx.config.kafka.clone(), topics.to_vec());
        async move {
            tokio::task::spawn_blocking(move || crate::kafka::topic_partitions(&kafka, &topics, Duration::from_secs(10)))
                .await
                .map_err(|e| ApplyError::Config(e.to_string()))?
                .map_err(ApplyError::Transport)
        }
    };
    let kafka = format!("Kafka at {}", ctx.config.kafka.bootstrap_servers);
    crate::shutdown::retry_while_unreachable(
        &ctx.shutdown,
        &kafka,
        &ctx.site,
        |e| matches!(e, ApplyError::Transport(t) if t.is_unreachable()),
        attempt,
    )
    .await
}

/// The entities applied at `site` from `origins`, and the ones they reference (to find this
/// site's ids), bound to their local tables; every configured column must exist there.
async fn load_plans(config: &Config, site: &str, pool: &sqlx::MySqlPool, origins: &[String]) -> Result<Plans, ApplyError> {
    let db = config.database_of(site).to_string();
    let routed: Vec<&String> = config.entities.keys().filter(|name| origins.iter().any(|o| config.routes_entity(o, site, name))).collect();
    let mut needed: Vec<&String> = routed.clone();
    for name in &routed {
        for target in config.entities[*name].refs.values().map(|r| &r.entity) {
            if !needed.contains(&target) {
                needed.push(target);
            }
        }
    }
    let mut tables = Vec::new();
    let mut problems = Vec::new();
    for name in needed {
        let entity = &config.entities[name];
        let described = crate::mysql::schema::load_sqlx(pool, &db, &entity.table).await.map_err(ApplyError::Database)?;
        problems.extend(crate::config::schema_problems(config, name, site, described.as_ref()));
        if let Some(t) = described {
            tables.push((name, TargetTable::from_schema(t)));
        }
    }
    if !problems.is_empty() {
        return Err(ApplyError::Config(config.invalid(problems).to_string()));
    }
    let mut plans = Plans::new();
    for (name, target) in tables {
        let entity = &config.entities[name];
        plans.insert(name.clone(), Arc::new(EntityPlan::new(name, entity, target, &config.federation.control_database, site)?));
    }
    Ok(plans)
}

impl Applier {
    async fn consume(&mut self, consumer: &crate::kafka::StreamingConsumer) -> Result<(), ApplyError> {
        let max = self.ctx.config.apply.batch_records.max(1);
        let wait = Duration::from_millis(self.ctx.config.apply.batch_wait_ms);
        let mut ready: Vec<CompleteTxn> = Vec::new();
        let mut ready_records = 0usize;
        let mut last_tick = std::time::Instant::now();
        loop {
            // Wait for the first record without limit (but tick every second); then gather
            // for `wait` more.
            let first = ready.is_empty();
            let msg = if first {
                tokio::select! {
                    biased;
                    _ = self.ctx.shutdown.wait() => return Ok(()),
                    m = consumer.recv() => Some(m),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => None,
                }
            } else {
                tokio::select! {
                    biased;
                    m = consumer.recv() => Some(m),
                    _ = tokio::time::sleep(wait) => None,
                }
            };
            let mut flush = !first && msg.is_none();
            if let Some(m) = msg {
                let m = match m {
                    Ok(m) => m,
                    // Kafka refused this site (an ACL, a login): definite, say so and stop.
                    Err(e) if crate::kafka::Refusal::of_error(&e).is_some() => {
                        return Err(ApplyError::Transport(crate::kafka::TransportError::of("consuming the origins' topics", e)));
                    }
                    // Brokers down, a fetch timed out: librdkafka reconnects by itself; the
                    // applier keeps its place and waits (its lag grows meanwhile).
                    Err(e) => {
                        self.ctx.metrics.error(&self.ctx.site, ErrorKind::Kafka);
                        tracing::warn!(site = %self.ctx.site, error = %e, "consuming failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = self.ctx.shutdown.wait() => return Ok(()),
                        }
                        continue;
                    }
                };
                if let Some(txn) = self.accept(&m) {
                    ready_records += txn.records.len();
                    ready.push(txn);
                }
                flush |= ready_records >= max;
            }
            if flush && !ready.is_empty() {
                let batch = std::mem::take(&mut ready);
                ready_records = 0;
                self.apply_batch(batch).await?;
                if !self.parked_keys.is_empty() {
                    self.retry_parked_logged().await;
                }
            }
            if ready.is_empty() && last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = std::time::Instant::now();
                self.tick().await;
            }
        }
    }

    /// Reads every local table again (after a schema change).
    async fn reload_tables(&mut self) -> Result<(), ApplyError> {
        let db = self.ctx.config.database_of(&self.ctx.site).to_string();
        let mut plans = Plans::new();
        for (name, plan) in &self.plans {
            let target = TargetTable::load(self.control.pool(), &db, &plan.config.table).await?;
            let fresh = EntityPlan::new(name, &plan.config, target, &self.ctx.config.federation.control_database, &self.ctx.site)?;
            plans.insert(name.clone(), Arc::new(fresh));
        }
        self.plans = plans;
        tracing::info!(site = %self.ctx.site, "local tables read again after a schema change");
        Ok(())
    }

    /// Once a second while nothing waits to be applied: lag from heartbeats, the dead-letter
    /// gauge (letters may be dropped by hand), parked transactions.
    async fn tick(&mut self) {
        self.refresh_dead_letter_gauge().await;
        if !self.parked_keys.is_empty() {
            self.retry_parked_logged().await;
        }
    }

    async fn retry_parked_logged(&mut self) {
        if self.schema_changed.swap(false, Ordering::Relaxed) {
            if let Err(e) = self.reload_tables().await {
                self.schema_changed.store(true, Ordering::Relaxed);
                tracing::warn!(site = %self.ctx.site, error = %e, "reading the local tables again failed; will try again");
                return;
            }
        }
        if let Err(e) = self.retry_parked().await {
            tracing::warn!(site = %self.ctx.site, error = %e, "retrying parked transactions failed; will try again");
        }
    }

    /// Adds a message to its partition's transaction; returns the transaction once complete.
    fn accept(&mut self, m: &impl Message) -> Option<CompleteTxn> {
        if let Some(origin) = self.heartbeat_origins.get(m.topic()) {
            let ts = m
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .and_then(|v| v.get("ts_ms").and_then(serde_json::Value::as_i64));
            if let Some(ts) = ts {
                self.lag.heartbeat(origin, ts);
            }
            return None;
        }
        let topic = m.topic().to_string();
        let partition = m.partition();
        let origin = self.origins.get(&topic).cloned().unwrap_or_default();
        let head = head_of(&origin, m.payload());
        if let Ok(h) = &head {
            self.lag.received(&origin, h.ts_ms);
        }
        let incoming = Incoming { offset: m.offset(), key: m.key().map(<[u8]>::to_vec), value: m.payload().map(<[u8]>::to_vec), head };
        let pushed = self.assembler.push(&topic, partition, &origin, incoming);
        if pushed.discarded > 0 {
            // Capture restarted inside this transaction and publishes it again from its start.
            tracing::info!(site = %self.ctx.site, topic = %topic, discarded = pushed.discarded, "dropping the incomplete copy of a transaction republished after a capture restart");
        }
        if let Some(dropped) = pushed.dropped {
            // The start of this transaction never arrived, so it must not be applied in part.
            // Never expected: offsets are stored at transaction boundaries, and capture publishes
            // every transaction from its first record. A record that claims to start in the
            // middle is a capture bug (or a foreign producer): say what is dropped, and count it.
            let h = dropped.head.as_ref().expect("a dropped record has a head");
            tracing::error!(
                site = %self.ctx.site, topic = %topic, offset = dropped.offset, origin = %h.origin, entity = %h.entity,
                transaction = %h.transaction_id, total_order = h.total_order,
                key = %String::from_utf8_lossy(dropped.key.as_deref().unwrap_or_default()),
                "dropping a record whose transaction's first record never arrived: its change is not applied here (a capture bug: please report it)"
            );
            self.ctx.metrics.records(&self.ctx.site, &origin, vet::entity_label(&self.ctx.config, &h.entity), Outcome::Dropped, 1);
            self.ctx.metrics.error(&self.ctx.site, ErrorKind::Protocol);
        }
        pushed.complete
    }

    fn already_applied(&self, txn: &CompleteTxn) -> bool {
        match &txn.txn {
            Some((id, _)) => self.progress.get(&(txn.origin.clone(), id.stream.clone())).is_some_and(|seq| *seq >= id.seq),
            None => false,
        }
    }

    /// Applies a batch in one local transaction; on a definite error, one transaction at a time.
    async fn apply_batch(&mut self, batch: Vec<CompleteTxn>) -> Result<(), ApplyError> {
        let mut backoff = Duration::from_millis(100);
        let mut careful = false;
        loop {
            match self.try_apply(&batch, None, careful).await {
                Ok(Applied::Done) => return Ok(()),
                Ok(Applied::NeedsCare) => {
                    careful = true;
                    // A column the tables lacked when read: read them again first, so a column
                    // added here since is found, not waited for.
                    if self.schema_changed.swap(false, Ordering::Relaxed) {
                        self.reload_tables().await?;
                    }
                }
                Err(e) if e.policy() == Policy::DeadLetter => break,
                Err(e) if e.policy() == Policy::Stop => return Err(e),
                Err(e) => {
                    self.ctx.metrics.error(&self.ctx.site, ErrorKind::Database);
                    tracing::warn!(site = %self.ctx.site, error = %e, "apply failed; retrying");
                    self.retry_wait(&mut backoff).await?;
                    // A commit whose answer was lost may have happened: what it applied is then
                    // in apply_progress, and the retry skips it.
                    self.reload_progress().await;
                }
            }
        }
        for txn in &batch {
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.try_apply(std::slice::from_ref(txn), None, true).await {
                    Ok(_) => break,
                    Err(e) if e.policy() == Policy::Stop => return Err(e),
                    Err(e) if e.policy() == Policy::DeadLetter => {
                        let reason = e.to_string();
                        self.ctx.metrics.error(&self.ctx.site, ErrorKind::Apply);
                        tracing::warn!(site = %self.ctx.site, origin = %txn.origin, topic = %txn.topic, offset = txn.records[0].offset, reason = %reason, "transaction becomes a dead letter");
                        loop {
                            match self.try_apply(std::slice::from_ref(txn), Some(&reason), true).await {
                                Ok(_) => break,
                                Err(e) => {
                                    tracing::warn!(site = %self.ctx.site, error = %e, "storing a dead letter failed; retrying");
                                    self.retry_wait(&mut backoff).await?;
                                }
                            }
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(site = %self.ctx.site, error = %e, "apply failed; retrying");
                        self.retry_wait(&mut backoff).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Tells the lag tracker what a committed batch applied, and what still waits.
    fn record_applied(&self, batch: &[CompleteTxn]) {
        let mut newest: HashMap<&str, i64> = HashMap::new();
        for t in batch {
            let e = newest.entry(t.origin.as_str()).or_insert(t.source_ts_ms);
            *e = (*e).max(t.source_ts_ms);
        }
        for (origin, ts) in newest {
            let waiting = self.assembler.oldest_waiting(|topic| self.origins.get(topic).map(String::as_str) == Some(origin));
            self.lag.applied(origin, ts, waiting);
        }
    }

    async fn reload_progress(&mut self) {
        match self.control.load_progress().await {
            Ok(rows) => self.progress = rows.into_iter().map(|p| ((p.origin, p.stream), p.seq)).collect(),
            Err(e) => tracing::warn!(site = %self.ctx.site, error = %e, "reading apply progress failed"),
        }
    }

    async fn retry_wait(&self, backoff: &mut Duration) -> Result<(), ApplyError> {
        self.set_running(false);
        tokio::select! {
            _ = tokio::time::sleep(*backoff) => {}
            _ = self.ctx.shutdown.wait() => return Err(ApplyError::Stopped),
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(10));
        Ok(())
    }

    /// One local transaction: offsets (the echo marker) first, then the rows, then progress.
    /// With `dead_reason`, the transactions' records are stored as dead letters instead.
    ///
    /// Not `careful`: rows go in multi-row statements across the whole batch, and anything
    /// that would need a savepoint (a wait, a schema change) abandons it for the careful path.
    /// One local transaction for `batch`: offsets (the echo marker) first, then each source
    /// transaction (dead letters, duplicates skipped, the fast set-based path or the careful
    /// per-record one), then progress, commit, and the metrics of what it did.
    async fn try_apply(&mut self, batch: &[CompleteTxn], dead_reason: Option<&str>, careful: bool) -> Result<Applied, ApplyError> {
        let started = std::time::Instant::now();
        let mut tx = self.control.pool().begin().await.map_err(ApplyError::Database)?;
        self.control.write_offsets(&mut tx, &batch_offsets(batch)).await.map_err(ApplyError::Database)?;
        let mut tally = BatchTally::default();
        let mut pending = fast::Pending::default();
        if !careful && dead_reason.is_none() {
            pending.known = self.prefetch(&mut tx, batch).await?;
        }
        let prefetched = started.elapsed();
        for (index, t) in batch.iter().enumerate() {
            let progress_before = t.txn.as_ref().map(|(id, _)| {
                let slot = (t.origin.clone(), id.stream.clone());
                let before = tally.progress.get(&slot).cloned();
                (slot, before)
            });
            let duplicate = self.note_progress(t, &mut tally);
            if dead_reason.is_some() || t.records.iter().any(|r| r.head.is_err()) {
                // Unreadable messages and whole dead transactions become dead letters.
                self.store_dead(&mut tx, t, duplicate, dead_reason, &mut tally).await?;
                // ...and do not move their stream on: a broken or forged record's sequence
                // number must not make the origin's real later transactions look applied
                // (skipped as duplicates, silently). A copy of it is a dead letter again.
                if let (false, Some((slot, before))) = (duplicate, progress_before) {
                    match before {
                        Some(p) => tally.progress.insert(slot, p),
                        None => tally.progress.remove(&slot),
                    };
                }
            } else if duplicate {
                for inc in &t.records {
                    tally.count(&t.origin, inc.entity(), Outcome::Skipped);
                }
            } else if !careful {
                match self.apply_fast_txn(&mut tx, &mut pending, index, t, &mut tally).await {
                    Ok(()) => {}
                    Err(FastError::NeedsCare) => return Ok(Applied::NeedsCare),
                    Err(FastError::Failed(e)) => return Err(e),
                }
            } else {
                self.apply_careful_txn(&mut tx, index, t, &mut tally).await?;
            }
        }
        let decided = started.elapsed();
        match self.flush_all(&mut tx, &mut pending).await {
            Ok(()) => {}
            Err(FastError::NeedsCare) => return Ok(Applied::NeedsCare),
            Err(FastError::Failed(e)) => return Err(e),
        }
        let flushed = started.elapsed();
        let rows: Vec<Progress> = tally
            .progress
            .iter()
            .map(|((origin, stream), (seq, gtid, ts))| Progress {
                origin: origin.clone(),
                stream: stream.clone(),
                seq: *seq,
                gtid: gtid.clone(),
                source_ts_ms: *ts,
            })
            .collect();
        self.control.write_progress(&mut tx, &rows).await.map_err(ApplyError::Database)?;
        let before_commit = started.elapsed();
        tx.commit().await.map_err(ApplyError::Database)?;
        tracing::debug!(
            site = %self.ctx.site, txns = batch.len(), careful,
            prefetch_ms = prefetched.as_secs_f64() * 1e3, decide_ms = (decided - prefetched).as_secs_f64() * 1e3,
            flush_ms = (flushed - decided).as_secs_f64() * 1e3, commit_ms = (started.elapsed() - before_commit).as_secs_f64() * 1e3,
            "batch applied"
        );
        self.after_commit(batch, tally, started).await;
        Ok(Applied::Done)
    }

    /// Whether `t` was applied before (by an earlier batch or earlier in this one); if not, it
    /// becomes its stream's progress.
    fn note_progress(&self, t: &CompleteTxn, tally: &mut BatchTally) -> bool {
        let Some((id, gtid)) = &t.txn else { return false };
        let slot = (t.origin.clone(), id.stream.clone());
        let duplicate = self.already_applied(t) || tally.progress.get(&slot).is_some_and(|(seq, _, _)| *seq >= id.seq);
        if !duplicate {
            tally.progress.insert(slot, (id.seq, gtid.clone(), t.source_ts_ms));
        }
        duplicate
    }

    /// Stores every record of `t` as a dead letter (those of a duplicate are skipped).
    async fn store_dead(
        &self,
        tx: &mut Transaction<'_, MySql>,
        t: &CompleteTxn,
        duplicate: bool,
        dead_reason: Option<&str>,
        tally: &mut BatchTally,
    ) -> Result<(), ApplyError> {
        for inc in &t.records {
            let (entity, reason) = match (&inc.head, dead_reason) {
                (Err(reason), _) => (None, reason.as_str()),
                (Ok(h), Some(reason)) => (Some(h.entity.as_str()), reason),
                (Ok(h), None) => (Some(h.entity.as_str()), PART_OF_UNREADABLE),
            };
            if duplicate && inc.head.is_ok() {
                tally.count(&t.origin, inc.entity(), Outcome::Skipped);
                continue;
            }
            self.dead_letter(tx, t, inc, entity, reason).await?;
            tally.dead += 1;
            tally.count(&t.origin, inc.entity(), Outcome::DeadLetter);
        }
        Ok(())
    }

    /// The fast path: set-based writes, record by record so that a large transaction is never
    /// held parsed whole. A transaction touching a parked row needs the careful path.
    async fn apply_fast_txn(
        &mut self,
        tx: &mut Transaction<'_, MySql>,
        pending: &mut fast::Pending,
        index: usize,
        t: &CompleteTxn,
        tally: &mut BatchTally,
    ) -> Result<(), FastError> {
        if !self.parked_keys.is_empty() || !tally.newly_parked.is_empty() {
            for inc in &t.records {
                let r = self.read(inc)?;
                if self.waits_behind_parked(&t.origin, &r, &tally.newly_parked) {
                    return Err(FastError::NeedsCare);
                }
            }
        }
        let outcomes = self.write_fast(tx, pending, &t.origin, &t.records).await?;
        tally.applied_txns.push(index);
        for (inc, o) in t.records.iter().zip(outcomes) {
            tally.count(&t.origin, inc.entity(), o);
        }
        Ok(())
    }

    /// Whether a change to `r`'s rows must wait: an earlier change of `origin` to one of them
    /// is parked.
    fn waits_behind_parked(&self, origin: &str, r: &ChangeRecord, newly_parked: &HashSet<String>) -> bool {
        touched_rows(r).iter().map(|k| scoped(origin, k)).any(|k| self.parked_keys.contains(&k) || newly_parked.contains(&k))
    }

    /// The careful path: per record inside a savepoint; a transaction waiting for referenced
    /// rows, or behind a parked change of its rows, is parked.
    async fn apply_careful_txn(
        &mut self,
        tx: &mut Transaction<'_, MySql>,
        index: usize,
        t: &CompleteTxn,
        tally: &mut BatchTally,
    ) -> Result<(), ApplyError> {
        let records = t.records.iter().map(|inc| self.read(inc)).collect::<Result<Vec<_>, _>>()?;
        let all: Vec<usize> = (0..records.len()).collect();
        // A snapshot chunk does not wait behind parked changes of its rows: it is the state
        // of those rows at a later point, the parked changes still apply after it in their
        // order, and the rows they wait for are often in it (history that only a snapshot
        // brings): waiting would never end.
        if !t.is_snapshot() && records.iter().any(|r| self.waits_behind_parked(&t.origin, r, &tally.newly_parked)) {
            let reason = "an earlier transaction changing the same rows is waiting";
            tally.newly_parked.extend(self.park(tx, t, &records, &all, reason).await?);
            return Ok(());
        }
        let ready: Vec<&ChangeRecord> = records.iter().collect();
        sqlx::query("SAVEPOINT source_txn").execute(&mut **tx).await.map_err(ApplyError::Database)?;
        let applied = if t.is_snapshot() {
            // The rows that can go, go; those whose referenced rows are not here wait alone.
            self.apply_what_can(tx, &t.origin, &ready).await
        } else {
            self.apply_records(tx, &t.origin, &ready).await.map(|outcomes| (outcomes, Vec::new(), String::new()))
        };
        match applied {
            Ok((outcomes, waiting, why)) => {
                tally.applied_txns.push(index);
                for (i, o) in outcomes.into_iter().enumerate() {
                    if !waiting.contains(&i) {
                        tally.count(&t.origin, t.records[i].entity(), o);
                    }
                }
                if !waiting.is_empty() {
                    tally.newly_parked.extend(self.park(tx, t, &records, &waiting, &why).await?);
                }
            }
            Err(ApplyError::Wait(reason)) => {
                sqlx::query("ROLLBACK TO SAVEPOINT source_txn").execute(&mut **tx).await.map_err(ApplyError::Database)?;
                tally.newly_parked.extend(self.park(tx, t, &records, &all, &reason).await?);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// After a batch committed: the applier's state and the metrics of what it did.
    async fn after_commit(&mut self, batch: &[CompleteTxn], tally: BatchTally, started: std::time::Instant) {
        for ((o, s), (seq, _, _)) in tally.progress {
            self.progress.insert((o, s), seq);
        }
        self.parked_keys.extend(tally.newly_parked);
        self.count(tally.counts);
        if tally.dead > 0 {
            self.refresh_dead_letter_gauge().await;
        }
        let site = &self.ctx.site;
        self.ctx.metrics.apply_batch_duration.with_label_values(&[site]).observe(started.elapsed().as_secs_f64());
        let records: usize = batch.iter().map(|t| t.records.len()).sum();
        self.ctx.metrics.apply_batch_records.with_label_values(&[site]).observe(records as f64);
        let now = record::now_ms();
        for i in tally.applied_txns {
            let t = &batch[i];
            let latency = ((now - t.source_ts_ms) as f64 / 1000.0).max(0.0);
            self.ctx.metrics.apply_latency.with_label_values(&[site, &t.origin]).observe(latency);
        }
        self.record_applied(batch);
        self.set_running(true);
    }

    /// Apply's health flag and its metric, together.
    fn set_running(&self, running: bool) {
        self.ctx.health.apply_running.store(running, Ordering::Relaxed);
        self.ctx.metrics.running(&self.ctx.site, Component::Apply, running);
    }

    fn count(&self, counts: HashMap<(String, String, Outcome), u64>) {
        for ((origin, entity, outcome), n) in counts {
            self.ctx.metrics.records(&self.ctx.site, &origin, vet::entity_label(&self.ctx.config, &entity), outcome, n);
        }
    }

    async fn refresh_dead_letter_gauge(&self) {
        if let Ok(n) = self.control.count_dead_letters().await {
            self.ctx.metrics.dead_letters.with_label_values(&[&self.ctx.site]).set(n);
        }
    }

    /// Applies the records of one source transaction. A record whose referenced rows are not
    /// here yet is tried again after the others (a tree may arrive children first); the
    /// transaction waits only if no order of its records resolves every reference.
    async fn apply_records(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        origin: &str,
        records: &[&ChangeRecord],
    ) -> Result<Vec<Outcome>, ApplyError> {
        match self.apply_what_can(tx, origin, records).await? {
            (outcomes, waiting, _) if waiting.is_empty() => Ok(outcomes),
            (_, _, why) => Err(ApplyError::Wait(why)),
        }
    }

    /// Applies what it can of `records`, in their order where they change one row: the
    /// outcomes, the records that wait for rows not here (none written) and why. The caller
    /// decides whether the rest may go without them: a source transaction may not (it is
    /// rolled back to its savepoint and waits whole), a snapshot chunk may (each row is the
    /// state of that row alone).
    async fn apply_what_can(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        origin: &str,
        records: &[&ChangeRecord],
    ) -> Result<(Vec<Outcome>, Vec<usize>, String), ApplyError> {
        let mut outcomes: Vec<Outcome> = vec![Outcome::Skipped; records.len()];
        let mut pending: Vec<usize> = (0..records.len()).collect();
        loop {
            let mut deferred = Vec::new();
            let mut deferred_rows: HashSet<String> = HashSet::new();
            let mut last_wait = None;
            let mut progressed = false;
            for i in pending {
                let r = records[i];
                let row = row_key(origin, r);
                if deferred_rows.contains(&row) {
                    // Keep the order of changes to one row.
                    deferred.push(i);
                    continue;
                }
                let Some(plan) = plan_for(&self.ctx.config, &self.ctx.site, &self.plans, origin, r) else {
                    progressed = true;
                    continue;
                };
                match self.apply_one(tx, origin, plan, r).await {
                    Ok(o) => {
                        outcomes[i] = o;
                        progressed = true;
                    }
                    Err(ApplyError::Wait(why)) => {
                        deferred.push(i);
                        deferred_rows.insert(row);
                        last_wait = Some(why);
                    }
                    // The origin's schema changed before this site's: wait for the operator to
                    // apply the same change here (the table is read again before each retry).
                    Err(ApplyError::MissingColumn { message, .. }) => {
                        self.schema_changed.store(true, Ordering::Relaxed);
                        return Err(ApplyError::Wait(format!("{message} (yet): apply the origin's schema change here")));
                    }
                    Err(e) => return Err(e),
                }
            }
            if deferred.is_empty() || !progressed {
                return Ok((outcomes, deferred, last_wait.unwrap_or_default()));
            }
            pending = deferred;
        }
    }

    /// Parks the records of `t` at `which` (indexes into `records`, its parsed records) with
    /// `reason`; returns the rows they touch ([`scoped`]), which later changes wait behind.
    async fn park(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        t: &CompleteTxn,
        records: &[ChangeRecord],
        which: &[usize],
        reason: &str,
    ) -> Result<Vec<String>, ApplyError> {
        // The records as a JSON array, straight from the messages.
        let mut json = b"[".to_vec();
        for (n, &i) in which.iter().enumerate() {
            if n > 0 {
                json.push(b',');
            }
            json.extend_from_slice(t.records[i].value.as_deref().unwrap_or(b"null"));
        }
        json.push(b']');
        let chosen: Vec<&ChangeRecord> = which.iter().map(|&i| &records[i]).collect();
        let keys = row_keys(&t.origin, &chosen);
        let offset = t.records[which[0]].offset;
        let parked = NewParked {
            origin: &t.origin,
            topic: &t.topic,
            partition: t.partition,
            offset,
            row_keys: &keys.join("\n"),
            records: &json,
            reason: &vet::fit_reason(reason),
        };
        // A row the control table refuses (a hostile key too long) makes the transaction a
        // dead letter, not a retry without end.
        self.control.insert_parked(tx, &parked).await.map_err(ApplyError::classify)?;
        tracing::info!(site = %self.ctx.site, origin = %t.origin, offset, records = which.len(), reason = %reason, "transaction waits for the rows it references");
        Ok(keys.iter().map(|k| scoped(&t.origin, k)).collect())
    }

    /// Applies one record; a value for a column that neither this site nor, by now, the
    /// origin has (both dropped it) is obsolete, and the rest of the record is applied.
    async fn apply_one(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        origin: &str,
        plan: &EntityPlan,
        record: &ChangeRecord,
    ) -> Result<Outcome, ApplyError> {
        self.note_columns(origin, record, false);
        let mut stripped: Option<ChangeRecord> = None;
        loop {
            let r = stripped.as_ref().unwrap_or(record);
            match plan.apply(tx, origin, r, &self.plans).await {
                Err(ApplyError::MissingColumn { column: Some(column), message }) => {
                    if !self.dropped_at_origin(origin, record, &column) {
                        return Err(ApplyError::MissingColumn { column: Some(column), message });
                    }
                    tracing::info!(site = %self.ctx.site, origin, entity = %plan.name, column = %column, "the origin has dropped this column since the change: its value is obsolete, the rest is applied");
                    let mut r = r.clone();
                    for image in [r.before.as_mut(), r.after.as_mut()].into_iter().flatten() {
                        image.remove(&column);
                    }
                    stripped = Some(r);
                }
                other => return other,
            }
        }
    }

    /// Remembers the columns of `record` if its entity is watched (`force`: watch it).
    fn note_columns(&self, origin: &str, record: &ChangeRecord, force: bool) {
        let mut seen = self.columns_seen.lock().expect("not poisoned");
        if !force && seen.watched.is_empty() {
            return;
        }
        let slot = (origin.to_string(), record.sitesync.entity.clone());
        if !force && !seen.watched.contains(&slot) {
            return;
        }
        let Ok(txn) = TxnId::parse(&record.transaction.id) else { return };
        let Some(image) = record.after.as_ref().or(record.before.as_ref()) else { return };
        let newer = seen.latest.get(&slot).is_none_or(|(t, _)| t.stream != txn.stream || t.seq <= txn.seq);
        if newer {
            seen.latest.insert(slot, (txn, image.keys().cloned().collect()));
        }
    }

    /// Whether a later record of `record`'s entity from `origin` no longer has `column`: the
    /// origin dropped it after the change. Starts watching the entity otherwise.
    fn dropped_at_origin(&self, origin: &str, record: &ChangeRecord, column: &str) -> bool {
        let mut seen = self.columns_seen.lock().expect("not poisoned");
        let slot = (origin.to_string(), record.sitesync.entity.clone());
        seen.watched.insert(slot.clone());
        let Ok(txn) = TxnId::parse(&record.transaction.id) else { return false };
        seen.latest.get(&slot).is_some_and(|(t, columns)| t.stream == txn.stream && t.seq > txn.seq && !columns.contains(column))
    }

    async fn dead_letter(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        t: &CompleteTxn,
        inc: &Incoming,
        entity: Option<&str>,
        reason: &str,
    ) -> Result<(), ApplyError> {
        self.control
            .insert_dead_letter(
                tx,
                &NewDeadLetter {
                    origin: Some(&t.origin),
                    topic: &t.topic,
                    partition: t.partition,
                    offset: inc.offset,
                    entity: entity.map(vet::fit_entity),
                    reason: &vet::fit_reason(reason),
                    key: inc.key.as_deref(),
                    value: inc.value.as_deref(),
                },
            )
            .await
            .map_err(ApplyError::Database)
    }
}

impl Applier {
    /// The whole record of `inc`, vetted ([`vet::read`]).
    fn read(&self, inc: &Incoming) -> Result<ChangeRecord, ApplyError> {
        vet::read(&self.ctx.config, &self.plans, inc)
    }
}

/// The head of a message on the topic of site `origin` (see [`RecordHead`]), or why it has none:
/// unreadable, or claiming another origin.
fn head_of(origin: &str, payload: Option<&[u8]>) -> Result<RecordHead, String> {
    let h = RecordHead::from_slice(payload).map_err(|e| e.to_string())?;
    if h.origin != origin {
        return Err(format!("record says origin `{}` but arrived on the topic of site `{origin}`", record::shown(&h.origin)));
    }
    Ok(h)
}

/// The plan that applies `r` (from `origin`'s topic) at `site`; None when the record is not
/// this site's to apply: made here, addressed to another site, of an entity not routed here.
fn plan_for<'p>(config: &Config, site: &str, plans: &'p Plans, origin: &str, r: &ChangeRecord) -> Option<&'p Arc<EntityPlan>> {
    if r.sitesync.origin == site || !r.sitesync.is_for(site) || !config.routes_entity(origin, site, &r.sitesync.entity) {
        return None;
    }
    plans.get(&r.sitesync.entity)
}

/// The reason of the dead letters of a transaction's readable records when another of its
/// records is unreadable.
const PART_OF_UNREADABLE: &str = "part of a transaction with an unreadable record";

/// A record whose head was readable but not the whole of it: its transaction becomes dead
/// letters (via the one-at-a-time retry).
fn unreadable_record(reason: String) -> ApplyError {
    ApplyError::Definite(format!("unreadable record: {reason}"))
}

/// A row of `origin`'s changes, as the parked rows are kept in memory: later changes of one
/// origin wait behind its parked ones, in the origin's commit order. Changes from different
/// origins are concurrent (last writer wins orders them where configured): one never waits
/// behind another's, since the waiting one may be what the parked one needs (a row the other
/// site created, then referred to).
fn scoped(origin: &str, row: &str) -> String {
    format!("{origin}\u{1f}{row}")
}

/// `entity|key` of the rows a record touches: its key after the change and, when the key
/// changed, before it. Later changes of the same origin to any of them wait behind a parked
/// transaction ([`scoped`]).
fn touched_rows(r: &ChangeRecord) -> Vec<String> {
    let entity = &r.sitesync.entity;
    let mut out = vec![format!("{entity}|{}", serde_json::Value::Object(r.sitesync.key.clone()))];
    if let (Some(before), Some(_)) = (&r.before, &r.after) {
        let mut old = serde_json::Map::new();
        for k in r.sitesync.key.keys() {
            old.insert(k.clone(), before.get(k).cloned().unwrap_or(serde_json::Value::Null));
        }
        if old != r.sitesync.key {
            out.push(format!("{entity}|{}", serde_json::Value::Object(old)));
        }
    }
    out
}

/// The first row a record touches (ordering of changes to one row within a transaction).
fn row_key(_origin: &str, r: &ChangeRecord) -> String {
    touched_rows(r).swap_remove(0)
}

fn row_keys(_origin: &str, records: &[&ChangeRecord]) -> Vec<String> {
    let mut keys: Vec<String> = records.iter().flat_map(|r| touched_rows(r)).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// How a batch's local transaction ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    /// Committed.
    Done,
    /// Rolled back: the fast path met something only the careful path handles.
    NeedsCare,
}

/// What one local apply transaction did, kept for after its commit.
#[derive(Default)]
struct BatchTally {
    /// Records by (origin, entity, outcome).
    counts: HashMap<(String, String, Outcome), u64>,
    /// Indexes of the source transactions applied (for their latency).
    applied_txns: Vec<usize>,
    /// (origin, stream) -> (sequence, GTID, source time) of the last transaction applied.
    progress: HashMap<(String, String), (u64, String, i64)>,
    /// Rows whose changes this batch parked (scoped by origin).
    newly_parked: HashSet<String>,
    /// Dead letters stored.
    dead: i64,
}

impl BatchTally {
    fn count(&mut self, origin: &str, entity: String, outcome: Outcome) {
        *self.counts.entry((origin.to_string(), entity, outcome)).or_default() += 1;
    }
}

/// The next offset of each topic partition after `batch`: what the local transaction stores.
fn batch_offsets(batch: &[CompleteTxn]) -> Vec<control::Offset> {
    let mut offsets: Vec<control::Offset> = Vec::new();
    for t in batch {
        match offsets.iter_mut().find(|o| o.topic == t.topic && o.partition == t.partition) {
            Some(o) => o.next = o.next.max(t.next_offset()),
            None => offsets.push(control::Offset { topic: t.topic.clone(), partition: t.partition, next: t.next_offset() }),
        }
    }
    offsets
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn every_error_has_one_policy() {
        assert_eq!(ApplyError::Database(sqlx::Error::PoolTimedOut).policy(), Policy::Retry);
        assert_eq!(ApplyError::Wait("tag b-root".into()).policy(), Policy::Wait);
        assert_eq!(ApplyError::MissingColumn { column: Some("x".into()), message: "no x".into() }.policy(), Policy::Wait);
        assert_eq!(ApplyError::Definite("too long".into()).policy(), Policy::DeadLetter);
        assert_eq!(ApplyError::Schema("no table".into()).policy(), Policy::DeadLetter);
        assert_eq!(ApplyError::Config("bad".into()).policy(), Policy::Stop);
        assert_eq!(ApplyError::Stopped.policy(), Policy::Stop);
        // A driver error that is not the server's verdict on the data may pass.
        assert_eq!(ApplyError::classify(sqlx::Error::PoolClosed).policy(), Policy::Retry);
    }
}
