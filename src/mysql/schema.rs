//! Tables as `information_schema` describes them: one model and one set of queries, read with
//! either driver (sqlx for apply and the start-up checks, mysql_async for capture), so that
//! capture and apply agree on what a table is.

use super::types::TypeFamily;

/// One column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSchema {
    /// Name.
    pub name: String,
    /// `DATA_TYPE`, lower case.
    pub data_type: String,
    /// `COLUMN_TYPE` as the server writes it (ENUM members keep their case).
    pub column_type: String,
    /// Generated (VIRTUAL, STORED or PERSISTENT): never written.
    pub generated: bool,
    /// `CHARACTER_SET_NAME` of a text, ENUM or SET column.
    pub charset: Option<String>,
    /// `COLLATION_NAME` of a text, ENUM or SET column.
    pub collation: Option<String>,
    /// `DATETIME_PRECISION` (fractional digits of TIME, DATETIME, TIMESTAMP).
    pub datetime_precision: u32,
}

impl ColumnSchema {
    /// The column's type family.
    pub fn family(&self) -> TypeFamily {
        TypeFamily::of(&self.data_type)
    }

    /// UNSIGNED.
    pub fn unsigned(&self) -> bool {
        self.column_type.to_ascii_lowercase().contains("unsigned")
    }

    /// ENUM or SET members in definition order (none for other types).
    pub fn members(&self) -> Vec<String> {
        if matches!(self.family(), TypeFamily::Enum | TypeFamily::Set) {
            parse_members(&self.column_type)
        } else {
            Vec::new()
        }
    }
}

/// One table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    /// Database.
    pub db: String,
    /// Table.
    pub table: String,
    /// Columns in table order.
    pub columns: Vec<ColumnSchema>,
    /// Primary-key column names in key order.
    pub primary_key: Vec<String>,
    /// The columns of each unique index besides the primary key.
    pub unique_keys: Vec<Vec<String>>,
}

impl TableSchema {
    /// The column `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnSchema> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Column names in table order.
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }
}

const COLUMNS: &str = "SELECT COLUMN_NAME, LOWER(DATA_TYPE), COLUMN_TYPE, EXTRA, CHARACTER_SET_NAME, COLLATION_NAME, \
                       CAST(IFNULL(DATETIME_PRECISION, 0) AS UNSIGNED) \
                       FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION";
const PRIMARY_KEY: &str = "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                           WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION";
const UNIQUE_KEYS: &str = "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                           WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 AND INDEX_NAME <> 'PRIMARY' \
                           ORDER BY INDEX_NAME, SEQ_IN_INDEX";

/// A row of [`COLUMNS`].
type ColumnRow = (String, String, String, String, Option<String>, Option<String>, u64);

fn assemble(
    db: &str,
    table: &str,
    columns: Vec<ColumnRow>,
    primary_key: Vec<String>,
    unique: Vec<(String, String)>,
) -> Option<TableSchema> {
    if columns.is_empty() {
        return None;
    }
    let columns = columns
        .into_iter()
        .map(|(name, data_type, column_type, extra, charset, collation, precision)| {
            let extra = extra.to_ascii_uppercase();
            ColumnSchema {
                name,
                data_type,
                column_type,
                generated: extra.contains("GENERATED") || extra.contains("VIRTUAL") || extra.contains("PERSISTENT"),
                charset,
                collation,
                datetime_precision: precision as u32,
            }
        })
        .collect();
    let mut unique_keys: Vec<(String, Vec<String>)> = Vec::new();
    for (index, column) in unique {
        match unique_keys.last_mut() {
            Some((name, columns)) if *name == index => columns.push(column),
            _ => unique_keys.push((index, vec![column])),
        }
    }
    Some(TableSchema {
        db: db.to_string(),
        table: table.to_string(),
        columns,
        primary_key,
        unique_keys: unique_keys.into_iter().map(|(_, c)| c).collect(),
    })
}

/// `db`.`table` through sqlx; `None` when the table does not exist.
pub async fn load_sqlx(pool: &sqlx::MySqlPool, db: &str, table: &str) -> Result<Option<TableSchema>, sqlx::Error> {
    let columns: Vec<ColumnRow> = sqlx::query_as(COLUMNS).bind(db).bind(table).fetch_all(pool).await?;
    if columns.is_empty() {
        return Ok(None);
    }
    let primary_key: Vec<(String,)> = sqlx::query_as(PRIMARY_KEY).bind(db).bind(table).fetch_all(pool).await?;
    let unique: Vec<(String, String)> = sqlx::query_as(UNIQUE_KEYS).bind(db).bind(table).fetch_all(pool).await?;
    Ok(assemble(db, table, columns, primary_key.into_iter().map(|(c,)| c).collect(), unique))
}

/// `db`.`table` through mysql_async; `None` when the table does not exist.
pub async fn load_mysql(conn: &mut mysql_async::Conn, db: &str, table: &str) -> Result<Option<TableSchema>, mysql_async::Error> {
    use mysql_async::prelude::Queryable;
    let columns: Vec<ColumnRow> = conn.exec(COLUMNS, (db, table)).await?;
    if columns.is_empty() {
        return Ok(None);
    }
    let primary_key: Vec<String> = conn.exec(PRIMARY_KEY, (db, table)).await?;
    let unique: Vec<(String, String)> = conn.exec(UNIQUE_KEYS, (db, table)).await?;
    Ok(assemble(db, table, columns, primary_key, unique))
}

/// `enum('a','b''c')` -> ["a", "b'c"] (members as `COLUMN_TYPE` quotes them).
pub fn parse_members(column_type: &str) -> Vec<String> {
    let Some(start) = column_type.find('(') else { return Vec::new() };
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = column_type[start + 1..].chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('\'', false) => quoted = true,
            ('\'', true) if chars.peek() == Some(&'\'') => {
                current.push('\'');
                chars.next();
            }
            ('\'', true) => {
                quoted = false;
                out.push(std::mem::take(&mut current));
            }
            (c, true) => current.push(c),
            (')', false) => break,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_one_table_with_its_keys() {
        let row = |name: &str, data_type: &str, column_type: &str, extra: &str| -> ColumnRow {
            (name.into(), data_type.into(), column_type.into(), extra.into(), None, None, 0)
        };
        let t = assemble(
            "d",
            "t",
            vec![
                row("id", "int", "int(10) unsigned", "auto_increment"),
                row("kind", "enum", "enum('A','b''c')", ""),
                row("g", "int", "int(11)", "VIRTUAL GENERATED"),
            ],
            vec!["id".into()],
            vec![("u1".into(), "kind".into()), ("u1".into(), "g".into()), ("u2".into(), "g".into())],
        )
        .unwrap();
        assert_eq!(t.column_names(), ["id", "kind", "g"]);
        assert!(t.columns[0].unsigned() && !t.columns[0].generated);
        assert_eq!(t.column("kind").unwrap().members(), ["A", "b'c"]);
        assert!(t.column("g").unwrap().generated);
        assert_eq!(t.unique_keys, vec![vec!["kind".to_string(), "g".to_string()], vec!["g".to_string()]]);
        assert!(assemble("d", "missing", vec![], vec![], vec![]).is_none());
    }
}
