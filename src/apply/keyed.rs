//! Set-based apply for entities whose rows must be looked up before they are written: matched
//! by a natural key (ids differ per site), carrying references to translate, or guarded by
//! last-writer-wins.
//!
//! The per-record path ([`EntityPlan::apply`]) asks the database row by row: this site's id of
//! each referenced row, the local version and `row_versions`, then writes the row, its version
//! and its identity-map entry, about six statements per row. Here a batch first reads all of
//! that for all its records in a few statements ([`Applier::prefetch`]), decides each record in
//! memory, in order, keeping what it knows current ([`EntityPlan::decide`]), and writes rows,
//! versions and identity-map entries many per statement (fast.rs). A record the batch cannot
//! decide (a delete, a key change, a reference to a row not here) goes the per-record way
//! after the writes pending before it, and what the batch knew of its table is forgotten.

use crate::mysql::quote;
use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, MySql, Row as _, Transaction};

use super::fast::FastError;
use super::target::{arguments, to_sql, SqlValue};
use super::writer::{incoming_loses, local_id_value, row_key_of_texts, row_key_text, sql_text, where_clause, EntityPlan, Plans};
use super::{Applier, ApplyError, CompleteTxn};
use crate::config::OnDelete;
use crate::control::VersionEntry;
use crate::mysql::session::statement_chunks;
use crate::record::{ChangeRecord, Op, RefKey};
use crate::stamp::Stamp;

/// A row's key: columns and values.
type Key = Vec<(String, SqlValue)>;

/// Keys per UNION ALL lookup (each key one indexed sub-select).
const UNION_CHUNK: usize = 128;

/// A looked-up row: this site's id and version as text (None: no such row).
type Found = Option<(Option<String>, Option<String>)>;

/// A local row as the batch knows it.
#[derive(Debug, Clone)]
enum LocalRow {
    Absent,
    /// `id`: this site's primary key as text (None: inserted by this batch, not read back yet,
    /// or a composite key). `version`: the version column as text (None: not read).
    /// `content`: the row's digest (last writer wins; None: not read, or written by this batch).
    Present {
        id: Option<String>,
        version: Option<String>,
        content: Option<String>,
    },
}

/// An identity-map entry to write: the origin's row `origin_key` became the local row whose
/// key is `row_key`.
struct Identity {
    entity: String,
    origin: String,
    origin_key: String,
    row_key: String,
}

/// What a batch knows of the local rows its records touch, and what it has still to write to
/// the control tables.
#[derive(Default)]
pub(super) struct Known {
    /// (entity, row key) -> the local row.
    rows: HashMap<(String, String), LocalRow>,
    /// (entity, row key) -> `row_versions` (None: no entry).
    versions: HashMap<(String, String), Option<VersionEntry>>,
    /// Versions to record: (entity, row key), the entry, and the row's key (to read its digest
    /// once written).
    pending_versions: Vec<((String, String), VersionEntry, Key)>,
    pending_identities: Vec<Identity>,
    /// Rows this batch creates from another site's change: (entity, row key, origin).
    pending_received: Vec<(String, String, String)>,
}

/// How a record is written, decided from what the batch knows.
pub(super) enum Decision {
    /// Not decidable from what the batch knows: apply it the per-record way.
    Unknown,
    /// Decidable once the pending writes are done (it references a row this batch inserts).
    AfterFlush,
    /// Nothing to write (on_delete = ignore).
    Skip,
    /// The local row holds a later version (last writer wins).
    Lost,
    /// A new row.
    Insert { columns: Vec<String>, values: Vec<SqlValue>, key: Vec<(String, SqlValue)> },
    /// By primary key, inserted or updated.
    Upsert { columns: Vec<String>, values: Vec<SqlValue> },
    /// An existing row, found by its key.
    Update { sets: Vec<(String, SqlValue)>, key: Vec<(String, SqlValue)> },
}

/// A reference-translated image, or why there is none.
enum Translated {
    Image(Map<String, Value>),
    Unknown,
    AfterFlush,
}

impl Known {
    /// `image` with its reference columns holding this site's ids (`key_only`: see
    /// [`EntityPlan::references`]).
    fn translate(&self, plan: &EntityPlan, image: &Map<String, Value>, refs: &[RefKey], plans: &Plans, key_only: bool) -> Translated {
        let Ok(references) = plan.references(image, refs, plans, key_only) else { return Translated::Unknown };
        let mut out = image.clone();
        for (col, target, rk) in references {
            let Ok(rk) = rk else { return Translated::Unknown };
            let Ok(key) = target.key_values(&rk.key) else { return Translated::Unknown };
            match self.rows.get(&(target.name.clone(), row_key_text(&key))) {
                Some(LocalRow::Present { id: Some(id), .. }) => {
                    out.insert(col.to_string(), local_id_value(id.clone()));
                }
                Some(LocalRow::Present { id: None, .. }) if target.target.primary_key.len() == 1 => return Translated::AfterFlush,
                _ => return Translated::Unknown,
            }
        }
        Translated::Image(out)
    }

    /// Forgets every row of the tables `entities` write (after a per-record write to them).
    pub(super) fn forget(&mut self, entities: &HashSet<&str>) {
        self.rows.retain(|(e, _), _| !entities.contains(e.as_str()));
        self.versions.retain(|(e, _), _| !entities.contains(e.as_str()));
    }

    fn remember_identity(&mut self, plan: &EntityPlan, origin: &str, origin_image: &Map<String, Value>, row_key: &str) {
        let [pk] = plan.target.primary_key.as_slice() else { return };
        let Some(origin_id) = origin_image.get(pk) else { return };
        self.pending_identities.push(Identity {
            entity: plan.name.clone(),
            origin: origin.to_string(),
            origin_key: origin_id.to_string(),
            row_key: row_key.to_string(),
        });
    }

    /// Whether control-table writes are pending.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending_versions.is_empty() || !self.pending_identities.is_empty() || !self.pending_received.is_empty()
    }
}

impl EntityPlan {
    /// Decides how `record` is written from what the batch knows, and updates that knowledge
    /// as the write will leave the rows. Mirrors [`EntityPlan::apply`] exactly; anything it
    /// cannot know is [`Decision::Unknown`].
    pub(super) fn decide(&self, origin: &str, record: &ChangeRecord, plans: &Plans, known: &mut Known) -> Result<Decision, ApplyError> {
        let after = match record.op {
            Op::Delete if self.config.on_delete == OnDelete::Ignore => return Ok(Decision::Skip),
            Op::Delete => return Ok(Decision::Unknown),
            Op::Create | Op::Read | Op::Update => record.after.as_ref().expect("checked when parsed"),
        };
        if let (Op::Update, Some(before)) = (record.op, &record.before) {
            if self.key_columns.iter().any(|k| before.get(k) != after.get(k)) {
                return Ok(Decision::Unknown);
            }
        }
        let image = match known.translate(self, after, &record.sitesync.refs, plans, false) {
            Translated::Image(image) => image,
            Translated::Unknown => return Ok(Decision::Unknown),
            Translated::AfterFlush => return Ok(Decision::AfterFlush),
        };
        let sets = self.assignments(&image, origin)?;
        let key = self.key_values(&image)?;
        let row = (self.name.clone(), row_key_text(&key));
        let Some(local) = known.rows.get(&row).cloned() else { return Ok(Decision::Unknown) };

        // Last writer wins, on the versions the batch read (and wrote).
        let mut new_version = None;
        if let Some(conflict) = &self.config.conflict {
            let col = self.target.column(&conflict.version_column)?;
            if let Some(incoming) = image.get(&conflict.version_column) {
                let incoming = sql_text(&to_sql(col, incoming)?);
                let local_row = match &local {
                    LocalRow::Absent => None,
                    LocalRow::Present { version: Some(v), content, .. } => Some((v.as_str(), content.as_deref())),
                    LocalRow::Present { version: None, .. } => return Ok(Decision::Unknown),
                };
                let Some(written) = known.versions.get(&row) else { return Ok(Decision::Unknown) };
                let stamp = record.sitesync.stamp.clone().unwrap_or_else(|| Stamp::new(incoming.clone(), origin));
                if incoming_loses(&stamp, record.op == Op::Read, local_row, written.as_ref(), &self.local_site) {
                    if !self.key_is_primary {
                        known.remember_identity(self, origin, after, &row.1);
                    }
                    return Ok(Decision::Lost);
                }
                new_version = Some((incoming, stamp));
            }
        }

        // Decided: from here on the batch's knowledge follows the write.
        if let Some((version, stamp)) = &new_version {
            let written = VersionEntry { stamp: stamp.clone(), row_version: version.clone(), deleted: false, content: None };
            known.versions.insert(row.clone(), Some(written.clone()));
            known.pending_versions.push((row.clone(), written, key.clone()));
        }
        // The database may write a version differently from the record (a DATETIME's
        // fraction): only an integer's text is known to read back the same.
        let version_after = new_version.map(|(v, _)| v).filter(|v| v.parse::<i64>().is_ok());
        if matches!(local, LocalRow::Absent) {
            known.pending_received.push((self.name.clone(), row.1.clone(), origin.to_string()));
        }
        let (decision, id) = match (&local, self.upserts()) {
            (_, true) => {
                let (columns, values) = sets.into_iter().unzip();
                // Upserted by primary key: the key is this site's id.
                let id = match key.as_slice() {
                    [(_, v)] => Some(sql_text(v)),
                    _ => None,
                };
                (Decision::Upsert { columns, values }, id)
            }
            (LocalRow::Absent, false) => {
                let (columns, values) = sets.into_iter().unzip();
                (Decision::Insert { columns, values, key }, None)
            }
            (LocalRow::Present { id, .. }, false) => (Decision::Update { sets, key }, id.clone()),
        };
        // The row as written is this batch's: its digest is recorded with its version, and a
        // later record of the batch compares with that version alone.
        known.rows.insert(row.clone(), LocalRow::Present { id, version: version_after, content: None });
        if !self.key_is_primary {
            known.remember_identity(self, origin, after, &row.1);
        }
        Ok(decision)
    }

    /// Looks up rows of this entity by key, many per statement: for each key, the row's id and
    /// (`for_update`: locked, with its version column) its version; None where there is no row.
    ///
    /// A key must match exactly the rows it would match alone, where the column's collation
    /// decides (`'Alice'` finds `'alice'`). One `WHERE key IN (...)` returns the rows with their
    /// key columns; a key whose row came back with the same text is found. The rest are absent
    /// when a unique index covers the key and every row returned was claimed (an absent key
    /// wrongly presumed so makes its INSERT fail, and the batch goes the careful way); else
    /// each of them is asked alone, one indexed sub-select per key, in a UNION ALL.
    async fn lookup(&self, tx: &mut Transaction<'_, MySql>, keys: &[Key], for_update: bool) -> Result<Vec<Found>, ApplyError> {
        let mut out = vec![None; keys.len()];
        let mut unresolved: Vec<usize> = Vec::new();
        let mut claimed_all = true;
        let (by_in, by_one): (Vec<usize>, Vec<usize>) =
            (0..keys.len()).partition(|&i| keys[i].iter().all(|(_, v)| !matches!(v, SqlValue::Null)));
        for chunk in statement_chunks(&by_in, 60_000 / self.key_columns.len().max(1)) {
            let rows = self.lookup_in(tx, chunk.iter().map(|&i| &keys[i]), for_update).await?;
            let mut by_text: HashMap<String, usize> = chunk.iter().map(|&i| (row_key_text(&keys[i]), i)).collect();
            for (texts, id, version) in rows {
                match by_text.remove(&row_key_of_texts(texts)) {
                    Some(i) => out[i] = Some((id, self.version_read(for_update, version))),
                    None => claimed_all = false,
                }
            }
            unresolved.extend(by_text.into_values());
        }
        if !(self.key_is_unique && claimed_all) {
            unresolved.sort_unstable();
        } else {
            unresolved.clear();
        }
        unresolved.extend(by_one);
        for chunk in statement_chunks(&unresolved, UNION_CHUNK) {
            for (n, id, version) in self.lookup_each(tx, chunk.iter().map(|&i| &keys[i]), for_update).await? {
                out[chunk[n]] = Some((id, self.version_read(for_update, version)));
            }
        }
        Ok(out)
    }

    /// The version as the per-record path reads it (NULL as empty), where it was asked for.
    fn version_read(&self, for_update: bool, version: Option<String>) -> Option<String> {
        (for_update && self.config.conflict.is_some()).then(|| version.unwrap_or_default())
    }

    /// `SELECT id, version` expressions and the locking clause of a lookup.
    fn lookup_columns(&self, for_update: bool) -> (String, String, &'static str) {
        let id = match self.target.primary_key.as_slice() {
            [pk] => format!("CAST({} AS CHAR)", quote(pk)),
            _ => "NULL".to_string(),
        };
        // The version and, after a newline, the row's digest (see `split_version`).
        let version = match (&self.config.conflict, for_update) {
            (Some(c), true) => format!("CONCAT(IFNULL(CAST({} AS CHAR), ''), '\\n', {})", quote(&c.version_column), self.content_expr()),
            _ => "NULL".to_string(),
        };
        (id, version, if for_update { " FOR UPDATE" } else { "" })
    }

    /// One `WHERE key IN (...)`: each row's key columns as text, id, version.
    async fn lookup_in<'k>(
        &self,
        tx: &mut Transaction<'_, MySql>,
        keys: impl Iterator<Item = &'k Key> + Clone,
        for_update: bool,
    ) -> Result<Vec<(Vec<String>, Option<String>, Option<String>)>, ApplyError> {
        let (id, version, lock) = self.lookup_columns(for_update);
        let texts: Vec<String> = self.key_columns.iter().map(|c| format!("CAST({} AS CHAR)", quote(c))).collect();
        let columns: Vec<String> = self.key_columns.iter().map(|c| quote(c)).collect();
        let tuple = format!("({})", vec!["?"; columns.len()].join(", "));
        let n = keys.clone().count();
        let sql = format!(
            "SELECT {id}, {version}, {} FROM {} WHERE ({}) IN ({}){lock}",
            texts.join(", "),
            self.target.qualified(),
            columns.join(", "),
            vec![tuple.as_str(); n].join(", ")
        );
        // Values in the key's column order, whatever order the record listed them in.
        let mut values = Vec::with_capacity(n * columns.len());
        for key in keys {
            for c in &self.key_columns {
                values.push(key.iter().find(|(k, _)| k == c).map(|(_, v)| v.clone()).unwrap_or(SqlValue::Null));
            }
        }
        let rows = sqlx::query_with(AssertSqlSafe(sql), arguments(values)?).fetch_all(&mut **tx).await.map_err(ApplyError::classify)?;
        rows.iter()
            .map(|row| {
                let get = |i: usize| row.try_get::<Option<String>, _>(i).map_err(ApplyError::Database);
                let texts = (0..self.key_columns.len()).map(|i| get(2 + i).map(Option::unwrap_or_default)).collect::<Result<_, _>>()?;
                Ok((texts, get(0)?, get(1)?))
            })
            .collect()
    }

    /// Each key its own indexed sub-select, `LIMIT 1` as the per-record path: (position, id, version).
    async fn lookup_each<'k>(
        &self,
        tx: &mut Transaction<'_, MySql>,
        keys: impl Iterator<Item = &'k Key>,
        for_update: bool,
    ) -> Result<Vec<(usize, Option<String>, Option<String>)>, ApplyError> {
        let (id, version, lock) = self.lookup_columns(for_update);
        let mut parts = Vec::new();
        let mut values = Vec::new();
        for (i, key) in keys.enumerate() {
            parts.push(format!("(SELECT {i}, {id}, {version} FROM {} WHERE {} LIMIT 1{lock})", self.target.qualified(), where_clause(key)));
            values.extend(key.iter().map(|(_, v)| v.clone()));
        }
        let rows: Vec<(i64, Option<String>, Option<String>)> =
            sqlx::query_as_with(AssertSqlSafe(parts.join(" UNION ALL ")), arguments(values)?)
                .fetch_all(&mut **tx)
                .await
                .map_err(ApplyError::classify)?;
        Ok(rows.into_iter().map(|(i, id, version)| (i as usize, id, version)).collect())
    }
}

impl Applier {
    /// Reads, for the records of `batch` that need it, this site's ids of the rows they
    /// reference, their own rows (locked, with versions) and their `row_versions`.
    pub(super) async fn prefetch(&self, tx: &mut Transaction<'_, MySql>, batch: &[CompleteTxn]) -> Result<Known, ApplyError> {
        let mut known = Known::default();
        let mut records: Vec<(&EntityPlan, ChangeRecord)> = Vec::new();
        for t in batch.iter().filter(|t| !self.already_applied(t)) {
            for inc in &t.records {
                let Ok(head) = &inc.head else { continue };
                let Some(plan) = self.plans.get(&head.entity) else { continue };
                let routed = head.origin != self.ctx.site && self.ctx.config.routes_entity(&t.origin, &self.ctx.site, &plan.name);
                if !routed || plan.never_looked_up(&self.plans) {
                    continue;
                }
                // Unreadable records are left to the write, which turns them into dead letters.
                if let Ok(r) = inc.record() {
                    if r.after.is_some() && !plan.needs_nothing_looked_up(&r, &self.plans) {
                        records.push((plan.as_ref(), r));
                    }
                }
            }
        }
        if records.is_empty() {
            return Ok(known);
        }

        // 1. The referenced rows: this site's ids.
        let mut referenced: Wanted = Wanted::default();
        for (plan, r) in &records {
            let after = r.after.as_ref().expect("filtered");
            for (_, target, rk) in plan.references(after, &r.sitesync.refs, &self.plans, false).unwrap_or_default() {
                if let Ok(key) = rk.and_then(|rk| target.key_values(&rk.key).map_err(|_| Value::Null)) {
                    referenced.add(target, key);
                }
            }
        }
        for (plan, keys) in referenced.into_entities() {
            let found = plan.lookup(tx, &keys, false).await?;
            for (key, row) in keys.iter().zip(found) {
                let local = match row {
                    Some((id, _)) => LocalRow::Present { id, version: None, content: None },
                    None => LocalRow::Absent,
                };
                known.rows.insert((plan.name.clone(), row_key_text(key)), local);
            }
        }

        // 2. The records' own rows, found by their keys (translated where references are part
        // of the key), locked as the per-record path locks them, with versions.
        let mut own: Wanted = Wanted::default();
        // (entity, origin) -> (origin's id as the identity map has it, row key): to tell a row
        // that is new here from one known here under another key.
        let mut origin_ids: HashMap<(String, String), Vec<(String, String)>> = HashMap::new();
        for (plan, r) in &records {
            let after = r.after.as_ref().expect("filtered");
            if let Translated::Image(image) = known.translate(plan, after, &r.sitesync.refs, &self.plans, true) {
                if let Ok(key) = plan.key_values(&image) {
                    if let (false, [pk]) = (plan.key_is_primary, plan.target.primary_key.as_slice()) {
                        if let Some(id) = after.get(pk) {
                            let slot = origin_ids.entry((plan.name.clone(), r.sitesync.origin.clone())).or_default();
                            slot.push((id.to_string(), row_key_text(&key)));
                        }
                    }
                    own.add(plan, key);
                }
            }
        }
        for (plan, keys) in own.into_entities() {
            let found = plan.lookup(tx, &keys, true).await?;
            let row_keys: Vec<String> = keys.iter().map(|k| row_key_text(k)).collect();
            for (row_key, row) in row_keys.iter().zip(found) {
                let local = match row {
                    Some((id, version)) => {
                        let (version, content) = split_version(version);
                        LocalRow::Present { id, version, content }
                    }
                    None => LocalRow::Absent,
                };
                known.rows.insert((plan.name.clone(), row_key.clone()), local);
            }
            // A row absent under its key but known to the identity map is here under another
            // key (renamed at the origin since): the per-record path finds it.
            for ((entity, origin), ids) in origin_ids.iter().filter(|((e, _), _)| *e == plan.name) {
                let absent: Vec<&(String, String)> = ids
                    .iter()
                    .filter(|(_, row_key)| matches!(known.rows.get(&(entity.clone(), row_key.clone())), Some(LocalRow::Absent)))
                    .collect();
                if absent.is_empty() {
                    continue;
                }
                let keys: Vec<&str> = absent.iter().map(|(id, _)| id.as_str()).collect();
                let mapped = self.control.mapped_origin_keys(tx, entity, origin, &keys).await.map_err(ApplyError::classify)?;
                for (id, row_key) in absent {
                    if mapped.contains(id) {
                        known.rows.remove(&(entity.clone(), row_key.clone()));
                    }
                }
            }
            if plan.config.conflict.is_some() {
                let refs: Vec<&str> = row_keys.iter().map(String::as_str).collect();
                let written = self.control.read_versions(tx, &plan.name, &refs).await.map_err(ApplyError::classify)?;
                for row_key in &row_keys {
                    known.versions.insert((plan.name.clone(), row_key.clone()), None);
                }
                for (row_key, entry) in written {
                    known.versions.insert((plan.name.clone(), row_key), Some(entry));
                }
            }
        }
        Ok(known)
    }

    /// After rows of `plan` were inserted: reads their ids back (references to them later in
    /// the batch, identity-map entries).
    pub(super) async fn read_inserted_ids(
        &self,
        tx: &mut Transaction<'_, MySql>,
        known: &mut Known,
        plan: &EntityPlan,
        keys: &[Vec<(String, SqlValue)>],
    ) -> Result<(), ApplyError> {
        if plan.target.primary_key.len() != 1 || keys.is_empty() {
            return Ok(());
        }
        let found = plan.lookup(tx, keys, false).await?;
        for (key, row) in keys.iter().zip(found) {
            if let (Some((Some(id), _)), Some(LocalRow::Present { id: slot, .. })) =
                (row, known.rows.get_mut(&(plan.name.clone(), row_key_text(key))))
            {
                *slot = Some(id);
            }
        }
        Ok(())
    }

    /// Writes the identity-map entries and row versions the batch decided.
    pub(super) async fn write_known(&self, tx: &mut Transaction<'_, MySql>, known: &mut Known) -> Result<(), FastError> {
        let identities = std::mem::take(&mut known.pending_identities);
        let mut entries = Vec::with_capacity(identities.len());
        for i in &identities {
            match known.rows.get(&(i.entity.clone(), i.row_key.clone())) {
                Some(LocalRow::Present { id: Some(id), .. }) => {
                    entries.push((i.entity.as_str(), i.origin.as_str(), i.origin_key.as_str(), id.as_str()))
                }
                // Every decided row's id is known once its insert was read back.
                _ => return Err(FastError::NeedsCare),
            }
        }
        self.control.write_identities(tx, &entries).await.map_err(ApplyError::classify)?;
        let received = std::mem::take(&mut known.pending_received);
        let mut entries = Vec::with_capacity(received.len());
        for (entity, row_key, origin) in &received {
            match known.rows.get(&(entity.clone(), row_key.clone())) {
                Some(LocalRow::Present { id: Some(id), .. }) => entries.push((entity.as_str(), id.as_str(), origin.as_str())),
                // A composite primary key: not tracked (see `EntityPlan::mark_received`).
                _ if self.plans.get(entity).is_some_and(|p| p.target.primary_key.len() != 1) => {}
                _ => return Err(FastError::NeedsCare),
            }
        }
        self.control.write_received(tx, &entries).await.map_err(ApplyError::classify)?;
        let mut versions = std::mem::take(&mut known.pending_versions);
        // Each row's digest as written, many per statement.
        let mut by_entity: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, ((entity, _), _, _)) in versions.iter().enumerate() {
            by_entity.entry(entity.as_str()).or_default().push(i);
        }
        let mut contents: Vec<(usize, Option<String>)> = Vec::new();
        for (entity, at) in by_entity {
            let Some(plan) = self.plans.get(entity) else { continue };
            let keys: Vec<Key> = at.iter().map(|&i| versions[i].2.clone()).collect();
            for (i, found) in at.iter().zip(plan.lookup(tx, &keys, true).await?) {
                contents.push((*i, found.and_then(|(_, version)| split_version(version).1)));
            }
        }
        for (i, content) in contents {
            versions[i].1.content = content;
        }
        let entries: Vec<_> = versions.iter().map(|((entity, row_key), w, _)| (entity.as_str(), row_key.as_str(), w)).collect();
        self.control.write_versions(tx, &entries).await.map_err(ApplyError::classify)?;
        Ok(())
    }
}

/// A looked-up version as `lookup` reads it with `for_update`: the version column's text and,
/// after a newline, the row's digest.
fn split_version(read: Option<String>) -> (Option<String>, Option<String>) {
    match read {
        Some(text) => match text.rsplit_once('\n') {
            Some((version, content)) => (Some(version.to_string()), Some(content.to_string())),
            None => (Some(text), None),
        },
        None => (None, None),
    }
}

/// Keys to look up per entity, each once, in first-seen order.
#[derive(Default)]
struct Wanted<'p> {
    entities: Vec<(&'p EntityPlan, Vec<Key>)>,
    seen: HashSet<(String, String)>,
}

impl<'p> Wanted<'p> {
    fn add(&mut self, plan: &'p EntityPlan, key: Vec<(String, SqlValue)>) {
        if !self.seen.insert((plan.name.clone(), row_key_text(&key))) {
            return;
        }
        match self.entities.iter_mut().find(|(p, _)| p.name == plan.name) {
            Some((_, keys)) => keys.push(key),
            None => self.entities.push((plan, vec![key])),
        }
    }

    fn into_entities(self) -> Vec<(&'p EntityPlan, Vec<Key>)> {
        self.entities
    }
}
