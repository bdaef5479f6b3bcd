//! Snapshots: publishing the rows that already exist (history, a new site) as `op = "r"`
//! records, consistently with the binlog stream, while capture goes on.
//!
//! `sitesync snapshot` only inserts a request into the control table `snapshot_requests`; the
//! running capture sees that insert in the binlog and performs the snapshot in chunks, with the
//! watermark algorithm of DBLog (also Debezium's incremental snapshots):
//!
//! 1. write a low watermark (a row in `snapshot_watermarks`), read the next chunk of rows by
//!    primary key, write a high watermark;
//! 2. keep streaming the binlog; every row change of the table seen between the two watermarks
//!    removes that row from the chunk, because the change itself is published and is at least
//!    as new as what the chunk read;
//! 3. at the high watermark, publish what is left of the chunk, then start the next chunk.
//!
//! So no change made during the snapshot is lost or overtaken by an older snapshot row, memory
//! holds one chunk, and streaming never stops. The records of a chunk form one transaction for
//! the applier, which merges them by natural key: matching rows are linked, missing ones
//! created. A capture restarted during a snapshot starts that snapshot again (the records are
//! idempotent); watermarks of the earlier run are told apart by a per-run nonce.

use crate::control::{Watermark, WatermarkRow};
use crate::mysql::quote;
use std::collections::VecDeque;
use std::sync::Arc;

use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use serde_json::{Map, Value};

use super::decode::{encode_value, DecodeError, TextEncoding};
use super::envelope::{Encoded, Image, Place};
use super::publisher::Publisher;
use super::table::{ColumnInfo, TableInfo};
use super::{CaptureError, EntityTable, Reader};
use crate::record::{self, Op};

/// A snapshot in progress.
pub(super) struct Snapshot {
    request_id: u64,
    /// Tells this run's watermarks from an earlier run's.
    run: u64,
    conn: mysql_async::Conn,
    remaining: VecDeque<String>,
    entity: Option<Arc<EntityTable>>,
    pk_columns: Vec<String>,
    last_key: Option<Vec<mysql_async::Value>>,
    chunk: u64,
    window_open: bool,
    /// The chunk read: primary key (JSON) and row image.
    rows: Vec<(String, Image)>,
    /// The chunk was shorter than the chunk size: the entity is done after it.
    exhausted: bool,
    rows_done: u64,
    /// Only the rows listed in `snapshot_rows` for this request (a repair).
    limited: bool,
    /// Only this site applies the records (a joining site's history).
    for_site: Option<String>,
    /// The export stream's history (`sitesync snapshot --export`): every row of the table, to
    /// its export topic, not the site topic.
    export: bool,
}

impl Snapshot {
    /// Whether a chunk of `entity` is between its watermarks.
    pub(super) fn watches(&self, entity: &str) -> bool {
        self.window_open && self.entity.as_ref().is_some_and(|e| e.name == entity)
    }

    /// A binlog change to `entity` supersedes the chunk's copy of the same row: the chunk
    /// carries the row as the change left it (its primary key unchanged), or not at all (a
    /// delete, a changed primary key).
    ///
    /// DBLog drops such rows, since the change itself is published; but a target may have to
    /// hold that change back (it waits behind an earlier one that refers to this very row,
    /// which only this snapshot brings), and a snapshot row never waits: with the row's latest
    /// state in the chunk, the target is never left without it.
    pub(super) fn superseded(&mut self, entity: &EntityTable, before: Option<&Image>, after: Option<&Image>) {
        if !self.watches(&entity.name) {
            return;
        }
        // The binlog's table map may number the columns otherwise than the snapshot's table.
        let pk = pk_indexes(&self.pk_columns, &entity.info);
        let old = before.map(|image| image.values_json(&pk));
        let new = after.map(|image| image.values_json(&pk));
        let latest = match (after, &self.entity) {
            (Some(after), Some(chunk)) if old.is_none() || old == new => reordered(after, &entity.info, &chunk.info),
            _ => None,
        };
        for key in [old.as_ref(), new.as_ref()].into_iter().flatten() {
            match (&latest, self.rows.iter_mut().find(|(k, _)| k == key)) {
                (Some(latest), Some((_, image))) => *image = latest.clone(),
                (None, Some(_)) => self.rows.retain(|(k, _)| k != key),
                _ => {}
            }
        }
    }
}

/// `image` (in the columns of `from`) in the columns of `to`, by name; None if `from` lacks one
/// of them (the table changed between the snapshot's read and the binlog event).
fn reordered(image: &Image, from: &TableInfo, to: &TableInfo) -> Option<Image> {
    let mut out = Vec::with_capacity(to.columns.len());
    for col in &to.columns {
        out.push(image.0.get(from.index_of(&col.name)?)?.clone());
    }
    Some(Image(out))
}

/// Indexes of the `pk` columns in `info` (a missing one reads as `null`).
fn pk_indexes(pk: &[String], info: &TableInfo) -> Vec<usize> {
    pk.iter().map(|c| info.index_of(c).unwrap_or(usize::MAX)).collect()
}

impl Reader {
    async fn snapshot_conn(&self) -> Result<mysql_async::Conn, CaptureError> {
        // A connection of its own: its session settings must not leak into the pool.
        let mut conn = mysql_async::Conn::new(self.pool_opts.clone()).await.map_err(|e| self.source_err(e))?;
        // Raw bytes in each column's own character set, TIMESTAMP in UTC: the same values the
        // binlog carries, so a snapshot row and a streamed row encode alike.
        conn.query_drop("SET character_set_results = binary, time_zone = '+00:00'").await.map_err(|e| self.source_err(e))?;
        Ok(conn)
    }

    /// Starts the snapshot `id` of `entities` (all configured ones when empty).
    pub(super) async fn start_snapshot(&mut self, id: u64, entities: &str) -> Result<(), CaptureError> {
        if self.snapshots.running.as_ref().is_some_and(|s| s.request_id == id) {
            return Ok(());
        }
        // The request's insert is read again when capture resumes from an earlier checkpoint:
        // a snapshot that is done (or failed) is not run twice.
        let request = self.snapshots.requests.get(id).await?;
        if !matches!(request.as_ref().map(|r| r.status.as_str()), Some("requested" | "running")) {
            return Ok(());
        }
        let for_site = request.and_then(|r| r.for_site);
        let export = for_site.as_deref() == Some(crate::control::EXPORT_SNAPSHOT);
        if export && !self.ctx.config.export.any_at(&self.ctx.site) {
            // Asked for under a file that exported; this one does not: no reader would run it.
            return self.finish_request(id, "failed", "this site does not export anything ([export]) any more").await;
        }
        if export != (self.role == super::Role::Export) {
            // The other binlog reader's: the export stream runs `snapshot --export`, capture the rest.
            return Ok(());
        }
        let for_site = for_site.filter(|_| !export);
        if self.snapshots.running.is_some() {
            // One at a time: this one starts when the current one ends.
            self.snapshots.queued.push_back((id, entities.to_string()));
            return Ok(());
        }
        let mut names: Vec<String> = entities.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        if names.is_empty() {
            names = self.ctx.config.entities.keys().cloned().collect();
        }
        if let Some(unknown) = names.iter().find(|n| !self.ctx.config.entities.contains_key(*n)) {
            let message = format!("entity `{unknown}` is not configured");
            self.finish_request(id, "failed", &message).await?;
            return Ok(());
        }
        // A repair lists its rows; a snapshot of whole tables lists none.
        let limited_rows = self.snapshots.requests.limited_to(id).await?;
        let limited = limited_rows > 0;
        let conn = self.snapshot_conn().await?;
        let run = (record::now_ms() as u64).wrapping_mul(6364136223846793005) ^ id;
        tracing::info!(site = %self.ctx.site, request = id, entities = %names.join(","), "snapshot starts");
        let mut total: i64 = if limited { limited_rows } else { 0 };
        let db = self.db.clone();
        let mut conn_count = self.pool.get_conn().await.map_err(|e| self.source_err(e))?;
        for n in names.iter().filter(|_| !limited) {
            let table = &self.ctx.config.entities[n].table;
            let count: Option<i64> = conn_count
                .query_first(format!("SELECT COUNT(*) FROM {}", crate::mysql::qualified(&db, table)))
                .await
                .map_err(|e| self.source_err(e))?;
            total += count.unwrap_or(0);
        }
        drop(conn_count);
        self.snapshots.requests.start(id, total).await?;
        self.snapshots.running = Some(Snapshot {
            request_id: id,
            run,
            conn,
            remaining: names.into(),
            entity: None,
            pk_columns: Vec::new(),
            last_key: None,
            chunk: 0,
            window_open: false,
            rows: Vec::new(),
            exhausted: false,
            rows_done: 0,
            limited,
            for_site,
            export,
        });
        self.next_chunk().await
    }

    async fn finish_request(&mut self, id: u64, status: &str, message: &str) -> Result<(), CaptureError> {
        self.snapshots.requests.finish(id, status, message).await?;
        tracing::info!(site = %self.ctx.site, request = id, status, message, "snapshot ends");
        Ok(())
    }

    /// Reads the next chunk between two watermarks (or ends the snapshot).
    async fn next_chunk(&mut self) -> Result<(), CaptureError> {
        {
            let Some(snap) = self.snapshots.running.as_mut() else { return Ok(()) };
            if snap.entity.is_none() {
                let Some(name) = snap.remaining.pop_front() else {
                    let (id, done) = (snap.request_id, snap.rows_done);
                    self.snapshots.running = None;
                    self.finish_request(id, "done", &format!("{done} rows published")).await?;
                    if let Some((next, entities)) = self.snapshots.queued.pop_front() {
                        return Box::pin(self.start_snapshot(next, &entities)).await;
                    }
                    return Ok(());
                };
                let config = self.ctx.config.clone();
                let cfg = &config.entities[&name];
                let info = table_info(&mut snap.conn, &self.db, &cfg.table, &self.known.charset_names)
                    .await
                    .map_err(|e| CaptureError::Source { site: self.ctx.site.clone(), source: e })?;
                let Some(info) = info else {
                    let id = snap.request_id;
                    self.snapshots.running = None;
                    return self.finish_request(id, "failed", &format!("table {}.{} does not exist", self.db, cfg.table)).await;
                };
                if info.primary_key.is_empty() {
                    let id = snap.request_id;
                    self.snapshots.running = None;
                    return self
                        .finish_request(id, "failed", &format!("table {}.{} has no primary key to read it in chunks", self.db, cfg.table))
                        .await;
                }
                let pk_columns = info.primary_key.iter().map(|&i| info.columns[i].name.clone()).collect();
                let id = snap.request_id;
                let entity = match self.bind_entity(&name, cfg, info) {
                    Ok(entity) => Arc::new(entity),
                    Err(e) => {
                        self.snapshots.running = None;
                        return self.finish_request(id, "failed", &format!("entity {name}: {e}")).await;
                    }
                };
                let snap = self.snapshots.running.as_mut().expect("snapshot running");
                snap.pk_columns = pk_columns;
                snap.entity = Some(entity);
                snap.last_key = None;
            }
        }
        let chunk_rows = self.ctx.config.capture.snapshot_chunk_rows.max(1);
        let snap = self.snapshots.running.as_mut().expect("snapshot running");
        snap.chunk += 1;
        snap.window_open = false;
        let entity = snap.entity.clone().expect("entity chosen");
        let mark = |kind| self.snapshots.requests.watermark_sql(snap.request_id, snap.run, snap.chunk, kind);
        let (low, high) = (mark(Watermark::Low), mark(Watermark::High));
        let columns: Vec<String> = entity.info.columns.iter().map(|c| quote(&c.name)).collect();
        let pk: Vec<String> = snap.pk_columns.iter().map(|c| quote(c)).collect();
        let mut conditions = Vec::new();
        if snap.last_key.is_some() {
            conditions.push(format!("({}) > ({})", pk.join(", "), vec!["?"; pk.len()].join(", ")));
        }
        // Rows this site's applier created from another site's change are that site's to
        // publish: a snapshot publishes what this site owns (its application's rows and its
        // history), so no row is re-attributed and the traffic does not grow with the sites.
        // (The export stream follows the whole table: received rows too.)
        if let [only] = pk.as_slice() {
            let local_key = format!("CAST(t.{only} AS CHAR)");
            if !snap.export {
                conditions.push(self.snapshots.requests.not_received_sql(&entity.name, &local_key));
            }
            if snap.limited {
                conditions.push(self.snapshots.requests.limited_sql(snap.request_id, &local_key));
            }
        } else if snap.limited {
            let id = snap.request_id;
            self.snapshots.running = None;
            return self
                .finish_request(
                    id,
                    "failed",
                    &format!("table {} has no one-column primary key to republish single rows by", entity.info.table),
                )
                .await;
        }
        let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let select = format!(
            "SELECT {} FROM {} t {filter} ORDER BY {} LIMIT {chunk_rows}",
            columns.iter().map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", "),
            crate::mysql::qualified(&entity.info.db, &entity.info.table),
            pk.iter().map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ")
        );
        let params: Vec<mysql_async::Value> = snap.last_key.clone().unwrap_or_default();
        let site = self.ctx.site.clone();
        let source_err = |e| CaptureError::Source { site: site.clone(), source: e };
        snap.conn.query_drop(&low).await.map_err(source_err)?;
        let rows: Vec<mysql_async::Row> = if params.is_empty() {
            snap.conn.exec(&select, ()).await.map_err(source_err)?
        } else {
            snap.conn.exec(&select, mysql_async::Params::Positional(params)).await.map_err(source_err)?
        };
        snap.conn.query_drop(&high).await.map_err(source_err)?;
        snap.exhausted = rows.len() < chunk_rows;
        let pk_index: Vec<usize> = snap.pk_columns.iter().filter_map(|c| entity.info.index_of(c)).collect();
        let pk_json_index = pk_indexes(&snap.pk_columns, &entity.info);
        let mut images = Vec::with_capacity(rows.len());
        let mut last_key = None;
        let mut undecodable = None;
        'rows: for mut row in rows {
            let values: Vec<mysql_async::Value> =
                (0..entity.info.columns.len()).map(|i| row.take(i).unwrap_or(mysql_async::Value::NULL)).collect();
            let mut image = Vec::with_capacity(values.len());
            for (i, col) in entity.info.columns.iter().enumerate() {
                let v = match entity.encodings[i] {
                    Some(encoding) => match select_value(col, encoding, values[i].clone()) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            undecodable = Some(e);
                            break 'rows;
                        }
                    },
                    None => None,
                };
                image.push(v);
            }
            let image = Image(image);
            last_key = Some(pk_index.iter().map(|&i| values[i].clone()).collect());
            images.push((image.values_json(&pk_json_index), image));
        }
        if let Some(e) = undecodable {
            // One table's value stops this snapshot, not capture: the request says why.
            let id = snap.request_id;
            self.snapshots.running = None;
            let message = format!("entity {}: table {}: {e}", entity.name, entity.info.table);
            tracing::error!(site = %self.ctx.site, request = id, reason = %message, "snapshot failed; capture goes on");
            return self.finish_request(id, "failed", &message).await;
        }
        if last_key.is_some() {
            snap.last_key = last_key;
        }
        snap.rows = images;
        Ok(())
    }

    /// A watermark row seen in the binlog.
    pub(super) async fn on_watermark(&mut self, image: &Map<String, Value>, publisher: &mut Publisher) -> Result<(), CaptureError> {
        let mark = WatermarkRow::of_image(image);
        let Some(snap) = self.snapshots.running.as_mut() else { return Ok(()) };
        if snap.request_id != mark.request_id || snap.run != mark.run || snap.chunk != mark.chunk {
            return Ok(());
        }
        match mark.kind {
            Some(Watermark::Low) => {
                snap.window_open = true;
                return Ok(());
            }
            Some(Watermark::High) => {}
            None => return Ok(()),
        }
        snap.window_open = false;
        let entity = snap.entity.clone().expect("entity chosen");
        let rows = std::mem::take(&mut snap.rows);
        let (request_id, run, exhausted, limited) = (snap.request_id, snap.run, snap.exhausted, snap.limited);
        let for_site = snap.for_site.clone();
        let export = snap.export;
        let last_of_all = exhausted && snap.remaining.is_empty();
        if export {
            let n = self.export_snapshot_rows(&entity, rows.into_iter().map(|(_, image)| image).collect(), publisher).await?;
            let snap = self.snapshots.running.as_mut().expect("snapshot running");
            snap.rows_done += n;
            let done = snap.rows_done;
            if exhausted {
                snap.entity = None;
            }
            self.snapshots.requests.progress(request_id, done as i64).await?;
            return self.next_chunk().await;
        }
        self.stamps.preload(&entity, rows.iter().map(|(_, image)| image)).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (_, image) in rows {
            if let Some(change) = self.prepare(&entity, Op::Read, None, Some(image)).await? {
                out.push(change);
            }
        }
        let n = out.len();
        // A repair's rows say so: `snapshot-repair-<request>-...`.
        let kind = if limited { "repair-" } else { "" };
        let txn_id = format!("{}{kind}{request_id}-{run}-{}-{}", record::SNAPSHOT_TRANSACTION_PREFIX, entity.name, mark.chunk);
        let now_ms = record::now_ms();
        let mut records = Vec::with_capacity(n);
        for (i, change) in out.into_iter().enumerate() {
            let place = Place {
                server_id: 0,
                gtid: None,
                txn_id: &txn_id,
                file: &self.at.file,
                pos: self.at.pos,
                row: i as u32,
                ts_ms: now_ms,
                now_ms,
                snapshot: if last_of_all && i + 1 == n { "last" } else { "true" },
                total_order: i as u64 + 1,
                data_collection_order: i as u64 + 1,
                to: for_site.as_deref(),
            };
            let mut encoded = Encoded::default();
            encoded.write(&self.site_parts, &entity.parts, &change, &place, entity.events(&self.ctx.metrics, &self.ctx.site, Op::Read));
            records.push(encoded);
        }
        if let Some(last) = records.last_mut() {
            last.mark_last();
        }
        for record in records {
            self.publish(publisher, record).await?;
        }
        let snap = self.snapshots.running.as_mut().expect("snapshot running");
        snap.rows_done += n as u64;
        let done = snap.rows_done;
        if exhausted {
            snap.entity = None;
        }
        self.snapshots.requests.progress(request_id, done as i64).await?;
        self.next_chunk().await
    }
}

/// A table described by `information_schema` (a snapshot may read a table before any of its
/// changes brought a table map): the same [`TableInfo`] the binlog would give.
async fn table_info(
    conn: &mut mysql_async::Conn,
    db: &str,
    table: &str,
    charsets: &std::collections::HashMap<String, u16>,
) -> Result<Option<TableInfo>, mysql_async::Error> {
    let Some(schema) = crate::mysql::schema::load_mysql(conn, db, table).await? else { return Ok(None) };
    let columns: Vec<ColumnInfo> = schema
        .columns
        .iter()
        .map(|c| ColumnInfo {
            name: c.name.clone(),
            ctype: crate::mysql::types::binlog_type(&c.data_type),
            meta: binlog_meta(&c.data_type, &c.column_type, c.datetime_precision),
            unsigned: c.unsigned(),
            charset: match &c.collation {
                Some(collation) => charsets.get(collation).copied().unwrap_or(0),
                None => super::decode::BINARY_CHARSET,
            },
            members: c.members(),
        })
        .collect();
    let primary_key = schema.primary_key.iter().filter_map(|p| columns.iter().position(|c| &c.name == p)).collect();
    Ok(Some(TableInfo { db: db.to_string(), table: table.to_string(), columns, primary_key }))
}

/// The type metadata a table map event would carry for a column described by
/// `information_schema`: DECIMAL's precision and scale, BIT's length, otherwise the fractional
/// seconds (what decoding and the export's schema read).
fn binlog_meta(data_type: &str, column_type: &str, datetime_precision: u32) -> Vec<u8> {
    let args: Vec<u32> = column_type
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inside, _)| inside.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_default();
    match data_type.to_ascii_lowercase().as_str() {
        "decimal" | "numeric" => vec![args.first().copied().unwrap_or(10) as u8, args.get(1).copied().unwrap_or(0) as u8],
        "bit" => {
            let bits = args.first().copied().unwrap_or(1);
            vec![(bits % 8) as u8, (bits / 8) as u8]
        }
        _ => vec![datetime_precision as u8],
    }
}

/// A value read by SELECT, encoded as the binlog's value of the same column would be.
fn select_value(col: &ColumnInfo, encoding: TextEncoding, v: mysql_async::Value) -> Result<Value, DecodeError> {
    use mysql_async::Value as V;
    let err = |reason: String| DecodeError { column: col.name.clone(), reason };
    Ok(match (col.ctype, v) {
        (_, V::NULL) => Value::Null,
        (ColumnType::MYSQL_TYPE_YEAR, V::Int(y)) => Value::from(y),
        (ColumnType::MYSQL_TYPE_YEAR, V::UInt(y)) => Value::from(y),
        (ColumnType::MYSQL_TYPE_ENUM | ColumnType::MYSQL_TYPE_SET, V::Bytes(b)) => {
            // Members are text in the column's character set, whatever the column's
            // encoding for other values says about binary.
            let encoding = if encoding == TextEncoding::Binary { TextEncoding::Utf8 } else { encoding };
            Value::String(encoding.decode(&b).map_err(err)?)
        }
        (ColumnType::MYSQL_TYPE_TIMESTAMP2, V::Date(y, mo, d, h, mi, s, us)) => {
            let mut t = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
            let decimals = col.meta.first().copied().unwrap_or(0).min(6) as usize;
            if decimals > 0 {
                t.push('.');
                t.push_str(&format!("{us:06}")[..decimals]);
            }
            t.push('Z');
            Value::String(t)
        }
        (_, v) => encode_value(col, encoding, &BinlogValue::Value(v))?,
    })
}
