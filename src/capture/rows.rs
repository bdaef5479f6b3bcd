//! Row events to change records: decoding the images, the filter, references, and the
//! envelope of DESIGN.md.

use super::entity::apply_filter;
use super::*;

/// A row change that leaves the site, before it gets its place in the stream.
pub(super) struct Change {
    pub(super) op: Op,
    pub(super) before: Option<Map<String, Value>>,
    pub(super) after: Option<Map<String, Value>>,
    pub(super) key: Map<String, Value>,
    pub(super) refs: Vec<record::RefKey>,
}

/// Where a change stands: its position and transaction.
pub(super) struct Place {
    pub(super) server_id: u32,
    pub(super) gtid: Option<String>,
    pub(super) txn_id: String,
    pub(super) file: String,
    pub(super) pos: u64,
    pub(super) row: u32,
    pub(super) ts_ms: i64,
    pub(super) snapshot: &'static str,
    pub(super) total_order: u64,
    pub(super) data_collection_order: u64,
}

impl Reader {
    pub(super) async fn on_rows(
        &mut self,
        _stream: &BinlogStream,
        event: &mysql_async::binlog::events::Event,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        let header = event.header();
        let end_pos = header.log_pos() as u64;
        let start_pos = end_pos.saturating_sub(header.event_size() as u64);
        let data = match event.read_data() {
            Ok(Some(EventData::RowsEvent(r))) => r,
            Ok(_) => return Ok(()),
            Err(e) => {
                return Err(CaptureError::Binlog { file: self.file.clone(), pos: start_pos, reason: format!("unreadable rows event: {e}") })
            }
        };
        let table_id = data.table_id();
        let entity = match self.tables.get(&table_id) {
            Some(TableRole::EchoMarker) => {
                if let Some(txn) = self.txn.as_mut() {
                    if txn.records > 0 {
                        tracing::warn!(site = %self.ctx.site, "echo marker after published rows in one transaction");
                    }
                    txn.echo = true;
                }
                return Ok(());
            }
            Some(TableRole::Entity(e)) => e.clone(),
            Some(TableRole::Other) => return Ok(()),
            Some(TableRole::SnapshotRequest(info)) | Some(TableRole::Watermark(info)) => {
                let is_request = matches!(self.tables.get(&table_id), Some(TableRole::SnapshotRequest(_)));
                if !matches!(data, RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_)) {
                    return Ok(());
                }
                let info = info.clone();
                let mut images = Vec::new();
                for row in decode::rows(&data, &info) {
                    let (_, after) = row.map_err(|e| CaptureError::Binlog { file: self.file.clone(), pos: start_pos, reason: e.to_string() })?;
                    if let Some(after) = after {
                        images.push(self.control_image(&info, &after, start_pos)?);
                    }
                }
                for image in images {
                    if is_request {
                        let id = image.get("id").and_then(Value::as_u64).unwrap_or(0);
                        let entities = image.get("entities").and_then(Value::as_str).unwrap_or("").to_string();
                        self.start_snapshot(id, &entities).await?;
                    } else {
                        self.on_watermark(&image, publisher).await?;
                    }
                }
                return Ok(());
            }
            None => {
                return Err(CaptureError::Binlog {
                    file: self.file.clone(),
                    pos: start_pos,
                    reason: format!("rows event for table id {table_id} without its table map"),
                })
            }
        };
        if self.txn.as_ref().is_some_and(|t| t.echo) {
            // Not published, but a snapshot chunk must still drop its older copy of these rows.
            if self.snapshot.as_ref().is_some_and(|snap| snap.watches(&entity.name)) {
                for row in decode::rows(&data, &entity.info) {
                    let (before, after) = row.map_err(|e| CaptureError::Binlog { file: self.file.clone(), pos: start_pos, reason: e.to_string() })?;
                    let before = before.map(|r| self.image(&entity, &r, start_pos)).transpose()?;
                    let after = after.map(|r| self.image(&entity, &r, start_pos)).transpose()?;
                    if let Some(snapshot) = self.snapshot.as_mut() {
                        snapshot.superseded(&entity.name, before.as_ref(), after.as_ref());
                    }
                }
            }
            return Ok(());
        }
        if self.txn.is_none() {
            // Only possible when resuming in the middle of a transaction; never on GTID resume.
            self.txn = Some(Txn::default());
        }
        // A session with binlog_row_image=MINIMAL logs only some columns: never guess the rest.
        let columns = data.num_columns() as usize;
        let before_full = data.columns_before_image().map_or(true, |b| b.count_ones() >= columns);
        let after_full = data.columns_after_image().map_or(true, |b| b.count_ones() >= columns);
        if !before_full || !after_full {
            return Err(CaptureError::Binlog {
                file: self.file.clone(),
                pos: start_pos,
                reason: format!(
                    "table {}: a row change logged without all its columns: a session uses binlog_row_image=MINIMAL or NOBLOB; set binlog_row_image=FULL globally and for every session",
                    entity.info.table
                ),
            });
        }
        let event_op = match &data {
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => Op::Create,
            RowsEventData::UpdateRowsEvent(_) | RowsEventData::UpdateRowsEventV1(_) => Op::Update,
            _ => Op::Delete,
        };
        let ts_ms = header.timestamp() as i64 * 1000;
        // decode::rows, not mysql_common's rows(): it decodes the values mysql_common gets wrong
        // (negative TIME(1)/TIME(2) panics there, MEDIUMINT sign, TIMESTAMP after 2038).
        for (row_index, row) in decode::rows(&data, &entity.info).enumerate() {
            let (before, after) = row.map_err(|e| CaptureError::Binlog {
                file: self.file.clone(),
                pos: start_pos,
                reason: format!("table {}: undecodable row: {e}", entity.info.table),
            })?;
            let before = before.map(|r| self.image(&entity, &r, start_pos)).transpose()?;
            let after = after.map(|r| self.image(&entity, &r, start_pos)).transpose()?;
            if let Some(snapshot) = self.snapshot.as_mut() {
                snapshot.superseded(&entity.name, before.as_ref(), after.as_ref());
            }
            let Some(change) = self.prepare(&entity, event_op, before, after).await? else { continue };
            let txn = self.txn.as_mut().expect("transaction started");
            txn.records += 1;
            let per_table = txn.per_table.entry(entity.name.clone()).or_insert(0);
            *per_table += 1;
            let gtid = txn.gtid.as_ref().map(|g| g.to_string());
            let place = Place {
                server_id: if txn.server_id != 0 { txn.server_id } else { header.server_id() },
                txn_id: gtid.clone().unwrap_or_else(|| format!("{}:{}", self.file, start_pos)),
                gtid,
                file: self.file.clone(),
                pos: start_pos,
                row: row_index as u32,
                ts_ms,
                snapshot: "false",
                total_order: txn.records,
                data_collection_order: *per_table,
            };
            let (key_bytes, record) = self.envelope(&entity, change, place);
            let txn = self.txn.as_mut().expect("transaction started");
            if let Some((k, r)) = txn.pending.replace((key_bytes, record)) {
                self.publish(publisher, k, r).await?;
            }
        }
        Ok(())
    }

    /// Filters a row change, and resolves its references: `None` when it does not leave the site.
    pub(super) async fn prepare(
        &mut self,
        entity: &EntityTable,
        op: Op,
        before: Option<Map<String, Value>>,
        after: Option<Map<String, Value>>,
    ) -> Result<Option<Change>, CaptureError> {
        if let Some(pk) = &entity.pk_column {
            if let Some(image) = after.as_ref().or(before.as_ref()) {
                self.refs.remember(&entity.name, pk, image);
            }
        }
        let Some((op, before, after)) = apply_filter(entity, op, before, after) else { return Ok(None) };
        let mut refs: Vec<record::RefKey> = Vec::new();
        for (col, target) in &entity.translated_refs {
            for image in [before.as_ref(), after.as_ref()].into_iter().flatten() {
                let Some(id) = image.get(col).filter(|v| !v.is_null()) else { continue };
                if refs.iter().any(|r| &r.entity == target && &r.id == id) {
                    continue;
                }
                if let Some(key) = self.refs.resolve(target, id).await? {
                    refs.push(record::RefKey { entity: target.clone(), id: id.clone(), key });
                }
            }
        }
        let key_image = after.as_ref().or(before.as_ref()).expect("an image exists");
        let mut key = Map::new();
        for col in &entity.key_columns {
            key.insert(col.clone(), key_image.get(col).cloned().unwrap_or(Value::Null));
        }
        Ok(Some(Change { op, before, after, key, refs }))
    }

    /// The record of a change at `place`, and its message key.
    pub(super) fn envelope(&self, entity: &EntityTable, change: Change, place: Place) -> (Vec<u8>, ChangeRecord) {
        let key_bytes = record::key_bytes(&entity.name, &change.key);
        let record = ChangeRecord {
            op: change.op,
            before: change.before,
            after: change.after,
            source: Source {
                connector: "sitesync".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                name: self.ctx.config.federation.name.clone(),
                site: self.ctx.site.clone(),
                db: entity.info.db.clone(),
                table: entity.info.table.clone(),
                server_id: place.server_id,
                gtid: place.gtid,
                file: place.file,
                pos: place.pos,
                row: place.row,
                ts_ms: place.ts_ms,
                snapshot: place.snapshot.into(),
            },
            ts_ms: record::now_ms(),
            transaction: TransactionInfo {
                id: place.txn_id,
                total_order: place.total_order,
                data_collection_order: place.data_collection_order,
            },
            sitesync: SitesyncMeta {
                v: RECORD_VERSION,
                origin: self.ctx.site.clone(),
                entity: entity.name.clone(),
                key: change.key,
                last_in_transaction: false,
                refs: change.refs,
            },
        };
        (key_bytes, record)
    }

    /// A row of one of sitesync's own control tables.
    pub(super) fn control_image(&self, info: &TableInfo, row: &mysql_async::binlog::row::BinlogRow, pos: u64) -> Result<Map<String, Value>, CaptureError> {
        let mut out = Map::new();
        for (i, col) in info.columns.iter().enumerate() {
            let Some(value) = row.as_ref(i) else { continue };
            let encoding = self.encodings.get(&col.charset).copied().unwrap_or(TextEncoding::Binary);
            let v = encode_value(col, encoding, value)
                .map_err(|e| CaptureError::Binlog { file: self.file.clone(), pos, reason: format!("control table {}: {e}", info.table) })?;
            out.insert(col.name.clone(), v);
        }
        Ok(out)
    }

    pub(super) fn image(&self, entity: &EntityTable, row: &mysql_async::binlog::row::BinlogRow, pos: u64) -> Result<Map<String, Value>, CaptureError> {
        let mut out = Map::new();
        for (i, col) in entity.info.columns.iter().enumerate() {
            let Some(encoding) = entity.encodings[i] else { continue };
            let Some(value) = row.as_ref(i) else { continue };
            let v = encode_value(col, encoding, value).map_err(|e| CaptureError::Binlog {
                file: self.file.clone(),
                pos,
                reason: format!("table {}: {e}", entity.info.table),
            })?;
            out.insert(col.name.clone(), v);
        }
        Ok(out)
    }
}
