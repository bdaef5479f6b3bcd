//! The target tables as the local server describes them, and the SQL that writes one change.
//! Column names that arrive in records are used only after they are found here, so nothing
//! read off the wire reaches SQL unchecked.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::Value;
use sqlx::mysql::MySqlArguments;
use sqlx::query::Query;
use sqlx::{MySql, Row as _};

use super::ApplyError;

/// One column of a target table.
#[derive(Debug, Clone)]
pub struct TargetColumn {
    /// Name.
    pub name: String,
    /// `DATA_TYPE` (lower case): decides how a record value is bound.
    pub data_type: String,
    /// Generated (never written).
    pub generated: bool,
    /// AUTO_INCREMENT.
    pub auto_increment: bool,
}

/// A target table.
#[derive(Debug, Clone)]
pub struct TargetTable {
    /// Database.
    pub db: String,
    /// Table.
    pub table: String,
    /// Columns by name.
    pub columns: HashMap<String, TargetColumn>,
    /// Primary-key column names, in key order.
    pub primary_key: Vec<String>,
}

impl TargetTable {
    /// Reads the table's description from `information_schema`.
    pub async fn load(pool: &sqlx::MySqlPool, db: &str, table: &str) -> Result<Self, ApplyError> {
        let rows = sqlx::query(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), EXTRA, COLUMN_KEY FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        )
        .bind(db)
        .bind(table)
        .fetch_all(pool)
        .await
        .map_err(ApplyError::Database)?;
        if rows.is_empty() {
            return Err(ApplyError::Schema(format!("table {db}.{table} does not exist at this site")));
        }
        let mut columns = HashMap::new();
        for r in &rows {
            let name: String = r.try_get(0).map_err(ApplyError::Database)?;
            let data_type: String = r.try_get(1).map_err(ApplyError::Database)?;
            let extra: String = r.try_get(2).map_err(ApplyError::Database)?;
            let extra = extra.to_ascii_uppercase();
            columns.insert(
                name.clone(),
                TargetColumn {
                    name,
                    data_type,
                    generated: extra.contains("GENERATED") || extra.contains("VIRTUAL") || extra.contains("PERSISTENT"),
                    auto_increment: extra.contains("AUTO_INCREMENT"),
                },
            );
        }
        let pk_rows = sqlx::query(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
        )
        .bind(db)
        .bind(table)
        .fetch_all(pool)
        .await
        .map_err(ApplyError::Database)?;
        let primary_key = pk_rows.iter().map(|r| r.get::<String, _>(0)).collect();
        Ok(TargetTable { db: db.to_string(), table: table.to_string(), columns, primary_key })
    }

    /// The column `name`, or a definite error naming it.
    pub fn column(&self, name: &str) -> Result<&TargetColumn, ApplyError> {
        self.columns.get(name).ok_or_else(|| {
            ApplyError::MissingColumn(format!("column `{name}` does not exist in {}.{} at this site", self.db, self.table))
        })
    }

    /// `` `db`.`table` ``.
    pub fn qualified(&self) -> String {
        format!("`{}`.`{}`", self.db, self.table)
    }
}

/// A record value bound for a column of `data_type`: the inverse of capture's encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// NULL.
    Null,
    /// Signed integer.
    Int(i64),
    /// Unsigned integer.
    UInt(u64),
    /// Floating point.
    Double(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

fn is_binary_type(data_type: &str) -> bool {
    matches!(
        data_type,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry" | "point"
            | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon" | "geometrycollection"
    )
}

/// Converts a record value for the target column.
pub fn to_sql(col: &TargetColumn, value: &Value) -> Result<SqlValue, ApplyError> {
    let bad = |what: &str| ApplyError::Definite(format!("column `{}` ({}): {what}", col.name, col.data_type));
    Ok(match value {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Int(*b as i64),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                SqlValue::UInt(u)
            } else if let Some(i) = n.as_i64() {
                SqlValue::Int(i)
            } else {
                SqlValue::Double(n.as_f64().ok_or_else(|| bad("unrepresentable number"))?)
            }
        }
        Value::String(s) if is_binary_type(&col.data_type) => SqlValue::Bytes(
            base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| bad("binary value is not base64"))?,
        ),
        Value::String(s) if col.data_type == "timestamp" => {
            // `YYYY-MM-DDTHH:MM:SS[.f]Z` in UTC; the session's time zone is UTC.
            SqlValue::Text(s.trim_end_matches('Z').replacen('T', " ", 1))
        }
        Value::String(s) => SqlValue::Text(s.clone()),
        other => SqlValue::Text(other.to_string()),
    })
}

/// Binds `v` to `q`.
pub fn bind<'q>(q: Query<'q, MySql, MySqlArguments>, v: SqlValue) -> Query<'q, MySql, MySqlArguments> {
    match v {
        SqlValue::Null => q.bind(None::<String>),
        SqlValue::Int(i) => q.bind(i),
        SqlValue::UInt(u) => q.bind(u),
        SqlValue::Double(d) => q.bind(d),
        SqlValue::Text(s) => q.bind(s),
        SqlValue::Bytes(b) => q.bind(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(t: &str) -> TargetColumn {
        TargetColumn { name: "c".into(), data_type: t.into(), generated: false, auto_increment: false }
    }

    #[test]
    fn values_convert_by_target_type() {
        assert_eq!(to_sql(&col("blob"), &json!("AP8=")).unwrap(), SqlValue::Bytes(vec![0, 255]));
        assert!(to_sql(&col("varbinary"), &json!("not base64!")).is_err());
        assert_eq!(to_sql(&col("timestamp"), &json!("2023-11-14T22:13:20.12Z")).unwrap(), SqlValue::Text("2023-11-14 22:13:20.12".into()));
        assert_eq!(to_sql(&col("bigint"), &json!(18446744073709551615u64)).unwrap(), SqlValue::UInt(u64::MAX));
        assert_eq!(to_sql(&col("bigint"), &json!(-5)).unwrap(), SqlValue::Int(-5));
        assert_eq!(to_sql(&col("varchar"), &json!("é")).unwrap(), SqlValue::Text("é".into()));
    }
}
