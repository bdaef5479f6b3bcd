//! The character sets whose tables are written in code: MySQL's latin1 and gbk, checked against
//! the server once for every byte sequence (tests/types.rs keeps checking gbk).

use std::collections::HashMap;
use std::sync::OnceLock;

/// cp1252's mapping of 0x80..=0x9F as MySQL's latin1 uses it (undefined bytes -> C1 controls).
const LATIN1_HIGH: [u16; 32] = [
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090,
    0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
];

/// Decodes MySQL latin1 bytes to text (lossless: the server converts it back on apply).
pub fn latin1_to_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9F => char::from_u32(LATIN1_HIGH[(b - 0x80) as usize] as u32).expect("table holds valid code points"),
            _ => b as char,
        })
        .collect()
}

/// The latin1 byte of `c`, if it has one.
pub(super) fn latin1_byte(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 0x80 || (0xA0..=0xFF).contains(&u) {
        return Some(u as u8);
    }
    LATIN1_HIGH.iter().position(|&x| x as u32 == u).map(|i| 0x80 + i as u8)
}

/// Trail bytes of a gbk two-byte sequence.
fn gbk_trail(b: u8) -> bool {
    matches!(b, 0x40..=0x7E | 0x80..=0xFE)
}

/// MySQL's gbk and Unicode, one to one: every two-byte sequence MySQL stores in a gbk column
/// (lead 0x81-0xFE, trail 0x40-0x7E or 0x80-0xFE: 23,940) has its own character.
///
/// For the 21,791 sequences that MariaDB 10.11 converts to Unicode, the character is MariaDB's
/// (`CONVERT(... USING utf8mb4)`), which is also GB18030's (encoding_rs): checked against the
/// server for every sequence. MariaDB stores but cannot convert the other 2,149 (user-defined
/// areas, A2E3, A6D9.., FE50..): they get GB18030's characters, mostly private use, except A3A0,
/// which GB18030-2022 maps to U+3000 like A1A1; it keeps its GB18030-2005 character U+E5E5.
/// Because some of these have no MySQL conversion, the applier writes gbk columns as bytes it
/// encodes with the same table, never through the server's conversion.
pub struct GbkTable {
    /// Character of each two-byte sequence, by [`gbk_index`].
    to_char: Vec<char>,
    /// The inverse.
    to_bytes: HashMap<char, [u8; 2]>,
}

fn gbk_index(lead: u8, trail: u8) -> usize {
    let t = if trail < 0x80 { trail - 0x40 } else { trail - 0x41 };
    (lead - 0x81) as usize * 190 + t as usize
}

/// The gbk table, built once; an error if the table would not be one to one (a changed
/// encoding_rs), so that gbk text is refused rather than changed.
pub fn gbk_table() -> Result<&'static GbkTable, String> {
    static TABLE: OnceLock<Result<GbkTable, String>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            let mut to_char = Vec::with_capacity(126 * 190);
            let mut to_bytes = HashMap::with_capacity(126 * 190);
            for lead in 0x81..=0xFEu8 {
                for trail in (0x40..=0x7Eu8).chain(0x80..=0xFE) {
                    let c = if (lead, trail) == (0xA3, 0xA0) {
                        '\u{E5E5}'
                    } else {
                        let pair = [lead, trail];
                        let (text, _, bad) = encoding_rs::GB18030.decode(&pair);
                        let mut chars = text.chars();
                        match (chars.next(), chars.next(), bad) {
                            (Some(c), None, false) if (c as u32) >= 0x80 => c,
                            _ => return Err(format!("gbk {lead:02X}{trail:02X} has no character")),
                        }
                    };
                    if let Some(other) = to_bytes.insert(c, [lead, trail]) {
                        return Err(format!(
                            "gbk {lead:02X}{trail:02X} and {:02X}{:02X} both decode to U+{:04X}",
                            other[0], other[1], c as u32
                        ));
                    }
                    to_char.push(c);
                }
            }
            Ok(GbkTable { to_char, to_bytes })
        })
        .as_ref()
        .map_err(|e| format!("gbk cannot be decoded exactly with this build: {e}"))
}

/// gbk bytes to text; fails on bytes that are not gbk.
pub(super) fn gbk_decode(bytes: &[u8]) -> Result<String, String> {
    let table = gbk_table()?;
    let mut out = String::with_capacity(bytes.len() * 3 / 2);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            out.push(b as char);
            i += 1;
        } else if (0x81..=0xFE).contains(&b) && bytes.get(i + 1).is_some_and(|&t| gbk_trail(t)) {
            out.push(table.to_char[gbk_index(b, bytes[i + 1])]);
            i += 2;
        } else {
            return Err(format!("bytes are not valid gbk (0x{b:02X} at byte {i})"));
        }
    }
    Ok(out)
}

/// Text to gbk bytes; fails on a character gbk does not have.
pub(super) fn gbk_encode(text: &str) -> Result<Vec<u8>, String> {
    let table = gbk_table()?;
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        if (c as u32) < 0x80 {
            out.push(c as u8);
        } else {
            let pair = table.to_bytes.get(&c).ok_or_else(|| format!("character U+{:04X} is not in gbk", c as u32))?;
            out.extend_from_slice(pair);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::charset::TextEncoding;

    #[test]
    fn gbk_is_one_to_one_and_matches_mysql() {
        let table = gbk_table().unwrap();
        assert_eq!(latin1_to_string(&[0x80, 0xE9, 0x81]), "€é\u{81}");
        let mut all = Vec::new();
        for lead in 0x81..=0xFEu8 {
            for trail in (0x40..=0x7Eu8).chain(0x80..=0xFE) {
                all.extend_from_slice(&[lead, trail]);
            }
        }
        let text = TextEncoding::Gbk.decode(&all).unwrap();
        assert_eq!(text.chars().count(), 23_940);
        assert_eq!(TextEncoding::Gbk.encode(&text).unwrap(), all);
        assert_eq!(table.to_bytes.len(), 23_940);
        // As MariaDB converts them (CONVERT(x'..' USING utf8mb4)).
        assert_eq!(TextEncoding::Gbk.decode(&[0xD6, 0xD0, 0xA1, 0xA4, 0xA1, 0xAA, 0x41]).unwrap(), "中·—A");
        // Sequences MariaDB stores but cannot convert: still one character each.
        assert_eq!(TextEncoding::Gbk.decode(&[0xA1, 0x40]).unwrap(), "\u{E4C6}");
        assert_eq!(TextEncoding::Gbk.decode(&[0xA3, 0xA0]).unwrap(), "\u{E5E5}");
        assert_eq!(TextEncoding::Gbk.decode(&[0xA1, 0xA1]).unwrap(), "\u{3000}");
        for bad in [&[0x80][..], &[0xFF], &[0x81], &[0x81, 0x30], &[0xD6, 0x7F]] {
            assert!(TextEncoding::Gbk.decode(bad).is_err(), "{bad:?} is not gbk");
        }
        assert!(TextEncoding::Gbk.encode("😀").is_err());
    }

    #[test]
    fn latin1_is_one_to_one() {
        let all: Vec<u8> = (0..=255).collect();
        let text = TextEncoding::Latin1.decode(&all).unwrap();
        assert_eq!(TextEncoding::Latin1.encode(&text).unwrap(), all);
    }
}
