//! Binlog values to record values. Every encoding here is documented in `schemas/values.md`,
//! and the applier's `apply::bind` is its inverse: a value must arrive exactly as it left.

use base64::Engine as _;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::Value as MyValue;
use serde_json::{Number, Value};

use super::table::ColumnInfo;

/// Collation id of the `binary` character set.
pub const BINARY_CHARSET: u16 = 63;

/// How the bytes of a character column are turned into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    /// utf8mb3, utf8mb4, ascii: the bytes are UTF-8.
    Utf8,
    /// MySQL's latin1 (cp1252 with the five undefined bytes mapped to C1 controls).
    Latin1,
    /// Binary: base64.
    Binary,
    /// A character set sitesync cannot decode exactly; the value is refused.
    Unsupported,
}

/// Maps a character set name (from `information_schema.COLLATIONS`) to its encoding.
pub fn encoding_of_charset(name: &str) -> TextEncoding {
    match name {
        "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => TextEncoding::Utf8,
        "latin1" => TextEncoding::Latin1,
        "binary" => TextEncoding::Binary,
        _ => TextEncoding::Unsupported,
    }
}

/// A value that cannot be written into a record exactly.
#[derive(Debug, thiserror::Error)]
#[error("column `{column}`: {reason}")]
pub struct DecodeError {
    /// Column name.
    pub column: String,
    /// What went wrong.
    pub reason: String,
}

/// cp1252's mapping of 0x80..=0x9F as MySQL's latin1 uses it (0 = undefined -> C1 control).
const LATIN1_HIGH: [u16; 32] = [
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
    0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
    0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
];

/// Decodes MySQL latin1 bytes to text (lossless: the server converts it back on apply).
pub fn latin1_to_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9F => char::from_u32(LATIN1_HIGH[(b - 0x80) as usize] as u32).unwrap_or('\u{FFFD}'),
            _ => b as char,
        })
        .collect()
}

/// Encodes one column value. `encoding` is the text encoding of the column's character set.
pub fn encode_value(
    col: &ColumnInfo,
    encoding: TextEncoding,
    value: &BinlogValue<'_>,
) -> Result<Value, DecodeError> {
    let err = |reason: String| DecodeError { column: col.name.clone(), reason };
    let v = match value {
        BinlogValue::Value(v) => v,
        BinlogValue::Jsonb(j) => {
            let dom = j.clone().parse().map_err(|e| err(format!("unreadable JSON value: {e}")))?;
            let json: Value = dom.into();
            return Ok(Value::String(json.to_string()));
        }
        BinlogValue::JsonDiff(_) => {
            return Err(err("partial JSON update; set binlog_row_value_options='' on the server".into()))
        }
    };
    use ColumnType::*;
    Ok(match (col.ctype, v) {
        (_, MyValue::NULL) => Value::Null,
        (MYSQL_TYPE_INT24, MyValue::Int(i)) if !col.unsigned && *i > 0x7F_FFFF => {
            // Sign-extend a MEDIUMINT that a reader returned as raw 24 bits.
            Value::from(*i - 0x100_0000)
        }
        (MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG, MyValue::Int(i)) => {
            if col.unsigned && *i < 0 {
                // An unsigned BIGINT that came back as i64.
                Value::from(*i as u64)
            } else {
                Value::from(*i)
            }
        }
        (_, MyValue::UInt(u)) => Value::from(*u),
        (MYSQL_TYPE_FLOAT, MyValue::Float(f)) => {
            // The shortest text of the f32 itself, so 1.1 stays 1.1 and not 1.100000023841858.
            let exact: f64 = f.to_string().parse().unwrap_or(*f as f64);
            Number::from_f64(exact).map(Value::Number).ok_or_else(|| err(format!("{f} is not finite")))?
        }
        (_, MyValue::Float(f)) => Number::from_f64(*f as f64).map(Value::Number).ok_or_else(|| err(format!("{f} is not finite")))?,
        (_, MyValue::Double(d)) => Number::from_f64(*d).map(Value::Number).ok_or_else(|| err(format!("{d} is not finite")))?,
        (MYSQL_TYPE_YEAR, MyValue::Bytes(b)) => {
            let year: u32 = std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).ok_or_else(|| err("bad YEAR".into()))?;
            // The binlog stores YEAR as year-1900; 0 is YEAR 0000, which a reader shows as 1900.
            Value::from(if year == 1900 { 0 } else { year })
        }
        (MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL, MyValue::Bytes(b)) => {
            Value::String(String::from_utf8(b.clone()).map_err(|_| err("bad DECIMAL".into()))?)
        }
        (MYSQL_TYPE_BIT, MyValue::Bytes(b)) => {
            if b.len() > 8 {
                return Err(err("BIT wider than 64".into()));
            }
            Value::from(b.iter().fold(0u64, |acc, x| (acc << 8) | *x as u64))
        }
        (MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2, MyValue::Bytes(b)) => {
            let text = std::str::from_utf8(b).map_err(|_| err("bad TIMESTAMP".into()))?;
            Value::String(timestamp_text(text, decimals(col)).ok_or_else(|| err(format!("bad TIMESTAMP {text}")))?)
        }
        (MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2, MyValue::Int(secs)) => {
            Value::String(timestamp_text(&secs.to_string(), 0).ok_or_else(|| err("bad TIMESTAMP".into()))?)
        }
        (MYSQL_TYPE_NEWDATE | MYSQL_TYPE_DATE, MyValue::Date(y, m, d, ..)) => Value::String(format!("{y:04}-{m:02}-{d:02}")),
        (MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2, MyValue::Date(y, mo, d, h, mi, s, us)) => {
            let mut t = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}");
            push_fraction(&mut t, *us, decimals(col));
            Value::String(t)
        }
        (MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2, MyValue::Time(neg, days, h, m, s, us)) => {
            let hours = *days as u64 * 24 + *h as u64;
            let mut t = format!("{}{hours:02}:{m:02}:{s:02}", if *neg { "-" } else { "" });
            push_fraction(&mut t, *us, decimals(col));
            Value::String(t)
        }
        (MYSQL_TYPE_ENUM, MyValue::Int(i)) => match *i {
            0 => Value::String(String::new()),
            i => Value::String(
                col.members.get(i as usize - 1).cloned().ok_or_else(|| err(format!("ENUM index {i} has no member")))?,
            ),
        },
        (MYSQL_TYPE_SET, MyValue::Bytes(b)) => {
            let bits = b.iter().rev().fold(0u64, |acc, x| (acc << 8) | *x as u64);
            let mut chosen = Vec::new();
            for (i, member) in col.members.iter().enumerate() {
                if bits & (1 << i) != 0 {
                    chosen.push(member.as_str());
                }
            }
            Value::String(chosen.join(","))
        }
        (MYSQL_TYPE_JSON, MyValue::Bytes(b)) => {
            Value::String(String::from_utf8(b.clone()).map_err(|_| err("JSON is not UTF-8".into()))?)
        }
        (MYSQL_TYPE_GEOMETRY, MyValue::Bytes(b)) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        (_, MyValue::Bytes(b)) => match encoding {
            TextEncoding::Utf8 => Value::String(
                String::from_utf8(b.clone()).map_err(|_| err("text is not valid in its UTF-8 character set".into()))?,
            ),
            TextEncoding::Latin1 => Value::String(latin1_to_string(b)),
            TextEncoding::Binary => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
            TextEncoding::Unsupported => {
                return Err(err(format!("character set (collation id {}) is not supported by this sitesync", col.charset)))
            }
        },
        (t, other) => return Err(err(format!("unexpected value {other:?} for type {t:?}"))),
    })
}

/// Fractional-second digits of a temporal column (0 to 6).
fn decimals(col: &ColumnInfo) -> u8 {
    match col.ctype {
        ColumnType::MYSQL_TYPE_TIMESTAMP2 | ColumnType::MYSQL_TYPE_DATETIME2 | ColumnType::MYSQL_TYPE_TIME2 => {
            col.meta.first().copied().unwrap_or(0).min(6)
        }
        _ => 0,
    }
}

fn push_fraction(out: &mut String, micros: u32, decimals: u8) {
    if decimals > 0 {
        let digits = format!("{micros:06}");
        out.push('.');
        out.push_str(&digits[..decimals as usize]);
    }
}

/// `"secs[.micros]"` since the epoch to `YYYY-MM-DDTHH:MM:SS[.f]Z` (UTC), with `decimals` digits.
fn timestamp_text(text: &str, decimals: u8) -> Option<String> {
    let (secs, micros) = match text.split_once('.') {
        Some((s, f)) => (s.parse::<i64>().ok()?, format!("{f:0<6}")[..6].parse::<u32>().ok()?),
        None => (text.parse::<i64>().ok()?, 0),
    };
    if secs == 0 && micros == 0 {
        let mut t = "0000-00-00T00:00:00".to_string();
        push_fraction(&mut t, 0, decimals);
        t.push('Z');
        return Some(t);
    }
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let mut t = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    push_fraction(&mut t, micros, decimals);
    t.push('Z');
    Some(t)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(ctype: ColumnType, meta: Vec<u8>, unsigned: bool) -> ColumnInfo {
        ColumnInfo { name: "c".into(), ctype, meta, unsigned, charset: 0, members: vec![] }
    }

    fn enc(c: &ColumnInfo, v: MyValue) -> Value {
        encode_value(c, TextEncoding::Utf8, &BinlogValue::Value(v)).unwrap()
    }

    #[test]
    fn integers_keep_sign_and_full_unsigned_range() {
        assert_eq!(enc(&col(ColumnType::MYSQL_TYPE_INT24, vec![], false), MyValue::Int(16_777_213)), Value::from(-3));
        assert_eq!(enc(&col(ColumnType::MYSQL_TYPE_LONGLONG, vec![], true), MyValue::UInt(u64::MAX)).to_string(), "18446744073709551615");
        assert_eq!(enc(&col(ColumnType::MYSQL_TYPE_LONGLONG, vec![], false), MyValue::Int(i64::MIN)).to_string(), "-9223372036854775808");
    }

    #[test]
    fn temporal_values_keep_their_precision() {
        assert_eq!(enc(&col(ColumnType::MYSQL_TYPE_DATETIME2, vec![3], false), MyValue::Date(2024, 2, 29, 23, 59, 58, 123_000)), Value::from("2024-02-29 23:59:58.123"));
        assert_eq!(enc(&col(ColumnType::MYSQL_TYPE_TIME2, vec![6], false), MyValue::Time(true, 1, 10, 0, 1, 5)), Value::from("-34:00:01.000005"));
        assert_eq!(enc(&col(ColumnType::MYSQL_TYPE_TIMESTAMP2, vec![2], false), MyValue::Bytes(b"1700000000.120000".to_vec())), Value::from("2023-11-14T22:13:20.12Z"));
        assert_eq!(enc(&col(ColumnType::MYSQL_TYPE_TIMESTAMP2, vec![0], false), MyValue::Bytes(b"0".to_vec())), Value::from("0000-00-00T00:00:00Z"));
        assert_eq!(enc(&col(ColumnType::MYSQL_TYPE_YEAR, vec![], false), MyValue::Bytes(b"1900".to_vec())), Value::from(0));
        assert_eq!(enc(&col(ColumnType::MYSQL_TYPE_NEWDATE, vec![], false), MyValue::Date(0, 0, 0, 0, 0, 0, 0)), Value::from("0000-00-00"));
    }

    #[test]
    fn enum_set_bit_and_text() {
        let mut e = col(ColumnType::MYSQL_TYPE_ENUM, vec![], false);
        e.members = vec!["a".into(), "b,c".into()];
        assert_eq!(enc(&e, MyValue::Int(2)), Value::from("b,c"));
        assert_eq!(enc(&e, MyValue::Int(0)), Value::from(""));
        let mut s = col(ColumnType::MYSQL_TYPE_SET, vec![], false);
        s.members = vec!["x".into(), "y".into(), "z".into()];
        assert_eq!(enc(&s, MyValue::Bytes(vec![0b101])), Value::from("x,z"));
        assert_eq!(enc(&col(ColumnType::MYSQL_TYPE_BIT, vec![0, 8], false), MyValue::Bytes(vec![0x80, 0, 0, 0, 0, 0, 0, 1])), Value::from(0x8000_0000_0000_0001u64));
        assert_eq!(latin1_to_string(&[0x80, 0xE9, 0x81]), "€é\u{81}");
        let b = col(ColumnType::MYSQL_TYPE_BLOB, vec![2], false);
        assert_eq!(encode_value(&b, TextEncoding::Binary, &BinlogValue::Value(MyValue::Bytes(vec![0, 255]))).unwrap(), Value::from("AP8="));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
