//! What capture knows of a table from its binlog table map event: column names, types, type
//! metadata, signedness, character sets, ENUM/SET members and the primary key. Column names come
//! from the row metadata (`binlog_row_metadata=FULL`), never from the current schema, so events
//! written before a DDL decode with the columns they were written with.

use mysql_async::binlog::events::{OptionalMetaExtractor, OptionalMetadataField, TableMapEvent};
use mysql_async::consts::ColumnType;

/// One column as the binlog describes it.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    /// Name from the row metadata.
    pub name: String,
    /// Real type (ENUM/SET resolved from STRING).
    pub ctype: ColumnType,
    /// Type metadata bytes (precision, decimals, lengths).
    pub meta: Vec<u8>,
    /// UNSIGNED.
    pub unsigned: bool,
    /// Collation id of character, ENUM and SET columns; 63 is binary.
    pub charset: u16,
    /// ENUM or SET members, in definition order. From the binlog, each member is its bytes in
    /// the column's character set, one `char` per byte (U+0000..=U+00FF), because the table map
    /// does not say which character set that is: `decode::encode_value` decodes them with the
    /// column's encoding (see `decode::member_bytes`).
    pub members: Vec<String>,
}

/// A table map event reduced to what decoding needs.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Database name.
    pub db: String,
    /// Table name.
    pub table: String,
    /// Columns in table order.
    pub columns: Vec<ColumnInfo>,
    /// Indexes of primary-key columns.
    pub primary_key: Vec<usize>,
}

/// Why a table map event cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TableInfoError {
    /// Names are missing: the server does not write full row metadata.
    #[error("table {db}.{table}: the binlog carries no column names; set binlog_row_metadata=FULL on the server")]
    NoColumnNames {
        /// Database.
        db: String,
        /// Table.
        table: String,
    },
    /// The event's metadata did not parse.
    #[error("table {db}.{table}: unreadable table map: {reason}")]
    Unreadable {
        /// Database.
        db: String,
        /// Table.
        table: String,
        /// The parse error.
        reason: String,
    },
}

/// Bytes as a string of the chars U+0000..=U+00FF with the same numbers.
pub(crate) fn bytes_as_chars(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

impl TableInfo {
    /// Builds the description from a table map event.
    pub fn from_event(tme: &TableMapEvent<'_>) -> Result<Self, TableInfoError> {
        let db = tme.database_name().into_owned();
        let table = tme.table_name().into_owned();
        let unreadable = |reason: String| TableInfoError::Unreadable { db: db.clone(), table: table.clone(), reason };
        let extractor = OptionalMetaExtractor::new(tme.iter_optional_meta()).map_err(|e| unreadable(e.to_string()))?;

        // Members stay bytes (one char per byte): text in the column's character set, which
        // only the server's collation list names; decode::encode_value decodes them.
        let mut enum_members: Vec<Vec<String>> = Vec::new();
        let mut set_members: Vec<Vec<String>> = Vec::new();
        for field in tme.iter_optional_meta() {
            match field.map_err(|e| unreadable(e.to_string()))? {
                OptionalMetadataField::EnumStrValue(values) => {
                    for col in values.iter_values() {
                        let col = col.map_err(|e| unreadable(e.to_string()))?;
                        enum_members.push(col.values().iter().map(|v| bytes_as_chars(v.value_raw())).collect());
                    }
                }
                OptionalMetadataField::SetStrValue(values) => {
                    for col in values.iter_values() {
                        let col = col.map_err(|e| unreadable(e.to_string()))?;
                        set_members.push(col.values().iter().map(|v| bytes_as_chars(v.value_raw())).collect());
                    }
                }
                _ => {}
            }
        }

        let names: Vec<String> = extractor
            .iter_column_name()
            .map(|n| n.map(|n| n.name().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| unreadable(e.to_string()))?;
        let count = tme.columns_count() as usize;
        if names.len() != count {
            return Err(TableInfoError::NoColumnNames { db, table });
        }

        let mut signedness = extractor.iter_signedness();
        let mut charsets = extractor.iter_charset();
        let mut enum_set_charsets = extractor.iter_enum_and_set_charset();
        let (mut enums, mut sets) = (enum_members.into_iter(), set_members.into_iter());
        let mut columns = Vec::with_capacity(count);
        for (i, name) in names.into_iter().enumerate() {
            let ctype = tme
                .get_column_type(i)
                .map_err(|e| unreadable(e.to_string()))?
                .ok_or_else(|| unreadable(format!("no type for column {i}")))?;
            let meta = tme.get_column_metadata(i).unwrap_or(&[]).to_vec();
            let unsigned = ctype.is_numeric_type() && signedness.next().unwrap_or(false);
            // The server lists a character set for every string, BLOB and GEOMETRY column
            // ("base class is blob for geom type"); mysql_common's is_character_type leaves
            // GEOMETRY out, which would shift every later column's character set by one.
            let charset = if ctype.is_character_type() || ctype == ColumnType::MYSQL_TYPE_GEOMETRY {
                charsets.next().transpose().map_err(|e| unreadable(e.to_string()))?.unwrap_or(0)
            } else if ctype.is_enum_or_set_type() {
                enum_set_charsets.next().transpose().map_err(|e| unreadable(e.to_string()))?.unwrap_or(0)
            } else {
                0
            };
            let members = match ctype {
                ColumnType::MYSQL_TYPE_ENUM => enums.next().unwrap_or_default(),
                ColumnType::MYSQL_TYPE_SET => sets.next().unwrap_or_default(),
                _ => Vec::new(),
            };
            columns.push(ColumnInfo { name, ctype, meta, unsigned, charset, members });
        }
        let primary_key = extractor
            .iter_primary_key()
            .map(|i| i.map(|i| i as usize))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unreadable(e.to_string()))?;
        Ok(TableInfo { db, table, columns, primary_key })
    }

    /// Index of the column `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}
