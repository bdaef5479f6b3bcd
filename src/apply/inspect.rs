//! What the operator console shows of a dead letter at this site: the local row its record is
//! about, as it is now, and the origin's own primary key of that row (what a re-request asks
//! the origin to republish). The row is found as apply finds it (references translated, the
//! natural key), so the console never guesses differently from the writer.

use std::collections::BTreeMap;

use super::*;
use crate::mysql::ident::quote;
use serde_json::Value;
use target::arguments;
use writer::where_clause;

/// This site's plans for the records of one origin, loaded once for what the console asks.
pub struct Inspector<'a> {
    site: &'a str,
    pool: &'a sqlx::MySqlPool,
    origin: String,
    plans: Plans,
}

impl<'a> Inspector<'a> {
    /// The entities applied at `site` from `origin`, bound to their local tables.
    pub async fn load(config: &Config, site: &'a str, pool: &'a sqlx::MySqlPool, origin: &str) -> Result<Self, ApplyError> {
        let plans = load_plans(config, site, pool, &[origin.to_string()]).await?;
        Ok(Self { site, pool, origin: origin.to_string(), plans })
    }

    fn plan(&self, record: &ChangeRecord) -> Result<&EntityPlan, ApplyError> {
        let entity = &record.sitesync.entity;
        self.plans.get(entity).map(|p| p.as_ref()).ok_or_else(|| {
            ApplyError::Config(format!("entity `{}` is not applied at {} from {}", crate::record::shown(entity), self.site, self.origin))
        })
    }

    /// The row `record` is about here, each non-excluded column as text (binary as `0x` hex,
    /// NULL as `None`); `None` when no such row is here.
    pub async fn local_row(&self, record: &ChangeRecord) -> Result<Option<BTreeMap<String, Option<String>>>, ApplyError> {
        let plan = self.plan(record)?;
        // An update that changed the key: the row here may still be under the before image's key.
        let mut first_error = None;
        for image in [record.after.as_ref(), record.before.as_ref()].into_iter().flatten() {
            match find(plan, &self.plans, &self.origin, self.pool, record, image).await {
                Ok(Some(row)) => return Ok(Some(row)),
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// The origin's primary key of the row `record` is about, as text (what
    /// [`crate::channel::Body::RepairRequest`] names), or why there is none to name. The
    /// tables are the same application's at every site: this site's primary key is the origin's.
    pub fn origin_primary_key(&self, record: &ChangeRecord) -> Result<String, String> {
        let plan = self.plan(record).map_err(|e| e.to_string())?;
        let primary_key = &plan.target.primary_key;
        let [pk] = primary_key.as_slice() else {
            return Err(format!(
                "table {} has a primary key of {} columns; re-request needs a one-column key",
                plan.config.table,
                primary_key.len()
            ));
        };
        let image = image_of(record).map_err(|e| e.to_string())?;
        match image.get(pk) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(format!("the record's `{pk}` is {other}, not a key the origin can look up")),
            None => Err(format!("the record does not carry `{pk}`, the origin's primary key")),
        }
    }
}

async fn find(
    plan: &EntityPlan,
    plans: &Plans,
    origin: &str,
    pool: &sqlx::MySqlPool,
    record: &ChangeRecord,
    image: &serde_json::Map<String, Value>,
) -> Result<Option<BTreeMap<String, Option<String>>>, ApplyError> {
    let mut tx = pool.begin().await.map_err(ApplyError::classify)?;
    let translated = plan.translate(&mut tx, origin, image, &record.sitesync.refs, plans, true).await?;
    let key = plan.key_values(&translated)?;
    let mut names: Vec<&String> = plan.target.columns.keys().filter(|c| !plan.config.exclude.contains(*c)).collect();
    names.sort();
    let select: Vec<String> = names
        .iter()
        .map(|c| {
            let column = &plan.target.columns[*c];
            if is_binary(&column.data_type) {
                format!("CONCAT('0x', HEX({}))", quote(c))
            } else {
                format!("CAST({} AS CHAR)", quote(c))
            }
        })
        .collect();
    let sql = format!("SELECT {} FROM {} WHERE {} LIMIT 1", select.join(", "), plan.target.qualified(), where_clause(&key));
    let row = sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments(key.into_iter().map(|(_, v)| v))?)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApplyError::classify)?;
    tx.rollback().await.map_err(ApplyError::classify)?;
    let Some(row) = row else { return Ok(None) };
    use sqlx::Row as _;
    let mut out = BTreeMap::new();
    for (i, c) in names.iter().enumerate() {
        let value =
            row.try_get::<Option<String>, _>(i).map_err(|e| ApplyError::Definite(format!("column `{c}` cannot be shown as text: {e}")))?;
        out.insert((*c).clone(), value);
    }
    Ok(Some(out))
}

/// The image that names the row: after (create, update, read), else before (delete).
fn image_of(record: &ChangeRecord) -> Result<&serde_json::Map<String, Value>, ApplyError> {
    record.after.as_ref().or(record.before.as_ref()).ok_or_else(|| ApplyError::Definite("the record has no row image".into()))
}

/// Columns whose text is bytes, not characters: shown as hex.
fn is_binary(data_type: &str) -> bool {
    matches!(
        data_type,
        "binary"
            | "varbinary"
            | "tinyblob"
            | "blob"
            | "mediumblob"
            | "longblob"
            | "bit"
            | "geometry"
            | "point"
            | "linestring"
            | "polygon"
            | "multipoint"
            | "multilinestring"
            | "multipolygon"
            | "geometrycollection"
            | "geomcollection"
    )
}
