//! Writes one change record into the local database, inside the caller's transaction.

use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, MySql, Transaction};

use super::target::{bind, to_sql, SqlValue, TargetTable};
use super::ApplyError;
use crate::config::{EntityConfig, OnDelete};
use crate::record::{ChangeRecord, Op};

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
    /// The natural key is the primary key: rows are upserted by it.
    pub key_is_primary: bool,
}

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written.
    Applied,
    /// Deliberately not written (on_delete = ignore, nothing to do).
    Skipped,
}

impl EntityPlan {
    /// Binds an entity to its table; fails if a configured column is missing there.
    pub fn new(name: &str, config: &EntityConfig, target: TargetTable) -> Result<Self, ApplyError> {
        let key_columns = if config.key.is_empty() { target.primary_key.clone() } else { config.key.clone() };
        if key_columns.is_empty() {
            return Err(ApplyError::Schema(format!(
                "entities.{name}: {} has no primary key; set `key`",
                target.qualified()
            )));
        }
        for col in &key_columns {
            target.column(col).map_err(|_| {
                ApplyError::Schema(format!("entities.{name}.key: {} has no column `{col}`", target.qualified()))
            })?;
        }
        if let Some(col) = &config.origin_column {
            target.column(col).map_err(|_| {
                ApplyError::Schema(format!("entities.{name}.origin_column: {} has no column `{col}`", target.qualified()))
            })?;
        }
        let mut sorted_key = key_columns.clone();
        sorted_key.sort();
        let mut sorted_pk = target.primary_key.clone();
        sorted_pk.sort();
        Ok(EntityPlan {
            name: name.to_string(),
            config: config.clone(),
            key_is_primary: sorted_key == sorted_pk,
            target,
            key_columns,
        })
    }

    /// The columns and values to write from an image.
    fn assignments(&self, image: &Map<String, Value>, origin: &str) -> Result<Vec<(String, SqlValue)>, ApplyError> {
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

    fn key_values(&self, image: &Map<String, Value>) -> Result<Vec<(String, SqlValue)>, ApplyError> {
        self.key_columns
            .iter()
            .map(|k| {
                let col = self.target.column(k)?;
                let v = image.get(k).ok_or_else(|| ApplyError::Definite(format!("record lacks key column `{k}`")))?;
                Ok((col.name.clone(), to_sql(col, v)?))
            })
            .collect()
    }

    /// Applies `record` inside `tx`.
    pub async fn apply(
        &self,
        tx: &mut Transaction<'_, MySql>,
        origin: &str,
        record: &ChangeRecord,
    ) -> Result<Outcome, ApplyError> {
        match record.op {
            Op::Delete => {
                let before = record.before.as_ref().expect("checked when parsed");
                let key = self.key_values(before)?;
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
                let after = record.after.as_ref().expect("checked when parsed");
                let sets = self.assignments(after, origin)?;
                let after_key = self.key_values(after)?;
                let where_key = match (&record.op, &record.before) {
                    (Op::Update, Some(before)) => self.key_values(before)?,
                    _ => after_key.clone(),
                };
                let key_changed = where_key != after_key;
                if self.key_is_primary && !key_changed {
                    self.upsert(tx, &sets).await?;
                    return Ok(Outcome::Applied);
                }
                if self.update(tx, &sets, where_key).await? == 0 {
                    if self.key_is_primary {
                        self.upsert(tx, &sets).await?;
                    } else {
                        self.insert(tx, &sets).await?;
                    }
                }
                Ok(Outcome::Applied)
            }
        }
    }

    async fn upsert(&self, tx: &mut Transaction<'_, MySql>, sets: &[(String, SqlValue)]) -> Result<(), ApplyError> {
        let cols: Vec<String> = sets.iter().map(|(c, _)| format!("`{c}`")).collect();
        let updates: Vec<String> = sets
            .iter()
            .filter(|(c, _)| !self.target.primary_key.contains(c))
            .map(|(c, _)| format!("`{c}` = VALUES(`{c}`)"))
            .collect();
        let sql = if updates.is_empty() {
            format!("INSERT IGNORE INTO {} ({}) VALUES ({})", self.target.qualified(), cols.join(", "), vec!["?"; cols.len()].join(", "))
        } else {
            format!(
                "INSERT INTO {} ({}) VALUES ({}) ON DUPLICATE KEY UPDATE {}",
                self.target.qualified(),
                cols.join(", "),
                vec!["?"; cols.len()].join(", "),
                updates.join(", ")
            )
        };
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
        for (_, v) in sets {
            q = bind(q, v.clone());
        }
        q.execute(&mut **tx).await.map_err(ApplyError::classify)?;
        Ok(())
    }

    async fn insert(&self, tx: &mut Transaction<'_, MySql>, sets: &[(String, SqlValue)]) -> Result<(), ApplyError> {
        let cols: Vec<String> = sets.iter().map(|(c, _)| format!("`{c}`")).collect();
        let sql = format!("INSERT INTO {} ({}) VALUES ({})", self.target.qualified(), cols.join(", "), vec!["?"; cols.len()].join(", "));
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
        for (_, v) in sets {
            q = bind(q, v.clone());
        }
        q.execute(&mut **tx).await.map_err(ApplyError::classify)?;
        Ok(())
    }

    /// `UPDATE ... WHERE key`; returns the number of rows matched.
    async fn update(
        &self,
        tx: &mut Transaction<'_, MySql>,
        sets: &[(String, SqlValue)],
        key: Vec<(String, SqlValue)>,
    ) -> Result<u64, ApplyError> {
        if sets.is_empty() {
            return Ok(1);
        }
        let assignments: Vec<String> = sets.iter().map(|(c, _)| format!("`{c}` = ?")).collect();
        let sql = format!("UPDATE {} SET {} WHERE {}", self.target.qualified(), assignments.join(", "), where_clause(&key));
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
        for (_, v) in sets {
            q = bind(q, v.clone());
        }
        for (_, v) in key {
            q = bind(q, v);
        }
        // The connection reports rows matched (CLIENT_FOUND_ROWS), not rows changed.
        Ok(q.execute(&mut **tx).await.map_err(ApplyError::classify)?.rows_affected())
    }
}

fn where_clause(key: &[(String, SqlValue)]) -> String {
    key.iter().map(|(c, _)| format!("`{c}` <=> ?")).collect::<Vec<_>>().join(" AND ")
}
