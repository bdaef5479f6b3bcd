//! Binding configured entities to the tables the binlog describes: which table id is what,
//! which columns travel, the key, the filter, the references to translate.

use super::*;

/// A configured entity bound to the columns of one table map.
pub(super) struct EntityTable {
    pub(super) name: String,
    pub(super) info: TableInfo,
    /// Per column: its text encoding, or `None` when excluded.
    pub(super) encodings: Vec<Option<TextEncoding>>,
    pub(super) key_columns: Vec<String>,
    pub(super) filter: Option<Filter>,
    /// The one-column primary key, when the table has one.
    pub(super) pk_column: Option<String>,
    /// Reference columns whose target entity has its own natural key: (column, entity).
    pub(super) translated_refs: Vec<(String, String)>,
}

/// Applies the entity's row filter: rows that do not match never leave the site. A row that
/// starts to match is published whole as an insert; a row that stops matching is published as a
/// delete, which each target handles by its `on_delete` rule.
pub(super) fn apply_filter(
    entity: &EntityTable,
    op: Op,
    before: Option<Map<String, Value>>,
    after: Option<Map<String, Value>>,
) -> Option<(Op, Option<Map<String, Value>>, Option<Map<String, Value>>)> {
    let Some(filter) = &entity.filter else { return Some((op, before, after)) };
    let b = before.as_ref().is_some_and(|r| filter.matches(r));
    let a = after.as_ref().is_some_and(|r| filter.matches(r));
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

impl Reader {
    pub(super) fn role_of(&mut self, tme: &TableMapEvent<'_>) -> Result<TableRole, CaptureError> {
        let db = tme.database_name();
        let table = tme.table_name();
        if db == self.control_db.as_str() {
            let info = || TableInfo::from_event(tme).map(Arc::new).map_err(|e| CaptureError::Config(e.to_string()));
            return Ok(match table.as_ref() {
                ECHO_MARKER_TABLE => TableRole::EchoMarker,
                "snapshot_requests" => TableRole::SnapshotRequest(info()?),
                "snapshot_watermarks" => TableRole::Watermark(info()?),
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
        let info = TableInfo::from_event(tme).map_err(|e| CaptureError::Config(e.to_string()))?;
        Ok(TableRole::Entity(Arc::new(self.bind_entity(name, entity, info)?)))
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
                return Err(CaptureError::Config(format!(
                    "entities.{name}: table {}.{} has no column `{col}`",
                    info.db, info.table
                )));
            }
        }
        let filter = entity.filter.as_deref().map(Filter::parse).transpose().map_err(|e| CaptureError::Config(format!("entities.{name}.filter: {e}")))?;
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
                    Some(self.encodings.get(&c.charset).copied().unwrap_or(TextEncoding::Unsupported))
                }
            })
            .collect();
        if self.warned_tables.insert(info.table.clone()) {
            tracing::info!(site = %self.ctx.site, entity = name, table = %info.table, columns = info.columns.len(), "capturing table");
        }
        let pk_column = match info.primary_key.as_slice() {
            [i] => Some(info.columns[*i].name.clone()),
            _ => None,
        };
        let translated_refs = entity
            .refs
            .iter()
            .filter(|(_, target)| self.refs.translates(target))
            .map(|(c, t)| (c.clone(), t.clone()))
            .collect();
        for col in entity.refs.keys() {
            if info.index_of(col).is_none() {
                return Err(CaptureError::Config(format!(
                    "entities.{name}.refs: table {}.{} has no column `{col}`",
                    info.db, info.table
                )));
            }
        }
        Ok(EntityTable { name: name.to_string(), info, encodings, key_columns, filter, pk_column, translated_refs })
    }
}
