//! Capture's half of last writer wins: each change of an entity with `conflict` is stamped by
//! the row version it was made on ([`crate::stamp`]).
//!
//! A change is stamped as the applier here will see the row it leaves ([`stamp::of_row`]):
//! made by this site on top of the last version this site's applier wrote (recorded in
//! `row_versions`, whose rows capture reads in the applier's own transactions, in binlog order,
//! so a change is stamped by what its row held at that point of the binlog, not by what the
//! control table holds by the time capture reads it). The application's own earlier writes do
//! not stack up: the applier cannot tell them apart, and both must see the same stamp. Its
//! deletes are remembered, so that a row created again orders after its delete. A row not
//! remembered (after a restart, or past the memory bound) is looked up in `row_versions`.

use std::collections::HashMap;

use super::entity::EntityTable;
use super::envelope::Image;
use super::CaptureError;
use crate::control::{Control, VersionEntry};
use crate::record::Op;
use crate::stamp::{self, Stamp};

/// Rows remembered at most; past it, memory starts afresh from `row_versions`.
const REMEMBERED_ROWS: usize = 200_000;

/// What is known of a row, and from where.
#[derive(Clone)]
enum Known {
    /// Read in the binlog, in order: what the row held at the point capture is at.
    InOrder(VersionEntry),
    /// Read from `row_versions` now, which may be ahead of capture (catching up): usable only
    /// for the row version it names.
    Current(Option<VersionEntry>),
}

/// The latest stamp of each row, in binlog order.
pub(super) struct Stamps {
    /// (entity, row key) -> what is known of the row.
    rows: HashMap<(String, String), Known>,
    control: Control,
    site: String,
}

impl Stamps {
    pub(super) fn new(control: Control, site: String) -> Self {
        Stamps { rows: HashMap::new(), control, site }
    }

    /// A `row_versions` row that this site's applier wrote, as the binlog carries it.
    pub(super) fn recorded(&mut self, entity: String, row_key: String, entry: VersionEntry) {
        self.remember(entity, row_key, entry);
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
        let key_of = |image: &Image| {
            stamp::row_key_of_texts(entity.key_columns.iter().map(|&i| image.get(i).map(stamp::version_text).unwrap_or_default()))
        };
        let stamp = match (op, before, after) {
            // A snapshot reads the row as it is: the stamp it holds.
            (Op::Read, _, Some(row)) => {
                let version = version_of(Some(row));
                let known = self.known(&entity.name, &key_of(row), &version).await?;
                return Ok(Some(stamp::of_row(&version, None, known.as_ref(), &self.site)));
            }
            // Made on the row `before` held: on top of the applier's last version of it.
            (_, Some(old), _) => {
                let old_version = version_of(Some(old));
                let known = self.known(&entity.name, &key_of(old), &old_version).await?;
                let version = if op == Op::Delete { old_version } else { version_of(after) };
                Stamp::after(known.as_ref().map(|k| &k.stamp), &version, &self.site)
            }
            // A new row: after a delete of the same key, it is made after the delete.
            (_, None, Some(new)) => {
                let version = version_of(Some(new));
                let known = match self.rows.get(&(entity.name.clone(), key_of(new))) {
                    Some(Known::InOrder(known)) => Some(known.clone()),
                    _ => None,
                };
                let base = known.filter(|k| k.deleted).map(|k| k.stamp);
                Stamp::after(base.as_ref(), &version, &self.site)
            }
            (_, None, None) => return Ok(None),
        };
        if op == Op::Delete {
            let row = before.expect("a delete has its row");
            let tombstone = VersionEntry { stamp: stamp.clone(), row_version: version_of(Some(row)), deleted: true, content: None };
            self.remember(entity.name.clone(), key_of(row), tombstone);
        }
        Ok(Some(stamp))
    }

    /// Reads from `row_versions`, in one statement, the rows of `images` not remembered (a
    /// snapshot chunk, a rows event of many rows).
    pub(super) async fn preload<'i>(&mut self, entity: &EntityTable, images: impl Iterator<Item = &'i Image>) -> Result<(), CaptureError> {
        if entity.version_column.is_none() {
            return Ok(());
        }
        let mut keys: Vec<String> = images
            .map(|image| {
                stamp::row_key_of_texts(entity.key_columns.iter().map(|&i| image.get(i).map(stamp::version_text).unwrap_or_default()))
            })
            .filter(|key| !self.rows.contains_key(&(entity.name.clone(), key.clone())))
            .collect();
        keys.sort();
        keys.dedup();
        if keys.len() < 2 {
            return Ok(());
        }
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut found: HashMap<String, VersionEntry> = self.control.read_versions_now(&entity.name, &refs).await?.into_iter().collect();
        for key in keys {
            let entry = found.remove(&key);
            self.insert(entity.name.clone(), key, Known::Current(entry));
        }
        Ok(())
    }

    /// What is known of a row whose version column holds `version`: remembered in binlog
    /// order, else what `row_versions` holds if it is about that version.
    async fn known(&mut self, entity: &str, row_key: &str, version: &str) -> Result<Option<VersionEntry>, CaptureError> {
        let slot = (entity.to_string(), row_key.to_string());
        let known = match self.rows.get(&slot) {
            Some(known) => known.clone(),
            None => {
                let found = self.control.read_versions_now(entity, &[row_key]).await?.into_iter().next().map(|(_, e)| e);
                self.insert(slot.0, slot.1, Known::Current(found.clone()));
                Known::Current(found)
            }
        };
        Ok(match known {
            Known::InOrder(entry) => Some(entry),
            // An entry written after this point of the binlog is not what the row held here.
            Known::Current(entry) => entry.filter(|e| !e.deleted && e.row_version == version),
        })
    }

    fn remember(&mut self, entity: String, row_key: String, entry: VersionEntry) {
        self.insert(entity, row_key, Known::InOrder(entry));
    }

    fn insert(&mut self, entity: String, row_key: String, known: Known) {
        if self.rows.len() >= REMEMBERED_ROWS {
            self.rows.clear();
        }
        self.rows.insert((entity, row_key), known);
    }
}
