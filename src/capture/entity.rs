//! Binding configured entities to the tables the binlog describes: which table id is what,
//! which columns travel, the key, the filter, the references to translate.

use std::sync::OnceLock;

use prometheus::IntCounter;

use super::envelope::{Image, TableParts};
use super::*;

/// A configured entity bound to the columns of one table map.
pub(super) struct EntityTable {
    pub(super) name: String,
    pub(super) info: TableInfo,
    /// Per column: its text encoding, or `None` when excluded.
    pub(super) encodings: Vec<Option<TextEncoding>>,
    pub(super) filter: Option<Filter>,
    /// Indexes of the columns the filter reads.
    pub(super) filter_columns: Vec<usize>,
    /// The one-column primary key, when the table has one.
    pub(super) pk_column: Option<(usize, String)>,
    /// Whether rows of this entity are remembered for references to them (natural key).
    pub(super) remembered: bool,
    /// Reference columns whose target entity has its own natural key: (column index, target).
    pub(super) translated_refs: Vec<(usize, crate::config::RefTarget)>,
    /// The record's per-table parts, rendered once.
    pub(super) parts: TableParts,
    /// Last writer wins: the version column's index (entities with `conflict`).
    pub(super) version_column: Option<usize>,
    /// Indexes of the key columns, in configured order (a row's identity in `row_versions`).
    pub(super) key_columns: Vec<usize>,
    /// `sitesync_capture_events_total` of this entity per op, created at its first record.
    events: [OnceLock<IntCounter>; 4],
    /// The export stream's schema of this table shape, rendered at its first exported change
    /// (a new table map is a new `EntityTable`, so it is never stale).
    export: OnceLock<super::export::Prepared>,
}

impl EntityTable {
    /// This table shape's export schema for `topic`, rendered at its first exported change.
    pub(super) fn export_schema(&self, topic: &str) -> &super::export::Prepared {
        self.export.get_or_init(|| {
            let included: Vec<bool> = self.encodings.iter().map(Option::is_some).collect();
            super::export::prepare(&self.info, &included, &self.key_columns, topic)
        })
    }

    /// The published-records counter of `op`.
    pub(super) fn events(&self, metrics: &Metrics, site: &str, op: Op) -> IntCounter {
        let slot = match op {
            Op::Create => 0,
            Op::Update => 1,
            Op::Delete => 2,
            Op::Read => 3,
        };
        self.events[slot].get_or_init(|| metrics.capture_events.with_label_values(&[site, &self.name, op.code()])).clone()
    }

    /// Whether the filter (if any) lets `image` through.
    fn passes(&self, filter: &Filter, image: Option<&Image>) -> bool {
        image.is_some_and(|r| filter.matches(&r.to_map(&self.info, &self.filter_columns)))
    }
}

/// Applies the entity's row filter: rows that do not match never leave the site. A row that
/// starts to match is published whole as an insert; a row that stops matching is published as a
/// delete, which each target handles by its `on_delete` rule.
pub(super) fn apply_filter(
    entity: &EntityTable,
    op: Op,
    before: Option<Image>,
    after: Option<Image>,
) -> Option<(Op, Option<Image>, Option<Image>)> {
    let Some(filter) = &entity.filter else { return Some((op, before, after)) };
    let b = entity.passes(filter, before.as_ref());
    let a = entity.passes(filter, after.as_ref());
    match op {
        Op::Create | Op::Read => a.then_some((op, None, after)),
        Op::Delete => b.then_some((op, before, None)),
        Op::Update => match (b, a) {
            (true, true) => Some((Op::Update, before, after)),
            (false, true) => Some((Op::Create, None, after)),
            (true, false) => Some((Op::Delete, before, None)),
            (false, false) => None,
        },
    }
}

/// Table maps remembered at most (table ids only grow: other tables, DDL, table cache).
const KNOWN_MAPS_LIMIT: usize = 4096;

impl Reader {
    /// The role of a table map whose event body is `body`: parsed only when the table id's
    /// previous map had other bytes (the role depends on nothing else that changes).
    pub(super) fn known_role(&mut self, body: &[u8], tme: &TableMapEvent<'_>) -> Result<TableRole, CaptureError> {
        if let Some((known, role)) = self.known.maps.get(&tme.table_id()) {
            if known.as_slice() == body {
                return Ok(role.clone());
            }
        }
        let role = self.role_of(tme)?;
        if self.known.maps.len() >= KNOWN_MAPS_LIMIT {
            self.known.maps.clear();
        }
        self.known.maps.insert(tme.table_id(), (body.to_vec(), role.clone()));
        Ok(role)
    }

    pub(super) fn role_of(&mut self, tme: &TableMapEvent<'_>) -> Result<TableRole, CaptureError> {
        let db = tme.database_name();
        let table = tme.table_name();
        if db == self.control_db.as_str() {
            let info = || TableInfo::from_event(tme).map(Arc::new).map_err(|e| CaptureError::Config(e.to_string()));
            if self.role == Role::Export {
                // The export stream follows the table whoever wrote it, and runs its snapshots.
                return Ok(match table.as_ref() {
                    control::SNAPSHOT_REQUESTS_TABLE => TableRole::SnapshotRequest(info()?),
                    control::SNAPSHOT_WATERMARKS_TABLE => TableRole::Watermark(info()?),
                    _ => TableRole::Other,
                });
            }
            return Ok(match table.as_ref() {
                ECHO_MARKER_TABLE => TableRole::EchoMarker,
                control::SNAPSHOT_REQUESTS_TABLE => TableRole::SnapshotRequest(info()?),
                control::SNAPSHOT_WATERMARKS_TABLE => TableRole::Watermark(info()?),
                control::ROW_VERSIONS_TABLE => TableRole::RowVersions(info()?),
                control::STOPPED_ENTITIES_TABLE => TableRole::StoppedEntities(info()?),
                _ => TableRole::Other,
            });
        }
        if db != self.db.as_str() {
            return Ok(TableRole::Other);
        }
        let config = self.ctx.config.clone();
        let Some((name, entity)) = config.entity_by_table(&table) else {
            return Ok(TableRole::Other);
        };
        if self.role == Role::Export && !config.export.exports(&self.ctx.site, name) {
            return Ok(TableRole::Other);
        }
        let info = TableInfo::from_event(tme).map_err(|e| CaptureError::Config(e.to_string()))?;
        Ok(match self.bind_entity(name, entity, info) {
            Ok(bound) => TableRole::Entity(Arc::new(bound)),
            // Start-up checked the configuration against the schema: this table changed since,
            // and its rows stop its entity alone.
            Err(e) => TableRole::Unusable { entity: name.to_string(), table: table.to_string(), reason: e.to_string() },
        })
    }

    pub(super) fn bind_entity(&mut self, name: &str, entity: &EntityConfig, info: TableInfo) -> Result<EntityTable, CaptureError> {
        let key_columns: Vec<String> = if entity.key.is_empty() {
            if info.primary_key.is_empty() {
                return Err(CaptureError::Config(format!(
                    "entities.{name}: table {}.{} has no primary key; set `key` to the columns that identify a row at every site",
                    info.db, info.table
                )));
            }
            info.primary_key.iter().map(|&i| info.columns[i].name.clone()).collect()
        } else {
            entity.key.clone()
        };
        for col in key_columns.iter().chain(entity.exclude.iter()) {
            if info.index_of(col).is_none() {
                return Err(CaptureError::Config(format!("entities.{name}: table {}.{} has no column `{col}`", info.db, info.table)));
            }
        }
        let filter = entity
            .filter
            .as_deref()
            .map(Filter::parse)
            .transpose()
            .map_err(|e| CaptureError::Config(format!("entities.{name}.filter: {e}")))?;
        if let Some(f) = &filter {
            for col in f.columns() {
                if info.index_of(col).is_none() {
                    return Err(CaptureError::Config(format!(
                        "entities.{name}.filter reads `{col}`, which table {}.{} does not have",
                        info.db, info.table
                    )));
                }
            }
        }
        let encodings = info
            .columns
            .iter()
            .map(|c| {
                if entity.exclude.contains(&c.name) {
                    None
                } else if c.charset == decode::BINARY_CHARSET || c.charset == 0 {
                    Some(TextEncoding::Binary)
                } else {
                    Some(self.known.encodings.get(&c.charset).copied().unwrap_or(TextEncoding::Unsupported))
                }
            })
            .collect();
        if self.known.warned.insert(info.table.clone()) {
            tracing::info!(site = %self.ctx.site, stream = ?self.role, entity = name, table = %info.table, columns = info.columns.len(), "capturing table");
        }
        let pk_column = match info.primary_key.as_slice() {
            [i] => Some((*i, info.columns[*i].name.clone())),
            _ => None,
        };
        let mut translated_refs = Vec::new();
        for (col, target) in &entity.refs {
            let Some(i) = info.index_of(col) else {
                return Err(CaptureError::Config(format!("entities.{name}.refs: table {}.{} has no column `{col}`", info.db, info.table)));
            };
            if self.refs.translates(&target.entity) {
                translated_refs.push((i, target.clone()));
            }
        }
        let filter_columns = filter.as_ref().map_or_else(Vec::new, |f| f.columns().iter().filter_map(|c| info.index_of(c)).collect());
        let key_indexes: Vec<usize> = key_columns.iter().filter_map(|c| info.index_of(c)).collect();
        let version_column = match &entity.conflict {
            Some(c) => Some(info.index_of(&c.version_column).ok_or_else(|| {
                CaptureError::Config(format!(
                    "entities.{name}.conflict.version_column: table {}.{} has no column `{}`",
                    info.db, info.table, c.version_column
                ))
            })?),
            None => None,
        };
        Ok(EntityTable {
            name: name.to_string(),
            parts: TableParts::new(name, &info, key_indexes.clone()),
            version_column,
            key_columns: key_indexes,
            info,
            encodings,
            filter,
            filter_columns,
            remembered: pk_column.is_some() && self.refs.translates(name),
            pk_column,
            translated_refs,
            events: Default::default(),
            export: OnceLock::new(),
        })
    }
}
