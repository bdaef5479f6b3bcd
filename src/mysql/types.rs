//! MySQL and MariaDB type names (`information_schema.COLUMNS.DATA_TYPE`, lower case): the one
//! place that knows which name belongs to which family, and which binlog type a name is logged as.

use mysql_common::constants::ColumnType;

/// What a record value of a column looks like, by the column's type (see `schemas/README.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeFamily {
    /// TINYINT … BIGINT: a JSON integer.
    Integer,
    /// YEAR: a JSON integer.
    Year,
    /// BIT: a JSON integer.
    Bit,
    /// DECIMAL: decimal text.
    Decimal,
    /// FLOAT, DOUBLE: a JSON number.
    Float,
    /// DATE, TIME, DATETIME: text without a zone.
    Temporal,
    /// TIMESTAMP: UTC text ending in `Z`.
    Timestamp,
    /// CHAR … LONGTEXT: text in the column's character set.
    Text,
    /// ENUM: a member (text).
    Enum,
    /// SET: members joined by commas (text).
    Set,
    /// JSON: JSON text.
    Json,
    /// BINARY … LONGBLOB, spatial types, MariaDB's UUID/INET4/INET6: base64 of the bytes.
    Binary,
    /// A name sitesync does not know: written as the text the server gives.
    Other,
}

impl TypeFamily {
    /// The family of `data_type`.
    pub fn of(data_type: &str) -> TypeFamily {
        match data_type {
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => TypeFamily::Integer,
            "year" => TypeFamily::Year,
            "bit" => TypeFamily::Bit,
            "decimal" | "numeric" => TypeFamily::Decimal,
            "float" | "double" | "real" => TypeFamily::Float,
            "date" | "time" | "datetime" => TypeFamily::Temporal,
            "timestamp" => TypeFamily::Timestamp,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => TypeFamily::Text,
            "enum" => TypeFamily::Enum,
            "set" => TypeFamily::Set,
            "json" => TypeFamily::Json,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry" | "point" | "linestring"
            | "polygon" | "multipoint" | "multilinestring" | "multipolygon" | "geometrycollection"
            // MariaDB's binary types: the binlog holds their native bytes, which they accept back.
            | "uuid" | "inet4" | "inet6" => TypeFamily::Binary,
            _ => TypeFamily::Other,
        }
    }

    /// Text in the column's character set (CHAR … LONGTEXT, ENUM, SET).
    pub fn is_text(self) -> bool {
        matches!(self, TypeFamily::Text | TypeFamily::Enum | TypeFamily::Set)
    }

    /// An integer the server compares as a number (TINYINT … BIGINT).
    pub fn is_integer(self) -> bool {
        self == TypeFamily::Integer
    }
}

/// The binlog type a column of `data_type` is logged as (what a table map would say).
pub fn binlog_type(data_type: &str) -> ColumnType {
    use ColumnType::*;
    match data_type {
        "tinyint" => MYSQL_TYPE_TINY,
        "smallint" => MYSQL_TYPE_SHORT,
        "mediumint" => MYSQL_TYPE_INT24,
        "int" | "integer" => MYSQL_TYPE_LONG,
        "bigint" => MYSQL_TYPE_LONGLONG,
        "decimal" | "numeric" => MYSQL_TYPE_NEWDECIMAL,
        "float" => MYSQL_TYPE_FLOAT,
        "double" | "real" => MYSQL_TYPE_DOUBLE,
        "bit" => MYSQL_TYPE_BIT,
        "date" => MYSQL_TYPE_NEWDATE,
        "datetime" => MYSQL_TYPE_DATETIME2,
        "timestamp" => MYSQL_TYPE_TIMESTAMP2,
        "time" => MYSQL_TYPE_TIME2,
        "year" => MYSQL_TYPE_YEAR,
        "char" | "binary" => MYSQL_TYPE_STRING,
        "varchar" | "varbinary" => MYSQL_TYPE_VARCHAR,
        "enum" => MYSQL_TYPE_ENUM,
        "set" => MYSQL_TYPE_SET,
        "json" => MYSQL_TYPE_JSON,
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon" | "geometrycollection" => {
            MYSQL_TYPE_GEOMETRY
        }
        _ => MYSQL_TYPE_BLOB,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_of_the_names_mysql_and_mariadb_use() {
        for (name, family) in [
            ("int", TypeFamily::Integer),
            ("bigint", TypeFamily::Integer),
            ("year", TypeFamily::Year),
            ("numeric", TypeFamily::Decimal),
            ("real", TypeFamily::Float),
            ("datetime", TypeFamily::Temporal),
            ("timestamp", TypeFamily::Timestamp),
            ("longtext", TypeFamily::Text),
            ("enum", TypeFamily::Enum),
            ("json", TypeFamily::Json),
            ("varbinary", TypeFamily::Binary),
            ("multipolygon", TypeFamily::Binary),
            ("uuid", TypeFamily::Binary),
            ("inet6", TypeFamily::Binary),
            ("vector", TypeFamily::Other),
        ] {
            assert_eq!(TypeFamily::of(name), family, "{name}");
        }
        assert!(TypeFamily::of("set").is_text() && !TypeFamily::of("blob").is_text());
        assert_eq!(binlog_type("mediumint"), ColumnType::MYSQL_TYPE_INT24);
        assert_eq!(binlog_type("mediumblob"), ColumnType::MYSQL_TYPE_BLOB);
    }
}
