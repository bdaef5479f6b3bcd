//! `sitesync verify`: compares entity contents between this site and others by natural key,
//! as the compensation tool of seed 001 does, and lists every difference.
//!
//! For each entity routed from site S to site T, every row of S that passes the entity's filter
//! must exist at T, with equal replicated columns. Columns that do not travel are not compared:
//! excluded ones, the primary key when rows are matched by a natural key (ids differ per site),
//! and the origin column. References are compared through the natural keys they point to.
//! Rows that only the target has (its own rows, rows kept by `on_delete`) are not differences.

use crate::mysql::quote;
use std::collections::{BTreeMap, HashMap};

use sqlx::mysql::MySqlPool;
use sqlx::{AssertSqlSafe, Row as _};

use crate::config::{Config, EntityConfig, Filter};
use crate::control;
use crate::mysql::schema::{self, TableSchema};

/// One difference found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// Entity.
    pub entity: String,
    /// Site the row comes from.
    pub from: String,
    /// Site that should hold it.
    pub to: String,
    /// Natural key, as JSON.
    pub key: String,
    /// What differs.
    pub detail: String,
}

/// Why verification could not run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A site's database failed.
    #[error("site `{site}`: {message}")]
    Site {
        /// Site id.
        site: String,
        /// What failed.
        message: String,
    },
    /// The request names something the configuration lacks.
    #[error("{0}")]
    Config(String),
}

/// A table's rows at one site: natural key -> column -> value text.
type Contents = BTreeMap<String, BTreeMap<String, Option<String>>>;

struct SiteData {
    pool: MySqlPool,
    db: String,
    /// entity -> id -> natural key JSON (for references).
    ids: HashMap<String, HashMap<String, String>>,
}

/// Compares `site` with `against` (default: every site it exchanges entities with).
pub async fn verify(config: &Config, site: &str, entities: &[String], against: &[String]) -> Result<Vec<Difference>, VerifyError> {
    for e in entities {
        if !config.entities.contains_key(e) {
            return Err(VerifyError::Config(format!("--entity {e}: no such entity in {}", config.path.display())));
        }
    }
    for s in against {
        if !config.sites.contains_key(s) {
            return Err(VerifyError::Config(format!("--against {s}: no such site in {}", config.path.display())));
        }
    }
    let entities: Vec<String> = if entities.is_empty() { config.entities.keys().cloned().collect() } else { entities.to_vec() };
    let others: Vec<String> =
        if against.is_empty() { config.sites.keys().filter(|s| *s != site).cloned().collect() } else { against.to_vec() };
    let mut data: HashMap<String, SiteData> = HashMap::new();
    for s in std::iter::once(site.to_string()).chain(others.iter().cloned()) {
        let url = config.site(&s).map_err(|e| VerifyError::Config(e.to_string()))?.mysql.expose();
        let pool = control::connect(&s, url, 2).await.map_err(|e| VerifyError::Site { site: s.clone(), message: e.to_string() })?;
        data.insert(s.clone(), SiteData { pool, db: config.database_of(&s).to_string(), ids: HashMap::new() });
    }
    let mut diffs = Vec::new();
    for entity in &entities {
        for other in &others {
            for (from, to) in [(site, other.as_str()), (other.as_str(), site)] {
                if !config.routes_entity(from, to, entity) {
                    continue;
                }
                let source = contents(config, entity, from, &mut data).await?;
                let target = contents(config, entity, to, &mut data).await?;
                let filter = config.entities[entity]
                    .filter
                    .as_deref()
                    .map(Filter::parse)
                    .transpose()
                    .map_err(|e| VerifyError::Config(e.to_string()))?;
                for (key, row) in &source.1 {
                    if let Some(f) = &filter {
                        if !f.matches(&source.0[key]) {
                            continue;
                        }
                    }
                    let diff = |detail: String| Difference {
                        entity: entity.clone(),
                        from: from.to_string(),
                        to: to.to_string(),
                        key: key.clone(),
                        detail,
                    };
                    match target.1.get(key) {
                        None => diffs.push(diff(format!("missing at {to}"))),
                        Some(other_row) => {
                            for (col, value) in row {
                                let theirs = other_row.get(col).cloned().flatten();
                                if *value != theirs {
                                    diffs.push(diff(format!(
                                        "`{col}`: {from}={} {to}={}",
                                        value.as_deref().unwrap_or("NULL"),
                                        theirs.as_deref().unwrap_or("NULL")
                                    )));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(diffs)
}

/// The rows of `entity` at `site`, keyed by natural key, with the columns that travel; also the
/// raw images (for the filter).
async fn contents(
    config: &Config,
    entity: &str,
    site: &str,
    data: &mut HashMap<String, SiteData>,
) -> Result<(HashMap<String, serde_json::Map<String, serde_json::Value>>, Contents), VerifyError> {
    let cfg = &config.entities[entity];
    let (pool, db) = {
        let d = &data[site];
        (d.pool.clone(), d.db.clone())
    };
    let err = |m: String| VerifyError::Site { site: site.to_string(), message: m };
    let table = described(&pool, &db, &cfg.table).await.map_err(err)?;
    let key_cols: Vec<String> = if cfg.key.is_empty() { table.primary_key.clone() } else { cfg.key.clone() };
    let natural = !cfg.key.is_empty() && {
        let (mut a, mut b) = (key_cols.clone(), table.primary_key.clone());
        a.sort();
        b.sort();
        a != b
    };
    let mut columns: Vec<&String> = table.columns.iter().map(|c| &c.name).collect();
    columns.sort();
    let compared: Vec<&String> = columns
        .iter()
        .copied()
        .filter(|c| !cfg.exclude.contains(c))
        .filter(|c| cfg.origin_column.as_deref() != Some(c.as_str()))
        .filter(|c| !(natural && table.primary_key.contains(c) && !key_cols.contains(c)))
        .collect();
    let select: Vec<String> = columns.iter().map(|c| format!("CAST({c} AS CHAR), HEX({c})", c = quote(c))).collect();
    let rows = sqlx::query(AssertSqlSafe(format!("SELECT {} FROM {}", select.join(", "), crate::mysql::qualified(&db, &cfg.table))))
        .fetch_all(&pool)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut images = HashMap::new();
    let mut out = Contents::new();
    for r in rows {
        let mut text: HashMap<&str, Option<String>> = HashMap::new();
        let mut hex: HashMap<&str, Option<String>> = HashMap::new();
        for (i, c) in columns.iter().enumerate() {
            text.insert(c.as_str(), r.try_get::<Option<String>, _>(2 * i).ok().flatten());
            hex.insert(c.as_str(), r.try_get::<Option<String>, _>(2 * i + 1).ok().flatten());
        }
        let mut values = BTreeMap::new();
        for c in &compared {
            let v = match cfg.refs.get(c.as_str()) {
                Some(target) => match text[c.as_str()].clone() {
                    Some(id) if !target.is_none(&serde_json::Value::String(id.clone())) => {
                        Some(natural_key_of(config, &target.entity, site, &id, data).await?)
                    }
                    other => other,
                },
                None => hex[c.as_str()].clone(),
            };
            values.insert(c.to_string(), v);
        }
        let mut key = serde_json::Map::new();
        for k in &key_cols {
            let v = match cfg.refs.get(k) {
                Some(target) => match text[k.as_str()].clone() {
                    Some(id) if !target.is_none(&serde_json::Value::String(id.clone())) => {
                        serde_json::Value::String(natural_key_of(config, &target.entity, site, &id, data).await?)
                    }
                    Some(id) => serde_json::Value::String(id),
                    None => serde_json::Value::Null,
                },
                None => text[k.as_str()].clone().map(serde_json::Value::String).unwrap_or(serde_json::Value::Null),
            };
            key.insert(k.clone(), v);
        }
        let key = serde_json::Value::Object(key).to_string();
        let image: serde_json::Map<String, serde_json::Value> = text
            .iter()
            .map(|(c, v)| {
                let v = v.clone().map(|s| {
                    s.parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(serde_json::Value::Number)
                        .unwrap_or(serde_json::Value::String(s))
                });
                (c.to_string(), v.unwrap_or(serde_json::Value::Null))
            })
            .collect();
        images.insert(key.clone(), image);
        out.insert(key, values);
    }
    Ok((images, out))
}

/// The natural key (JSON) of the `entity` row with id `id` at `site`; the id itself where the
/// entity's ids are shared.
async fn natural_key_of(
    config: &Config,
    entity: &str,
    site: &str,
    id: &str,
    data: &mut HashMap<String, SiteData>,
) -> Result<String, VerifyError> {
    let cfg: &EntityConfig = config.entities.get(entity).ok_or_else(|| VerifyError::Config(format!("unknown entity {entity}")))?;
    if cfg.key.is_empty() {
        return Ok(id.to_string());
    }
    if !data[site].ids.contains_key(entity) {
        let d = &data[site];
        let err = |m: String| VerifyError::Site { site: site.to_string(), message: m };
        let table = described(&d.pool, &d.db, &cfg.table).await.map_err(err)?;
        let [pk] = table.primary_key.as_slice() else {
            return Err(err(format!("{}: references need a one-column primary key", crate::mysql::qualified(&table.db, &table.table))));
        };
        let cols: Vec<String> = cfg.key.iter().map(|k| format!("CAST({} AS CHAR)", quote(k))).collect();
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT CAST({} AS CHAR), {} FROM {}",
            quote(pk),
            cols.join(", "),
            crate::mysql::qualified(&table.db, &table.table)
        )))
        .fetch_all(&d.pool)
        .await
        .map_err(|e| err(e.to_string()))?;
        let mut ids = HashMap::new();
        for r in rows {
            let id: String = r.try_get(0).map_err(|e| err(e.to_string()))?;
            let mut key = serde_json::Map::new();
            for (i, k) in cfg.key.iter().enumerate() {
                let v: Option<String> = r.try_get(i + 1).ok().flatten();
                key.insert(k.clone(), v.map(serde_json::Value::String).unwrap_or(serde_json::Value::Null));
            }
            ids.insert(id, serde_json::Value::Object(key).to_string());
        }
        data.get_mut(site).expect("site loaded").ids.insert(entity.to_string(), ids);
    }
    Ok(data[site].ids[entity].get(id).cloned().unwrap_or_else(|| format!("(dangling {entity} id {id})")))
}

/// `db`.`table` as the server describes it, or why not.
async fn described(pool: &sqlx::MySqlPool, db: &str, table: &str) -> Result<TableSchema, String> {
    match schema::load_sqlx(pool, db, table).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(format!("table {db}.{table} does not exist at this site")),
        Err(e) => Err(format!("reading the schema of {db}.{table}: {e}")),
    }
}
