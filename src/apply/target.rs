//! The target tables as the local server describes them, and the SQL that writes one change.
//! Column names that arrive in records are used only after they are found here, so nothing
//! read off the wire reaches SQL unchecked.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::Value;
use sqlx::mysql::MySqlArguments;
use sqlx::query::Query;
use sqlx::MySql;

use super::ApplyError;
use crate::mysql::charset::TextEncoding;
use crate::mysql::schema::{self, TableSchema};
use crate::mysql::types::TypeFamily;

/// One column of a target table.
#[derive(Debug, Clone)]
pub struct TargetColumn {
    /// Name.
    pub name: String,
    /// `DATA_TYPE` (lower case): decides how a record value is bound.
    pub data_type: String,
    /// Generated (never written).
    pub generated: bool,
    /// `CHARACTER_SET_NAME` of a text, ENUM or SET column: decides how text is written.
    pub charset: Option<String>,
    /// ENUM or SET members, in definition order (from `COLUMN_TYPE`).
    pub members: Vec<String>,
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
    /// Unique indexes besides the primary key: an upsert could then hit another row.
    pub other_unique_keys: bool,
    /// The columns of each unique index besides the primary key.
    pub unique_keys: Vec<Vec<String>>,
}

impl TargetTable {
    /// Reads the table's description from `information_schema` (see [`crate::mysql::schema`]).
    pub async fn load(pool: &sqlx::MySqlPool, db: &str, table: &str) -> Result<Self, ApplyError> {
        let schema = schema::load_sqlx(pool, db, table)
            .await
            .map_err(ApplyError::Database)?
            .ok_or_else(|| ApplyError::Schema(format!("table {db}.{table} does not exist at this site")))?;
        Ok(Self::from_schema(schema))
    }

    /// The target table of a described table.
    pub fn from_schema(schema: TableSchema) -> Self {
        let columns = schema
            .columns
            .iter()
            .map(|c| {
                let column = TargetColumn {
                    name: c.name.clone(),
                    data_type: c.data_type.clone(),
                    generated: c.generated,
                    charset: c.charset.clone(),
                    members: c.members(),
                };
                (c.name.clone(), column)
            })
            .collect();
        TargetTable {
            db: schema.db,
            table: schema.table,
            columns,
            primary_key: schema.primary_key,
            other_unique_keys: !schema.unique_keys.is_empty(),
            unique_keys: schema.unique_keys,
        }
    }

    /// The column `name`; else a column this site lacks (a schema change to wait for) or, for a
    /// name no MySQL column can have (empty, longer than 64 characters, a NUL, a character
    /// beyond the Basic Multilingual Plane, a trailing space), a definite error: no schema
    /// change will bring it.
    pub fn column(&self, name: &str) -> Result<&TargetColumn, ApplyError> {
        if let Some(column) = self.columns.get(name) {
            return Ok(column);
        }
        let shown = crate::record::shown(name);
        if !crate::mysql::ident::is_identifier(name) {
            return Err(ApplyError::Definite(format!(
                "column `{shown}` of the record cannot be a MySQL column name ({} characters; 1 to 64, no NUL, no trailing space)",
                name.chars().count()
            )));
        }
        Err(ApplyError::MissingColumn {
            column: Some(name.to_string()),
            message: format!("column `{shown}` does not exist in {}.{} at this site", self.db, self.table),
        })
    }

    /// `` `db`.`table` ``.
    pub fn qualified(&self) -> String {
        crate::mysql::qualified(&self.db, &self.table)
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

/// Types whose record values are base64 of their bytes.
fn is_binary_type(data_type: &str) -> bool {
    TypeFamily::of(data_type) == TypeFamily::Binary
}

/// Types whose record values are text in the column's character set.
fn is_text_type(data_type: &str) -> bool {
    TypeFamily::of(data_type).is_text()
}

/// Converts a record value for the target column: the inverse of capture's encoding
/// (`schemas/README.md`).
///
/// Text goes to the server as utf8mb4, which converts it to the column's character set, except
/// in gbk columns: gbk text is encoded here, with the same one-to-one table capture decoded it
/// with, and written as bytes, because the server has no conversion for 2,149 gbk characters.
///
/// The ENUM error value (index 0: `""` where the ENUM has no empty member, else the integer 0)
/// becomes the integer 0, which the server stores as index 0 only outside strict mode: the
/// statement that writes it must relax `sql_mode` (see [`needs_lenient_mode`]).
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
        Value::String(s) if is_binary_type(&col.data_type) => {
            SqlValue::Bytes(base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| bad("binary value is not base64"))?)
        }
        Value::String(s) if col.data_type == "timestamp" => {
            // `YYYY-MM-DDTHH:MM:SS[.f]Z` in UTC; the session's time zone is UTC.
            SqlValue::Text(s.trim_end_matches('Z').replacen('T', " ", 1))
        }
        Value::String(s) if col.data_type == "enum" && s.is_empty() && !col.members.iter().any(String::is_empty) => SqlValue::Int(0),
        Value::String(s) if is_text_type(&col.data_type) => match TextEncoding::of_charset(col.charset.as_deref().unwrap_or("")) {
            TextEncoding::Gbk => SqlValue::Bytes(TextEncoding::Gbk.encode(s).map_err(|e| bad(&e))?),
            TextEncoding::Binary => SqlValue::Bytes(TextEncoding::Binary.encode(s).map_err(|e| bad(&e))?),
            _ => SqlValue::Text(s.clone()),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        other => SqlValue::Text(other.to_string()),
    })
}

/// Whether writing `v` into `col` needs a statement without strict mode: only ENUM's error
/// value (index 0), which strict mode refuses (`SET STATEMENT sql_mode = ... FOR` on MariaDB,
/// the `SET_VAR(sql_mode = ...)` hint on MySQL).
pub fn needs_lenient_mode(col: &TargetColumn, v: &SqlValue) -> bool {
    col.data_type == "enum" && matches!(v, SqlValue::Int(0) | SqlValue::UInt(0))
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

/// `values` as the arguments of a statement (for queries built with `query_*_with`).
pub fn arguments(values: impl IntoIterator<Item = SqlValue>) -> Result<MySqlArguments, ApplyError> {
    use sqlx::Arguments as _;
    let mut args = MySqlArguments::default();
    for v in values {
        let added = match v {
            SqlValue::Null => args.add(None::<String>),
            SqlValue::Int(i) => args.add(i),
            SqlValue::UInt(u) => args.add(u),
            SqlValue::Double(d) => args.add(d),
            SqlValue::Text(s) => args.add(s),
            SqlValue::Bytes(b) => args.add(b),
        };
        added.map_err(|e| ApplyError::Definite(format!("value cannot be sent: {e}")))?;
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::schema::parse_members;
    use serde_json::json;

    fn col(t: &str) -> TargetColumn {
        TargetColumn { name: "c".into(), data_type: t.into(), generated: false, charset: None, members: vec![] }
    }

    fn text_col(t: &str, charset: &str, column_type: &str) -> TargetColumn {
        TargetColumn { charset: Some(charset.into()), members: parse_members(column_type), ..col(t) }
    }

    #[test]
    fn text_is_written_in_the_column_character_set() {
        // gbk: the bytes of capture's table, including a character MySQL cannot convert.
        assert_eq!(
            to_sql(&text_col("varchar", "gbk", "varchar(10)"), &json!("中\u{E4C6}a")).unwrap(),
            SqlValue::Bytes(vec![0xD6, 0xD0, 0xA1, 0x40, b'a'])
        );
        assert!(to_sql(&text_col("varchar", "gbk", "varchar(10)"), &json!("😀")).is_err(), "no gbk for it: refused");
        assert_eq!(to_sql(&text_col("varchar", "latin1", "varchar(10)"), &json!("é")).unwrap(), SqlValue::Text("é".into()));
        assert_eq!(to_sql(&text_col("enum", "gbk", "enum('甲','乙')"), &json!("乙")).unwrap(), SqlValue::Bytes(vec![0xD2, 0xD2]));
    }

    #[test]
    fn enum_error_value_is_index_zero() {
        let plain = text_col("enum", "utf8mb4", "enum('a','b''c')");
        assert_eq!(plain.members, vec!["a", "b'c"]);
        assert_eq!(to_sql(&plain, &json!("")).unwrap(), SqlValue::Int(0));
        assert!(needs_lenient_mode(&plain, &SqlValue::Int(0)));
        let with_empty = text_col("enum", "utf8mb4", "enum('','x')");
        assert_eq!(to_sql(&with_empty, &json!("")).unwrap(), SqlValue::Text(String::new()));
        assert_eq!(to_sql(&with_empty, &json!(0)).unwrap(), SqlValue::UInt(0));
        assert!(!needs_lenient_mode(&with_empty, &SqlValue::Text(String::new())));
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

    #[test]
    fn enum_members_parse_with_quotes_and_commas() {
        assert_eq!(parse_members("enum('a','b,c','it''s')"), vec!["a", "b,c", "it's"]);
        assert_eq!(parse_members("set('x')"), vec!["x"]);
    }
}
