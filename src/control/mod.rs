//! The control database: sitesync's own tables on each site's server, never in the
//! application's database.
//!
//! - `apply_offsets`: next Kafka offset per topic partition, written in the same transaction as
//!   the rows applied from it. It is also the echo marker: every apply transaction writes it
//!   first, and capture drops any binlog transaction whose first row change is to this table.
//! - `apply_progress`: last applied transaction per origin and GTID stream, so a record that
//!   capture published twice (after a crash) is applied once.
//! - `capture_checkpoint`: the GTID state up to which Kafka acknowledged every record.
//! - `identity_map`: entity, origin site, origin primary key -> local primary key.
//! - `row_versions`: which site wrote the version of a row that an applied change brought, so
//!   last-writer-wins breaks ties the same way at every site.
//! - `received_rows`: local rows that the applier created from another site's change: a
//!   snapshot here leaves them to their origin, which owns them.
//! - `parked`: source transactions waiting for the rows they reference to arrive.
//! - `snapshot_requests`, `snapshot_watermarks`: snapshots asked for and their progress, and
//!   the watermarks that place each snapshot chunk in the binlog (see `capture::snapshot`);
//!   `snapshot_rows`: the rows a limited snapshot (a verify repair) publishes.
//! - `dead_letters`: records that could not be applied, with the reason.
//! - `stopped_entities`: entities whose capture stopped alone, and where ([`stopped`]).
//! - `verify_state`: what continuous verification last found per origin and entity ([`verified`]).

mod positions;
mod rows;
mod snapshots;
mod stopped;
mod verified;

pub use snapshots::{request_of_image, SnapshotRequests, Watermark, WatermarkRow};
pub use stopped::{resume_of_change, StoppedEntities};
pub use verified::{Verified, VerifyState};

/// Control tables whose changes capture reads in the binlog.
pub const SNAPSHOT_REQUESTS_TABLE: &str = "snapshot_requests";
/// `snapshot_requests.for_site` of a snapshot for the export stream (`snapshot --export`):
/// never a site id (those hold only letters, digits, `_` and `-`).
pub const EXPORT_SNAPSHOT: &str = "*export*";
/// The `capture_checkpoint` row of `site`'s export stream (`[export]`), which reads the binlog
/// apart from capture: never a site id (see [`EXPORT_SNAPSHOT`]).
pub fn export_checkpoint_key(site: &str) -> String {
    format!("{site}*export")
}
/// See [`SNAPSHOT_REQUESTS_TABLE`].
pub const SNAPSHOT_WATERMARKS_TABLE: &str = "snapshot_watermarks";
/// See [`SNAPSHOT_REQUESTS_TABLE`].
pub const ROW_VERSIONS_TABLE: &str = "row_versions";
/// See [`SNAPSHOT_REQUESTS_TABLE`].
pub const STOPPED_ENTITIES_TABLE: &str = "stopped_entities";

use sqlx::mysql::MySqlPool;
use sqlx::{AssertSqlSafe, MySql, Row as _, Transaction};

use crate::mysql::session::{self, statement_chunks, MAX_STATEMENT_ROWS};

/// Columns added to control tables after their first release: (table, column, definition).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("row_versions", "depth", "INT UNSIGNED NOT NULL DEFAULT 0"),
    ("row_versions", "row_version", "VARCHAR(128) NULL"),
    ("row_versions", "content", "CHAR(32) NULL"),
    // A snapshot for one site only (a site joining the federation).
    ("snapshot_requests", "for_site", "VARCHAR(64) NULL"),
];

pub use crate::stamp::VersionEntry;
pub use positions::{Checkpoint, Offset, Progress};
pub use rows::{forget_versions, read_versions, version_of_image, write_versions, RowStatements};

/// The table whose change marks a binlog transaction as written by sitesync's applier.
pub const ECHO_MARKER_TABLE: &str = "apply_offsets";

/// A control-database operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The connection URL is not usable.
    #[error("site `{site}`: bad mysql URL: {source}")]
    Url {
        /// Site id.
        site: String,
        /// Parse error (holds no password).
        #[source]
        source: crate::mysql::dsn::DsnError,
    },
    /// The site's server cannot be reached or refused the login.
    #[error("site `{site}`: cannot connect to the database: {source}")]
    Connect {
        /// Site id.
        site: String,
        /// The driver error (holds no password).
        #[source]
        source: sqlx::Error,
    },
    /// A statement failed.
    #[error("control database `{db}`: {what}: {source}")]
    Sql {
        /// Control database name.
        db: String,
        /// What was being done.
        what: &'static str,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
}

/// A pool of at most `max` connections to `site`'s database at `url`, with sitesync's session
/// settings.
pub async fn connect(site: &str, url: &str, max: u32) -> Result<MySqlPool, ControlError> {
    let options = session::options(url).map_err(|source| ControlError::Url { site: site.to_string(), source })?;
    session::pool(options, max).await.map_err(|source| ControlError::Connect { site: site.to_string(), source })
}

impl ControlError {
    /// Whether the server could not be reached (down, restarting, network): waiting may mend
    /// it, unlike a refused login or a bad URL.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ControlError::Connect { source: sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed, .. })
    }
}

/// Handle on one site's control database.
#[derive(Clone)]
pub struct Control {
    pool: MySqlPool,
    db: String,
}

/// A dead letter as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// Id.
    pub id: u64,
    /// Origin site, when known.
    pub origin: Option<String>,
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Entity, when known.
    pub entity: Option<String>,
    /// Why it was not applied.
    pub reason: String,
    /// The message key, as received (the entity and natural key of the row, as JSON).
    #[serde(serialize_with = "as_text")]
    pub key: Option<Vec<u8>>,
    /// The message value, as received.
    #[serde(skip)]
    pub value: Option<Vec<u8>>,
    /// When it was stored.
    pub created_at: String,
}

fn as_text<S: serde::Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(b) => s.serialize_str(&String::from_utf8_lossy(b)),
        None => s.serialize_none(),
    }
}

/// A dead letter about to be stored.
pub struct NewDeadLetter<'a> {
    /// Origin site, when known.
    pub origin: Option<&'a str>,
    /// Kafka topic.
    pub topic: &'a str,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Entity, when known.
    pub entity: Option<&'a str>,
    /// Why.
    pub reason: &'a str,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Message value.
    pub value: Option<&'a [u8]>,
}

/// A parked source transaction as stored.
#[derive(Debug, Clone)]
pub struct Parked {
    /// Id.
    pub id: u64,
    /// Origin site.
    pub origin: String,
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Offset of its first record.
    pub offset: i64,
    /// The rows it writes, one `entity|key` per line: later changes to them wait behind it.
    pub row_keys: String,
    /// Its record values, as a JSON array.
    pub records: Vec<u8>,
    /// What it waits for.
    pub reason: String,
    /// Seconds since it was parked.
    pub age_seconds: i64,
}

impl DeadLetter {
    /// What the list shows of it: the summary [`Control::first_dead_letters`] reads in SQL,
    /// here from the stored record.
    pub fn summary(&self) -> DeadLetterSummary {
        let record: Option<serde_json::Value> = self.value.as_deref().and_then(|v| serde_json::from_slice(v).ok());
        let field = |path: &[&str]| {
            let mut v = record.as_ref()?;
            for p in path {
                v = v.get(p)?;
            }
            Some(v.clone())
        };
        DeadLetterSummary {
            id: self.id,
            origin: self.origin.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            entity: self.entity.clone(),
            reason: self.reason.clone(),
            message_key: self.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
            record_key: field(&["sitesync", "key"]).map(|k| k.to_string()),
            op: field(&["op"]).and_then(|op| op.as_str().map(String::from)),
            created_at: self.created_at.clone(),
        }
    }
}

/// A dead letter as listed: what it is about, not its record.
#[derive(Debug, Clone)]
pub struct DeadLetterSummary {
    /// Id.
    pub id: u64,
    /// Origin site, when known.
    pub origin: Option<String>,
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Entity, when the record said.
    pub entity: Option<String>,
    /// Why it could not be applied.
    pub reason: String,
    /// The Kafka message key (JSON text), when it had one.
    pub message_key: Option<String>,
    /// The record's `sitesync.key` (JSON text), when the record is JSON.
    pub record_key: Option<String>,
    /// The record's `op`, when the record is JSON.
    pub op: Option<String>,
    /// When it was stored.
    pub created_at: String,
}

/// A source transaction about to be parked.
pub struct NewParked<'a> {
    /// Origin site.
    pub origin: &'a str,
    /// Kafka topic.
    pub topic: &'a str,
    /// Kafka partition.
    pub partition: i32,
    /// Offset of its first record.
    pub offset: i64,
    /// `entity|key` per line.
    pub row_keys: &'a str,
    /// Record values as a JSON array.
    pub records: &'a [u8],
    /// What it waits for.
    pub reason: &'a str,
}

impl Control {
    /// A handle on database `db` through `pool`.
    pub fn new(pool: MySqlPool, db: &str) -> Self {
        Self { pool, db: db.to_string() }
    }

    /// The pool (shared with the applier).
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The control database name.
    pub fn database(&self) -> &str {
        &self.db
    }

    pub(super) fn err(&self, what: &'static str) -> impl FnOnce(sqlx::Error) -> ControlError + '_ {
        move |source| ControlError::Sql { db: self.db.clone(), what, source }
    }

    /// Snapshot requests and watermarks.
    pub fn snapshots(&self) -> SnapshotRequests {
        SnapshotRequests::new(self.clone())
    }

    /// The entities whose capture stopped alone.
    pub fn stopped(&self) -> StoppedEntities {
        StoppedEntities::new(self.clone())
    }

    /// What continuous verification last found per origin and entity.
    pub fn verified(&self) -> VerifyState {
        VerifyState::new(self.clone())
    }

    /// The statements that create every control table; idempotent.
    pub fn ddl(&self) -> Vec<String> {
        let db = &self.db;
        vec![
            format!("CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"),
            format!(
                "CREATE TABLE IF NOT EXISTS `{db}`.`apply_offsets` (
                   topic VARCHAR(249) NOT NULL,
                   kafka_partition INT NOT NULL,
                   next_offset BIGINT NOT NULL,
                   updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
                   PRIMARY KEY (topic, kafka_partition)
                 ) ENGINE=InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS `{db}`.`apply_progress` (
                   origin VARCHAR(64) NOT NULL,
                   stream VARCHAR(64) NOT NULL,
                   seq BIGINT UNSIGNED NOT NULL,
                   gtid VARCHAR(128) NOT NULL,
                   source_ts_ms BIGINT NOT NULL,
                   applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
                   PRIMARY KEY (origin, stream)
                 ) ENGINE=InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS `{db}`.`capture_checkpoint` (
                   site VARCHAR(64) NOT NULL PRIMARY KEY,
                   gtid_state TEXT NOT NULL,
                   binlog_file VARCHAR(255) NOT NULL,
                   binlog_pos BIGINT UNSIGNED NOT NULL,
                   source_ts_ms BIGINT NOT NULL,
                   updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
                 ) ENGINE=InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS `{db}`.`identity_map` (
                   entity VARCHAR(64) NOT NULL,
                   origin VARCHAR(64) NOT NULL,
                   origin_key VARCHAR(512) NOT NULL,
                   local_key VARCHAR(512) NOT NULL,
                   PRIMARY KEY (entity, origin, origin_key),
                   KEY by_local (entity, local_key)
                 ) ENGINE=InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS `{db}`.`row_versions` (
                   entity VARCHAR(64) NOT NULL,
                   row_key VARCHAR(512) NOT NULL,
                   origin VARCHAR(64) NOT NULL,
                   version VARCHAR(128) NOT NULL,
                   deleted TINYINT NOT NULL DEFAULT 0,
                   depth INT UNSIGNED NOT NULL DEFAULT 0,
                   row_version VARCHAR(128) NULL,
                   content CHAR(32) NULL,
                   PRIMARY KEY (entity, row_key)
                 ) ENGINE=InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS `{db}`.`received_rows` (
                   entity VARCHAR(64) NOT NULL,
                   local_key VARCHAR(512) NOT NULL,
                   origin VARCHAR(64) NOT NULL,
                   PRIMARY KEY (entity, local_key)
                 ) ENGINE=InnoDB"
            ),
            snapshots::ddl(db)[0].clone(),
            snapshots::ddl(db)[1].clone(),
            snapshots::ddl(db)[2].clone(),
            format!(
                "CREATE TABLE IF NOT EXISTS `{db}`.`parked` (
                   id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                   origin VARCHAR(64) NOT NULL,
                   topic VARCHAR(249) NOT NULL,
                   kafka_partition INT NOT NULL,
                   kafka_offset BIGINT NOT NULL,
                   row_keys LONGTEXT NOT NULL,
                   records LONGBLOB NOT NULL,
                   reason TEXT NOT NULL,
                   first_seen TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
                 ) ENGINE=InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS `{db}`.`dead_letters` (
                   id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                   origin VARCHAR(64) NULL,
                   topic VARCHAR(249) NOT NULL,
                   kafka_partition INT NOT NULL,
                   kafka_offset BIGINT NOT NULL,
                   entity VARCHAR(64) NULL,
                   reason TEXT NOT NULL,
                   record_key LONGBLOB NULL,
                   record_value LONGBLOB NULL,
                   created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
                 ) ENGINE=InnoDB"
            ),
            stopped::ddl(db),
            verified::ddl(db),
        ]
    }

    /// Creates every control table; idempotent. Tables of an earlier sitesync get the columns
    /// they lack.
    pub async fn init(&self) -> Result<(), ControlError> {
        for stmt in self.ddl() {
            sqlx::query(AssertSqlSafe(stmt.as_str())).execute(&self.pool).await.map_err(self.err("creating control tables"))?;
        }
        for (table, column, definition) in ADDED_COLUMNS {
            let present: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?",
            )
            .bind(&self.db)
            .bind(table)
            .bind(column)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.err("reading control tables"))?;
            if present.is_none() {
                let sql = format!("ALTER TABLE `{}`.`{table}` ADD COLUMN `{column}` {definition}", self.db);
                sqlx::query(AssertSqlSafe(sql)).execute(&self.pool).await.map_err(self.err("adding control table columns"))?;
            }
        }
        Ok(())
    }

    /// The control tables that are missing (for `check`).
    pub async fn missing_tables(&self) -> Result<Vec<String>, ControlError> {
        let rows = sqlx::query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?")
            .bind(&self.db)
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("listing control tables"))?;
        let present: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
        let mut missing: Vec<String> = [
            "apply_offsets",
            "apply_progress",
            "capture_checkpoint",
            "identity_map",
            "row_versions",
            "received_rows",
            "snapshot_requests",
            "snapshot_watermarks",
            "snapshot_rows",
            "parked",
            "dead_letters",
            "stopped_entities",
            "verify_state",
        ]
        .iter()
        .filter(|t| !present.iter().any(|p| p == *t))
        .map(|t| t.to_string())
        .collect();
        // Tables of an earlier sitesync lack the columns added since (`init` adds them).
        let columns = sqlx::query("SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ?")
            .bind(&self.db)
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("listing control table columns"))?;
        let columns: Vec<(String, String)> = columns.iter().map(|r| (r.get::<String, _>(0), r.get::<String, _>(1))).collect();
        for (table, column, _) in ADDED_COLUMNS {
            if present.iter().any(|p| p == table) && !columns.iter().any(|(t, c)| t == table && c == column) {
                missing.push(format!("{table}.{column}"));
            }
        }
        Ok(missing)
    }

    /// The stored capture checkpoint of `site`.
    pub async fn load_checkpoint(&self, site: &str) -> Result<Option<Checkpoint>, ControlError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT gtid_state, binlog_file, binlog_pos, source_ts_ms FROM `{}`.`capture_checkpoint` WHERE site = ?",
            self.db
        )))
        .bind(site)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.err("reading the capture checkpoint"))?;
        Ok(row.map(|r| Checkpoint { gtid: r.get(0), file: r.get(1), pos: r.get(2), source_ts_ms: r.get(3) }))
    }

    /// Stores the capture checkpoint of `site`.
    pub async fn save_checkpoint(&self, site: &str, checkpoint: &Checkpoint) -> Result<(), ControlError> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO `{}`.`capture_checkpoint` (site, gtid_state, binlog_file, binlog_pos, source_ts_ms)
             VALUES (?, ?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE gtid_state = VALUES(gtid_state), binlog_file = VALUES(binlog_file),
               binlog_pos = VALUES(binlog_pos), source_ts_ms = VALUES(source_ts_ms)",
            self.db
        )))
        .bind(site)
        .bind(&checkpoint.gtid)
        .bind(&checkpoint.file)
        .bind(checkpoint.pos)
        .bind(checkpoint.source_ts_ms)
        .execute(&self.pool)
        .await
        .map_err(self.err("writing the capture checkpoint"))?;
        Ok(())
    }

    /// The export stream's checkpoint of `site`; when it has none yet, capture's is copied to it
    /// (a site that starts exporting exports from where its capture resumes). None when neither
    /// exists.
    pub async fn export_checkpoint(&self, site: &str) -> Result<Option<Checkpoint>, ControlError> {
        let key = export_checkpoint_key(site);
        if let Some(cp) = self.load_checkpoint(&key).await? {
            return Ok(Some(cp));
        }
        let Some(cp) = self.load_checkpoint(site).await? else { return Ok(None) };
        self.save_checkpoint(&key, &cp).await?;
        tracing::info!(site = %site, gtid = %cp.gtid, "the export stream starts at capture's checkpoint");
        Ok(Some(cp))
    }

    /// Removes the stored checkpoint under `key` (the export stream's, when capture's position is
    /// reset: it then starts at capture's again).
    pub async fn forget_checkpoint(&self, key: &str) -> Result<(), ControlError> {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM `{}`.`capture_checkpoint` WHERE site = ?", self.db)))
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(self.err("removing a capture checkpoint"))?;
        Ok(())
    }

    /// Forgets what this site's control tables hold about `site`, which left the federation:
    /// its topics' offsets, the last transactions applied from it, identity links of its rows,
    /// its parked transactions, dead letters and verifications. Its rows stay where they are,
    /// and stay marked as received from it (`received_rows`), so no snapshot here republishes
    /// them as this site's own. (table, rows deleted), in one transaction.
    pub async fn forget_site(&self, site: &str, topics: &[String]) -> Result<Vec<(&'static str, u64)>, ControlError> {
        let db = &self.db;
        let mut tx = self.pool.begin().await.map_err(self.err("forgetting a site"))?;
        let mut out = Vec::new();
        let placeholders = vec!["?"; topics.len().max(1)].join(", ");
        let mut q = sqlx::query(AssertSqlSafe(format!("DELETE FROM `{db}`.`apply_offsets` WHERE topic IN ({placeholders})")));
        for t in topics {
            q = q.bind(t);
        }
        out.push(("apply_offsets", q.execute(&mut *tx).await.map_err(self.err("forgetting a site's offsets"))?.rows_affected()));
        for table in ["apply_progress", "identity_map", "parked", "dead_letters", "verify_state"] {
            let n = sqlx::query(AssertSqlSafe(format!("DELETE FROM `{db}`.`{table}` WHERE origin = ?")))
                .bind(site)
                .execute(&mut *tx)
                .await
                .map_err(self.err("forgetting a site"))?
                .rows_affected();
            out.push((table, n));
        }
        tx.commit().await.map_err(self.err("forgetting a site"))?;
        Ok(out)
    }

    /// Every stored apply offset.
    pub async fn load_offsets(&self) -> Result<Vec<Offset>, ControlError> {
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT topic, kafka_partition, next_offset FROM `{}`.`apply_offsets`", self.db)))
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("reading apply offsets"))?;
        Ok(rows.iter().map(|r| Offset { topic: r.get(0), partition: r.get(1), next: r.get(2) }).collect())
    }

    /// Writes apply offsets inside the apply transaction `tx` (the echo marker: call it first).
    pub async fn write_offsets(&self, tx: &mut Transaction<'_, MySql>, offsets: &[Offset]) -> Result<(), sqlx::Error> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut sql = format!("INSERT INTO `{}`.`apply_offsets` (topic, kafka_partition, next_offset) VALUES ", self.db);
        sql.push_str(&vec!["(?, ?, ?)"; offsets.len()].join(", "));
        // updated_at set explicitly: the row must change even when the offset does not (a
        // retried batch), or the binlog would carry no echo marker for this transaction.
        sql.push_str(" ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset), updated_at = NOW(6)");
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
        for o in offsets {
            q = q.bind(&o.topic).bind(o.partition).bind(o.next);
        }
        q.execute(&mut **tx).await?;
        Ok(())
    }

    /// Marks `tx` as sitesync's own write when it carries no offsets (a parked transaction
    /// applied later, a dead letter replayed): the marker row must change for the binlog to
    /// show it, so it takes the current time in microseconds.
    pub async fn write_marker(&self, tx: &mut Transaction<'_, MySql>) -> Result<(), sqlx::Error> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO `{}`.`apply_offsets` (topic, kafka_partition, next_offset) VALUES ('(local)', -1, ?)
             ON DUPLICATE KEY UPDATE next_offset = GREATEST(next_offset + 1, VALUES(next_offset))",
            self.db
        )))
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Every stored apply progress.
    pub async fn load_progress(&self) -> Result<Vec<Progress>, ControlError> {
        let rows =
            sqlx::query(AssertSqlSafe(format!("SELECT origin, stream, seq, gtid, source_ts_ms FROM `{}`.`apply_progress`", self.db)))
                .fetch_all(&self.pool)
                .await
                .map_err(self.err("reading apply progress"))?;
        Ok(rows
            .iter()
            .map(|r| Progress { origin: r.get(0), stream: r.get(1), seq: r.get(2), gtid: r.get(3), source_ts_ms: r.get(4) })
            .collect())
    }

    /// Records the last applied transaction of (origin, stream) inside `tx`.
    pub async fn write_progress(&self, tx: &mut Transaction<'_, MySql>, progress: &[Progress]) -> Result<(), sqlx::Error> {
        if progress.is_empty() {
            return Ok(());
        }
        let mut sql = format!("INSERT INTO `{}`.`apply_progress` (origin, stream, seq, gtid, source_ts_ms) VALUES ", self.db);
        sql.push_str(&vec!["(?, ?, ?, ?, ?)"; progress.len()].join(", "));
        sql.push_str(" ON DUPLICATE KEY UPDATE seq = VALUES(seq), gtid = VALUES(gtid), source_ts_ms = VALUES(source_ts_ms)");
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
        for p in progress {
            q = q.bind(&p.origin).bind(&p.stream).bind(p.seq).bind(&p.gtid).bind(p.source_ts_ms);
        }
        q.execute(&mut **tx).await?;
        Ok(())
    }

    /// Records, inside `tx`, which local row each origin row became (entity, origin, the
    /// origin's id, this site's id), many per statement.
    pub async fn write_identities(&self, tx: &mut Transaction<'_, MySql>, entries: &[(&str, &str, &str, &str)]) -> Result<(), sqlx::Error> {
        for chunk in statement_chunks(entries, MAX_STATEMENT_ROWS) {
            let mut sql = format!("INSERT INTO `{}`.`identity_map` (entity, origin, origin_key, local_key) VALUES ", self.db);
            sql.push_str(&vec!["(?, ?, ?, ?)"; chunk.len()].join(", "));
            sql.push_str(" ON DUPLICATE KEY UPDATE local_key = VALUES(local_key)");
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
            for (entity, origin, origin_key, local_key) in chunk {
                q = q.bind(*entity).bind(*origin).bind(*origin_key).bind(*local_key);
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Which of `origin_keys` (the origin's ids of rows of `entity`) the identity map knows.
    pub async fn mapped_origin_keys(
        &self,
        tx: &mut Transaction<'_, MySql>,
        entity: &str,
        origin: &str,
        origin_keys: &[&str],
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        let mut out = std::collections::HashSet::new();
        for chunk in statement_chunks(origin_keys, MAX_STATEMENT_ROWS) {
            let sql = format!(
                "SELECT origin_key FROM `{}`.`identity_map` WHERE entity = ? AND origin = ? AND origin_key IN ({})",
                self.db,
                vec!["?"; chunk.len()].join(", ")
            );
            let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql)).bind(entity).bind(origin);
            for k in chunk {
                q = q.bind(*k);
            }
            out.extend(q.fetch_all(&mut **tx).await?);
        }
        Ok(out)
    }

    /// Records that the applier created these local rows (entity, local primary key as text)
    /// from a change of `origin`: they are the origin's to publish in a snapshot.
    pub async fn write_received(&self, tx: &mut Transaction<'_, MySql>, entries: &[(&str, &str, &str)]) -> Result<(), sqlx::Error> {
        for chunk in statement_chunks(entries, MAX_STATEMENT_ROWS) {
            let mut sql = format!("INSERT INTO `{}`.`received_rows` (entity, local_key, origin) VALUES ", self.db);
            sql.push_str(&vec!["(?, ?, ?)"; chunk.len()].join(", "));
            sql.push_str(" ON DUPLICATE KEY UPDATE origin = VALUES(origin)");
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
            for (entity, local_key, origin) in chunk {
                q = q.bind(*entity).bind(*local_key).bind(*origin);
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// The `row_versions` entries of `entity` for `row_keys` inside `tx`.
    pub async fn read_versions(
        &self,
        tx: &mut Transaction<'_, MySql>,
        entity: &str,
        row_keys: &[&str],
    ) -> Result<Vec<(String, VersionEntry)>, sqlx::Error> {
        read_versions(&self.db, tx, entity, row_keys).await
    }

    /// The `row_versions` entries of `entity` for `row_keys`, outside any transaction (capture).
    pub async fn read_versions_now(&self, entity: &str, row_keys: &[&str]) -> Result<Vec<(String, VersionEntry)>, ControlError> {
        let mut conn = self.pool.acquire().await.map_err(self.err("reading row versions"))?;
        read_versions(&self.db, &mut conn, entity, row_keys).await.map_err(self.err("reading row versions"))
    }

    /// Records, inside `tx`, the stamp of the version each row now has, many per statement.
    pub async fn write_versions(
        &self,
        tx: &mut Transaction<'_, MySql>,
        entries: &[(&str, &str, &VersionEntry)],
    ) -> Result<(), sqlx::Error> {
        write_versions(&self.db, tx, entries).await
    }

    /// Stores a dead letter inside `tx`.
    pub async fn insert_dead_letter(&self, tx: &mut Transaction<'_, MySql>, d: &NewDeadLetter<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO `{}`.`dead_letters` (origin, topic, kafka_partition, kafka_offset, entity, reason, record_key, record_value)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            self.db
        )))
        .bind(d.origin)
        .bind(d.topic)
        .bind(d.partition)
        .bind(d.offset)
        .bind(d.entity)
        .bind(d.reason)
        .bind(d.key)
        .bind(d.value)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Every dead letter, oldest first.
    pub async fn list_dead_letters(&self) -> Result<Vec<DeadLetter>, ControlError> {
        self.dead_letters_where("", u64::MAX).await
    }

    /// The oldest `limit` dead letters, without their records (a letter may hold a 20 MB
    /// value): the natural key from the message key, else from the record; the record's op.
    pub async fn first_dead_letters(&self, limit: u64) -> Result<Vec<DeadLetterSummary>, ControlError> {
        // JSON_VALID first: MySQL's JSON functions raise an error (MariaDB's only warn) on a
        // value that is not JSON, and a dead letter may be exactly that.
        let json = "CONVERT(record_value USING utf8mb4)";
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, origin, topic, kafka_partition, kafka_offset, entity, reason,
                    CAST(CONVERT(record_key USING utf8mb4) AS CHAR),
                    IF(JSON_VALID({json}), CAST(JSON_EXTRACT({json}, '$.sitesync.key') AS CHAR), NULL),
                    IF(JSON_VALID({json}), JSON_UNQUOTE(JSON_EXTRACT({json}, '$.op')), NULL),
                    DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%sZ')
             FROM `{}`.`dead_letters` ORDER BY id LIMIT {limit}",
            self.db
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("listing dead letters"))?;
        Ok(rows
            .iter()
            .map(|r| DeadLetterSummary {
                id: r.get(0),
                origin: r.get(1),
                topic: r.get(2),
                partition: r.get(3),
                offset: r.get(4),
                entity: r.get(5),
                reason: r.get(6),
                message_key: r.get(7),
                record_key: r.get(8),
                op: r.get(9),
                created_at: r.get(10),
            })
            .collect())
    }

    /// Dead letter `id`, if there is one.
    pub async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, ControlError> {
        Ok(self.dead_letters_where(&format!("WHERE id = {id}"), 1).await?.pop())
    }

    async fn dead_letters_where(&self, condition: &str, limit: u64) -> Result<Vec<DeadLetter>, ControlError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, origin, topic, kafka_partition, kafka_offset, entity, reason, record_key, record_value,
                    DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%sZ')
             FROM `{}`.`dead_letters` {condition} ORDER BY id LIMIT {limit}",
            self.db
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("listing dead letters"))?;
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                id: r.get(0),
                origin: r.get(1),
                topic: r.get(2),
                partition: r.get(3),
                offset: r.get(4),
                entity: r.get(5),
                reason: r.get(6),
                key: r.get(7),
                value: r.get(8),
                created_at: r.get(9),
            })
            .collect())
    }

    /// Parks a source transaction inside `tx`.
    pub async fn insert_parked(&self, tx: &mut Transaction<'_, MySql>, p: &NewParked<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO `{}`.`parked` (origin, topic, kafka_partition, kafka_offset, row_keys, records, reason)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            self.db
        )))
        .bind(p.origin)
        .bind(p.topic)
        .bind(p.partition)
        .bind(p.offset)
        .bind(p.row_keys)
        .bind(p.records)
        .bind(p.reason)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Every parked transaction, oldest first.
    pub async fn list_parked(&self) -> Result<Vec<Parked>, ControlError> {
        self.parked_rows("records", u64::MAX).await
    }

    /// The oldest `limit` parked transactions without their records (`records` empty).
    pub async fn first_parked(&self, limit: u64) -> Result<Vec<Parked>, ControlError> {
        self.parked_rows("CAST('' AS BINARY)", limit).await
    }

    /// How many transactions are parked.
    pub async fn count_parked(&self) -> Result<i64, ControlError> {
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM `{}`.`parked`", self.db)))
            .fetch_one(&self.pool)
            .await
            .map_err(self.err("counting parked transactions"))
    }

    async fn parked_rows(&self, records: &str, limit: u64) -> Result<Vec<Parked>, ControlError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, origin, topic, kafka_partition, kafka_offset, row_keys, {records}, reason,
                    TIMESTAMPDIFF(SECOND, first_seen, CURRENT_TIMESTAMP(6))
             FROM `{}`.`parked` ORDER BY id LIMIT {limit}",
            self.db
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("listing parked transactions"))?;
        Ok(rows
            .iter()
            .map(|r| Parked {
                id: r.get(0),
                origin: r.get(1),
                topic: r.get(2),
                partition: r.get(3),
                offset: r.get(4),
                row_keys: r.get(5),
                records: r.get(6),
                reason: r.get(7),
                age_seconds: r.get(8),
            })
            .collect())
    }

    /// Removes a parked transaction inside `tx`.
    pub async fn delete_parked(&self, tx: &mut Transaction<'_, MySql>, id: u64) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM `{}`.`parked` WHERE id = ?", self.db))).bind(id).execute(&mut **tx).await?;
        Ok(())
    }

    /// Keeps only part of a parked entry: these records (a JSON array) touching these rows.
    pub async fn shrink_parked(&self, tx: &mut Transaction<'_, MySql>, id: u64, row_keys: &str, records: &[u8]) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!("UPDATE `{}`.`parked` SET row_keys = ?, records = ? WHERE id = ?", self.db)))
            .bind(row_keys)
            .bind(records)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Number of dead letters waiting.
    pub async fn count_dead_letters(&self) -> Result<i64, ControlError> {
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM `{}`.`dead_letters`", self.db)))
            .fetch_one(&self.pool)
            .await
            .map_err(self.err("counting dead letters"))
    }

    /// Deletes one dead letter inside `tx` (replayed).
    pub async fn delete_dead_letter(&self, tx: &mut Transaction<'_, MySql>, id: u64) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM `{}`.`dead_letters` WHERE id = ?", self.db))).bind(id).execute(&mut **tx).await?;
        Ok(())
    }

    /// Deletes one dead letter; whether it existed.
    pub async fn drop_dead_letter(&self, id: u64) -> Result<bool, ControlError> {
        let r = sqlx::query(AssertSqlSafe(format!("DELETE FROM `{}`.`dead_letters` WHERE id = ?", self.db)))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(self.err("dropping a dead letter"))?;
        Ok(r.rows_affected() > 0)
    }
}
