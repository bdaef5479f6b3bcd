//! The export stream: every change of an exported table as Debezium's MySQL connector would
//! write it with Kafka Connect's JsonConverter (`schemas.enable=true`), so that stock Connect
//! sinks (Debezium's JDBC sink, FileStreamSink, ...) read it. One topic per table,
//! `<topic_prefix>.export.<site>.<db>.<table>`; the key is the primary key as a Connect struct;
//! a delete is followed by a tombstone, and a primary-key change is a delete, a tombstone and a
//! create. Types are mapped as Debezium maps them (schemas/export.md). The replication topics
//! keep their own compact form: nothing here is read by sitesync itself. The records are
//! written by the export stream, a reader of its own (`Role::Export` in `capture`), so that
//! their cost never slows replication.

use std::fmt::Write as _;

use base64::Engine as _;
use mysql_async::consts::ColumnType;
use serde_json::{Map, Value};

use super::envelope::Image;
use super::table::TableInfo;
use crate::record::Op;

/// Where a change was read, for the envelope's `source` block.
pub(super) struct SourceInfo<'a> {
    pub(super) server_id: u32,
    pub(super) gtid: Option<&'a str>,
    pub(super) file: &'a str,
    pub(super) pos: u64,
    pub(super) row: u32,
    pub(super) ts_ms: i64,
    /// Read by a snapshot (`sitesync snapshot --export`), not from the binlog.
    pub(super) snapshot: bool,
}

/// One record for the export topic; `value` None is a tombstone.
pub(super) struct ExportRecord {
    pub(super) key: Vec<u8>,
    pub(super) value: Option<Vec<u8>>,
}

/// How a column's sitesync value becomes its Connect value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Conv {
    /// Numbers, strings, base64 bytes: the same JSON.
    Same,
    /// `org.apache.kafka.connect.data.Decimal`: base64 of the unscaled two's complement.
    Decimal { scale: u32 },
    /// `io.debezium.time.Date`: days since 1970-01-01.
    Date,
    /// `io.debezium.time.Timestamp` (ms) or `MicroTimestamp` (µs) of the wall-clock value.
    Timestamp { micros: bool },
    /// `io.debezium.time.ZonedTimestamp`: ISO-8601 text in UTC.
    Zoned,
    /// `io.debezium.time.MicroTime`: signed µs.
    MicroTime,
    /// BIT(1): boolean.
    Bool,
    /// BIT(n): `io.debezium.data.Bits`, little-endian bytes.
    Bits { bytes: usize },
}

struct Field {
    index: usize,
    /// `,"<name>":`, JSON-escaped.
    name_json: Vec<u8>,
    conv: Conv,
    schema: Value,
}

/// One table's export, rendered once per table shape (kept on the capture's entity table).
pub(super) struct Prepared {
    /// `{"schema":<key schema>,"payload":{`
    key_prefix: Vec<u8>,
    /// `{"schema":<value schema>,"payload":{"before":`
    value_prefix: Vec<u8>,
    /// `"db":"...","table":"..."`
    db_table_json: String,
    fields: Vec<Field>,
    key_fields: Vec<usize>,
}

/// Builds export records; remembers each table's schema.
pub(super) struct Exporter {
    name: String,
}

impl Exporter {
    /// For the export topics whose Debezium `topic.prefix` (the envelope's `source.name`) is `name`.
    pub(super) fn new(name: String) -> Self {
        Self { name }
    }

    /// The records of one change of `entity` (already filtered: rows that do not match never
    /// leave the site) for `topic`.
    pub(super) fn records(
        &mut self,
        p: &Prepared,
        op: Op,
        before: Option<&Image>,
        after: Option<&Image>,
        source: &SourceInfo<'_>,
    ) -> Vec<ExportRecord> {
        let mut out = Vec::with_capacity(3);
        // Written straight into the record's bytes from pieces rendered once per table: the
        // schema is most of every record, and building JSON trees per row cost capture 4x.
        let key_of = |image: &Image| -> Vec<u8> {
            let mut b = Vec::with_capacity(p.key_prefix.len() + 64);
            b.extend_from_slice(&p.key_prefix);
            for (n, &i) in p.key_fields.iter().enumerate() {
                let f = &p.fields[i];
                b.extend_from_slice(if n == 0 { &f.name_json[1..] } else { &f.name_json });
                write_value(&mut b, f.conv, value_at(image, f.index));
            }
            b.extend_from_slice(b"}}");
            b
        };
        let row = |b: &mut Vec<u8>, image: Option<&Image>| match image {
            None => b.extend_from_slice(b"null"),
            Some(image) => {
                b.push(b'{');
                for (n, f) in p.fields.iter().enumerate() {
                    b.extend_from_slice(if n == 0 { &f.name_json[1..] } else { &f.name_json });
                    write_value(b, f.conv, value_at(image, f.index));
                }
                b.push(b'}');
            }
        };
        let name = &self.name;
        let envelope = |op: &str, before: Option<&Image>, after: Option<&Image>| -> Vec<u8> {
            let mut b = Vec::with_capacity(p.value_prefix.len() + 512);
            b.extend_from_slice(&p.value_prefix);
            row(&mut b, before);
            b.extend_from_slice(b",\"after\":");
            row(&mut b, after);
            let _ = write!(
                Bytes(&mut b),
                ",\"source\":{{\"version\":\"{}\",\"connector\":\"sitesync\",\"name\":{},\"ts_ms\":{},\"snapshot\":\"{}\",{},\"server_id\":{},\"gtid\":{},\"file\":{},\"pos\":{},\"row\":{}}},\"op\":\"{op}\",\"ts_ms\":{}}}}}",
                env!("CARGO_PKG_VERSION"),
                Value::from(name.as_str()),
                source.ts_ms,
                source.snapshot,
                p.db_table_json,
                source.server_id,
                source.gtid.map(Value::from).unwrap_or(Value::Null),
                Value::from(source.file),
                source.pos,
                source.row,
                crate::record::now_ms(),
            );
            b
        };
        let record = |image: &Image, value: Option<Vec<u8>>| ExportRecord { key: key_of(image), value };
        match (op, before, after) {
            (Op::Create | Op::Read, _, Some(a)) => {
                out.push(record(a, Some(envelope(if op == Op::Read { "r" } else { "c" }, None, Some(a)))))
            }
            (Op::Delete, Some(b), _) => {
                out.push(record(b, Some(envelope("d", Some(b), None))));
                out.push(record(b, None));
            }
            (Op::Update, Some(b), Some(a)) => {
                let (old, new) = (key_of(b), key_of(a));
                if old == new {
                    out.push(ExportRecord { key: new, value: Some(envelope("u", Some(b), Some(a))) });
                } else {
                    // As Debezium: the old key is deleted (and tombstoned), the new one created.
                    out.push(ExportRecord { key: old.clone(), value: Some(envelope("d", Some(b), None)) });
                    out.push(ExportRecord { key: old, value: None });
                    out.push(ExportRecord { key: new, value: Some(envelope("c", None, Some(a))) });
                }
            }
            _ => {}
        }
        out
    }
}

/// `write!` into a byte buffer.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// One value as its Connect JSON, without building a tree for the values that stay as they are.
fn write_value(b: &mut Vec<u8>, conv: Conv, v: &Value) {
    let written = match conv {
        Conv::Same => serde_json::to_writer(&mut *b, v),
        _ => serde_json::to_writer(&mut *b, &convert(conv, v)),
    };
    if written.is_err() {
        b.extend_from_slice(b"null");
    }
}

fn value_at(image: &Image, index: usize) -> &Value {
    image.0.get(index).and_then(Option::as_ref).unwrap_or(&Value::Null)
}

/// The export of a table described by `info`, whose columns `included` says leave the site
/// (excluded ones never do) and whose natural key is `natural_key` (the record key of a table
/// without a primary key), for `topic`.
pub(super) fn prepare(info: &TableInfo, included: &[bool], natural_key: &[usize], topic: &str) -> Prepared {
    let mut fields = Vec::new();
    for (index, (col, included)) in info.columns.iter().zip(included).enumerate() {
        if !included {
            continue; // excluded: never leaves the site
        }
        let (conv, mut schema) = connect_type(col);
        schema.insert("optional".into(), true.into());
        schema.insert("field".into(), col.name.clone().into());
        let name_json = format!(",{}:", Value::from(col.name.as_str())).into_bytes();
        fields.push(Field { index, name_json, conv, schema: Value::Object(schema) });
    }
    // The primary key, as Debezium; a table without one is keyed by the entity's natural key.
    let key_columns: Vec<usize> = if info.primary_key.is_empty() { natural_key.to_vec() } else { info.primary_key.clone() };
    let key_fields: Vec<usize> = key_columns.iter().filter_map(|c| fields.iter().position(|f| f.index == *c)).collect();
    let key_schema = serde_json::json!({
        "type": "struct",
        "name": format!("{topic}.Key"),
        "optional": false,
        "fields": key_fields.iter().map(|&i| {
            let mut f = fields[i].schema.clone();
            f["optional"] = false.into();
            f
        }).collect::<Vec<_>>(),
    });
    let row_schema = |field: &str| {
        serde_json::json!({
            "type": "struct",
            "name": format!("{topic}.Value"),
            "optional": true,
            "field": field,
            "fields": fields.iter().map(|f| f.schema.clone()).collect::<Vec<_>>(),
        })
    };
    let s = |field: &str, t: &str, optional: bool| serde_json::json!({"type": t, "optional": optional, "field": field});
    let source = serde_json::json!({
        "type": "struct",
        "name": "io.debezium.connector.mysql.Source",
        "optional": false,
        "field": "source",
        "fields": [
            s("version", "string", false), s("connector", "string", false), s("name", "string", false),
            s("ts_ms", "int64", false), s("snapshot", "string", true), s("db", "string", false),
            s("table", "string", true), s("server_id", "int64", false), s("gtid", "string", true),
            s("file", "string", false), s("pos", "int64", false), s("row", "int32", false),
        ],
    });
    let value_schema = serde_json::json!({
        "type": "struct",
        "name": format!("{topic}.Envelope"),
        "optional": false,
        "fields": [row_schema("before"), row_schema("after"), source, s("op", "string", false), s("ts_ms", "int64", true)],
    });
    Prepared {
        key_prefix: format!("{{\"schema\":{key_schema},\"payload\":{{").into_bytes(),
        value_prefix: format!("{{\"schema\":{value_schema},\"payload\":{{\"before\":").into_bytes(),
        db_table_json: format!("\"db\":{},\"table\":{}", Value::from(info.db.as_str()), Value::from(info.table.as_str())),
        fields,
        key_fields,
    }
}

/// Debezium's Connect type of a column (its MySQL connector's defaults: decimal.handling.mode
/// precise, time.precision.mode adaptive_time_microseconds, bigint.unsigned.handling.mode precise).
fn connect_type(col: &super::table::ColumnInfo) -> (Conv, Map<String, Value>) {
    use ColumnType as T;
    let mut m = Map::new();
    let mut set = |t: &str, name: Option<&str>| {
        m.insert("type".into(), t.into());
        if let Some(n) = name {
            m.insert("name".into(), n.into());
        }
    };
    let binary = col.charset == 63;
    let conv = match col.ctype {
        T::MYSQL_TYPE_TINY | T::MYSQL_TYPE_SHORT => {
            set(if col.ctype == T::MYSQL_TYPE_SHORT && col.unsigned { "int32" } else { "int16" }, None);
            Conv::Same
        }
        T::MYSQL_TYPE_INT24 => {
            set("int32", None);
            Conv::Same
        }
        T::MYSQL_TYPE_LONG => {
            set(if col.unsigned { "int64" } else { "int32" }, None);
            Conv::Same
        }
        T::MYSQL_TYPE_LONGLONG if col.unsigned => {
            set("bytes", Some("org.apache.kafka.connect.data.Decimal"));
            m.insert("version".into(), 1.into());
            m.insert("parameters".into(), serde_json::json!({"scale": "0", "connect.decimal.precision": "20"}));
            Conv::Decimal { scale: 0 }
        }
        T::MYSQL_TYPE_LONGLONG => {
            set("int64", None);
            Conv::Same
        }
        T::MYSQL_TYPE_NEWDECIMAL | T::MYSQL_TYPE_DECIMAL => {
            let precision = col.meta.first().copied().unwrap_or(10);
            let scale = col.meta.get(1).copied().unwrap_or(0) as u32;
            set("bytes", Some("org.apache.kafka.connect.data.Decimal"));
            m.insert("version".into(), 1.into());
            m.insert(
                "parameters".into(),
                serde_json::json!({"scale": scale.to_string(), "connect.decimal.precision": precision.to_string()}),
            );
            Conv::Decimal { scale }
        }
        T::MYSQL_TYPE_FLOAT => {
            set("float", None); // Connect FLOAT32 in the JsonConverter's names
            Conv::Same
        }
        T::MYSQL_TYPE_DOUBLE => {
            set("double", None); // FLOAT64
            Conv::Same
        }
        T::MYSQL_TYPE_BIT => {
            let bits = col.meta.get(1).copied().unwrap_or(0) as usize * 8 + col.meta.first().copied().unwrap_or(0) as usize;
            if bits <= 1 {
                set("boolean", None);
                Conv::Bool
            } else {
                set("bytes", Some("io.debezium.data.Bits"));
                m.insert("version".into(), 1.into());
                m.insert("parameters".into(), serde_json::json!({"length": bits.to_string()}));
                Conv::Bits { bytes: bits.div_ceil(8) }
            }
        }
        T::MYSQL_TYPE_YEAR => {
            set("int32", Some("io.debezium.time.Year"));
            m.insert("version".into(), 1.into());
            Conv::Same
        }
        T::MYSQL_TYPE_DATE | T::MYSQL_TYPE_NEWDATE => {
            set("int32", Some("io.debezium.time.Date"));
            m.insert("version".into(), 1.into());
            Conv::Date
        }
        T::MYSQL_TYPE_DATETIME | T::MYSQL_TYPE_DATETIME2 => {
            let fsp = if col.ctype == T::MYSQL_TYPE_DATETIME2 { col.meta.first().copied().unwrap_or(0) } else { 0 };
            let micros = fsp > 3;
            set("int64", Some(if micros { "io.debezium.time.MicroTimestamp" } else { "io.debezium.time.Timestamp" }));
            m.insert("version".into(), 1.into());
            Conv::Timestamp { micros }
        }
        T::MYSQL_TYPE_TIMESTAMP | T::MYSQL_TYPE_TIMESTAMP2 => {
            set("string", Some("io.debezium.time.ZonedTimestamp"));
            m.insert("version".into(), 1.into());
            Conv::Zoned
        }
        T::MYSQL_TYPE_TIME | T::MYSQL_TYPE_TIME2 => {
            set("int64", Some("io.debezium.time.MicroTime"));
            m.insert("version".into(), 1.into());
            Conv::MicroTime
        }
        T::MYSQL_TYPE_ENUM => {
            set("string", Some("io.debezium.data.Enum"));
            m.insert("version".into(), 1.into());
            Conv::Same
        }
        T::MYSQL_TYPE_SET => {
            set("string", Some("io.debezium.data.EnumSet"));
            m.insert("version".into(), 1.into());
            Conv::Same
        }
        T::MYSQL_TYPE_JSON => {
            set("string", Some("io.debezium.data.Json"));
            m.insert("version".into(), 1.into());
            Conv::Same
        }
        T::MYSQL_TYPE_GEOMETRY => {
            // MySQL's internal bytes (SRID + WKB), base64, as in the replication topics.
            set("bytes", None);
            Conv::Same
        }
        T::MYSQL_TYPE_VARCHAR
        | T::MYSQL_TYPE_VAR_STRING
        | T::MYSQL_TYPE_STRING
        | T::MYSQL_TYPE_BLOB
        | T::MYSQL_TYPE_TINY_BLOB
        | T::MYSQL_TYPE_MEDIUM_BLOB
        | T::MYSQL_TYPE_LONG_BLOB => {
            set(if binary { "bytes" } else { "string" }, None);
            Conv::Same
        }
        _ => {
            set("string", None);
            Conv::Same
        }
    };
    (conv, m)
}

/// A sitesync value (schemas/README.md) as the Connect value of `conv`.
fn convert(conv: Conv, v: &Value) -> Value {
    if v.is_null() {
        return Value::Null;
    }
    let text = || v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    match conv {
        Conv::Same => v.clone(),
        Conv::Decimal { scale } => {
            decimal_bytes(&text(), scale).map(|b| base64::engine::general_purpose::STANDARD.encode(b).into()).unwrap_or(Value::Null)
        }
        Conv::Date => v.as_str().and_then(days_of).map(Value::from).unwrap_or(Value::Null),
        Conv::Timestamp { micros } => v
            .as_str()
            .and_then(micros_of_datetime)
            .map(|us| if micros { us } else { us.div_euclid(1000) })
            .map(Value::from)
            .unwrap_or(Value::Null),
        Conv::Zoned => match v.as_str() {
            Some(s) if s.starts_with("0000-00-00") => Value::Null,
            _ => v.clone(),
        },
        Conv::MicroTime => v.as_str().and_then(micros_of_time).map(Value::from).unwrap_or(Value::Null),
        Conv::Bool => Value::Bool(v.as_u64().unwrap_or(0) != 0),
        Conv::Bits { bytes } => {
            let n = v.as_u64().unwrap_or(0);
            base64::engine::general_purpose::STANDARD.encode(&n.to_le_bytes()[..bytes.min(8)]).into()
        }
    }
}

/// Days from 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` as days since the epoch; zero dates and zero parts have none (null, as Debezium).
fn days_of(s: &str) -> Option<i64> {
    let mut it = s.get(..10)?.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (it.next()??, it.next()??, it.next()??);
    (m > 0 && d > 0).then(|| days_from_civil(y, m, d))
}

/// The fraction after `.` as microseconds (up to 6 digits).
fn fraction_micros(frac: &str) -> Option<i64> {
    if frac.is_empty() {
        return Some(0);
    }
    let digits: String = frac.chars().take(6).collect();
    let n: i64 = digits.parse().ok()?;
    Some(n * 10_i64.pow(6 - digits.len() as u32))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` as µs since the epoch of that wall-clock time read as UTC.
fn micros_of_datetime(s: &str) -> Option<i64> {
    let days = days_of(s)?;
    let time = s.get(11..)?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut it = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, se) = (it.next()??, it.next()??, it.next()??);
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) * 1_000_000) + fraction_micros(frac)?)
}

/// `[-]HHH:MM:SS[.ffffff]` as signed µs.
fn micros_of_time(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (hms, frac) = body.split_once('.').unwrap_or((body, ""));
    let mut it = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, se) = (it.next()??, it.next()??, it.next()??);
    let us = (h * 3600 + mi * 60 + se) * 1_000_000 + fraction_micros(frac)?;
    Some(if neg { -us } else { us })
}

/// The exact decimal text `-12.50` (or an integer) at `scale` as the big-endian two's complement
/// of its unscaled value, shortest form (Java's `BigInteger.toByteArray`, which Connect reads).
fn decimal_bytes(text: &str, scale: u32) -> Option<Vec<u8>> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let mut digits: String = int.to_string();
    let mut frac: String = frac.to_string();
    while (frac.len() as u32) < scale {
        frac.push('0');
    }
    frac.truncate(scale as usize);
    digits.push_str(&frac);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Magnitude in base 256, big-endian.
    let mut mag: Vec<u8> = vec![0];
    for d in digits.bytes().map(|b| (b - b'0') as u32) {
        let mut carry = d;
        for byte in mag.iter_mut().rev() {
            let x = *byte as u32 * 10 + carry;
            *byte = (x & 0xFF) as u8;
            carry = x >> 8;
        }
        while carry > 0 {
            mag.insert(0, (carry & 0xFF) as u8);
            carry >>= 8;
        }
    }
    let is_zero = mag.iter().all(|&b| b == 0);
    let mut out = mag;
    out.insert(0, 0); // room for the sign bit
    if neg && !is_zero {
        for b in out.iter_mut() {
            *b = !*b;
        }
        for b in out.iter_mut().rev() {
            let (v, overflow) = b.overflowing_add(1);
            *b = v;
            if !overflow {
                break;
            }
        }
    }
    // Shortest: drop a leading byte that only repeats the sign of the next.
    while out.len() > 1 && ((out[0] == 0 && out[1] & 0x80 == 0) || (out[0] == 0xFF && out[1] & 0x80 != 0)) {
        out.remove(0);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_javas_big_integer_bytes() {
        assert_eq!(decimal_bytes("0", 0).unwrap(), vec![0]);
        assert_eq!(decimal_bytes("127", 0).unwrap(), vec![0x7F]);
        assert_eq!(decimal_bytes("128", 0).unwrap(), vec![0x00, 0x80]);
        assert_eq!(decimal_bytes("-1", 0).unwrap(), vec![0xFF]);
        assert_eq!(decimal_bytes("-128", 0).unwrap(), vec![0x80]);
        assert_eq!(decimal_bytes("-129", 0).unwrap(), vec![0xFF, 0x7F]);
        assert_eq!(decimal_bytes("-12.50", 2).unwrap(), (-1250i16).to_be_bytes().to_vec());
        assert_eq!(decimal_bytes("1.5", 3).unwrap(), 1500i16.to_be_bytes().to_vec());
        assert_eq!(decimal_bytes("18446744073709551615", 0).unwrap(), vec![0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        let big = "9".repeat(65);
        assert_eq!(decimal_bytes(&big, 0).unwrap().len(), 28, "216 bits and a sign bit");
    }

    #[test]
    fn times_are_debeziums_numbers() {
        assert_eq!(days_of("1970-01-01"), Some(0));
        assert_eq!(days_of("2024-02-29"), Some(19782));
        assert_eq!(days_of("1969-12-31"), Some(-1));
        assert_eq!(days_of("0000-00-00"), None);
        assert_eq!(micros_of_datetime("1970-01-01 00:00:01.5"), Some(1_500_000));
        assert_eq!(micros_of_datetime("9999-12-31 23:59:59.999999"), Some(253_402_300_799_999_999));
        assert_eq!(micros_of_time("-838:59:59.000001"), Some(-(838 * 3600 + 59 * 60 + 59) * 1_000_000 - 1));
        assert_eq!(micros_of_time("00:00:00.25"), Some(250_000));
        assert_eq!(convert(Conv::Timestamp { micros: false }, &Value::from("1970-01-01 00:00:00.999")), Value::from(999));
        assert_eq!(convert(Conv::Bits { bytes: 2 }, &Value::from(0x0102)), Value::from("AgE="));
        assert_eq!(convert(Conv::Bool, &Value::from(1)), Value::Bool(true));
        assert_eq!(convert(Conv::Zoned, &Value::from("0000-00-00T00:00:00Z")), Value::Null);
    }
}
