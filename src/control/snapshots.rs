//! `snapshot_requests` and `snapshot_watermarks`: snapshots asked for (`sitesync snapshot`
//! inserts a request; the running capture reads its insert in the binlog, runs it and keeps its
//! status), and the watermarks that place each chunk in the binlog. Capture writes the
//! watermarks on its own snapshot connection, in the session that reads the chunk: this module
//! gives it their statement.

use serde_json::{Map, Value};
use sqlx::Row;

use super::{Control, ControlError};

/// The tables' definitions, for [`super::Control::ddl`].
pub(super) fn ddl(db: &str) -> [String; 3] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.`snapshot_requests` (
                   id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                   entities TEXT NOT NULL,
                   status VARCHAR(16) NOT NULL DEFAULT 'requested',
                   rows_total BIGINT NOT NULL DEFAULT 0,
                   rows_done BIGINT NOT NULL DEFAULT 0,
                   message TEXT NULL,
                   created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                   updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
                 ) ENGINE=InnoDB"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.`snapshot_watermarks` (
                   id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                   request_id BIGINT UNSIGNED NOT NULL,
                   run BIGINT UNSIGNED NOT NULL,
                   chunk BIGINT UNSIGNED NOT NULL,
                   kind VARCHAR(8) NOT NULL
                 ) ENGINE=InnoDB"
        ),
        // The rows a limited snapshot (a repair) publishes, by the table's primary key as text.
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.`snapshot_rows` (
                   request_id BIGINT UNSIGNED NOT NULL,
                   local_key VARCHAR(512) NOT NULL,
                   PRIMARY KEY (request_id, local_key)
                 ) ENGINE=InnoDB"
        ),
    ]
}

/// Where a snapshot request stands.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRequest {
    /// `requested`, `running`, `done` or `failed`.
    pub status: String,
    /// Rows published so far.
    pub rows_done: i64,
    /// Rows counted when it started.
    pub rows_total: i64,
    /// Why it failed, or what it did.
    pub message: Option<String>,
    /// Only this site applies its records (a joining site's history); None: every site.
    pub for_site: Option<String>,
}

/// The snapshot tables of one control database.
#[derive(Clone)]
pub struct SnapshotRequests {
    ctl: Control,
}

impl SnapshotRequests {
    pub(super) fn new(ctl: Control) -> Self {
        Self { ctl }
    }

    async fn exec(
        &self,
        what: &'static str,
        q: sqlx::query::Query<'_, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    ) -> Result<u64, ControlError> {
        Ok(q.execute(self.ctl.pool()).await.map_err(self.ctl.err(what))?.last_insert_id())
    }

    /// Asks for a snapshot of `entities` (comma-separated) whose records only `site` applies
    /// (the history a joining site needs); its id.
    pub async fn request_for(&self, entities: &str, site: &str) -> Result<u64, ControlError> {
        let sql = format!("INSERT INTO `{}`.`snapshot_requests` (entities, for_site) VALUES (?, ?)", self.ctl.database());
        self.exec("asking for a snapshot (did `sitesync init` run?)", sqlx::query(sqlx::AssertSqlSafe(sql)).bind(entities).bind(site)).await
    }

    /// Asks for a snapshot of `entities` for their export topics (`[export]`); its id.
    pub async fn request_export(&self, entities: &str) -> Result<u64, ControlError> {
        self.request_for(entities, super::EXPORT_SNAPSHOT).await
    }

    /// Asks for a snapshot of `entities` (comma-separated; empty: all); its id.
    pub async fn request(&self, entities: &str) -> Result<u64, ControlError> {
        let sql = format!("INSERT INTO `{}`.`snapshot_requests` (entities) VALUES (?)", self.ctl.database());
        self.exec("asking for a snapshot (did `sitesync init` run?)", sqlx::query(sqlx::AssertSqlSafe(sql)).bind(entities)).await
    }

    /// Asks for a snapshot of `entity` limited to the rows whose primary key (as text) is in
    /// `rows` (a repair); its id. The rows are written in the request's own transaction, so
    /// capture, which sees the request when it commits, finds them.
    pub async fn request_rows(&self, entity: &str, rows: &[String]) -> Result<u64, ControlError> {
        let db = self.ctl.database();
        let mut tx = self.ctl.pool().begin().await.map_err(self.ctl.err("asking for a repair"))?;
        let id = sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO `{db}`.`snapshot_requests` (entities) VALUES (?)")))
            .bind(entity)
            .execute(&mut *tx)
            .await
            .map_err(self.ctl.err("asking for a repair (did `sitesync init` run?)"))?
            .last_insert_id();
        for chunk in crate::mysql::session::statement_chunks(rows, crate::mysql::session::MAX_STATEMENT_ROWS) {
            let sql = format!(
                "INSERT IGNORE INTO `{db}`.`snapshot_rows` (request_id, local_key) VALUES {}",
                vec!["(?, ?)"; chunk.len()].join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for key in chunk {
                q = q.bind(id).bind(key);
            }
            q.execute(&mut *tx).await.map_err(self.ctl.err("listing a repair's rows"))?;
        }
        tx.commit().await.map_err(self.ctl.err("asking for a repair"))?;
        Ok(id)
    }

    /// How many rows request `id` is limited to (0: the whole tables).
    pub async fn limited_to(&self, id: u64) -> Result<i64, ControlError> {
        let sql = format!("SELECT COUNT(*) FROM `{}`.`snapshot_rows` WHERE request_id = ?", self.ctl.database());
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_one(self.ctl.pool())
            .await
            .map_err(self.ctl.err("reading a repair's rows"))
    }

    /// A condition on a limited snapshot's rows: the row whose primary key as text is
    /// `local_key` is one of request `id`'s.
    pub fn limited_sql(&self, id: u64, local_key: &str) -> String {
        format!("{local_key} IN (SELECT s.local_key FROM `{}`.`snapshot_rows` s WHERE s.request_id = {id})", self.ctl.database())
    }

    /// The request `id`, if it exists.
    pub async fn get(&self, id: u64) -> Result<Option<SnapshotRequest>, ControlError> {
        let sql = format!(
            "SELECT status, rows_done, rows_total, message, for_site FROM `{}`.`snapshot_requests` WHERE id = ?",
            self.ctl.database()
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.ctl.pool())
            .await
            .map_err(self.ctl.err("reading a snapshot request"))?;
        Ok(row.map(|r| SnapshotRequest {
            status: r.get(0),
            rows_done: r.get(1),
            rows_total: r.get(2),
            message: r.get(3),
            for_site: r.get(4),
        }))
    }

    /// The `limit` most recent requests, newest first: (id, entities, state, when asked as
    /// `YYYY-MM-DDTHH:MM:SSZ`).
    pub async fn recent(&self, limit: u64) -> Result<Vec<(u64, String, SnapshotRequest, String)>, ControlError> {
        let sql = format!(
            "SELECT id, entities, status, rows_done, rows_total, message, for_site, DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%sZ')
             FROM `{}`.`snapshot_requests` ORDER BY id DESC LIMIT {limit}",
            self.ctl.database()
        );
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(self.ctl.pool()).await.map_err(self.ctl.err("reading snapshot requests"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let state =
                    SnapshotRequest { status: r.get(2), rows_done: r.get(3), rows_total: r.get(4), message: r.get(5), for_site: r.get(6) };
                (r.get(0), r.get(1), state, r.get(7))
            })
            .collect())
    }

    /// Requests asked for or running (a restarted capture starts them again): (id, entities).
    pub async fn open(&self) -> Result<Vec<(u64, String)>, ControlError> {
        let sql = format!(
            "SELECT id, entities FROM `{}`.`snapshot_requests` WHERE status IN ('running', 'requested') ORDER BY id",
            self.ctl.database()
        );
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(self.ctl.pool()).await.map_err(self.ctl.err("reading snapshot requests"))
    }

    /// The request starts: `total` rows to publish.
    pub async fn start(&self, id: u64, total: i64) -> Result<(), ControlError> {
        let sql = format!(
            "UPDATE `{}`.`snapshot_requests` SET status = 'running', rows_total = ?, rows_done = 0 WHERE id = ?",
            self.ctl.database()
        );
        self.exec("starting a snapshot", sqlx::query(sqlx::AssertSqlSafe(sql)).bind(total).bind(id)).await.map(drop)
    }

    /// `done` rows published so far.
    pub async fn progress(&self, id: u64, done: i64) -> Result<(), ControlError> {
        let sql = format!("UPDATE `{}`.`snapshot_requests` SET rows_done = ? WHERE id = ?", self.ctl.database());
        self.exec("recording snapshot progress", sqlx::query(sqlx::AssertSqlSafe(sql)).bind(done).bind(id)).await.map(drop)
    }

    /// The request ends with `status` (`done` or `failed`) and why.
    pub async fn finish(&self, id: u64, status: &str, message: &str) -> Result<(), ControlError> {
        let sql = format!("UPDATE `{}`.`snapshot_requests` SET status = ?, message = ? WHERE id = ?", self.ctl.database());
        self.exec("ending a snapshot", sqlx::query(sqlx::AssertSqlSafe(sql)).bind(status).bind(message).bind(id)).await.map(drop)
    }

    /// The statement that writes one watermark (`kind` `low` or `high`) of chunk `chunk` of run
    /// `run` of request `request`, for capture's snapshot connection.
    pub fn watermark_sql(&self, request: u64, run: u64, chunk: u64, kind: Watermark) -> String {
        format!(
            "INSERT INTO `{}`.`snapshot_watermarks` (request_id, run, chunk, kind) VALUES ({request}, {run}, {chunk}, '{}')",
            self.ctl.database(),
            kind.as_str()
        )
    }

    /// A condition on the snapshot's rows: the row whose primary key as text is `local_key` was
    /// not created here by the applier from another site's change (`received_rows`).
    pub fn not_received_sql(&self, entity: &str, local_key: &str) -> String {
        format!(
            "NOT EXISTS (SELECT 1 FROM `{}`.`received_rows` r WHERE r.entity = '{}' AND r.local_key = {local_key})",
            self.ctl.database(),
            entity.replace('\\', "\\\\").replace('\'', "''")
        )
    }
}

/// The two watermarks around a snapshot chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// Written before the chunk is read.
    Low,
    /// Written after.
    High,
}

impl Watermark {
    /// As stored in `snapshot_watermarks.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Watermark::Low => "low",
            Watermark::High => "high",
        }
    }
}

/// A `snapshot_requests` insert as capture reads it in the binlog: (id, entities).
pub fn request_of_image(image: &Map<String, Value>) -> (u64, String) {
    (image.get("id").and_then(Value::as_u64).unwrap_or(0), image.get("entities").and_then(Value::as_str).unwrap_or("").to_string())
}

/// A `snapshot_watermarks` insert as capture reads it in the binlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkRow {
    /// The snapshot request.
    pub request_id: u64,
    /// Which run of it.
    pub run: u64,
    /// Which chunk.
    pub chunk: u64,
    /// Low or high; `None` for anything else.
    pub kind: Option<Watermark>,
}

impl WatermarkRow {
    /// The watermark of a binlog image.
    pub fn of_image(image: &Map<String, Value>) -> Self {
        let num = |k: &str| image.get(k).and_then(Value::as_u64).unwrap_or(0);
        let kind = match image.get("kind").and_then(Value::as_str) {
            Some("low") => Some(Watermark::Low),
            Some("high") => Some(Watermark::High),
            _ => None,
        };
        WatermarkRow { request_id: num("request_id"), run: num("run"), chunk: num("chunk"), kind }
    }
}
