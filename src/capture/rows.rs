//! Row events to change records: decoding the images, the filter, references, and the
//! envelope of DESIGN.md.

use super::entity::apply_filter;
use super::envelope::{Change, Image, Place, RefEntry};
use super::*;

/// A row change's before and after images.
type RowImages = (Option<Image>, Option<Image>);

/// Where a rows event sits in the binlog, and what its header says.
struct EventPlace {
    /// Start of the event.
    pos: u64,
    /// Commit time, ms.
    ts_ms: i64,
    /// Server id of the event.
    server_id: u32,
}

impl Reader {
    /// A rows event: handled by the role of its table.
    pub(super) async fn on_rows(
        &mut self,
        _stream: &BinlogStream,
        event: &mysql_async::binlog::events::Event,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        let header = event.header();
        let end_pos = header.log_pos() as u64;
        let at = EventPlace {
            pos: end_pos.saturating_sub(header.event_size() as u64),
            ts_ms: header.timestamp() as i64 * 1000,
            server_id: header.server_id(),
        };
        let data = match event.read_data() {
            Ok(Some(EventData::RowsEvent(r))) => r,
            Ok(_) => return Ok(()),
            Err(e) => return Err(self.binlog_err(at.pos, format!("unreadable rows event: {e}"))),
        };
        let table_id = data.table_id();
        let replay = self.txn.as_ref().is_some_and(|t| t.replay_id.is_some());
        let Some(role) = self.known.tables.get(&table_id).cloned() else {
            return Err(self.binlog_err(at.pos, format!("rows event for table id {table_id} without its table map")));
        };
        match role {
            TableRole::Other => Ok(()),
            TableRole::EchoMarker => {
                self.on_echo_marker();
                Ok(())
            }
            TableRole::Unusable { entity, table, reason } if self.role == Role::Export => {
                // Never a gap in the export: it stops (and retries) until the table fits again.
                Err(self
                    .binlog_err(at.pos, format!("export of entity `{entity}`: table {table} no longer fits its configuration: {reason}")))
            }
            TableRole::Entity(entity) if self.role == Role::Export => self.on_exported_rows(&entity, &data, &at, publisher).await,
            TableRole::Unusable { entity, table, reason } => {
                if !self.isolation.skips(&entity, replay) && !self.txn.as_ref().is_some_and(|t| t.echo) {
                    let place = format!("{}:{}", self.at.file, at.pos);
                    self.isolation.stop(&entity, &table, &self.at.gtid, &place, &reason).await?;
                }
                Ok(())
            }
            // Control rows read again for resumed entities happened before: not again.
            TableRole::SnapshotRequest(_) | TableRole::Watermark(_) | TableRole::StoppedEntities(_) if replay => Ok(()),
            TableRole::StoppedEntities(info) => self.on_stopped_entities(&info, &data, at.pos),
            TableRole::RowVersions(info) => self.on_row_versions(&info, &data, at.pos, replay),
            TableRole::SnapshotRequest(info) => {
                for image in self.inserted_images(&info, &data, at.pos)? {
                    let (id, entities) = control::request_of_image(&image);
                    self.start_snapshot(id, &entities).await?;
                }
                Ok(())
            }
            TableRole::Watermark(info) => {
                for image in self.inserted_images(&info, &data, at.pos)? {
                    self.on_watermark(&image, publisher).await?;
                }
                Ok(())
            }
            TableRole::Entity(entity) => self.on_entity_rows(&entity, &data, &at, replay, publisher).await,
        }
    }

    fn binlog_err(&self, pos: u64, reason: String) -> CaptureError {
        CaptureError::Binlog { file: self.at.file.clone(), pos, reason }
    }

    /// The echo marker: this transaction was written by this site's applier.
    fn on_echo_marker(&mut self) {
        if let Some(txn) = self.txn.as_mut() {
            if txn.records > 0 {
                tracing::warn!(site = %self.ctx.site, "echo marker after published rows in one transaction");
            }
            txn.echo = true;
        }
    }

    /// `stopped_entities`: `sitesync resume` makes capture read again once this transaction ends.
    fn on_stopped_entities(&mut self, info: &TableInfo, data: &RowsEventData<'_>, pos: u64) -> Result<(), CaptureError> {
        for row in decode::rows(data, info) {
            let (before, after) = row.map_err(|e| self.binlog_err(pos, e.to_string()))?;
            let before = before.map(|r| self.control_image(info, &r, pos)).transpose()?;
            let after = after.map(|r| self.control_image(info, &r, pos)).transpose()?;
            if control::resume_of_change(before.as_ref(), after.as_ref()) {
                self.isolation.rewind = true;
            }
        }
        Ok(())
    }

    /// `row_versions`: the applier's stamps, in binlog order: what later changes here are made on.
    fn on_row_versions(&mut self, info: &TableInfo, data: &RowsEventData<'_>, pos: u64, replay: bool) -> Result<(), CaptureError> {
        if matches!(data, RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_)) {
            return Ok(());
        }
        for row in decode::rows(data, info) {
            let (_, after) = row.map_err(|e| self.binlog_err(pos, e.to_string()))?;
            let Some(after) = after else { continue };
            let image = self.control_image(info, &after, pos)?;
            let Some((entity, row_key, entry)) = control::version_of_image(&image) else { continue };
            // Read again for resumed entities: only theirs, or others' stamps would go back to
            // older ones.
            if replay && self.isolation.skips(&entity, true) {
                continue;
            }
            self.stamps.recorded(entity, row_key, entry);
        }
        Ok(())
    }

    /// The rows a control-table insert wrote (other changes: none).
    fn inserted_images(&self, info: &TableInfo, data: &RowsEventData<'_>, pos: u64) -> Result<Vec<Map<String, Value>>, CaptureError> {
        if !matches!(data, RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_)) {
            return Ok(Vec::new());
        }
        let mut images = Vec::new();
        for row in decode::rows(data, info) {
            let (_, after) = row.map_err(|e| self.binlog_err(pos, e.to_string()))?;
            if let Some(after) = after {
                images.push(self.control_image(info, &after, pos)?);
            }
        }
        Ok(images)
    }

    /// An entity's rows: published, unless the entity is stopped or the transaction is an echo.
    async fn on_entity_rows(
        &mut self,
        entity: &Arc<EntityTable>,
        data: &RowsEventData<'_>,
        at: &EventPlace,
        replay: bool,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        if self.isolation.skips(&entity.name, replay) {
            return Ok(());
        }
        if self.txn.as_ref().is_some_and(|t| t.echo) {
            return self.on_echo_rows(entity, data, at).await;
        }
        self.check_placeable(entity, data, at.pos)?;
        // decode::rows, not mysql_common's rows(): it decodes the values mysql_common gets wrong
        // (negative TIME(1)/TIME(2) panics there, MEDIUMINT sign, TIMESTAMP after 2038).
        let images = match self.images(entity, data, at.pos) {
            Ok(images) => images,
            Err(reason) => {
                // This table's rows cannot become records: its entity stops, the others go on.
                let place = format!("{}:{}", self.at.file, at.pos);
                return self.isolation.stop(&entity.name, &entity.info.table, &self.at.gtid, &place, &reason).await;
            }
        };
        self.publish_changes(entity, op_of(data), images, at, publisher).await
    }

    /// Rows the applier wrote: not published, but a snapshot chunk must still drop its older
    /// copy of them.
    async fn on_echo_rows(&mut self, entity: &EntityTable, data: &RowsEventData<'_>, at: &EventPlace) -> Result<(), CaptureError> {
        if !self.snapshots.running.as_ref().is_some_and(|snap| snap.watches(&entity.name)) {
            return Ok(());
        }
        for row in decode::rows(data, &entity.info) {
            let (before, after) = row.map_err(|e| self.binlog_err(at.pos, e.to_string()))?;
            let before = before.map(|r| self.image(entity, &r, at.pos)).transpose()?;
            let after = after.map(|r| self.image(entity, &r, at.pos)).transpose()?;
            if let Some(snapshot) = self.snapshots.running.as_mut() {
                snapshot.superseded(entity, before.as_ref(), after.as_ref());
            }
        }
        Ok(())
    }

    /// The export stream's rows of an exported entity: every change, its site's own and those
    /// its applier wrote (as a Debezium connector on this database would see them).
    async fn on_exported_rows(
        &mut self,
        entity: &EntityTable,
        data: &RowsEventData<'_>,
        at: &EventPlace,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        self.check_placeable(entity, data, at.pos)?;
        let images = self.images(entity, data, at.pos).map_err(|reason| {
            self.binlog_err(at.pos, format!("export of entity `{}`: table {}: {reason}", entity.name, entity.info.table))
        })?;
        if let Some(snapshot) = self.snapshots.running.as_mut() {
            for (before, after) in &images {
                snapshot.superseded(entity, before.as_ref(), after.as_ref());
            }
        }
        self.export(entity, op_of(data), images, at, publisher).await
    }

    /// A snapshot chunk on `entity`'s export topic (`op` `r`); how many rows it published.
    pub(super) async fn export_snapshot_rows(
        &mut self,
        entity: &EntityTable,
        rows: Vec<Image>,
        publisher: &mut Publisher,
    ) -> Result<u64, CaptureError> {
        let topic = self.ctx.config.export_topic_of(&self.ctx.site, &entity.info.db, &entity.info.table);
        let now = record::now_ms();
        let mut n = 0;
        for (row, image) in rows.into_iter().enumerate() {
            let Some((op, _, after)) = apply_filter(entity, Op::Read, None, Some(image)) else { continue };
            let source = export::SourceInfo {
                server_id: 0,
                gtid: None,
                file: &self.at.file,
                pos: self.at.pos,
                row: row as u32,
                ts_ms: now,
                snapshot: true,
            };
            send_export(publisher, &topic, self.exporter.records(entity.export_schema(&topic), op, None, after.as_ref(), &source)).await?;
            n += 1;
        }
        Ok(n)
    }

    /// One rows event's changes on `entity`'s export topic, filtered as everywhere.
    async fn export(
        &mut self,
        entity: &EntityTable,
        op: Op,
        images: Vec<RowImages>,
        at: &EventPlace,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        let topic = self.ctx.config.export_topic_of(&self.ctx.site, &entity.info.db, &entity.info.table);
        let server_id = self.txn.as_ref().map_or(0, |t| t.server_id);
        let gtid = self.txn.as_ref().and_then(|t| t.gtid_text.as_deref());
        let mut sent = 0;
        for (row, (before, after)) in images.into_iter().enumerate() {
            let Some((op, before, after)) = apply_filter(entity, op, before, after) else { continue };
            let source = export::SourceInfo {
                server_id: if server_id != 0 { server_id } else { at.server_id },
                gtid,
                file: &self.at.file,
                pos: at.pos,
                row: row as u32,
                ts_ms: at.ts_ms,
                snapshot: false,
            };
            let records = self.exporter.records(entity.export_schema(&topic), op, before.as_ref(), after.as_ref(), &source);
            send_export(publisher, &topic, records).await?;
            sent += 1;
        }
        if let Some(txn) = self.txn.as_mut() {
            txn.records += sent;
        }
        Ok(())
    }

    /// Refuses rows capture could only publish wrongly: outside a transaction, or without all
    /// their columns.
    fn check_placeable(&self, entity: &EntityTable, data: &RowsEventData<'_>, pos: u64) -> Result<(), CaptureError> {
        if self.txn.is_none() {
            // Capture resumes at GTID boundaries and every transaction starts with its GTID
            // event: a row change outside one means capture lost track of a transaction's
            // end (a bug), and publishing it would attribute it to no transaction.
            return Err(self.binlog_err(pos, format!(
                "table {}: a row change outside any GTID transaction; capture cannot place it and stops rather than publish it (please report this with the binlog around this position)",
                entity.info.table
            )));
        }
        // A session with binlog_row_image=MINIMAL logs only some columns: never guess the rest.
        let columns = data.num_columns() as usize;
        let before_full = data.columns_before_image().is_none_or(|b| b.count_ones() >= columns);
        let after_full = data.columns_after_image().is_none_or(|b| b.count_ones() >= columns);
        if !before_full || !after_full {
            return Err(self.binlog_err(pos, format!(
                "table {}: a row change logged without all its columns: a session uses binlog_row_image=MINIMAL or NOBLOB; set binlog_row_image=FULL globally and for every session",
                entity.info.table
            )));
        }
        Ok(())
    }

    /// One rows event's changes as records of the open transaction (the last one held back so
    /// the commit can flag it).
    async fn publish_changes(
        &mut self,
        entity: &EntityTable,
        op: Op,
        images: Vec<RowImages>,
        at: &EventPlace,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        // One clock read per rows event: its records are produced within the same moment.
        let now_ms = record::now_ms();
        let server_id = self.txn.as_ref().map_or(0, |t| t.server_id);
        let server_id = if server_id != 0 { server_id } else { at.server_id };
        // Last writer wins: the recorded stamps of the rows changed, in one read, not one per
        // row (a new row needs none).
        self.stamps.preload(entity, images.iter().filter_map(|(before, _)| before.as_ref())).await?;
        for (row_index, (before, after)) in images.into_iter().enumerate() {
            if let Some(snapshot) = self.snapshots.running.as_mut() {
                snapshot.superseded(entity, before.as_ref(), after.as_ref());
            }
            let Some(change) = self.prepare(entity, op, before, after).await? else { continue };
            let counter = entity.events(&self.ctx.metrics, &self.ctx.site, change.op);
            let txn = self.txn.as_mut().expect("transaction started");
            txn.records += 1;
            let per_table = match txn.per_table.get_mut(&entity.name) {
                Some(n) => n,
                None => txn.per_table.entry(entity.name.clone()).or_insert(0),
            };
            *per_table += 1;
            let place = Place {
                server_id,
                gtid: txn.gtid_text.as_deref(),
                txn_id: txn.replay_id.as_deref().or(txn.gtid_text.as_deref()).unwrap_or_default(),
                file: &self.at.file,
                pos: at.pos,
                row: row_index as u32,
                ts_ms: at.ts_ms,
                now_ms,
                snapshot: "false",
                total_order: txn.records,
                data_collection_order: *per_table,
                to: None,
            };
            let mut encoded = std::mem::take(&mut self.spare);
            encoded.write(&self.site_parts, &entity.parts, &change, &place, counter);
            if let Some(previous) = txn.pending.replace(encoded) {
                self.publish(publisher, previous).await?;
            }
        }
        Ok(())
    }

    /// Every row of a rows event as images, or why they cannot be read.
    fn images(&self, entity: &EntityTable, data: &RowsEventData<'_>, pos: u64) -> Result<Vec<RowImages>, String> {
        let mut images = Vec::new();
        for row in decode::rows(data, &entity.info) {
            let (before, after) = row.map_err(|e| format!("undecodable row: {e}"))?;
            let image = |r: &mysql_async::binlog::row::BinlogRow| {
                self.image(entity, r, pos).map_err(|e| match e {
                    CaptureError::Binlog { reason, .. } => reason,
                    other => other.to_string(),
                })
            };
            let before = before.as_ref().map(image).transpose()?;
            let after = after.as_ref().map(image).transpose()?;
            images.push((before, after));
        }
        Ok(images)
    }

    /// Filters a row change, and resolves its references: `None` when it does not leave the site.
    pub(super) async fn prepare(
        &mut self,
        entity: &EntityTable,
        op: Op,
        before: Option<Image>,
        after: Option<Image>,
    ) -> Result<Option<Change>, CaptureError> {
        if let (true, Some((pk, pk_name))) = (entity.remembered, &entity.pk_column) {
            if let Some(image) = after.as_ref().or(before.as_ref()) {
                if let Some(id) = image.get(*pk) {
                    self.refs.remember(&entity.name, pk_name, id, &entity.parts.key_json(image));
                }
            }
        }
        let stamp = self.stamps.change(entity, op, before.as_ref(), after.as_ref()).await?;
        let Some((op, before, after)) = apply_filter(entity, op, before, after) else { return Ok(None) };
        let mut refs: Vec<RefEntry> = Vec::new();
        for (col, target) in &entity.translated_refs {
            for image in [before.as_ref(), after.as_ref()].into_iter().flatten() {
                // NULL and the "no reference" values (0 by default) point to no row.
                let Some(id) = image.get(*col).filter(|v| !target.is_none(v)) else { continue };
                if refs.iter().any(|r| r.entity == target.entity && &r.id == id) {
                    continue;
                }
                if let Some(key) = self.refs.resolve(&target.entity, id).await? {
                    refs.push(RefEntry { entity: target.entity.clone(), id: id.clone(), key });
                }
            }
        }
        let key = entity.parts.key_json(after.as_ref().or(before.as_ref()).expect("an image exists"));
        Ok(Some(Change { op, before, after, key, refs, stamp }))
    }

    /// A row of one of sitesync's own control tables.
    pub(super) fn control_image(
        &self,
        info: &TableInfo,
        row: &mysql_async::binlog::row::BinlogRow,
        pos: u64,
    ) -> Result<Map<String, Value>, CaptureError> {
        let mut out = Map::new();
        for (i, col) in info.columns.iter().enumerate() {
            let Some(value) = row.as_ref(i) else { continue };
            let encoding = self.known.encodings.get(&col.charset).copied().unwrap_or(TextEncoding::Binary);
            let v = encode_value(col, encoding, value).map_err(|e| CaptureError::Binlog {
                file: self.at.file.clone(),
                pos,
                reason: format!("control table {}: {e}", info.table),
            })?;
            out.insert(col.name.clone(), v);
        }
        Ok(out)
    }

    /// A row of an entity's table, in column order (excluded columns `None`).
    pub(super) fn image(&self, entity: &EntityTable, row: &mysql_async::binlog::row::BinlogRow, pos: u64) -> Result<Image, CaptureError> {
        let mut out = Vec::with_capacity(entity.info.columns.len());
        for (i, col) in entity.info.columns.iter().enumerate() {
            let value = match (entity.encodings[i], row.as_ref(i)) {
                (Some(encoding), Some(value)) => Some(encode_value(col, encoding, value).map_err(|e| CaptureError::Binlog {
                    file: self.at.file.clone(),
                    pos,
                    reason: format!("table {}: {e}", entity.info.table),
                })?),
                _ => None,
            };
            out.push(value);
        }
        Ok(Image(out))
    }
}

/// The change kind of a rows event.
fn op_of(data: &RowsEventData<'_>) -> Op {
    match data {
        RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => Op::Create,
        RowsEventData::UpdateRowsEvent(_) | RowsEventData::UpdateRowsEventV1(_) => Op::Update,
        _ => Op::Delete,
    }
}

/// Hands one change's export records to the publisher, in order.
async fn send_export(publisher: &mut Publisher, topic: &str, records: Vec<export::ExportRecord>) -> Result<(), CaptureError> {
    for r in records {
        publisher.send_to(topic, &r.key, r.value.as_deref()).await?;
    }
    Ok(())
}
