//! Reference resolution at the origin: a reference column holds the origin's id of another
//! row, which means nothing at other sites when ids differ per site. Capture attaches the
//! referenced row's natural key to the record; each applier finds its own id from it.
//!
//! Ids seen in captured rows are remembered; an id not seen yet is looked up in the origin's
//! database (its current natural key). Only entities with a configured natural key need this:
//! where the primary key is the key, ids are the same at every site.

use crate::mysql::quote;
use crate::mysql::schema::{self, TableSchema};
use crate::mysql::types::TypeFamily;
use std::collections::HashMap;
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use serde_json::Value;

use super::CaptureError;
use crate::config::Config;

/// Remembered ids per entity, at most this many (the older half is forgotten at a time, and
/// looked up again if needed). An entry costs ~100 bytes plus its key's text.
const CACHE_LIMIT: usize = 50_000;

/// An origin id as a cache key: integers (the usual primary key) without text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IdKey {
    Int(i64),
    UInt(u64),
    Text(Box<str>),
    /// Any other JSON value, as its text.
    Other(Box<str>),
}

impl IdKey {
    fn of(id: &Value) -> Self {
        match id {
            Value::Number(n) if n.is_i64() => IdKey::Int(n.as_i64().expect("checked")),
            Value::Number(n) if n.is_u64() => IdKey::UInt(n.as_u64().expect("checked")),
            Value::String(s) => IdKey::Text(s.as_str().into()),
            other => IdKey::Other(other.to_string().into()),
        }
    }
}

/// Natural keys (JSON text) by id, bounded: two generations, the older dropped when the younger
/// is full, so recently used ids stay and memory never exceeds [`CACHE_LIMIT`] entries.
#[derive(Default)]
struct KeyCache {
    young: HashMap<IdKey, Arc<str>>,
    old: HashMap<IdKey, Arc<str>>,
}

impl KeyCache {
    fn get(&mut self, id: &IdKey) -> Option<Arc<str>> {
        if let Some(key) = self.young.get(id) {
            return Some(key.clone());
        }
        let key = self.old.remove(id)?;
        self.insert(id.clone(), key.clone());
        Some(key)
    }

    fn insert(&mut self, id: IdKey, key: Arc<str>) {
        if self.young.len() >= CACHE_LIMIT / 2 && !self.young.contains_key(&id) {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&id);
        self.young.insert(id, key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// Resolves origin ids of referenced rows to natural keys.
pub struct RefResolver {
    pool: mysql_async::Pool,
    db: String,
    config: Arc<Config>,
    /// entity -> primary-key column of its table at the origin.
    primary_keys: HashMap<String, String>,
    /// entity -> (id -> natural key as JSON).
    cache: HashMap<String, KeyCache>,
    /// (entity, key column) -> how to read it.
    key_expressions: HashMap<(String, String), KeyExpression>,
    /// Referenced tables as the server describes them, read once each.
    schemas: HashMap<String, Arc<TableSchema>>,
}

/// A key column read from the origin's table in the record's encoding: the SQL expression and
/// how its text becomes the JSON value.
#[derive(Debug, Clone, PartialEq)]
struct KeyExpression {
    sql: String,
    number: bool,
}

impl KeyExpression {
    fn for_column(column: &str, data_type: &str, precision: u32) -> Self {
        let c = quote(column);
        let text = |sql: String| KeyExpression { sql, number: false };
        match data_type {
            // MariaDB's UUID: the bytes in the order of its text form.
            "uuid" => text(format!("TO_BASE64(UNHEX(REPLACE(CAST({c} AS CHAR), '-', '')))")),
            "inet4" | "inet6" => text(format!("TO_BASE64(INET6_ATON(CAST({c} AS CHAR)))")),
            _ => match TypeFamily::of(data_type) {
                TypeFamily::Integer | TypeFamily::Year => KeyExpression { sql: format!("CAST({c} AS CHAR)"), number: true },
                TypeFamily::Bit => KeyExpression { sql: format!("CAST({c} + 0 AS CHAR)"), number: true },
                TypeFamily::Binary => text(format!("REPLACE(TO_BASE64({c}), CHAR(10), '')")),
                TypeFamily::Timestamp if precision > 0 => {
                    text(format!("CONCAT(LEFT(DATE_FORMAT({c}, '%Y-%m-%dT%H:%i:%s.%f'), {}), 'Z')", 20 + precision))
                }
                TypeFamily::Timestamp => text(format!("CONCAT(DATE_FORMAT({c}, '%Y-%m-%dT%H:%i:%s'), 'Z')")),
                _ => text(format!("CAST({c} AS CHAR)")),
            },
        }
    }

    fn sql(&self) -> &str {
        &self.sql
    }

    fn value(&self, text: String) -> Value {
        if self.number {
            if let Ok(i) = text.parse::<i64>() {
                return Value::from(i);
            }
            if let Ok(u) = text.parse::<u64>() {
                return Value::from(u);
            }
        }
        Value::String(text)
    }
}

impl RefResolver {
    /// A resolver reading `db` through `pool`.
    pub fn new(pool: mysql_async::Pool, db: String, config: Arc<Config>) -> Self {
        Self {
            pool,
            db,
            config,
            primary_keys: HashMap::new(),
            cache: HashMap::new(),
            key_expressions: HashMap::new(),
            schemas: HashMap::new(),
        }
    }

    /// Whether references to `entity` need a natural key (ids differ per site).
    pub fn translates(&self, entity: &str) -> bool {
        self.config.entities.get(entity).is_some_and(|e| !e.key.is_empty())
    }

    /// Remembers `key` (the natural key as JSON) of the captured `entity` row whose primary key
    /// `pk_column` is `id`.
    pub fn remember(&mut self, entity: &str, pk_column: &str, id: &Value, key: &str) {
        if !self.primary_keys.contains_key(entity) {
            self.primary_keys.insert(entity.to_string(), pk_column.to_string());
        }
        self.cache_of(entity).insert(IdKey::of(id), Arc::from(key));
    }

    fn cache_of(&mut self, entity: &str) -> &mut KeyCache {
        if !self.cache.contains_key(entity) {
            self.cache.insert(entity.to_string(), KeyCache::default());
        }
        self.cache.get_mut(entity).expect("inserted")
    }

    /// The natural key (JSON) of the `entity` row whose id is `id` at the origin, if it still
    /// exists.
    pub async fn resolve(&mut self, entity: &str, id: &Value) -> Result<Option<Arc<str>>, CaptureError> {
        let id_key = IdKey::of(id);
        if let Some(key) = self.cache.get_mut(entity).and_then(|c| c.get(&id_key)) {
            return Ok(Some(key));
        }
        let cfg = self
            .config
            .entities
            .get(entity)
            .ok_or_else(|| CaptureError::Config(format!("reference to unknown entity `{entity}`")))?
            .clone();
        let pk = self.primary_key(entity, &cfg.table).await?;
        let mut columns = Vec::with_capacity(cfg.key.len());
        for k in &cfg.key {
            columns.push(self.key_expression(entity, &cfg.table, k).await?);
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = ?",
            columns.iter().map(KeyExpression::sql).collect::<Vec<_>>().join(", "),
            crate::mysql::qualified(&self.db, &cfg.table),
            quote(&pk)
        );
        let param = match id {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut conn = self.pool.get_conn().await.map_err(|e| self.err(e))?;
        // TIMESTAMP keys are written in UTC, as capture writes them from the binlog.
        conn.query_drop("SET time_zone = '+00:00'").await.map_err(|e| self.err(e))?;
        let row: Option<mysql_async::Row> = conn.exec_first(sql, (param,)).await.map_err(|e| self.err(e))?;
        let Some(row) = row else { return Ok(None) };
        let mut key = serde_json::Map::new();
        for (i, (k, expression)) in cfg.key.iter().zip(&columns).enumerate() {
            let text: Option<String> = row.get_opt(i).and_then(Result::ok).flatten();
            key.insert(k.clone(), text.map(|t| expression.value(t)).unwrap_or(Value::Null));
        }
        let key: Arc<str> = Value::Object(key).to_string().into();
        self.cache_of(entity).insert(id_key, key.clone());
        Ok(Some(key))
    }

    /// How key column `column` of `entity` is read so that it comes back encoded as capture
    /// encodes it from the binlog (schemas/README.md): base64 for bytes, UTC for TIMESTAMP,
    /// numbers for integers.
    async fn key_expression(&mut self, entity: &str, table: &str, column: &str) -> Result<KeyExpression, CaptureError> {
        let cache_key = (entity.to_string(), column.to_string());
        if let Some(e) = self.key_expressions.get(&cache_key) {
            return Ok(e.clone());
        }
        let schema = self.schema(entity, table).await?;
        let described = schema
            .column(column)
            .ok_or_else(|| CaptureError::Config(format!("entities.{entity}.key: {}.{table} has no column `{column}`", self.db)))?;
        let expression = KeyExpression::for_column(column, &described.data_type, described.datetime_precision);
        self.key_expressions.insert(cache_key, expression.clone());
        Ok(expression)
    }

    async fn primary_key(&mut self, entity: &str, table: &str) -> Result<String, CaptureError> {
        if let Some(pk) = self.primary_keys.get(entity) {
            return Ok(pk.clone());
        }
        let schema = self.schema(entity, table).await?;
        let [pk] = schema.primary_key.as_slice() else {
            return Err(CaptureError::Config(format!(
                "entities.{entity}: references need table {}.{table} to have a one-column primary key (it has {})",
                self.db,
                schema.primary_key.len()
            )));
        };
        self.primary_keys.insert(entity.to_string(), pk.clone());
        Ok(pk.clone())
    }

    /// The referenced table as the server describes it (read when a key expression or the
    /// primary key is first needed; both are kept).
    async fn schema(&mut self, entity: &str, table: &str) -> Result<Arc<TableSchema>, CaptureError> {
        if let Some(s) = self.schemas.get(table) {
            return Ok(s.clone());
        }
        let mut conn = self.pool.get_conn().await.map_err(|e| self.err(e))?;
        let described = schema::load_mysql(&mut conn, &self.db, table)
            .await
            .map_err(|e| self.err(e))?
            .ok_or_else(|| CaptureError::Config(format!("entities.{entity}: table {}.{table} does not exist", self.db)))?;
        let described = Arc::new(described);
        self.schemas.insert(table.to_string(), described.clone());
        Ok(described)
    }

    fn err(&self, source: mysql_async::Error) -> CaptureError {
        CaptureError::Source { site: String::from("(reference lookup)"), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_different_json_types_stay_apart() {
        assert_ne!(IdKey::of(&Value::from(5)), IdKey::of(&Value::from("5")));
        assert_eq!(IdKey::of(&Value::from(5u64)), IdKey::of(&Value::from(5i64)));
        assert_eq!(IdKey::of(&Value::from(u64::MAX)), IdKey::UInt(u64::MAX));
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_what_is_used() {
        let mut cache = KeyCache::default();
        let key = |i: i64| IdKey::Int(i);
        cache.insert(key(0), Arc::from("zero"));
        for i in 1..(3 * CACHE_LIMIT as i64) {
            cache.insert(key(i), Arc::from("k"));
            assert!(cache.get(&key(0)).is_some(), "a key in use stays (after {i})");
            assert!(cache.len() <= CACHE_LIMIT);
        }
        assert!(cache.get(&key(1)).is_none(), "an old unused key went");
        assert_eq!(cache.get(&key(3 * CACHE_LIMIT as i64 - 1)).as_deref(), Some("k"));
    }
}
