//! Binlog values to record values. Every encoding here is documented in `schemas/README.md`, and
//! the applier's `apply::target::to_sql` is its inverse: a value must arrive exactly as it left.
//! Where a value cannot be written exactly (an unknown character set, bytes that are not valid in
//! their column's character set, a partial JSON update), decoding fails loudly: capture stops
//! rather than publish a changed value.
//!
//! Row images are parsed here too ([`rows`]), with mysql_common's value parser for most types,
//! because mysql_common 0.37 gets some wrong: a negative TIME(1)/TIME(2) with a fraction
//! overflows (a panic in debug builds, a wrong value in release), a signed MEDIUMINT is not
//! sign-extended, a negative TIME in the old (pre-5.6) format loses its sign, and TIMESTAMP
//! seconds past 2^31 (MariaDB 11.5 stores them up to 2106) turn negative.

use std::io;
use std::sync::Arc;

use base64::Engine as _;
use mysql_async::binlog::events::RowsEventData;
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::Value as MyValue;
use mysql_common::io::ParseBuf;
use serde_json::{Number, Value};

use super::table::{ColumnInfo, TableInfo};

pub use crate::mysql::charset::{TextEncoding, BINARY_CHARSET};

/// A value that cannot be written into a record exactly.
#[derive(Debug, thiserror::Error)]
#[error("column `{column}`: {reason}")]
pub struct DecodeError {
    /// Column name.
    pub column: String,
    /// What went wrong.
    pub reason: String,
}

/// Encodes one column value. `encoding` is the text encoding of the column's character set.
pub fn encode_value(col: &ColumnInfo, encoding: TextEncoding, value: &BinlogValue<'_>) -> Result<Value, DecodeError> {
    let err = |reason: String| DecodeError { column: col.name.clone(), reason };
    let v = match value {
        BinlogValue::Value(v) => v,
        BinlogValue::Jsonb(j) => {
            let dom = j.clone().parse().map_err(|e| err(format!("unreadable JSON value: {e}")))?;
            let json: Value = dom.into();
            return Ok(Value::String(json.to_string()));
        }
        BinlogValue::JsonDiff(_) => return Err(err("partial JSON update; set binlog_row_value_options='' on the server".into())),
    };
    let text = |b: &[u8]| -> Result<String, DecodeError> {
        if col.charset == 0 && (col.ctype.is_character_type() || col.ctype.is_enum_or_set_type()) {
            // Without its character set, text could only be guessed at.
            return Err(err("the table map gives no character set for this column; set binlog_row_metadata=FULL".into()));
        }
        encoding.decode(b).map_err(|e| err(format!("{e} (collation id {})", col.charset)))
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
            // The shortest text of the f32 (1.1, not 1.100000023841858) when the double it
            // reads as converts back to the same f32 and stays in FLOAT's range (the server
            // refuses 3.4028235e38, the shortest text of f32::MAX); else the f32's exact value.
            let short: f64 = f.to_string().parse().unwrap_or(*f as f64);
            let exact = if short as f32 == *f && short.abs() <= f32::MAX as f64 { short } else { *f as f64 };
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
            let t = std::str::from_utf8(b).map_err(|_| err("bad TIMESTAMP".into()))?;
            Value::String(timestamp_text(t, decimals(col)).ok_or_else(|| err(format!("bad TIMESTAMP {t}")))?)
        }
        (MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2, MyValue::Int(secs)) => {
            Value::String(timestamp_text(&secs.to_string(), 0).ok_or_else(|| err("bad TIMESTAMP".into()))?)
        }
        (MYSQL_TYPE_NEWDATE | MYSQL_TYPE_DATE, MyValue::Date(y, m, d, ..)) => {
            let mut t = String::with_capacity(10);
            push_date(&mut t, *y as u64, *m as u64, *d as u64);
            Value::String(t)
        }
        (MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2, MyValue::Date(y, mo, d, h, mi, s, us)) => {
            let mut t = String::with_capacity(26);
            push_date(&mut t, *y as u64, *mo as u64, *d as u64);
            t.push(' ');
            push_clock(&mut t, *h as u64, *mi as u64, *s as u64);
            push_fraction(&mut t, *us, decimals(col));
            Value::String(t)
        }
        (MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2, MyValue::Time(neg, days, h, m, s, us)) => {
            let hours = *days as u64 * 24 + *h as u64;
            let mut t = String::with_capacity(18);
            if *neg {
                t.push('-');
            }
            push_clock(&mut t, hours, *m as u64, *s as u64);
            push_fraction(&mut t, *us, decimals(col));
            Value::String(t)
        }
        (MYSQL_TYPE_ENUM, MyValue::Int(i)) => match *i {
            // The error value (index 0) reads as '' in MySQL; where '' is also a member, the
            // integer 0 keeps the two apart.
            0 if col.members.iter().any(|m| m.is_empty()) => Value::from(0),
            0 => Value::String(String::new()),
            i => {
                let member = col.members.get(i as usize - 1).ok_or_else(|| err(format!("ENUM index {i} has no member")))?;
                Value::String(text(&member_bytes(member).map_err(err)?)?)
            }
        },
        (MYSQL_TYPE_SET, MyValue::Bytes(b)) => {
            if b.len() > 8 {
                return Err(err("SET wider than 64 members".into()));
            }
            let bits = b.iter().rev().fold(0u64, |acc, x| (acc << 8) | *x as u64);
            if col.members.len() < 64 && bits >> col.members.len() != 0 {
                return Err(err(format!("SET bits {bits:#x} name members the table map does not have")));
            }
            let mut chosen = Vec::new();
            for (i, member) in col.members.iter().enumerate() {
                if bits & (1u64 << i) != 0 {
                    chosen.push(text(&member_bytes(member).map_err(err)?)?);
                }
            }
            Value::String(chosen.join(","))
        }
        (MYSQL_TYPE_JSON, MyValue::Bytes(b)) => Value::String(String::from_utf8(b.clone()).map_err(|_| err("JSON is not UTF-8".into()))?),
        (MYSQL_TYPE_GEOMETRY, MyValue::Bytes(b)) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        (MYSQL_TYPE_STRING, MyValue::Bytes(b)) if col.charset == BINARY_CHARSET => {
            // BINARY(n), and MariaDB's UUID, INET6, INET4: the binlog drops the trailing 0x00
            // bytes, which are part of the value.
            let mut full = b.clone();
            full.resize(full.len().max(fixed_length(&col.meta)), 0);
            Value::String(text(&full)?)
        }
        (_, MyValue::Bytes(b)) => Value::String(text(b)?),
        (t, other) => return Err(err(format!("unexpected value {other:?} for type {t:?}"))),
    })
}

/// The bytes of an ENUM or SET member as [`ColumnInfo::members`] holds them (one char per byte).
pub fn member_bytes(member: &str) -> Result<Vec<u8>, String> {
    member.chars().map(|c| u8::try_from(c as u32).map_err(|_| format!("ENUM/SET member `{member}` is not held as bytes"))).collect()
}

/// The row images of a rows event: `(before, after)` per row, as mysql_common's
/// `RowsEventData::rows` gives them, but with the values [`read_value`] decodes itself.
pub fn rows<'a>(data: &'a RowsEventData<'a>, info: &'a TableInfo) -> Rows<'a> {
    let n = info.columns.len();
    // Which columns each image holds: the same for every row of the event.
    let before_cols = data.columns_before_image().map(|cols| (0..n).map(|i| cols.get(i).is_some_and(|b| *b)).collect());
    let after_cols = data.columns_after_image().map(|cols| (0..n).map(|i| cols.get(i).is_some_and(|b| *b)).collect());
    Rows { data, info, buf: ParseBuf(data.rows_data()), failed: false, before_cols, after_cols }
}

/// Iterator of [`rows`].
pub struct Rows<'a> {
    data: &'a RowsEventData<'a>,
    info: &'a TableInfo,
    buf: ParseBuf<'a>,
    failed: bool,
    before_cols: Option<Vec<bool>>,
    after_cols: Option<Vec<bool>>,
}

impl<'a> Rows<'a> {
    fn image(buf: &mut ParseBuf<'a>, columns: &'a [ColumnInfo], present: &[bool]) -> io::Result<BinlogRow> {
        let count = present.iter().filter(|p| **p).count();
        let nulls = buf.checked_eat(count.div_ceil(8)).ok_or_else(truncated)?;
        let mut values: Vec<Option<BinlogValue<'static>>> = vec![None; columns.len()];
        let mut k = 0;
        for (i, col) in columns.iter().enumerate() {
            if !present[i] {
                continue;
            }
            let null = nulls[k / 8] >> (k % 8) & 1 == 1;
            k += 1;
            values[i] = Some(if null { BinlogValue::Value(MyValue::NULL) } else { read_value(col, buf)? });
        }
        Ok(BinlogRow::new(values, Arc::from(Vec::new())))
    }
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "row image ends early")
}

impl<'a> Iterator for Rows<'a> {
    type Item = io::Result<(Option<BinlogRow>, Option<BinlogRow>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        let result = (|| {
            if matches!(self.data, RowsEventData::PartialUpdateRowsEvent(_)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "partial JSON row update: set binlog_row_value_options='' on the server",
                ));
            }
            let n = self.info.columns.len();
            if self.data.num_columns() as usize != n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("rows event has {} columns, its table map {n}", self.data.num_columns()),
                ));
            }
            let columns: &'a [ColumnInfo] = &self.info.columns;
            let before = self.before_cols.as_deref().map(|c| Self::image(&mut self.buf, columns, c)).transpose()?;
            let after = self.after_cols.as_deref().map(|c| Self::image(&mut self.buf, columns, c)).transpose()?;
            Ok((before, after))
        })();
        self.failed = result.is_err();
        Some(result)
    }
}

/// One value of a row image.
fn read_value<'a>(col: &'a ColumnInfo, buf: &mut ParseBuf<'a>) -> io::Result<BinlogValue<'static>> {
    use ColumnType::*;
    match col.ctype {
        MYSQL_TYPE_TIME2 => {
            let dec = col.meta.first().copied().unwrap_or(0).min(6);
            let bytes = buf.checked_eat(3 + (dec as usize).div_ceil(2)).ok_or_else(truncated)?;
            Ok(BinlogValue::Value(time2(bytes, dec)))
        }
        MYSQL_TYPE_TIMESTAMP2 => {
            // Seconds are unsigned (mysql_common reads them as i32: wrong after 2038, which
            // MariaDB 11.5 allows), then the fraction.
            let dec = col.meta.first().copied().unwrap_or(0).min(6);
            let b = buf.checked_eat(4 + (dec as usize).div_ceil(2)).ok_or_else(truncated)?;
            let secs = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            let frac = b[4..].iter().fold(0u32, |acc, x| (acc << 8) | *x as u32);
            let micros = match dec {
                1 | 2 => frac * 10_000,
                3 | 4 => frac * 100,
                _ => frac,
            };
            let text = if micros == 0 { secs.to_string() } else { format!("{secs}.{micros:06}") };
            Ok(BinlogValue::Value(MyValue::Bytes(text.into_bytes())))
        }
        MYSQL_TYPE_INT24 if !col.unsigned => {
            let b = buf.checked_eat(3).ok_or_else(truncated)?;
            let sign = if b[2] & 0x80 != 0 { 0xFF } else { 0 };
            Ok(BinlogValue::Value(MyValue::Int(i32::from_le_bytes([b[0], b[1], b[2], sign]) as i64)))
        }
        MYSQL_TYPE_TIME => {
            // The old TIME: a signed 24-bit ±HHMMSS.
            let b = buf.checked_eat(3).ok_or_else(truncated)?;
            let sign = if b[2] & 0x80 != 0 { 0xFF } else { 0 };
            let v = i32::from_le_bytes([b[0], b[1], b[2], sign]);
            let a = v.unsigned_abs();
            let hours = a / 10_000;
            Ok(BinlogValue::Value(MyValue::Time(v < 0, hours / 24, (hours % 24) as u8, (a / 100 % 100) as u8, (a % 100) as u8, 0)))
        }
        _ => {
            let meta: &'a [u8] = &col.meta;
            let v: BinlogValue<'a> = buf.parse((col.ctype, meta, col.unsigned, false))?;
            Ok(v.into_owned())
        }
    }
}

/// TIME(n) in the MySQL 5.6 binary format (`my_time_packed_from_binary` and
/// `TIME_from_longlong_time_packed` of the server, with the fraction signed as there).
fn time2(b: &[u8], dec: u8) -> MyValue {
    const INT_OFS: i64 = 0x80_0000;
    let be = |bytes: &[u8]| bytes.iter().fold(0i64, |acc, x| (acc << 8) | *x as i64);
    let packed: i64 = match dec {
        1 | 2 => {
            let mut int = be(&b[..3]) - INT_OFS;
            let mut frac = b[3] as i64;
            if int < 0 && frac != 0 {
                int += 1;
                frac -= 0x100;
            }
            (int << 24) + frac * 10_000
        }
        3 | 4 => {
            let mut int = be(&b[..3]) - INT_OFS;
            let mut frac = be(&b[3..5]);
            if int < 0 && frac != 0 {
                int += 1;
                frac -= 0x1_0000;
            }
            (int << 24) + frac * 100
        }
        5 | 6 => be(&b[..6]) - 0x8000_0000_0000,
        _ => (be(&b[..3]) - INT_OFS) << 24,
    };
    let neg = packed < 0;
    let a = packed.unsigned_abs();
    let hms = a >> 24;
    let hours = ((hms >> 12) % (1 << 10)) as u32;
    MyValue::Time(neg, hours / 24, (hours % 24) as u8, ((hms >> 6) % (1 << 6)) as u8, (hms % (1 << 6)) as u8, (a % (1 << 24)) as u32)
}

/// The length in bytes of a `MYSQL_TYPE_STRING` column, from its table map metadata.
fn fixed_length(meta: &[u8]) -> usize {
    match meta {
        [b0, b1, ..] if b0 & 0x30 != 0x30 => *b1 as usize | ((((*b0 & 0x30) ^ 0x30) as usize) << 4),
        [_, b1, ..] => *b1 as usize,
        _ => 0,
    }
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
        // The first `decimals` characters of `{micros:06}`.
        let mut digits = Digits::new();
        digits.padded(micros as u64, 6);
        out.push('.');
        out.push_str(&digits.as_str()[..decimals as usize]);
    }
}

/// Numbers as text without the formatting machinery (temporal values are written per row).
struct Digits {
    buf: [u8; 64],
    len: usize,
}

impl Digits {
    fn new() -> Self {
        Self { buf: [0; 64], len: 0 }
    }

    /// `{v:0width$}` (width at most 20).
    fn padded(&mut self, v: u64, width: usize) -> &mut Self {
        let mut tmp = [b'0'; 20];
        let mut i = tmp.len();
        let mut n = v;
        loop {
            i -= 1;
            tmp[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let start = i.min(tmp.len() - width.min(tmp.len()));
        self.push_bytes(&tmp[start..])
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        self
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("ASCII digits")
    }
}

/// `{v:0width$}`
#[cfg(test)]
fn push_padded(out: &mut String, v: u64, width: usize) {
    out.push_str(Digits::new().padded(v, width).as_str());
}

/// `{y:04}-{m:02}-{d:02}`
fn push_date(out: &mut String, y: u64, m: u64, d: u64) {
    let mut t = Digits::new();
    t.padded(y, 4).push_bytes(b"-").padded(m, 2).push_bytes(b"-").padded(d, 2);
    out.push_str(t.as_str());
}

/// `{h:02}:{m:02}:{s:02}`
fn push_clock(out: &mut String, h: u64, m: u64, s: u64) {
    let mut t = Digits::new();
    t.padded(h, 2).push_bytes(b":").padded(m, 2).push_bytes(b":").padded(s, 2);
    out.push_str(t.as_str());
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
    let mut t = String::with_capacity(28);
    if y < 0 {
        t.push_str(&format!("{y:04}-{m:02}-{d:02}"));
    } else {
        push_date(&mut t, y as u64, m as u64, d as u64);
    }
    t.push('T');
    push_clock(&mut t, rem as u64 / 3600, rem as u64 % 3600 / 60, rem as u64 % 60);
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
        assert_eq!(
            enc(&col(ColumnType::MYSQL_TYPE_DATETIME2, vec![3], false), MyValue::Date(2024, 2, 29, 23, 59, 58, 123_000)),
            Value::from("2024-02-29 23:59:58.123")
        );
        assert_eq!(
            enc(&col(ColumnType::MYSQL_TYPE_TIME2, vec![6], false), MyValue::Time(true, 1, 10, 0, 1, 5)),
            Value::from("-34:00:01.000005")
        );
        assert_eq!(
            enc(&col(ColumnType::MYSQL_TYPE_TIMESTAMP2, vec![2], false), MyValue::Bytes(b"1700000000.120000".to_vec())),
            Value::from("2023-11-14T22:13:20.12Z")
        );
        assert_eq!(
            enc(&col(ColumnType::MYSQL_TYPE_TIMESTAMP2, vec![0], false), MyValue::Bytes(b"0".to_vec())),
            Value::from("0000-00-00T00:00:00Z")
        );
        assert_eq!(enc(&col(ColumnType::MYSQL_TYPE_YEAR, vec![], false), MyValue::Bytes(b"1900".to_vec())), Value::from(0));
        assert_eq!(enc(&col(ColumnType::MYSQL_TYPE_NEWDATE, vec![], false), MyValue::Date(0, 0, 0, 0, 0, 0, 0)), Value::from("0000-00-00"));
    }

    #[test]
    fn enum_set_bit_and_text() {
        let mut e = col(ColumnType::MYSQL_TYPE_ENUM, vec![], false);
        e.charset = 45;
        e.members = vec!["a".into(), "b,c".into()];
        assert_eq!(enc(&e, MyValue::Int(2)), Value::from("b,c"));
        assert_eq!(enc(&e, MyValue::Int(0)), Value::from(""));
        let mut s = col(ColumnType::MYSQL_TYPE_SET, vec![], false);
        s.charset = 45;
        s.members = vec!["x".into(), "y".into(), "z".into()];
        assert_eq!(enc(&s, MyValue::Bytes(vec![0b101])), Value::from("x,z"));
        assert_eq!(
            enc(&col(ColumnType::MYSQL_TYPE_BIT, vec![0, 8], false), MyValue::Bytes(vec![0x80, 0, 0, 0, 0, 0, 0, 1])),
            Value::from(0x8000_0000_0000_0001u64)
        );
        let mut b = col(ColumnType::MYSQL_TYPE_BLOB, vec![2], false);
        b.charset = BINARY_CHARSET;
        assert_eq!(encode_value(&b, TextEncoding::Binary, &BinlogValue::Value(MyValue::Bytes(vec![0, 255]))).unwrap(), Value::from("AP8="));
    }

    #[test]
    fn text_without_its_character_set_is_refused() {
        let c = col(ColumnType::MYSQL_TYPE_VARCHAR, vec![], false);
        assert!(encode_value(&c, TextEncoding::Binary, &BinlogValue::Value(MyValue::Bytes(b"abc".to_vec()))).is_err());
        let mut latin = col(ColumnType::MYSQL_TYPE_VARCHAR, vec![], false);
        latin.charset = 8;
        assert!(encode_value(&latin, TextEncoding::Unsupported, &BinlogValue::Value(MyValue::Bytes(b"abc".to_vec()))).is_err());
        assert!(encode_value(&latin, TextEncoding::Utf8, &BinlogValue::Value(MyValue::Bytes(vec![0xE9]))).is_err());
    }

    #[test]
    fn enum_members_decode_with_the_column_encoding() {
        let mut e = col(ColumnType::MYSQL_TYPE_ENUM, vec![], false);
        e.charset = 28;
        e.members = vec![crate::capture::table::bytes_as_chars(&[0xD6, 0xD0]), String::new()];
        let v = |i| encode_value(&e, TextEncoding::Gbk, &BinlogValue::Value(MyValue::Int(i))).unwrap();
        assert_eq!(v(1), Value::from("中"));
        assert_eq!(v(2), Value::from(""), "the empty member");
        assert_eq!(v(0), Value::from(0), "the error value, apart from the empty member");
        e.charset = 8;
        e.members = vec![crate::capture::table::bytes_as_chars(&[0xE9, 0x80])];
        assert_eq!(encode_value(&e, TextEncoding::Latin1, &BinlogValue::Value(MyValue::Int(1))).unwrap(), Value::from("é€"));
    }

    #[test]
    fn floats_are_exact_and_in_range() {
        let f = col(ColumnType::MYSQL_TYPE_FLOAT, vec![4], false);
        assert_eq!(enc(&f, MyValue::Float(1.1)).to_string(), "1.1");
        for x in [f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1.0e-45, 16_777_216.0, -0.3] {
            let v = enc(&f, MyValue::Float(x)).as_f64().unwrap();
            assert_eq!(v as f32, x);
            assert!(v.abs() <= f32::MAX as f64, "{x}: {v} is out of FLOAT's range");
        }
    }

    #[test]
    fn negative_fractional_times_decode() {
        // Bytes as the server writes TIME(n) (my_time_packed_to_binary).
        let t = |b: &[u8], dec| match time2(b, dec) {
            MyValue::Time(neg, d, h, m, s, us) => format!("{}{}:{m:02}:{s:02}.{us:06}", if neg { "-" } else { "" }, d * 24 + h as u32),
            other => panic!("{other:?}"),
        };
        assert_eq!(t(&[0x7F, 0xFF, 0xFF, 0xF6], 1), "-0:00:00.100000");
        assert_eq!(t(&[0x7F, 0xFF, 0xFE, 0xFF], 2), "-0:00:01.010000");
        assert_eq!(t(&[0x80, 0x00, 0x00, 0x0A], 1), "0:00:00.100000");
        assert_eq!(t(&[0x7F, 0xFF, 0xFF, 0xFF, 0xF6], 3), "-0:00:00.001000");
        assert_eq!(t(&[0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], 6), "-0:00:00.000001");
        // -838:59:59.9, packed and stored as the server does.
        let packed: i64 = -(((838 << 12 | 59 << 6 | 59) << 24) + 900_000);
        let int = (packed >> 24) + 0x80_0000;
        let frac = ((packed % (1 << 24)) / 10_000) as i8 as u8;
        assert_eq!(t(&[(int >> 16) as u8, (int >> 8) as u8, int as u8, frac], 1), "-838:59:59.900000");
    }

    #[test]
    fn row_values_mysql_common_gets_wrong() {
        let read = |ctype, meta: Vec<u8>, unsigned, bytes: &[u8]| {
            let c = ColumnInfo { name: "c".into(), ctype, meta, unsigned, charset: 0, members: vec![] };
            let mut buf = ParseBuf(bytes);
            let v = read_value(&c, &mut buf).unwrap();
            assert!(buf.is_empty(), "every byte read");
            encode_value(&c, TextEncoding::Binary, &v).unwrap()
        };
        assert_eq!(read(ColumnType::MYSQL_TYPE_INT24, vec![], false, &[0xFD, 0xFF, 0xFF]), Value::from(-3));
        assert_eq!(read(ColumnType::MYSQL_TYPE_INT24, vec![], true, &[0xFD, 0xFF, 0xFF]), Value::from(16_777_213));
        assert_eq!(read(ColumnType::MYSQL_TYPE_TIME2, vec![1], false, &[0x7F, 0xFF, 0xFF, 0xF6]), Value::from("-00:00:00.1"));
        assert_eq!(read(ColumnType::MYSQL_TYPE_TIME, vec![], false, &(-8_385_959i32).to_le_bytes()[..3]), Value::from("-838:59:59"));
        assert_eq!(
            read(ColumnType::MYSQL_TYPE_TIMESTAMP2, vec![3], false, &[0xFF, 0xFF, 0xFF, 0xFF, 0x27, 0x06]),
            Value::from("2106-02-07T06:28:15.999Z")
        );
        assert_eq!(read(ColumnType::MYSQL_TYPE_TIMESTAMP2, vec![0], false, &[0, 0, 0, 0]), Value::from("0000-00-00T00:00:00Z"));
        assert_eq!(read(ColumnType::MYSQL_TYPE_LONGLONG, vec![], true, &[0xFF; 8]).to_string(), "18446744073709551615");
    }

    #[test]
    fn padded_numbers_are_formats() {
        for v in [0u64, 1, 9, 10, 99, 100, 999, 1000, 9999, 10_000, 999_999, 1_000_000, 12_345_678, u32::MAX as u64, u64::MAX] {
            for width in [0, 1, 2, 4, 6] {
                let mut out = String::from("x");
                push_padded(&mut out, v, width);
                assert_eq!(out, format!("x{v:0width$}"));
            }
        }
        let mut t = String::new();
        push_fraction(&mut t, 12_345_678, 6);
        assert_eq!(t, ".123456", "as the slice of {{:06}} was");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
