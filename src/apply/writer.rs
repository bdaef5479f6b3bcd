//! Writes one change record into the local database, inside the caller's transaction.

use crate::control::RowStatements;
use crate::mysql::quote;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use sqlx::mysql::MySqlArguments;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, MySql, Transaction};

use super::target::{arguments, bind, needs_lenient_mode, to_sql, SqlValue, TargetTable};
use super::ApplyError;
use crate::config::{EntityConfig, OnDelete, RefTarget};
use crate::control::{self, VersionEntry};
use crate::record::{ChangeRecord, Op, RefKey};
use crate::stamp::Stamp;

/// A statement prefix that writes ENUM's error value, which strict mode refuses.
const LENIENT: &str = "SET STATEMENT sql_mode = 'NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION' FOR ";

/// Every entity known here by name: the ones applied and the ones referenced.
pub type Plans = HashMap<String, Arc<EntityPlan>>;

/// A routed entity bound to its local table.
pub struct EntityPlan {
    /// Entity name.
    pub name: String,
    /// Its configuration.
    pub config: EntityConfig,
    /// The local table.
    pub target: TargetTable,
    /// Natural key columns (the primary key when none is configured).
    pub key_columns: Vec<String>,
    /// The natural key is the primary key: rows are upserted by it, ids are the same everywhere.
    pub key_is_primary: bool,
    /// A unique index (or the primary key) covers exactly the key columns: the database itself
    /// refuses a second row with an equal key.
    pub key_is_unique: bool,
    /// Reference columns and what each points to.
    pub refs: Vec<(String, RefTarget)>,
    /// The control database (for the identity map).
    pub control_db: String,
    /// This site's id (the writer of versions the application wrote here).
    pub local_site: String,
}

/// A reference column of an image: the column, the plan of the entity it points to, and the
/// natural key the origin sent for the row (`Err`: the origin's id, where it sent no key).
pub type Reference<'s, 'a> = (&'s str, &'a EntityPlan, Result<&'a RefKey, Value>);

/// One record's part in a multi-row statement.
pub enum BatchWrite {
    /// Nothing to write (on_delete = "ignore").
    Skip,
    /// Upsert these columns.
    Upsert {
        /// Column names.
        columns: Vec<String>,
        /// Their values.
        values: Vec<SqlValue>,
        /// An insert or snapshot row: if it creates the row here, the row is the origin's.
        create: bool,
    },
    /// Delete the row with this primary key.
    Delete(Vec<SqlValue>),
}

/// What applying one record did.
pub use crate::telemetry::Outcome;

impl EntityPlan {
    /// Binds an entity to its table; fails if a configured column is missing there.
    pub fn new(name: &str, config: &EntityConfig, target: TargetTable, control_db: &str, local_site: &str) -> Result<Self, ApplyError> {
        let key_columns = if config.key.is_empty() { target.primary_key.clone() } else { config.key.clone() };
        if key_columns.is_empty() {
            return Err(ApplyError::Schema(format!("entities.{name}: {} has no primary key; set `key`", target.qualified())));
        }
        for col in &key_columns {
            target
                .column(col)
                .map_err(|_| ApplyError::Schema(format!("entities.{name}.key: {} has no column `{col}`", target.qualified())))?;
        }
        if let Some(col) = &config.origin_column {
            target
                .column(col)
                .map_err(|_| ApplyError::Schema(format!("entities.{name}.origin_column: {} has no column `{col}`", target.qualified())))?;
        }
        for col in config.refs.keys() {
            target
                .column(col)
                .map_err(|_| ApplyError::Schema(format!("entities.{name}.refs: {} has no column `{col}`", target.qualified())))?;
        }
        let mut sorted_key = key_columns.clone();
        sorted_key.sort();
        let mut sorted_pk = target.primary_key.clone();
        sorted_pk.sort();
        let key_is_unique = sorted_key == sorted_pk
            || target.unique_keys.iter().any(|index| {
                let mut index = index.clone();
                index.sort();
                index == sorted_key
            });
        Ok(EntityPlan {
            name: name.to_string(),
            config: config.clone(),
            key_is_primary: sorted_key == sorted_pk,
            key_is_unique,
            refs: config.refs.iter().map(|(c, e)| (c.clone(), e.clone())).collect(),
            control_db: control_db.to_string(),
            local_site: local_site.to_string(),
            target,
            key_columns,
        })
    }

    /// The columns and values to write from an image.
    pub(super) fn assignments(&self, image: &Map<String, Value>, origin: &str) -> Result<Vec<(String, SqlValue)>, ApplyError> {
        let mut out = Vec::with_capacity(image.len() + 1);
        for (name, value) in image {
            let col = self.target.column(name)?;
            if col.generated || self.config.exclude.contains(name) {
                continue;
            }
            // Local ids differ per site when rows are matched by a natural key: never copy them.
            if !self.key_is_primary && self.target.primary_key.contains(name) && !self.key_columns.contains(name) {
                continue;
            }
            if self.config.origin_column.as_deref() == Some(name.as_str()) {
                continue;
            }
            out.push((col.name.clone(), to_sql(col, value)?));
        }
        if let Some(col) = &self.config.origin_column {
            out.push((col.clone(), SqlValue::Text(origin.to_string())));
        }
        Ok(out)
    }

    pub(super) fn key_values(&self, image: &Map<String, Value>) -> Result<Vec<(String, SqlValue)>, ApplyError> {
        self.key_columns
            .iter()
            .map(|k| {
                let col = self.target.column(k)?;
                let v = image.get(k).ok_or_else(|| ApplyError::Definite(format!("record lacks key column `{k}`")))?;
                Ok((col.name.clone(), to_sql(col, v)?))
            })
            .collect()
    }

    /// This site's id of the `self` row whose natural key is `key`, if the row exists here.
    async fn local_id(&self, tx: &mut Transaction<'_, MySql>, key: &Map<String, Value>) -> Result<Option<Value>, ApplyError> {
        let [pk] = self.target.primary_key.as_slice() else {
            return Err(ApplyError::Schema(format!(
                "entities.{}: references need {} to have a one-column primary key",
                self.name,
                self.target.qualified()
            )));
        };
        let values = self.key_values(key)?;
        let sql = format!("SELECT CAST({} AS CHAR) FROM {} WHERE {} LIMIT 1", quote(pk), self.target.qualified(), where_clause(&values));
        let q = sqlx::query_scalar_with::<_, String, _>(AssertSqlSafe(sql), arguments(values.into_iter().map(|(_, v)| v))?);
        let id = q.fetch_optional(&mut **tx).await.map_err(ApplyError::classify)?;
        Ok(id.map(local_id_value))
    }

    /// The reference columns of `image` whose ids differ per site, each with the plan of the
    /// entity it points to and the natural key the origin sent for the row (`Err`: the origin's
    /// id, where it sent none: the row was gone there when captured).
    ///
    /// With `key_only`, only reference columns that are part of the key (a relationship row's
    /// identity): a before image serves to find the row, and the rows its other references
    /// pointed to may be gone by now.
    pub(super) fn references<'s, 'a>(
        &'s self,
        image: &Map<String, Value>,
        refs: &'a [RefKey],
        plans: &'a Plans,
        key_only: bool,
    ) -> Result<Vec<Reference<'s, 'a>>, ApplyError> {
        let mut out = Vec::new();
        for (col, target) in &self.refs {
            if key_only && !self.key_columns.contains(col) {
                continue;
            }
            // NULL and the "no reference" values (0 by default) are written as they are.
            let Some(id) = image.get(col).filter(|v| !target.is_none(v)) else { continue };
            let target = &target.entity;
            let plan = plans.get(target).ok_or_else(|| {
                ApplyError::Schema(format!("entities.{}.refs.{col}: entity `{target}` has no table at this site", self.name))
            })?;
            if plan.key_is_primary {
                continue;
            }
            let rk = refs.iter().find(|r| &r.entity == target && &r.id == id).ok_or_else(|| id.clone());
            out.push((col.as_str(), plan.as_ref(), rk));
        }
        Ok(out)
    }

    /// Replaces the origin's ids in reference columns by this site's ids of the same rows
    /// (see [`Self::references`] for `key_only`): found by the natural key the origin sent,
    /// else by the identity map, which knows the row by the origin's id even when its natural
    /// key has changed since (a snapshot brought the row under its later key).
    pub(super) async fn translate(
        &self,
        tx: &mut Transaction<'_, MySql>,
        origin: &str,
        image: &Map<String, Value>,
        refs: &[RefKey],
        plans: &Plans,
        key_only: bool,
    ) -> Result<Map<String, Value>, ApplyError> {
        let mut out = image.clone();
        for (col, plan, rk) in self.references(image, refs, plans, key_only)? {
            let local = match &rk {
                Ok(rk) => match plan.local_id(tx, &rk.key).await? {
                    Some(local) => Some(local),
                    None => plan.mapped_id(tx, origin, &rk.id).await?,
                },
                // Capture read the reference after the row was deleted at the origin (it was
                // catching up): this site may still have the row, known by the origin's id.
                Err(id) => plan.mapped_id(tx, origin, id).await?,
            };
            match (local, rk) {
                (Some(local), _) => {
                    out.insert(col.to_string(), local);
                }
                (None, Ok(rk)) => return Err(not_arrived(col, plan, rk)),
                (None, Err(id)) => {
                    let id = crate::record::shown(&id.to_string());
                    return Err(ApplyError::Wait(format!(
                        "`{col}` = {id} refers to a {} whose natural key the origin did not send (the row no longer existed there when captured)",
                        plan.name
                    )));
                }
            }
        }
        Ok(out)
    }

    /// This site's id of the `self` row that `origin` knows as `origin_id`, by the identity
    /// map, if that row is still here.
    async fn mapped_id(&self, tx: &mut Transaction<'_, MySql>, origin: &str, origin_id: &Value) -> Result<Option<Value>, ApplyError> {
        let [pk] = self.target.primary_key.as_slice() else { return Ok(None) };
        let mapped = self.row_statements(pk).mapped_id();
        let Some(local_key) = sqlx::query_scalar::<_, String>(AssertSqlSafe(mapped))
            .bind(&self.name)
            .bind(origin)
            .bind(origin_id.to_string())
            .fetch_optional(&mut **tx)
            .await
            .map_err(ApplyError::classify)?
        else {
            return Ok(None);
        };
        let present = format!("SELECT CAST({pk} AS CHAR) FROM {} WHERE {pk} = ?", self.target.qualified(), pk = quote(pk));
        let id = sqlx::query_scalar::<_, String>(AssertSqlSafe(present))
            .bind(local_key)
            .fetch_optional(&mut **tx)
            .await
            .map_err(ApplyError::classify)?;
        Ok(id.map(local_id_value))
    }

    /// Updates the local row that the identity map says `origin`'s row is; whether there was one.
    async fn update_mapped(
        &self,
        tx: &mut Transaction<'_, MySql>,
        origin: &str,
        origin_image: &Map<String, Value>,
        sets: &[(String, SqlValue)],
    ) -> Result<bool, ApplyError> {
        let [pk] = self.target.primary_key.as_slice() else { return Ok(false) };
        if self.key_is_primary {
            return Ok(false);
        }
        let Some(origin_id) = origin_image.get(pk) else { return Ok(false) };
        let Some(local) = self.mapped_id(tx, origin, origin_id).await? else { return Ok(false) };
        let col = self.target.column(pk)?;
        let key = vec![(col.name.clone(), to_sql(col, &local)?)];
        Ok(self.update(tx, sets, key).await? > 0)
    }

    /// Last writer wins: whether the incoming change beats the local row (found by `key`), by
    /// stamp (see [`crate::stamp`]); the same comparison at every site makes them all keep the
    /// same version. Records the winner's stamp under `new_key`, the row's key after the change
    /// (a natural-key change moves it), so later changes compare with who really wrote it.
    #[allow(clippy::too_many_arguments)]
    async fn incoming_wins(
        &self,
        tx: &mut Transaction<'_, MySql>,
        origin: &str,
        stamp: Option<&Stamp>,
        image: &Map<String, Value>,
        key: &[(String, SqlValue)],
        new_key: &[(String, SqlValue)],
        version_column: &str,
        deleting: bool,
        snapshot: bool,
    ) -> Result<bool, ApplyError> {
        let col = self.target.column(version_column)?;
        let Some(incoming) = image.get(version_column) else { return Ok(true) };
        let row_version = sql_text(&to_sql(col, incoming)?);
        let stamp = stamp.cloned().unwrap_or_else(|| Stamp::new(row_version.clone(), origin));
        let sql = format!(
            "SELECT CAST({} AS CHAR), {} FROM {} WHERE {} LIMIT 1 FOR UPDATE",
            quote(&col.name),
            self.content_expr(),
            self.target.qualified(),
            where_clause(key)
        );
        let q = sqlx::query_as_with::<_, (Option<String>, Option<String>), _>(
            AssertSqlSafe(sql),
            arguments(key.iter().map(|(_, v)| v.clone()))?,
        );
        let row_key = row_key_text(key);
        let found = q.fetch_optional(&mut **tx).await.map_err(ApplyError::classify)?;
        let (local, content) = match found {
            Some((version, content)) => (Some(version.unwrap_or_default()), content),
            None => (None, None),
        };
        let written = control::read_versions(&self.control_db, tx, &self.name, &[row_key.as_str()]).await.map_err(ApplyError::classify)?;
        let written = written.into_iter().next().map(|(_, e)| e);
        let local_row = local.as_deref().map(|v| (v, content.as_deref()));
        if incoming_loses(&stamp, snapshot, local_row, written.as_ref(), &self.local_site) {
            return Ok(false);
        }
        // The row's digest is recorded once it is written (`record_content`).
        let entry = VersionEntry { stamp, row_version, deleted: deleting, content: None };
        let new_row_key = row_key_text(new_key);
        if new_row_key != row_key {
            control::forget_versions(&self.control_db, tx, &self.name, &row_key).await.map_err(ApplyError::classify)?;
        }
        control::write_versions(&self.control_db, tx, &[(&self.name, &new_row_key, &entry)]).await.map_err(ApplyError::classify)?;
        Ok(true)
    }

    /// `MD5(...)` of a whole row of the table (generated columns aside), the same expression
    /// wherever it is read: a row that differs from the digest recorded when the applier wrote
    /// it was written since by this site's application (see [`crate::stamp::of_row`]).
    pub(super) fn content_expr(&self) -> String {
        let mut columns: Vec<&str> = self.target.columns.values().filter(|c| !c.generated).map(|c| c.name.as_str()).collect();
        columns.sort_unstable();
        let parts: Vec<String> = columns.iter().map(|c| format!("IFNULL(HEX({}), \'N\')", quote(c))).collect();
        format!("MD5(CONCAT_WS(',', {}))", parts.join(", "))
    }

    /// The control statements about this table's rows (`pk`: its one-column primary key).
    fn row_statements(&self, pk: &str) -> RowStatements {
        RowStatements { db: self.control_db.clone(), from: self.target.qualified(), pk_text: format!("CAST({} AS CHAR)", quote(pk)) }
    }

    /// Records in `row_versions` the digest of the row at `key` as just written.
    async fn record_content(&self, tx: &mut Transaction<'_, MySql>, key: &[(String, SqlValue)]) -> Result<(), ApplyError> {
        let statements = RowStatements { db: self.control_db.clone(), from: self.target.qualified(), pk_text: String::new() };
        let sql = statements.record_content(&self.content_expr(), &where_clause(key));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (_, v) in key {
            q = bind(q, v.clone());
        }
        q.bind(&self.name).bind(row_key_text(key)).execute(&mut **tx).await.map_err(ApplyError::classify)?;
        Ok(())
    }

    /// Records which local row the origin's row became (natural-key entities).
    async fn remember_identity(
        &self,
        tx: &mut Transaction<'_, MySql>,
        origin: &str,
        origin_image: &Map<String, Value>,
        key: &[(String, SqlValue)],
    ) -> Result<(), ApplyError> {
        let [pk] = self.target.primary_key.as_slice() else { return Ok(()) };
        let Some(origin_id) = origin_image.get(pk) else { return Ok(()) };
        let sql = self.row_statements(pk).remember_identity(&where_clause(key));
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(&self.name).bind(origin).bind(origin_id.to_string());
        for (_, v) in key {
            q = bind(q, v.clone());
        }
        q.execute(&mut **tx).await.map_err(ApplyError::classify)?;
        Ok(())
    }

    /// Whether a row with this key is here.
    async fn exists(&self, tx: &mut Transaction<'_, MySql>, key: &[(String, SqlValue)]) -> Result<bool, ApplyError> {
        let sql = format!("SELECT 1 FROM {} WHERE {} LIMIT 1", self.target.qualified(), where_clause(key));
        let q = sqlx::query_scalar_with::<_, i32, _>(AssertSqlSafe(sql), arguments(key.iter().map(|(_, v)| v.clone()))?);
        Ok(q.fetch_optional(&mut **tx).await.map_err(ApplyError::classify)?.is_some())
    }

    /// Records that the row with `key` was just created here from `origin`'s change: a
    /// snapshot here leaves it to its origin (one-column primary keys).
    async fn mark_received(&self, tx: &mut Transaction<'_, MySql>, origin: &str, key: &[(String, SqlValue)]) -> Result<(), ApplyError> {
        let [pk] = self.target.primary_key.as_slice() else { return Ok(()) };
        let sql = self.row_statements(pk).mark_received(&where_clause(key));
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(&self.name).bind(origin);
        for (_, v) in key {
            q = bind(q, v.clone());
        }
        q.execute(&mut **tx).await.map_err(ApplyError::classify)?;
        Ok(())
    }

    /// Applies `record` inside `tx`.
    pub async fn apply(
        &self,
        tx: &mut Transaction<'_, MySql>,
        origin: &str,
        record: &ChangeRecord,
        plans: &Plans,
    ) -> Result<Outcome, ApplyError> {
        let refs = &record.sitesync.refs;
        match record.op {
            Op::Delete => {
                let before = record.before.as_ref().expect("checked when parsed");
                if self.config.on_delete == OnDelete::Ignore {
                    return Ok(Outcome::Skipped);
                }
                let before = self.translate(tx, origin, before, refs, plans, true).await?;
                let key = self.key_values(&before)?;
                // Last writer wins for deletes too: a row updated here after the version the
                // deleting site saw is kept (the update reaches that site and recreates it).
                if let Some(conflict) = &self.config.conflict {
                    if !self
                        .incoming_wins(
                            tx,
                            origin,
                            record.sitesync.stamp.as_ref(),
                            &before,
                            &key,
                            &key,
                            &conflict.version_column,
                            true,
                            false,
                        )
                        .await?
                    {
                        return Ok(Outcome::ConflictLost);
                    }
                }
                match &self.config.on_delete {
                    OnDelete::Ignore => Ok(Outcome::Skipped),
                    OnDelete::Propagate => {
                        let sql = format!("DELETE FROM {} WHERE {}", self.target.qualified(), where_clause(&key));
                        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
                        for (_, v) in key {
                            q = bind(q, v);
                        }
                        q.execute(&mut **tx).await.map_err(ApplyError::classify)?;
                        Ok(Outcome::Applied)
                    }
                    OnDelete::Set(values) => {
                        let mut sets = Vec::new();
                        for (name, value) in values {
                            let col = self.target.column(name)?;
                            sets.push((col.name.clone(), to_sql(col, value)?));
                        }
                        self.update(tx, &sets, key).await?;
                        Ok(Outcome::Applied)
                    }
                }
            }
            Op::Create | Op::Read | Op::Update => {
                let origin_after = record.after.as_ref().expect("checked when parsed");
                let after = self.translate(tx, origin, origin_after, refs, plans, false).await?;
                let sets = self.assignments(&after, origin)?;
                let after_key = self.key_values(&after)?;
                let where_key = match (&record.op, &record.before) {
                    (Op::Update, Some(before)) => {
                        let before = self.translate(tx, origin, before, refs, plans, true).await?;
                        self.key_values(&before)?
                    }
                    _ => after_key.clone(),
                };
                if let Some(conflict) = &self.config.conflict {
                    let snapshot = record.op == Op::Read;
                    if !self
                        .incoming_wins(
                            tx,
                            origin,
                            record.sitesync.stamp.as_ref(),
                            &after,
                            &where_key,
                            &after_key,
                            &conflict.version_column,
                            false,
                            snapshot,
                        )
                        .await?
                    {
                        // The rows are still the same entity: link them.
                        if !self.key_is_primary {
                            self.remember_identity(tx, origin, origin_after, &where_key).await?;
                        }
                        return Ok(Outcome::ConflictLost);
                    }
                }
                let key_changed = where_key != after_key;
                if self.upserts() && !key_changed {
                    let created = matches!(record.op, Op::Create | Op::Read) && !self.exists(tx, &after_key).await?;
                    self.upsert(tx, &sets).await?;
                    if created {
                        self.mark_received(tx, origin, &after_key).await?;
                    }
                    if self.config.conflict.is_some() {
                        self.record_content(tx, &after_key).await?;
                    }
                    return Ok(Outcome::Applied);
                }
                // A key change whose row is already under its new key (a snapshot brought it, or
                // the change is applied again) updates that row; a row not found under its key
                // that the identity map knows under another (renamed at the origin since, and
                // not renamed here yet) is that row.
                let missing = self.update(tx, &sets, where_key).await? == 0
                    && !(key_changed && self.update(tx, &sets, after_key.clone()).await? > 0)
                    && !self.update_mapped(tx, origin, origin_after, &sets).await?;
                if missing {
                    if self.upserts() {
                        self.upsert(tx, &sets).await?;
                    } else {
                        // A row that collides on another unique column is a conflict to see
                        // (a dead letter), not a row to overwrite.
                        self.insert(tx, &sets).await?;
                    }
                    self.mark_received(tx, origin, &after_key).await?;
                }
                if !self.key_is_primary {
                    self.remember_identity(tx, origin, origin_after, &after_key).await?;
                }
                if self.config.conflict.is_some() {
                    self.record_content(tx, &after_key).await?;
                }
                Ok(Outcome::Applied)
            }
        }
    }

    async fn upsert(&self, tx: &mut Transaction<'_, MySql>, sets: &[(String, SqlValue)]) -> Result<(), ApplyError> {
        let (columns, values): (Vec<String>, Vec<SqlValue>) = sets.iter().cloned().unzip();
        self.upsert_rows(tx, &columns, &[values]).await
    }

    /// Upserts rows by primary key in multi-row statements; a later row of the same key wins,
    /// as it would one statement at a time.
    pub async fn upsert_rows(&self, tx: &mut Transaction<'_, MySql>, columns: &[String], rows: &[Vec<SqlValue>]) -> Result<(), ApplyError> {
        self.write_rows(tx, columns, rows, true).await
    }

    /// Inserts rows in multi-row statements; a row that collides with one already here is an
    /// error, as it would be one statement at a time.
    pub async fn insert_rows(&self, tx: &mut Transaction<'_, MySql>, columns: &[String], rows: &[Vec<SqlValue>]) -> Result<(), ApplyError> {
        self.write_rows(tx, columns, rows, false).await
    }

    async fn write_rows(
        &self,
        tx: &mut Transaction<'_, MySql>,
        columns: &[String],
        rows: &[Vec<SqlValue>],
        upsert: bool,
    ) -> Result<(), ApplyError> {
        if columns.is_empty() {
            return Err(ApplyError::Definite(format!("the record has no column that {} replicates", self.target.qualified())));
        }
        let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        let updates: Vec<String> = columns
            .iter()
            .filter(|c| !self.target.primary_key.contains(c))
            .map(|c| {
                let q = quote(c);
                format!("{q} = VALUES({q})")
            })
            .collect();
        let on_duplicate = match (upsert, updates.is_empty()) {
            (false, _) => String::new(),
            // Every column is in the key: nothing to update, but unlike INSERT IGNORE this
            // still reports bad values and foreign-key failures.
            (true, true) => format!(" ON DUPLICATE KEY UPDATE {0} = {0}", cols[0]),
            (true, false) => format!(" ON DUPLICATE KEY UPDATE {}", updates.join(", ")),
        };
        let row = format!("({})", vec!["?"; cols.len()].join(", "));
        // MySQL binds at most 65,535 parameters per statement.
        let per_statement = (60_000 / cols.len().max(1)).max(1);
        for chunk in crate::mysql::session::statement_chunks(rows, per_statement) {
            let lenient = chunk.iter().any(|values| {
                columns.iter().zip(values).any(|(c, v)| self.target.columns.get(c).is_some_and(|col| needs_lenient_mode(col, v)))
            });
            let values = vec![row.as_str(); chunk.len()].join(", ");
            let sql = format!("INSERT INTO {} ({}) VALUES {values}{on_duplicate}", self.target.qualified(), cols.join(", "));
            // Outside strict mode, only the ENUM error values of the rows that have them may
            // be changed by the server (see `execute_write`).
            let tolerated = |row: usize, column: &str| {
                let at = columns.iter().position(|c| c == column);
                let value = at.and_then(|i| chunk.get(row.wrapping_sub(1)).and_then(|values| values.get(i)));
                value.is_some_and(|v| self.target.columns.get(column).is_some_and(|col| needs_lenient_mode(col, v)))
            };
            self.execute_write(tx, &sql, lenient, &tolerated, |mut q| {
                for values in chunk {
                    for v in values {
                        q = bind(q, v.clone());
                    }
                }
                q
            })
            .await?;
        }
        Ok(())
    }

    /// Runs a write (`lenient`: outside strict mode from the start). If strict mode refuses
    /// a value of one of the table's generated columns, runs it again outside strict mode: the
    /// origin's session stored the row without strict mode, and row-based replication stores
    /// what the origin stored (the target computes its own generated values). A refused value
    /// of a column that is written stays an error: the target cannot hold it.
    ///
    /// Outside strict mode the server stores a value it cannot hold as the nearest it can (300
    /// as 127 in a TINYINT, a string cut short, a bad date as zero) with a warning: each
    /// warning must be about a generated column or about a column `tolerated` at its row (an
    /// ENUM's error value written on purpose), or the write is refused, naming the value.
    async fn execute_write<'q>(
        &self,
        tx: &mut Transaction<'_, MySql>,
        sql: &'q str,
        lenient: bool,
        tolerated: &(dyn Fn(usize, &str) -> bool + Sync),
        binds: impl Fn(Query<'q, MySql, MySqlArguments>) -> Query<'q, MySql, MySqlArguments>,
    ) -> Result<u64, ApplyError> {
        if !lenient {
            match binds(sqlx::query(AssertSqlSafe(sql))).execute(&mut **tx).await {
                Ok(done) => return Ok(done.rows_affected()),
                Err(e) if !self.refuses_a_generated_value(&e) => return Err(ApplyError::classify(e)),
                Err(e) => {
                    tracing::debug!(table = %self.target.qualified(), error = %e, "a generated column's value is refused in strict mode; writing as the origin did")
                }
            }
        }
        let relaxed = format!("{LENIENT}{sql}");
        let q = binds(sqlx::query(AssertSqlSafe(relaxed.as_str())));
        let done = q.execute(&mut **tx).await.map_err(ApplyError::classify)?;
        // Rare (ENUM error values, generated columns the origin computed outside strict mode):
        // one more round trip.
        use sqlx::Row as _;
        let warnings = sqlx::query("SHOW WARNINGS").fetch_all(&mut **tx).await.map_err(ApplyError::classify)?;
        for w in &warnings {
            // A note (a fraction rounded) is no value strict mode would refuse either.
            let level: String = w.try_get(0).unwrap_or_default();
            let message: String = w.try_get(2).unwrap_or_default();
            if !level.eq_ignore_ascii_case("note") && !self.warning_tolerated(&message, tolerated) {
                return Err(ApplyError::Definite(format!(
                    "{}: the server would change a value outside strict mode (written so for an ENUM's error value or a generated column): {message}",
                    self.target.qualified()
                )));
            }
        }
        Ok(done.rows_affected())
    }

    /// Whether a warning of a write outside strict mode is one it is run for: about a generated
    /// column, or about a column `tolerated` at the warning's row. Warnings that name no column
    /// (a deprecation) change no value.
    fn warning_tolerated(&self, message: &str, tolerated: &(dyn Fn(usize, &str) -> bool + Sync)) -> bool {
        if !message.contains("column") {
            return true;
        }
        let row = message.rsplit_once(" at row ").and_then(|(_, n)| n.trim().parse::<usize>().ok()).unwrap_or(1);
        let names = |c: &str| [format!("'{c}' at row"), format!("`{c}` at row"), format!("'{c}'"), format!("`{c}`")];
        self.target
            .columns
            .values()
            .any(|col| (col.generated || tolerated(row, &col.name)) && names(&col.name).iter().any(|n| message.contains(n.as_str())))
    }

    /// Whether `e` is strict mode refusing a value of one of the table's generated columns.
    fn refuses_a_generated_value(&self, e: &sqlx::Error) -> bool {
        let sqlx::Error::Database(db) = e else { return false };
        let Some(code) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|m| m.number()) else { return false };
        // Out of range, data too long, data truncated, incorrect value, incorrect datetime.
        matches!(code, 1264 | 1406 | 1265 | 1366 | 1292 | 1690)
            && self.target.columns.values().any(|c| c.generated && db.message().contains(&format!("'{}'", c.name)))
    }

    /// Deletes rows by primary key, many per statement.
    pub async fn delete_rows(&self, tx: &mut Transaction<'_, MySql>, keys: &[Vec<SqlValue>]) -> Result<(), ApplyError> {
        let pk: Vec<String> = self.key_columns.iter().map(|c| quote(c)).collect();
        let tuple = format!("({})", vec!["?"; pk.len()].join(", "));
        for chunk in crate::mysql::session::statement_chunks(keys, 60_000 / pk.len().max(1)) {
            let sql = format!(
                "DELETE FROM {} WHERE ({}) IN ({})",
                self.target.qualified(),
                pk.join(", "),
                vec![tuple.as_str(); chunk.len()].join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for key in chunk {
                for v in key {
                    q = bind(q, v.clone());
                }
            }
            q.execute(&mut **tx).await.map_err(ApplyError::classify)?;
        }
        Ok(())
    }

    /// Whether rows are written with INSERT ... ON DUPLICATE KEY UPDATE: only when the key is
    /// the primary key and no other unique index could make the upsert hit a different row.
    pub(super) fn upserts(&self) -> bool {
        self.key_is_primary && !self.target.other_unique_keys
    }

    /// How `record` can join a multi-row statement, if it can: rows upserted or deleted by
    /// primary key with nothing to look up first (no reference to translate, no version to
    /// compare, no key change, no deactivation).
    pub fn batch_write(&self, origin: &str, record: &ChangeRecord, plans: &Plans) -> Option<Result<BatchWrite, ApplyError>> {
        if !self.needs_nothing_looked_up(record, plans) {
            return None;
        }
        Some(match record.op {
            Op::Delete => match &self.config.on_delete {
                OnDelete::Ignore => Ok(BatchWrite::Skip),
                OnDelete::Propagate => {
                    let before = record.before.as_ref().expect("checked when parsed");
                    self.key_values(before).map(|k| BatchWrite::Delete(k.into_iter().map(|(_, v)| v).collect()))
                }
                OnDelete::Set(_) => return None,
            },
            Op::Create | Op::Read | Op::Update => {
                let after = record.after.as_ref().expect("checked when parsed");
                if let (Op::Update, Some(before)) = (record.op, &record.before) {
                    let changed = self.key_columns.iter().any(|k| before.get(k) != after.get(k));
                    if changed {
                        return None;
                    }
                }
                self.assignments(after, origin).map(|sets| {
                    let (columns, values) = sets.into_iter().unzip();
                    BatchWrite::Upsert { columns, values, create: matches!(record.op, Op::Create | Op::Read) }
                })
            }
        })
    }

    /// Whether the primary key is integers only: keys that compare equal in Rust exactly when
    /// they do in the database (no collation, no padding), so changes to different keys can be
    /// reordered safely.
    pub(super) fn integer_key(&self) -> bool {
        self.target
            .primary_key
            .iter()
            .all(|c| self.target.columns.get(c).is_some_and(|col| crate::mysql::types::TypeFamily::of(&col.data_type).is_integer()))
    }

    /// Whether every record of this entity is written by primary key as it is (see
    /// [`Self::needs_nothing_looked_up`]), whatever its operation.
    pub fn never_looked_up(&self, plans: &Plans) -> bool {
        self.upserts() && self.same_ids_everywhere(plans)
    }

    /// Whether `record` is written by primary key as it is: no reference to translate, no
    /// version to compare, no other unique key an upsert could hit.
    pub fn needs_nothing_looked_up(&self, record: &ChangeRecord, plans: &Plans) -> bool {
        (self.upserts() || record.op == Op::Delete) && self.same_ids_everywhere(plans)
    }

    /// Rows and the rows they reference have the same ids at every site, and no version decides.
    fn same_ids_everywhere(&self, plans: &Plans) -> bool {
        self.key_is_primary
            && self.config.conflict.is_none()
            && self.refs.iter().all(|(_, target)| plans.get(&target.entity).is_some_and(|p| p.key_is_primary))
    }

    async fn insert(&self, tx: &mut Transaction<'_, MySql>, sets: &[(String, SqlValue)]) -> Result<(), ApplyError> {
        let (columns, values): (Vec<String>, Vec<SqlValue>) = sets.iter().cloned().unzip();
        self.insert_rows(tx, &columns, &[values]).await
    }

    /// `UPDATE ... WHERE key`; returns the number of rows matched.
    pub(super) async fn update(
        &self,
        tx: &mut Transaction<'_, MySql>,
        sets: &[(String, SqlValue)],
        key: Vec<(String, SqlValue)>,
    ) -> Result<u64, ApplyError> {
        if sets.is_empty() {
            return Ok(1);
        }
        let assignments: Vec<String> = sets.iter().map(|(c, _)| format!("{} = ?", quote(c))).collect();
        let sql = format!("UPDATE {} SET {} WHERE {}", self.target.qualified(), assignments.join(", "), where_clause(&key));
        let lenient = sets.iter().any(|(c, v)| self.target.columns.get(c).is_some_and(|col| needs_lenient_mode(col, v)));
        let tolerated = |_: usize, column: &str| {
            sets.iter().any(|(c, v)| c == column && self.target.columns.get(c).is_some_and(|col| needs_lenient_mode(col, v)))
        };
        // The connection reports rows matched (CLIENT_FOUND_ROWS), not rows changed.
        self.execute_write(tx, &sql, lenient, &tolerated, |mut q| {
            for (_, v) in sets {
                q = bind(q, v.clone());
            }
            for (_, v) in &key {
                q = bind(q, v.clone());
            }
            q
        })
        .await
    }
}

/// Last writer wins, decided: whether a change stamped `incoming` loses to the local row
/// (`local`: its version column and digest, if the row exists) given what `row_versions`
/// knows of it. A snapshot row is a version as it was: it does not replace an equal one (which
/// the local application may have changed since without changing the version).
pub(super) fn incoming_loses(
    incoming: &Stamp,
    snapshot: bool,
    local: Option<(&str, Option<&str>)>,
    written: Option<&VersionEntry>,
    local_site: &str,
) -> bool {
    match (local, written) {
        (Some((version, content)), written) => {
            let local = crate::stamp::of_row(version, content, written, local_site);
            incoming.loses_to(&local) || (snapshot && incoming == &local)
        }
        // No row, but a delete won here: only a change made after it recreates the row.
        (None, Some(e)) if e.deleted => incoming.order(&e.stamp) != std::cmp::Ordering::Greater,
        (None, _) => false,
    }
}

/// This site's id of a row (read as text) as the value a reference column gets.
pub(super) fn local_id_value(id: String) -> Value {
    id.parse::<i64>().map(Value::from).unwrap_or(Value::String(id))
}

/// A row's identity in `row_versions` and in the batch's knowledge: its key values as text.
pub(super) fn row_key_text(key: &[(String, SqlValue)]) -> String {
    row_key_of_texts(key.iter().map(|(_, v)| sql_text(v)))
}

pub(super) use crate::stamp::row_key_of_texts;

/// The wait for a referenced row that is not here yet.
pub(super) fn not_arrived(col: &str, target: &EntityPlan, rk: &RefKey) -> ApplyError {
    let key = crate::record::shown(&Value::Object(rk.key.clone()).to_string());
    ApplyError::Wait(format!("`{col}` refers to {} {key} which has not arrived here yet", target.name))
}

pub(super) fn where_clause(key: &[(String, SqlValue)]) -> String {
    key.iter().map(|(c, _)| format!("{} <=> ?", quote(c))).collect::<Vec<_>>().join(" AND ")
}

/// A bound value as text, for version comparison and row identity.
pub(super) fn sql_text(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => String::new(),
        SqlValue::Int(i) => i.to_string(),
        SqlValue::UInt(u) => u.to_string(),
        SqlValue::Double(d) => d.to_string(),
        SqlValue::Text(s) => s.clone(),
        SqlValue::Bytes(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}
