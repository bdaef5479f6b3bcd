//! Capture's half of last writer wins: each change of an entity with `conflict` is stamped by
//! the row version it was made on ([`crate::stamp`]).
//!
//! What capture must know is the stamp of the row as its application saw it. That is either a
//! version this site's applier wrote (recorded in `row_versions`, whose rows capture reads in
//! the applier's own transactions, in binlog order) or one this site's application wrote
//! (stamped by capture itself before). Both are remembered here per row, in binlog order, so a
//! change is stamped by what its row held at that point of the binlog, not by what the control
//! table holds by the time capture reads it. A row not remembered (after a restart, or past the
//! memory bound) is looked up in `row_versions`.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::envelope::Image;
use super::entity::EntityTable;
use super::CaptureError;
use crate::control::{Control, VersionEntry};
use crate::record::Op;
use crate::stamp::{self, Stamp};

/// Rows remembered at most; past it, memory starts afresh from `row_versions`.
const REMEMBERED_ROWS: usize = 200_000;

/// The latest stamp of each row, in binlog order.
pub(super) struct Stamps {
    /// (entity, row key) -> what is known of the row.
    rows: HashMap<(String, String), VersionEntry>,
    control: Control,
    site: String,
}

impl Stamps {
    pub(super) fn new(control: Control, site: String) -> Self {
        Stamps { rows: HashMap::new(), control, site }
    }

    /// A `row_versions` row that this site's applier wrote, as the binlog carries it.
    pub(super) fn recorded(&mut self, image: &Map<String, Value>) {
        let text = |k: &str| image.get(k).map(stamp::version_text);
        let (Some(entity), Some(row_key), Some(site), Some(version)) = (text("entity"), text("row_key"), text("origin"), text("version")) else {
            return;
        };
        let depth = image.get("depth").and_then(Value::as_u64).unwrap_or(0) as u32;
        let row_version = image.get("row_version").filter(|v| !v.is_null()).map(stamp::version_text).unwrap_or_else(|| version.clone());
        let deleted = image.get("deleted").and_then(Value::as_u64).unwrap_or(0) == 1;
        self.remember(entity, row_key, VersionEntry { stamp: Stamp { version, depth, site }, row_version, deleted });
    }

    /// The stamp of a change that this site's application made (before the entity's filter
    /// turned it into another operation), remembered for the changes after it. None for
    /// entities without last writer wins.
    pub(super) async fn change(
        &mut self,
        entity: &EntityTable,
        op: Op,
        before: Option<&Image>,
        after: Option<&Image>,
    ) -> Result<Option<Stamp>, CaptureError> {
        let Some(column) = entity.version_column else { return Ok(None) };
        let version_of = |image: Option<&Image>| image.and_then(|i| i.get(column)).map(stamp::version_text).unwrap_or_default();
        let key_of = |image: &Image| stamp::row_key_of_texts(entity.key_columns.iter().map(|&i| image.get(i).map(stamp::version_text).unwrap_or_default()));
        let (stamp, row_version) = match (op, before, after) {
            // A snapshot reads the row as it is: the stamp it holds.
            (Op::Read, _, Some(row)) => {
                let version = version_of(Some(row));
                let known = self.known(&entity.name, &key_of(row), true).await?;
                return Ok(Some(stamp::of_row(&version, known.as_ref(), &self.site)));
            }
            // Made on the row `before` held.
            (_, Some(old), _) => {
                let known = self.known(&entity.name, &key_of(old), true).await?;
                let base = stamp::of_row(&version_of(Some(old)), known.as_ref(), &self.site);
                let version = if op == Op::Delete { version_of(Some(old)) } else { version_of(after) };
                (Stamp::after(Some(&base), &version, &self.site), version)
            }
            // A new row: after a delete of the same key, it is made after the delete.
            (_, None, Some(new)) => {
                let version = version_of(Some(new));
                let known = self.known(&entity.name, &key_of(new), false).await?;
                let base = known.filter(|k| k.deleted).map(|k| k.stamp);
                (Stamp::after(base.as_ref(), &version, &self.site), version)
            }
            (_, None, None) => return Ok(None),
        };
        let row = after.or(before).expect("an image exists");
        self.remember(entity.name.clone(), key_of(row), VersionEntry { stamp: stamp.clone(), row_version, deleted: op == Op::Delete });
        Ok(Some(stamp))
    }

    /// What is known of a row: remembered, else (`ask`) what `row_versions` holds.
    async fn known(&mut self, entity: &str, row_key: &str, ask: bool) -> Result<Option<VersionEntry>, CaptureError> {
        if let Some(known) = self.rows.get(&(entity.to_string(), row_key.to_string())) {
            return Ok(Some(known.clone()));
        }
        if !ask {
            return Ok(None);
        }
        let found = self.control.read_versions_now(entity, &[row_key]).await?;
        Ok(found.into_iter().next().map(|(_, entry)| entry))
    }

    fn remember(&mut self, entity: String, row_key: String, entry: VersionEntry) {
        if self.rows.len() >= REMEMBERED_ROWS {
            self.rows.clear();
        }
        self.rows.insert((entity, row_key), entry);
    }
}
