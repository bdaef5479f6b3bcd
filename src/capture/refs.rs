//! Reference resolution at the origin: a reference column holds the origin's id of another
//! row, which means nothing at other sites when ids differ per site. Capture attaches the
//! referenced row's natural key to the record; each applier finds its own id from it.
//!
//! Ids seen in captured rows are remembered; an id not seen yet is looked up in the origin's
//! database (its current natural key). Only entities with a configured natural key need this:
//! where the primary key is the key, ids are the same at every site.

use std::collections::HashMap;
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use serde_json::{Map, Value};

use super::CaptureError;
use crate::config::Config;
use crate::record::Row;

/// Remembered ids per entity, at most this many (then forgotten and looked up again).
const CACHE_LIMIT: usize = 20_000;

/// Resolves origin ids of referenced rows to natural keys.
pub struct RefResolver {
    pool: mysql_async::Pool,
    db: String,
    config: Arc<Config>,
    /// entity -> primary-key column of its table at the origin.
    primary_keys: HashMap<String, String>,
    /// entity -> (id as JSON text -> natural key).
    cache: HashMap<String, HashMap<String, Row>>,
}

impl RefResolver {
    /// A resolver reading `db` through `pool`.
    pub fn new(pool: mysql_async::Pool, db: String, config: Arc<Config>) -> Self {
        Self { pool, db, config, primary_keys: HashMap::new(), cache: HashMap::new() }
    }

    /// Whether references to `entity` need a natural key (ids differ per site).
    pub fn translates(&self, entity: &str) -> bool {
        self.config.entities.get(entity).is_some_and(|e| !e.key.is_empty())
    }

    /// Remembers the natural key of a captured row of `entity` whose primary key is `pk_column`.
    pub fn remember(&mut self, entity: &str, pk_column: &str, image: &Map<String, Value>) {
        let Some(cfg) = self.config.entities.get(entity) else { return };
        if cfg.key.is_empty() {
            return;
        }
        let Some(id) = image.get(pk_column) else { return };
        let mut key = Row::new();
        for k in &cfg.key {
            key.insert(k.clone(), image.get(k).cloned().unwrap_or(Value::Null));
        }
        let cache = self.cache.entry(entity.to_string()).or_default();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(id.to_string(), key);
        self.primary_keys.entry(entity.to_string()).or_insert_with(|| pk_column.to_string());
    }

    /// The natural key of the `entity` row whose id is `id` at the origin, if it still exists.
    pub async fn resolve(&mut self, entity: &str, id: &Value) -> Result<Option<Row>, CaptureError> {
        if let Some(key) = self.cache.get(entity).and_then(|c| c.get(&id.to_string())) {
            return Ok(Some(key.clone()));
        }
        let cfg = self
            .config
            .entities
            .get(entity)
            .ok_or_else(|| CaptureError::Config(format!("reference to unknown entity `{entity}`")))?
            .clone();
        let pk = self.primary_key(entity, &cfg.table).await?;
        let columns: Vec<String> = cfg.key.iter().map(|k| format!("CAST(`{k}` AS CHAR)")).collect();
        let sql = format!("SELECT {} FROM `{}`.`{}` WHERE `{pk}` = ?", columns.join(", "), self.db, cfg.table);
        let param = match id {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut conn = self.pool.get_conn().await.map_err(|e| self.err(e))?;
        let row: Option<mysql_async::Row> = conn.exec_first(sql, (param,)).await.map_err(|e| self.err(e))?;
        let Some(row) = row else { return Ok(None) };
        let mut key = Row::new();
        for (i, k) in cfg.key.iter().enumerate() {
            let v: Option<String> = row.get(i).flatten();
            key.insert(k.clone(), v.map(Value::String).unwrap_or(Value::Null));
        }
        self.cache.entry(entity.to_string()).or_default().insert(id.to_string(), key.clone());
        Ok(Some(key))
    }

    async fn primary_key(&mut self, entity: &str, table: &str) -> Result<String, CaptureError> {
        if let Some(pk) = self.primary_keys.get(entity) {
            return Ok(pk.clone());
        }
        let mut conn = self.pool.get_conn().await.map_err(|e| self.err(e))?;
        let cols: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
                (self.db.as_str(), table),
            )
            .await
            .map_err(|e| self.err(e))?;
        if cols.len() != 1 {
            return Err(CaptureError::Config(format!(
                "entities.{entity}: references need table {}.{table} to have a one-column primary key (it has {})",
                self.db,
                cols.len()
            )));
        }
        self.primary_keys.insert(entity.to_string(), cols[0].clone());
        Ok(cols[0].clone())
    }

    fn err(&self, source: mysql_async::Error) -> CaptureError {
        CaptureError::Source { site: String::from("(reference lookup)"), source }
    }
}
