//! Capture: tails the site's binlog for the configured tables and publishes one change record
//! per row change to the site's topic, in commit order.
//!
//! Delivery contract: at least once, at transaction granularity. The resume position is written
//! only once Kafka acknowledged every record before it ([`publisher`]), so after a crash capture
//! starts again at a transaction boundary and may publish the tail of its last transactions a
//! second time; the applier drops those by GTID. Transactions written by sitesync's own applier
//! (recognised by the echo marker, see [`crate::control`]) are read but not published.
//!
//! A site that exports (`[export]`) runs a second reader of the same loop, [`run_export`]: it
//! publishes the exported tables' changes, whoever wrote them, to their Debezium-shaped topics,
//! on a thread, connection and checkpoint of its own.

mod decode;
mod entity;
mod envelope;
mod events;
mod export;
mod isolation;
mod publisher;
mod refs;
mod rows;
mod snapshot;
mod stamps;
mod table;

use crate::mysql::charset;
pub use crate::mysql::charset::TextEncoding;
pub use decode::encode_value;
pub use table::TableInfo;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData, TableMapEvent};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts};
use serde_json::{Map, Value};

use crate::config::{Config, EntityConfig, Filter};
use crate::control::{self, Control, ControlError, ECHO_MARKER_TABLE};
use crate::position::{Gtid, GtidState};
use crate::preflight;
use crate::record::{self, Op};
use crate::shutdown::Shutdown;
use crate::telemetry::{Component, ErrorKind, Health, Metrics};
use entity::EntityTable;
use envelope::{Encoded, SiteParts};
use publisher::{Checkpoint, Publisher};
use refs::RefResolver;

/// Why capture stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The source server refused or failed.
    #[error("site `{site}` source database: {source}")]
    Source {
        /// Site id.
        site: String,
        /// The driver error.
        #[source]
        source: mysql_async::Error,
    },
    /// The server is configured in a way capture cannot work with.
    #[error("site `{site}` source database is not ready for capture:\n  {}", .problems.join("\n  "))]
    ServerSettings {
        /// Site id.
        site: String,
        /// Each failed setting with its fix.
        problems: Vec<String>,
    },
    /// The binlog holds something capture refuses to guess about.
    #[error("binlog {file}:{pos}: {reason}")]
    Binlog {
        /// File.
        file: String,
        /// Position.
        pos: u64,
        /// What was found.
        reason: String,
    },
    /// The resume position is no longer on the server.
    #[error("site `{site}`: the server no longer has the binlog from GTID position `{position}` ({detail}). Changes after it were purged and cannot be captured: stop capture, run `sitesync init --reset-position` (capture then starts at the server's current position), start it again, and re-seed the other sites with `sitesync snapshot`")]
    PositionPurged {
        /// Site id.
        site: String,
        /// The requested position.
        position: String,
        /// The server's message.
        detail: String,
    },
    /// Kafka refused a record.
    #[error("kafka: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// Kafka did not acknowledge a record in time.
    #[error("kafka did not acknowledge a record: {0}")]
    Delivery(#[source] rdkafka::error::KafkaError),
    /// The control database failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A configuration problem found against the live schema.
    #[error("{0}")]
    Config(String),
    /// A bug.
    #[error("internal: {0}")]
    Internal(String),
}

impl CaptureError {
    /// The `sitesync_errors_total` kind of this error.
    fn kind(&self) -> ErrorKind {
        match self {
            CaptureError::Source { .. } | CaptureError::ServerSettings { .. } | CaptureError::PositionPurged { .. } => ErrorKind::Database,
            CaptureError::Control(_) => ErrorKind::Database,
            CaptureError::Kafka(_) | CaptureError::Delivery(_) => ErrorKind::Kafka,
            CaptureError::Binlog { .. } => ErrorKind::Decode,
            CaptureError::Config(_) | CaptureError::Internal(_) => ErrorKind::Protocol,
        }
    }

    /// Whether reconnecting may help (network, server restart).
    fn is_transient(&self) -> bool {
        match self {
            CaptureError::Source { source, .. } => {
                matches!(source, mysql_async::Error::Io(_) | mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed))
            }
            _ => false,
        }
    }
}

/// What capture needs from the process.
pub struct CaptureContext {
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

/// What a table id stands for in the current binlog.
#[derive(Clone)]
enum TableRole {
    /// A configured entity's table.
    Entity(Arc<EntityTable>),
    /// This site's echo marker: the transaction was written by sitesync's applier.
    EchoMarker,
    /// A snapshot request (`sitesync snapshot`).
    SnapshotRequest(Arc<TableInfo>),
    /// A snapshot watermark.
    Watermark(Arc<TableInfo>),
    /// `row_versions`: the stamps this site's applier records (see [`crate::stamp`]).
    RowVersions(Arc<TableInfo>),
    /// `stopped_entities`: a `sitesync resume` is read here.
    StoppedEntities(Arc<TableInfo>),
    /// A configured entity's table whose table map does not fit its configuration (after a
    /// schema change): its rows stop the entity (see [`isolation`]).
    Unusable { entity: String, table: String, reason: String },
    /// Anything else.
    Other,
}

/// The transaction being read.
#[derive(Default)]
struct Txn {
    gtid: Option<Gtid>,
    /// `gtid` as text, rendered once for all its records.
    gtid_text: Option<String>,
    server_id: u32,
    standalone: bool,
    echo: bool,
    records: u64,
    per_table: HashMap<String, u64>,
    /// Held back one record so the last of the transaction can be flagged.
    pending: Option<Encoded>,
    /// Read before for the other entities: only resumed entities' rows are published, under
    /// this transaction id (see [`isolation`]).
    replay_id: Option<String>,
}

struct Reader {
    ctx: Arc<CaptureContext>,
    role: Role,
    /// Whether the binlog connection streams.
    streaming: bool,
    /// The export stream: capture's position when last seen to move, and when.
    capture_seen: Option<(i64, std::time::Instant)>,
    db: String,
    control_db: String,
    /// Position at the last transaction boundary read.
    at: BinlogPlace,
    /// What the binlog's table maps and the server's collations said.
    known: KnownTables,
    txn: Option<Txn>,
    last_source_ts_ms: i64,
    refs: RefResolver,
    /// Connections for reference lookups and snapshots.
    pool: mysql_async::Pool,
    pool_opts: Opts,
    /// The snapshot running, those asked for after it, and their control table.
    snapshots: Snapshots,
    last_heartbeat: Option<std::time::Instant>,
    /// What every record of this site shares.
    site_parts: SiteParts,
    /// Buffers of the last published record, for the next.
    spare: Encoded,
    /// Last writer wins: the latest stamp of each row, in binlog order (see [`stamps`]).
    stamps: stamps::Stamps,
    /// Entities stopped alone, and the catch-up of resumed ones.
    isolation: isolation::Isolation,
    /// The export topics' records (`[export]`), when this site exports anything.
    exporter: export::Exporter,
}

/// Snapshots: one runs at a time.
struct Snapshots {
    running: Option<snapshot::Snapshot>,
    /// Asked for while one ran: (request id, entities).
    queued: VecDeque<(u64, String)>,
    /// Snapshot requests and watermarks.
    requests: control::SnapshotRequests,
}

/// A transaction boundary of the binlog: GTID state, and file and position after it.
struct BinlogPlace {
    gtid: GtidState,
    file: String,
    pos: u64,
}

/// Tables as the binlog and the server describe them.
#[derive(Default)]
struct KnownTables {
    /// Role of each table id of the current binlog.
    tables: HashMap<u64, TableRole>,
    /// The last table map read per table id, with its role: a table map repeats with every
    /// transaction, and parsing it costs more than comparing its bytes.
    maps: HashMap<u64, (Vec<u8>, TableRole)>,
    /// Tables already announced in the log.
    warned: HashSet<String>,
    /// Collation id -> text encoding.
    encodings: HashMap<u16, TextEncoding>,
    /// Collation name -> id (snapshots describe tables from information_schema).
    charset_names: HashMap<String, u16>,
}

/// Why [`Reader::stream`] returned without an error.
enum Ended {
    Shutdown,
    /// Read again from the resumed entities' position.
    Rewind,
}

/// Capture reading transactions committed longer ago than this is catching up a backlog.
const CATCHING_UP: Duration = Duration::from_secs(5);

/// Capture whose position has not moved for this long is not catching anything up.
const CAPTURE_STILL: Duration = Duration::from_secs(5);

/// The longest the export stream waits for capture between two of its transactions.
const GIVE_WAY_AT_ONCE: Duration = Duration::from_secs(20);

/// Record buffers up to this size are reused for the next record.
const KEEP_RECORD_BUFFER: usize = 64 * 1024;

/// Which of a site's two binlog readers a [`Reader`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Replication: the site topic, its snapshots, last-writer-wins stamps, stopped entities.
    Replication,
    /// The export stream (`[export]`): the exported tables' changes, whoever wrote them, to their
    /// Debezium-shaped topics, on a binlog connection and checkpoint of its own, so that a slow
    /// export never holds replication back.
    Export,
}

impl Role {
    /// The key of this reader's row in `capture_checkpoint`.
    fn checkpoint_key(self, site: &str) -> String {
        match self {
            Role::Replication => site.to_string(),
            Role::Export => control::export_checkpoint_key(site),
        }
    }

    fn component(self) -> Component {
        match self {
            Role::Replication => Component::Capture,
            Role::Export => Component::Export,
        }
    }
}

/// Runs capture until shutdown or a definite error.
pub async fn run(ctx: CaptureContext) -> Result<(), CaptureError> {
    read(Arc::new(ctx), Role::Replication).await
}

/// How long the export stream waits before it starts again after a definite error.
const EXPORT_RETRY: Duration = Duration::from_secs(30);

/// Runs the export stream of a site that exports (`[export]`) until shutdown: on threads of its
/// own, at a lower CPU priority unless `[export] cpu_priority = "normal"`, giving way to capture
/// while capture catches up a backlog (`[export] trail_seconds`). A definite error
/// (a table that no longer fits its configuration, Kafka refusing the topic) is logged and the
/// stream starts again from its checkpoint after [`EXPORT_RETRY`]; replication goes on meanwhile.
pub async fn run_export(ctx: CaptureContext) -> Result<(), CaptureError> {
    let ctx = Arc::new(ctx);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread_ctx = ctx.clone();
    std::thread::Builder::new()
        .name("sitesync-export".into())
        .spawn(move || {
            if thread_ctx.config.export.low_priority() {
                // Threads created from here on (the runtime's, librdkafka's) inherit it.
                if let Err(e) = rustix::process::setpriority_process(None, 10) {
                    tracing::warn!(error = %e, "could not lower the export stream's CPU priority");
                }
            }
            let _ = done_tx.send(export_thread(thread_ctx));
        })
        .map_err(|e| CaptureError::Internal(format!("export thread: {e}")))?;
    done_rx.await.unwrap_or_else(|_| Err(CaptureError::Internal("the export thread ended without a result".into())))
}

/// The export thread: the export stream on a runtime of its own, started again after a definite
/// error or a panic (a bug in the export must not stop replication), until shutdown.
fn export_thread(ctx: Arc<CaptureContext>) -> Result<(), CaptureError> {
    loop {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CaptureError::Internal(format!("export runtime: {e}")))?;
        let run_ctx = ctx.clone();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(read(run_ctx, Role::Export))));
        let why = match outcome {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => {
                ctx.metrics.error(&ctx.site, e.kind());
                e.to_string()
            }
            Err(panic) => {
                let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                format!("internal error (please report it): {}", message.unwrap_or_else(|| "a panic".into()))
            }
        };
        ctx.metrics.running(&ctx.site, Component::Export, false);
        tracing::error!(site = %ctx.site, error = %why, retry_in_s = EXPORT_RETRY.as_secs(), "the export stream stopped; replication goes on, the export starts again from its checkpoint");
        *ctx.health.export_error.lock().expect("export error lock") = Some((record::now_ms(), why));
        let stopping = runtime.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(EXPORT_RETRY) => false,
                _ = ctx.shutdown.wait() => true,
            }
        });
        if stopping {
            return Ok(());
        }
    }
}

/// One binlog reader of the site until shutdown or a definite error.
async fn read(ctx: Arc<CaptureContext>, role: Role) -> Result<(), CaptureError> {
    let site_cfg = ctx.config.site(&ctx.site).map_err(|e| CaptureError::Config(e.to_string()))?.clone();
    let url = site_cfg.mysql.expose();
    let connect = || control::connect(&ctx.site, url, 2);
    let Some(pool) =
        crate::shutdown::retry_while_unreachable(&ctx.shutdown, "the database", &ctx.site, ControlError::is_unreachable, connect).await
    else {
        return Ok(());
    };
    let pool = pool?;
    if role == Role::Replication {
        check_tables(&ctx, &pool).await?;
    }
    let ctl = Control::new(pool, &ctx.config.federation.control_database);

    let producer: crate::kafka::Producer = crate::kafka::create(
        &crate::kafka::producer_config(&ctx.config.kafka).map_err(|e| CaptureError::Config(e.to_string()))?,
        "creating the producer",
    )
    .map_err(|e| CaptureError::Config(e.to_string()))?;
    let topic = ctx.config.topic_of(&ctx.site);
    let publish_duration = match role {
        Role::Replication => ctx.metrics.capture_publish_duration.with_label_values(&[&ctx.site]),
        // Not in capture's histogram: the export's records are not the site's replication.
        Role::Export => prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("export_publish", "unregistered"))
            .map_err(|e| CaptureError::Internal(e.to_string()))?,
    };
    let mut publisher = Publisher::start(
        producer,
        topic.clone(),
        publish_duration,
        ctx.config.capture.max_in_flight,
        ctl.clone(),
        role.checkpoint_key(&ctx.site),
        Duration::from_millis(ctx.config.capture.checkpoint_interval_ms),
    );

    let dsn = crate::mysql::dsn::Dsn::parse(site_cfg.mysql.expose())
        .map_err(|e| CaptureError::Config(format!("sites.{}.mysql: {e}", ctx.site)))?;
    // One decision for every connection capture opens (binlog, snapshots, reference lookups):
    // with ssl-mode=preferred, whether this server offers TLS.
    let opts = crate::mysql::dsn::resolve(&dsn).await.map_err(|source| CaptureError::Source { site: ctx.site.clone(), source })?;
    let mut reader = Reader {
        role,
        streaming: false,
        capture_seen: None,
        db: ctx.config.database_of(&ctx.site).to_string(),
        control_db: ctx.config.federation.control_database.clone(),
        at: BinlogPlace { gtid: GtidState::empty_mariadb(), file: String::new(), pos: 4 },
        known: KnownTables::default(),
        txn: None,
        last_source_ts_ms: 0,
        refs: RefResolver::new(mysql_async::Pool::new(opts.clone()), ctx.config.database_of(&ctx.site).to_string(), ctx.config.clone()),
        pool: mysql_async::Pool::new(opts.clone()),
        pool_opts: opts.clone(),
        snapshots: Snapshots { running: None, queued: VecDeque::new(), requests: ctl.snapshots() },
        last_heartbeat: None,
        site_parts: SiteParts::new(&ctx.config.federation.name, &ctx.site),
        spare: Encoded::default(),
        stamps: stamps::Stamps::new(ctl.clone(), ctx.site.clone()),
        isolation: isolation::Isolation::new(&ctl, &ctx.site, ctx.metrics.clone(), ctx.health.clone()),
        exporter: export::Exporter::new(format!("{}.export.{}", ctx.config.federation.topic_prefix, ctx.site)),
        ctx: ctx.clone(),
    };
    let mut first = true;
    let mut backoff = Duration::from_millis(200);
    let result = loop {
        match reader.stream(&opts, &ctl, &mut publisher, first).await {
            Ok(Ended::Shutdown) => break Ok(()),
            Ok(Ended::Rewind) => first = false,
            Err(e) if e.is_transient() && !ctx.shutdown.is_triggered() => {
                // A connection that streamed before it broke starts the backoff afresh.
                if reader.streaming {
                    backoff = Duration::from_millis(200);
                }
                reader.set_running(false);
                ctx.metrics.error(&ctx.site, ErrorKind::Database);
                tracing::warn!(site = %ctx.site, stream = ?role, error = %e, retry_in_ms = backoff.as_millis() as u64, "binlog connection lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = ctx.shutdown.wait() => break Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                first = false;
            }
            Err(e) => break Err(e),
        }
    };
    reader.set_running(false);
    let finished = publisher.finish().await;
    result.and(finished)
}

/// Every configured column of every entity captured here must exist: a mistake stops start-up
/// with the file and key, rather than the first change to the table.
async fn check_tables(ctx: &CaptureContext, pool: &sqlx::MySqlPool) -> Result<(), CaptureError> {
    let config = &ctx.config;
    let db = config.database_of(&ctx.site);
    let mut problems = Vec::new();
    for name in config.captured_at(&ctx.site) {
        let table = &config.entities[name].table;
        let described = crate::mysql::schema::load_sqlx(pool, db, table)
            .await
            .map_err(|e| CaptureError::Config(format!("reading the schema of {db}.{table}: {e}")))?;
        problems.extend(crate::config::schema_problems(config, name, &ctx.site, described.as_ref()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CaptureError::Config(config.invalid(problems).to_string()))
    }
}

impl Reader {
    /// Whether this reader streams: its metric, and for replication the health flag.
    fn set_running(&mut self, running: bool) {
        self.streaming = running;
        if self.role == Role::Replication {
            self.ctx.health.capture_running.store(running, Ordering::Relaxed);
        } else if running {
            *self.ctx.health.export_error.lock().expect("export error lock") = None;
        }
        self.ctx.metrics.running(&self.ctx.site, self.role.component(), running);
    }

    fn source_err(&self, source: mysql_async::Error) -> CaptureError {
        CaptureError::Source { site: self.ctx.site.clone(), source }
    }

    /// Connects, checks the server, and streams until shutdown or error.
    async fn stream(&mut self, opts: &Opts, ctl: &Control, publisher: &mut Publisher, first: bool) -> Result<Ended, CaptureError> {
        let mut conn = Conn::new(opts.clone()).await.map_err(|e| self.source_err(e))?;
        let settings = preflight::read_settings(&mut conn).await.map_err(|e| self.source_err(e))?;
        let problems: Vec<String> =
            preflight::judge(&settings).into_iter().filter(|f| !f.ok).map(|f| format!("{}: {}", f.name, f.detail)).collect();
        if !problems.is_empty() {
            return Err(CaptureError::ServerSettings { site: self.ctx.site.clone(), problems });
        }
        let collations: Vec<(u16, String, String)> = conn
            .query("SELECT ID, CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL AND CHARACTER_SET_NAME IS NOT NULL")
            .await
            .map_err(|e| self.source_err(e))?;
        // Character sets sitesync has no table of are learnt from this server, for those the
        // application database uses now (see mysql::charset).
        let in_use = charset::in_use(&mut conn, &self.db).await.map_err(|e| self.source_err(e))?;
        let learnt = charset::load(&mut conn, &in_use).await.map_err(|e| match e {
            charset::LoadError::Server { source, .. } => self.source_err(source),
            table => CaptureError::Config(format!("site {}: {table}", self.ctx.site)),
        })?;
        let unsupported: Vec<&String> =
            in_use.iter().filter(|cs| learnt.get(*cs).is_none_or(|e| *e == TextEncoding::Unsupported)).collect();
        if !unsupported.is_empty() {
            tracing::warn!(site = %self.ctx.site, charsets = ?unsupported, "character sets in use that sitesync cannot carry exactly: a value in one stops its entity (`sitesync check` names the columns)");
        }
        self.known.encodings =
            collations.iter().map(|(id, cs, _)| (*id, learnt.get(cs).copied().unwrap_or_else(|| TextEncoding::of_charset(cs)))).collect();
        self.known.charset_names = collations.into_iter().map(|(id, _, name)| (name, id)).collect();

        if first {
            let key = self.role.checkpoint_key(&self.ctx.site);
            let stored = match self.role {
                Role::Replication => ctl.load_checkpoint(&key).await?,
                // (`sitesync run` placed it already, unless the database was unreachable then.)
                Role::Export => ctl.export_checkpoint(&self.ctx.site).await?,
            };
            match stored {
                Some(stored) => {
                    self.at.gtid = GtidState::parse(&stored.gtid, !settings.mariadb)
                        .map_err(|e| CaptureError::Config(format!("stored capture checkpoint: {e}")))?;
                    self.at.file = stored.file;
                    self.at.pos = stored.pos;
                    tracing::info!(site = %self.ctx.site, stream = ?self.role, gtid = %self.at.gtid, "resuming from the checkpoint");
                }
                None => {
                    self.at.gtid = GtidState::parse(&settings.gtid_position, !settings.mariadb)
                        .map_err(|e| CaptureError::Config(format!("server GTID position: {e}")))?;
                    ctl.save_checkpoint(&key, &Checkpoint { gtid: self.at.gtid.to_string(), file: String::new(), pos: 4, source_ts_ms: 0 })
                        .await?;
                    tracing::info!(site = %self.ctx.site, gtid = %self.at.gtid, "no checkpoint: capture starts at the server's current position");
                }
            }
        }
        self.known.tables.clear();
        self.known.maps.clear();
        self.txn = None;
        if self.role == Role::Replication {
            if let Some(start) = self.isolation.load(&self.at.gtid, !settings.mariadb).await? {
                self.at.gtid = start;
            }
        }
        if first {
            // A snapshot that was running, or asked for, when capture stopped starts (again).
            let running = self.snapshots.requests.open().await?;
            for (id, entities) in running {
                tracing::info!(site = %self.ctx.site, request = id, "restarting the snapshot that was running");
                self.start_snapshot(id, &entities).await?;
            }
        }

        let server_id = self.server_id()?;
        conn.query_drop("SET @master_heartbeat_period = 1000000000").await.map_err(|e| self.source_err(e))?;
        if self.role == Role::Export {
            // The export pauses between transactions while capture catches up (give_way_to_capture):
            // the server must not drop a binlog connection it could not write to for a minute.
            conn.query_drop("SET SESSION net_write_timeout = 3600").await.map_err(|e| self.source_err(e))?;
        }
        let request = BinlogStreamRequest::new(server_id);
        let gtid_text = self.at.gtid.to_string();
        let sids: Vec<mysql_async::Sid<'static>>;
        let request = if settings.mariadb {
            conn.query_drop("SET @mariadb_slave_capability = 4").await.map_err(|e| self.source_err(e))?;
            conn.exec_drop("SET @slave_connect_state = ?", (gtid_text.as_str(),)).await.map_err(|e| self.source_err(e))?;
            conn.query_drop("SET @slave_gtid_strict_mode = 1, @slave_gtid_ignore_duplicates = 0").await.map_err(|e| self.source_err(e))?;
            request
        } else {
            sids = gtid_text
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<mysql_async::Sid<'static>>())
                .collect::<Result<_, _>>()
                .map_err(|e| CaptureError::Config(format!("GTID set `{gtid_text}`: {e}")))?;
            request.with_gtid().with_gtid_set(sids.iter().cloned())
        };
        let mut stream = conn.get_binlog_stream(request).await.map_err(|e| self.map_stream_err(e, &gtid_text))?;
        self.set_running(true);
        tracing::info!(site = %self.ctx.site, stream = ?self.role, gtid = %gtid_text, server_id, server = %settings.version, "streaming the binlog");

        loop {
            let next = tokio::select! {
                biased;
                _ = self.ctx.shutdown.wait() => return Ok(Ended::Shutdown),
                next = stream.next() => next,
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Err(self.map_stream_err(e, &gtid_text)),
                None => return Err(self.source_err(mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed))),
            };
            self.on_event(&stream, event, publisher).await?;
            if self.isolation.rewind && self.txn.is_none() && self.snapshots.running.is_none() {
                return Ok(Ended::Rewind);
            }
        }
    }

    /// The binlog client id of this reader.
    fn server_id(&self) -> Result<u32, CaptureError> {
        let site = self.ctx.config.site(&self.ctx.site).map_err(|e| CaptureError::Config(e.to_string()))?;
        match self.role {
            Role::Replication => Ok(site.server_id),
            Role::Export => self.ctx.config.export.server_id(site.server_id).ok_or_else(|| {
                CaptureError::Config(format!("site `{}`: server_id plus [export] server_id_offset does not fit 32 bits", self.ctx.site))
            }),
        }
    }

    /// Which setting gives this reader its binlog client id.
    fn server_id_setting(&self) -> String {
        match self.role {
            Role::Replication => format!("sites.{}.server_id", self.ctx.site),
            Role::Export => "[export] server_id_offset".to_string(),
        }
    }

    fn map_stream_err(&self, e: mysql_async::Error, position: &str) -> CaptureError {
        if let mysql_async::Error::Server(ref s) = e {
            // 1236: the master cannot serve the requested position (purged, or a duplicate id).
            if s.code == 1236 {
                if s.message.contains("server_id") || s.message.contains("same server") {
                    return CaptureError::Config(format!(
                        "site `{}`: another binlog reader uses server_id {}: give each reader its own id ({}) ({})",
                        self.ctx.site,
                        self.server_id().unwrap_or_default(),
                        self.server_id_setting(),
                        s.message
                    ));
                }
                return CaptureError::PositionPurged {
                    site: self.ctx.site.clone(),
                    position: position.to_string(),
                    detail: s.message.clone(),
                };
            }
            if s.code == 4052 {
                return CaptureError::Config(format!(
                    "site `{}`: another binlog reader uses the same server_id: give each reader its own id ({}) ({})",
                    self.ctx.site,
                    self.server_id_setting(),
                    s.message
                ));
            }
        }
        self.source_err(e)
    }

    async fn on_event(
        &mut self,
        stream: &BinlogStream,
        event: mysql_async::binlog::events::Event,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        let header = event.header();
        let kind = header.event_type_raw();
        let end_pos = header.log_pos() as u64;
        match kind {
            events::MARIADB_GTID => {
                let (gtid, flags) = Gtid::from_mariadb_event(event.data(), header.server_id()).ok_or_else(|| CaptureError::Binlog {
                    file: self.at.file.clone(),
                    pos: end_pos,
                    reason: "truncated GTID event".into(),
                })?;
                self.begin(gtid, header.server_id(), flags & 1 != 0)?;
            }
            events::MYSQL_GTID => {
                if let Ok(Some(EventData::GtidEvent(g))) = event.read_data() {
                    self.begin(Gtid::mysql_from_sid(g.sid(), g.gno()), header.server_id(), false)?;
                }
            }
            events::TABLE_MAP => {
                let tme: TableMapEvent<'_> = event.read_event().map_err(|e| CaptureError::Binlog {
                    file: self.at.file.clone(),
                    pos: end_pos,
                    reason: format!("unreadable table map: {e}"),
                })?;
                let role = self.known_role(event.data(), &tme)?;
                self.known.tables.insert(tme.table_id(), role);
            }
            events::WRITE_ROWS_V1
            | events::UPDATE_ROWS_V1
            | events::DELETE_ROWS_V1
            | events::WRITE_ROWS
            | events::UPDATE_ROWS
            | events::DELETE_ROWS => self.on_rows(stream, &event, publisher).await?,
            events::MARIADB_COMPRESSED_FIRST..=events::MARIADB_COMPRESSED_LAST => {
                return Err(CaptureError::Binlog {
                    file: self.at.file.clone(),
                    pos: end_pos,
                    reason: "compressed binlog event: sitesync cannot decode it; set log_bin_compress=OFF on the server".into(),
                })
            }
            events::PARTIAL_UPDATE_ROWS => {
                return Err(CaptureError::Binlog {
                    file: self.at.file.clone(),
                    pos: end_pos,
                    reason: "partial JSON row update: set binlog_row_value_options='' on the server".into(),
                })
            }
            events::XID => self.commit(publisher, end_pos, header.timestamp()).await?,
            events::QUERY => {
                let (query, schema) = match event.read_data() {
                    Ok(Some(EventData::QueryEvent(q))) => (q.query().into_owned(), q.schema().into_owned()),
                    _ => (String::new(), String::new()),
                };
                let q = query.trim();
                if schema == self.db && is_row_change_statement(q) {
                    // A session wrote with binlog_format=STATEMENT (it can be switched per
                    // session): the rows it changed are not in the binlog, so refuse loudly.
                    return Err(CaptureError::Binlog {
                        file: self.at.file.clone(),
                        pos: end_pos,
                        reason: format!(
                            "a change to database `{}` was logged as a statement, not as rows: a session uses binlog_format={}; set binlog_format=ROW globally and for every session (the changed rows cannot be captured; re-seed with `sitesync snapshot`)",
                            self.db,
                            if !q.is_empty() { "STATEMENT or MIXED" } else { "?" }
                        ),
                    });
                }
                match classify_statement(q) {
                    Statement::Begin | Statement::InTransaction => {}
                    Statement::End => self.commit(publisher, end_pos, header.timestamp()).await?,
                    Statement::Ddl => {
                        // DDL: table ids are re-assigned after it; drop what we knew.
                        self.known.tables.clear();
                        // A DDL commits on its own (MariaDB flags its GTID standalone; MySQL sends
                        // no XID after it): it never shares a transaction with row changes.
                        if self.txn.as_ref().is_none_or(|t| t.standalone || (t.records == 0 && t.pending.is_none())) {
                            self.commit(publisher, end_pos, header.timestamp()).await?;
                        }
                    }
                    Statement::Other => {
                        // A statement of its own (MariaDB flags such a GTID standalone: there is
                        // no COMMIT after it) ends its transaction; inside BEGIN ... COMMIT it
                        // does not, and leaves the echo marker and the table maps alone.
                        if self.txn.as_ref().is_some_and(|t| t.standalone) {
                            self.commit(publisher, end_pos, header.timestamp()).await?;
                        }
                    }
                }
            }
            events::ROTATE => {
                if let Ok(Some(EventData::RotateEvent(r))) = event.read_data() {
                    self.at.file = binlog_file_name(&r.name());
                    self.at.pos = r.position();
                }
            }
            events::HEARTBEAT if self.txn.is_none() && self.role == Role::Export => {
                self.ctx.metrics.export_source_timestamp.with_label_values(&[&self.ctx.site]).set(record::now_ms() as f64 / 1000.0);
            }
            events::HEARTBEAT if self.txn.is_none() => {
                let now = record::now_ms();
                self.ctx.metrics.capture_source_timestamp.with_label_values(&[&self.ctx.site]).set(now as f64 / 1000.0);
                self.heartbeat(publisher, now);
            }
            _ => {}
        }
        Ok(())
    }

    /// The export stream, after a transaction committed at `export_ts_ms`: while capture catches
    /// up a backlog, it waits, trailing capture by up to `[export] trail_seconds` of source time,
    /// so that the backlog reaches the other sites first. At most [`GIVE_WAY_AT_ONCE`] per
    /// transaction: the server drops a binlog connection that is not read for a minute.
    async fn give_way_to_capture(&mut self, export_ts_ms: i64) {
        let trail_ms = self.ctx.config.export.trail().as_millis() as i64;
        if trail_ms == 0 {
            return;
        }
        let capture_ts = self.ctx.metrics.capture_source_timestamp.with_label_values(&[&self.ctx.site]);
        let started = std::time::Instant::now();
        while started.elapsed() < GIVE_WAY_AT_ONCE {
            // A capture that is down holds nothing back: there is no backlog race to win.
            if !self.ctx.health.capture_running.load(Ordering::Relaxed) {
                return;
            }
            let capture_ms = (capture_ts.get() * 1000.0) as i64;
            // Nor does one that stands still (a stalled connection it has not noticed yet).
            let moved = match self.capture_seen {
                Some((seen, since)) if seen == capture_ms => since.elapsed() < CAPTURE_STILL,
                _ => {
                    self.capture_seen = Some((capture_ms, std::time::Instant::now()));
                    true
                }
            };
            if !moved || !export_waits(record::now_ms(), capture_ms, export_ts_ms, trail_ms) {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.ctx.shutdown.wait() => return,
            }
        }
    }

    /// Tells appliers that everything committed up to `ts_ms` was read (at most once a second).
    fn heartbeat(&mut self, publisher: &Publisher, ts_ms: i64) {
        if self.last_heartbeat.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.last_heartbeat = Some(std::time::Instant::now());
        let beat = serde_json::json!({"site": self.ctx.site, "ts_ms": ts_ms, "gtid": self.at.gtid.to_string()});
        publisher.heartbeat(&self.ctx.config.heartbeat_topic_of(&self.ctx.site), beat.to_string().as_bytes());
    }

    fn begin(&mut self, gtid: Gtid, server_id: u32, standalone: bool) -> Result<(), CaptureError> {
        if let Some(open) = self.txn.as_ref().filter(|t| t.records > 0) {
            // Published rows of a transaction that never committed (XA PREPARE, say): refuse
            // rather than drop them or mark them complete.
            return Err(CaptureError::Binlog {
                file: self.at.file.clone(),
                pos: self.at.pos,
                reason: format!(
                    "transaction {} ended without a commit event before {gtid} began (XA transactions are not supported)",
                    open.gtid.as_ref().map(|g| g.to_string()).unwrap_or_default()
                ),
            });
        }
        if let Some(ended) = self.txn.take().and_then(|t| t.gtid) {
            // The previous transaction published nothing and ended with a statement that is no
            // commit (MySQL logs FLUSH or GRANT without one): the new GTID proves it over.
            self.at.gtid.advance(&ended);
        }
        let replay_id = self.isolation.begins(&gtid).then(|| format!("{}{gtid}", isolation::CATCH_UP_TRANSACTION_PREFIX));
        self.txn = Some(Txn { gtid_text: Some(gtid.to_string()), gtid: Some(gtid), server_id, standalone, replay_id, ..Txn::default() });
        Ok(())
    }

    /// Publishes a record; its buffers are kept for the next one, unless a large value made
    /// them large (memory would stay at the largest record ever read).
    async fn publish(&mut self, publisher: &mut Publisher, mut record: Encoded) -> Result<(), CaptureError> {
        publisher.send(&record.key, &record.value).await?;
        if let Some(counter) = record.counter.take() {
            counter.inc();
        }
        if record.value.capacity() <= KEEP_RECORD_BUFFER {
            self.spare = record;
        }
        Ok(())
    }

    async fn commit(&mut self, publisher: &mut Publisher, end_pos: u64, ts: u32) -> Result<(), CaptureError> {
        let Some(mut txn) = self.txn.take() else {
            self.at.pos = end_pos;
            return Ok(());
        };
        let published = txn.records > 0 && !txn.echo;
        if let Some(mut last) = txn.pending.take() {
            last.mark_last();
            self.publish(publisher, last).await?;
        }
        if let Some(g) = &txn.gtid {
            self.at.gtid.advance(g);
        }
        self.at.pos = end_pos;
        let ts_ms = ts as i64 * 1000;
        self.last_source_ts_ms = ts_ms;
        if self.role == Role::Export {
            self.ctx.metrics.export_source_timestamp.with_label_values(&[&self.ctx.site]).set(ts as f64);
            let checkpoint =
                Checkpoint { gtid: self.at.gtid.to_string(), file: self.at.file.clone(), pos: self.at.pos, source_ts_ms: ts_ms };
            publisher.boundary(checkpoint, txn.records > 0).await?;
            self.give_way_to_capture(ts_ms).await;
            return Ok(());
        }
        if !published && txn.replay_id.is_none() {
            // A busy server sends other databases' transactions, not heartbeats: reading them
            // proves capture is caught up as of their commit, which appliers must hear. Binlog
            // times are whole seconds: a transaction read within two seconds of its commit
            // counts as read now.
            let now = record::now_ms();
            self.heartbeat(publisher, if now - ts_ms < 2000 { now } else { ts_ms });
        }
        let kind = if txn.echo {
            "echo"
        } else if published {
            "published"
        } else {
            "unrelated"
        };
        self.ctx.metrics.capture_transactions.with_label_values(&[&self.ctx.site, kind]).inc();
        self.ctx.metrics.capture_source_timestamp.with_label_values(&[&self.ctx.site]).set(ts as f64);
        if published {
            let delay = (record::now_ms() - ts_ms) as f64 / 1000.0;
            self.ctx.metrics.capture_delay.with_label_values(&[&self.ctx.site]).observe(delay.max(0.0));
        }
        publisher
            .boundary(
                Checkpoint { gtid: self.at.gtid.to_string(), file: self.at.file.clone(), pos: self.at.pos, source_ts_ms: ts_ms },
                published,
            )
            .await?;
        self.isolation.committed(&self.at.gtid).await?;
        Ok(())
    }
}

/// Whether the export stream, having read up to `export_ms`, waits for a capture that has read up
/// to `capture_ms` (commit times): while capture catches up a backlog, and the export is behind it
/// by no more than `trail_ms`.
fn export_waits(now_ms: i64, capture_ms: i64, export_ms: i64, trail_ms: i64) -> bool {
    let catching_up = now_ms - capture_ms > CATCHING_UP.as_millis() as i64;
    // Ahead of capture there is nothing to give way to: capture read this before (a resumed
    // entity's catch-up reads old transactions again).
    catching_up && (0..=trail_ms).contains(&(capture_ms - export_ms))
}

/// The binlog file name of a rotate event. The server's first, artificial rotate carries the
/// event checksum after the name; binlog names always end in `.<digits>`, so cut there.
fn binlog_file_name(raw: &str) -> String {
    if let Some(dot) = raw.rfind('.') {
        let digits = raw[dot + 1..].bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            return raw[..dot + 1 + digits].to_string();
        }
    }
    raw.to_string()
}

/// What a Query event means for the transaction around it.
#[derive(Debug, PartialEq, Eq)]
enum Statement {
    /// `BEGIN`, `XA START`: a transaction starts (its GTID event already opened it).
    Begin,
    /// `COMMIT`, `ROLLBACK` (of a transaction that changed non-transactional tables): it ends.
    End,
    /// A schema change: table ids are re-assigned after it.
    Ddl,
    /// A statement inside a transaction that neither ends it nor changes a schema:
    /// `SAVEPOINT`, `ROLLBACK TO SAVEPOINT`, `RELEASE SAVEPOINT`, `XA END`, `XA PREPARE`.
    /// An applied transaction writes a savepoint after its echo marker: ending the transaction
    /// there would publish the rest of it as this site's own changes.
    InTransaction,
    /// Anything else (`FLUSH`, `SET`, ...).
    Other,
}

/// Classifies a logged statement: DDL is recognised by its first word, never by elimination.
fn classify_statement(query: &str) -> Statement {
    let words: Vec<String> = statement_words(query, 2);
    let first = words.first().map(String::as_str).unwrap_or("");
    let second = words.get(1).map(String::as_str).unwrap_or("");
    match (first, second) {
        ("BEGIN", _) | ("XA", "START" | "BEGIN") => Statement::Begin,
        ("COMMIT", _) => Statement::End,
        ("ROLLBACK", "TO") => Statement::InTransaction,
        ("ROLLBACK", "") | ("ROLLBACK", "WORK") => Statement::End,
        ("SAVEPOINT", _) | ("RELEASE", "SAVEPOINT") | ("XA", _) => Statement::InTransaction,
        ("CREATE" | "ALTER" | "DROP" | "RENAME" | "TRUNCATE", _) => Statement::Ddl,
        _ => Statement::Other,
    }
}

/// The first `n` words of a statement, upper-cased, after any leading comments.
fn statement_words(query: &str, n: usize) -> Vec<String> {
    let mut q = query.trim_start();
    while let Some(rest) = q.strip_prefix("/*") {
        q = rest.split_once("*/").map(|(_, r)| r.trim_start()).unwrap_or("");
    }
    q.split(|c: char| !c.is_ascii_alphabetic() && c != '_').filter(|w| !w.is_empty()).take(n).map(str::to_ascii_uppercase).collect()
}

/// Whether a logged statement changes rows (statement-based logging of DML).
fn is_row_change_statement(query: &str) -> bool {
    let word = statement_words(query, 1);
    matches!(word.first().map(String::as_str), Some("INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "LOAD"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_waits_only_while_capture_catches_up_and_only_up_to_its_trail() {
        let now = 1_000_000_000;
        let trail = 600_000;
        // Capture reads what was committed an hour ago: the export, just behind it, waits.
        assert!(export_waits(now, now - 3_600_000, now - 3_610_000, trail));
        // Ahead of capture (capture reads old transactions again for a resumed entity): it goes on.
        assert!(!export_waits(now, now - 3_600_000, now - 3_500_000, trail));
        // At the same place (both start at one checkpoint): capture first.
        assert!(export_waits(now, now - 3_600_000, now - 3_600_000, trail));
        // Trailing by more than the trail: it goes on, so it never starves.
        assert!(!export_waits(now, now - 3_600_000, now - 3_600_000 - trail - 1, trail));
        // Capture caught up (within 5 s of now): nothing to give way to.
        assert!(!export_waits(now, now - 4_000, now - 3_600_000, trail));
        assert!(!export_waits(now, now, now, trail));
    }

    #[test]
    fn binlog_names_lose_the_checksum_of_the_first_rotate() {
        assert_eq!(binlog_file_name("mysql-bin.000010\u{fffd}\u{f}\u{fffd}\u{6}"), "mysql-bin.000010");
        assert_eq!(binlog_file_name("mysql-bin.000010"), "mysql-bin.000010");
        assert_eq!(binlog_file_name("odd"), "odd");
    }

    #[test]
    fn statements_that_change_rows_are_recognised() {
        assert!(is_row_change_statement("/* app */ UPDATE person SET a = 1"));
        assert!(is_row_change_statement("insert into t values (1)"));
        assert!(!is_row_change_statement("ALTER TABLE person ADD COLUMN x INT"));
        assert!(!is_row_change_statement("BEGIN"));
    }

    #[test]
    fn only_commit_and_rollback_end_a_transaction_and_only_ddl_is_ddl() {
        use Statement::*;
        for (q, want) in [
            ("BEGIN", Begin),
            ("XA START X'01',X'',1", Begin),
            ("COMMIT", End),
            ("ROLLBACK", End),
            ("SAVEPOINT source_txn", InTransaction),
            ("SAVEPOINT `source_txn`", InTransaction),
            ("ROLLBACK TO SAVEPOINT source_txn", InTransaction),
            ("ROLLBACK TO source_txn", InTransaction),
            ("RELEASE SAVEPOINT source_txn", InTransaction),
            ("XA END X'01',X'',1", InTransaction),
            ("XA PREPARE X'01',X'',1", InTransaction),
            ("/* app */ ALTER TABLE person ADD COLUMN x INT", Ddl),
            ("create table t (id int primary key)", Ddl),
            ("DROP TABLE IF EXISTS `t` /* generated by server */", Ddl),
            ("RENAME TABLE a TO b", Ddl),
            ("TRUNCATE TABLE t", Ddl),
            ("FLUSH PRIVILEGES", Other),
            ("SET @x = 1", Other),
            ("GRANT SELECT ON *.* TO x", Other),
        ] {
            assert_eq!(classify_statement(q), want, "{q}");
        }
    }
}
