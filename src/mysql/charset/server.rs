//! Character sets learnt from the server: one query per character set lists every byte sequence
//! that the server converts to utf8mb4 and back to the same bytes, with its character.
//!
//! Those sequences are exactly the ones an applier can reproduce: it sends the character as
//! utf8mb4 and the target server converts it to the column's character set, giving the same bytes
//! again. Any other sequence (one the server cannot convert, or the second spelling of a
//! character, like cp932's NEC and IBM duplicates) is refused when a value holds it, with the
//! bytes named. The sequences probed are every single byte, every pair with a lead byte of 0x80
//! or more, and for character sets with three-byte characters (ujis, eucjpms) every triple of
//! high bytes led by a byte that starts no shorter character. gb18030 (MySQL 8 only) has
//! four-byte sequences too many to probe: those are decoded with encoding_rs's GB18030 table and
//! refused where they would give a private-use character or one a two-byte sequence already has.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use mysql_async::prelude::Queryable;

use super::TextEncoding;

/// A character set's characters, as the server converts them.
pub struct CharsetTable {
    name: String,
    /// For each byte, a bit set of the lengths of the sequences it starts (bit n: n bytes).
    lengths: [u8; 256],
    /// Character of each sequence, keyed by [`key`].
    chars: HashMap<u32, char>,
    /// The inverse.
    bytes: HashMap<char, u32>,
}

impl PartialEq for CharsetTable {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for CharsetTable {}

impl std::fmt::Debug for CharsetTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CharsetTable({}, {} characters)", self.name, self.chars.len())
    }
}

/// One sequence of up to three bytes as a map key: the length in the top byte, the bytes below.
fn key(seq: &[u8]) -> u32 {
    seq.iter().fold(0u32, |k, &b| (k << 8) | b as u32) | (seq.len() as u32) << 24
}

fn unkey(k: u32) -> Vec<u8> {
    let len = (k >> 24) as usize;
    (0..len).rev().map(|i| (k >> (8 * i)) as u8).collect()
}

/// Why a character set could not be learnt.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The server did not answer the probe.
    #[error("reading character set {charset} from the server: {source}")]
    Server {
        /// The character set.
        charset: String,
        /// The driver error.
        source: mysql_async::Error,
    },
    /// The server's answer is not a character table.
    #[error("character set {charset}: {reason}")]
    Table {
        /// The character set.
        charset: String,
        /// What was wrong.
        reason: String,
    },
}

impl CharsetTable {
    /// The table of `name` from (sequence, character) pairs. Every pair must be one to one.
    pub fn from_sequences(name: &str, pairs: impl IntoIterator<Item = (Vec<u8>, char)>) -> Result<CharsetTable, String> {
        let mut table = CharsetTable { name: name.to_string(), lengths: [0; 256], chars: HashMap::new(), bytes: HashMap::new() };
        for (seq, c) in pairs {
            if seq.is_empty() || seq.len() > 3 {
                return Err(format!("a sequence of {} bytes", seq.len()));
            }
            let k = key(&seq);
            if let Some(other) = table.bytes.insert(c, k) {
                return Err(format!("{} and {} both are U+{:04X}", hex(&unkey(other)), hex(&seq), c as u32));
            }
            table.chars.insert(k, c);
            table.lengths[seq[0] as usize] |= 1 << seq.len();
        }
        Ok(table)
    }

    /// How many characters the table holds (four-byte gb18030 ones aside).
    pub fn characters(&self) -> usize {
        self.chars.len()
    }

    fn is_gb18030(&self) -> bool {
        self.name == "gb18030"
    }

    /// Bytes to text, longest sequence first; fails on bytes that are not a character here.
    pub fn decode(&self, bytes: &[u8]) -> Result<String, String> {
        let mut out = String::with_capacity(bytes.len() * 2);
        let mut i = 0;
        'next: while i < bytes.len() {
            if self.is_gb18030() && bytes.len() >= i + 4 && (0x30..=0x39).contains(&bytes[i + 1]) {
                if let Some(c) = self.gb18030_four(&bytes[i..i + 4]) {
                    out.push(c);
                    i += 4;
                    continue;
                }
            }
            let lengths = self.lengths[bytes[i] as usize];
            for len in (1..=3usize).rev() {
                if lengths & (1 << len) != 0 && bytes.len() >= i + len {
                    if let Some(&c) = self.chars.get(&key(&bytes[i..i + len])) {
                        out.push(c);
                        i += len;
                        continue 'next;
                    }
                }
            }
            let end = bytes.len().min(i + 4);
            return Err(format!(
                "bytes {} at byte {i} are not a character of {} that the server converts both ways",
                hex(&bytes[i..end]),
                self.name
            ));
        }
        Ok(out)
    }

    /// Text to bytes: the inverse of [`CharsetTable::decode`].
    pub fn encode(&self, text: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match self.bytes.get(&c) {
                Some(&k) => out.extend(unkey(k)),
                None => match self.is_gb18030().then(|| gb18030_four_of(c)).flatten() {
                    Some(four) if self.gb18030_four(&four) == Some(c) => out.extend_from_slice(&four),
                    _ => return Err(format!("character U+{:04X} is not in {}", c as u32, self.name)),
                },
            }
        }
        Ok(out)
    }

    /// A four-byte gb18030 sequence's character, unless it is private use or has a two-byte
    /// sequence too (where GB18030 editions disagree, so the server's could differ).
    fn gb18030_four(&self, seq: &[u8]) -> Option<char> {
        let (text, bad) = encoding_rs::GB18030.decode_without_bom_handling(seq);
        let mut chars = text.chars();
        match (chars.next(), chars.next(), bad) {
            (Some(c), None, false) if !is_private_use(c) && !self.bytes.contains_key(&c) => Some(c),
            _ => None,
        }
    }
}

fn gb18030_four_of(c: char) -> Option<[u8; 4]> {
    let mut buf = [0u8; 4];
    let s = c.encode_utf8(&mut buf);
    let (bytes, _, bad) = encoding_rs::GB18030.encode(s);
    (!bad && bytes.len() == 4).then(|| [bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn is_private_use(c: char) -> bool {
    matches!(c as u32, 0xE000..=0xF8FF | 0xF0000..=0x10FFFF)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in bytes {
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// The probe for `charset`: (sequence, utf8mb4 bytes) of every sequence that converts to one
/// character and back unchanged. `three_byte_leads`: lead bytes whose triples to probe instead of
/// the one- and two-byte sequences.
fn probe_sql(charset: &str, three_byte_leads: Option<&[u8]>) -> String {
    let sequences = match three_byte_leads {
        None => "SELECT UNHEX(LPAD(HEX(n), 2, '0')) FROM b \
                 UNION ALL SELECT UNHEX(CONCAT(LPAD(HEX(l.n), 2, '0'), LPAD(HEX(t.n), 2, '0'))) FROM b AS l JOIN b AS t WHERE l.n >= 128"
            .to_string(),
        Some(leads) => {
            let leads: Vec<String> = leads.iter().map(u8::to_string).collect();
            format!(
                "SELECT UNHEX(CONCAT(LPAD(HEX(l.n), 2, '0'), LPAD(HEX(m.n), 2, '0'), LPAD(HEX(t.n), 2, '0'))) \
                 FROM b AS l JOIN b AS m JOIN b AS t WHERE l.n IN ({}) AND m.n >= 128 AND t.n >= 128",
                leads.join(", ")
            )
        }
    };
    format!(
        "WITH RECURSIVE b(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM b WHERE n < 255), \
         s(seq) AS ({sequences}), \
         c(seq, ch) AS (SELECT seq, CONVERT(CONVERT(seq USING {charset}) USING utf8mb4) FROM s) \
         SELECT seq, CAST(ch AS BINARY) FROM c WHERE CHAR_LENGTH(ch) = 1 AND CAST(CONVERT(ch USING {charset}) AS BINARY) = seq"
    )
}

/// Character set names come from `information_schema`; checked anyway before they reach SQL.
fn is_charset_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Tables learnt in this process, by server version and name: each is read once and kept.
fn learnt() -> &'static Mutex<HashMap<(String, String), &'static CharsetTable>> {
    static LEARNT: OnceLock<Mutex<HashMap<(String, String), &'static CharsetTable>>> = OnceLock::new();
    LEARNT.get_or_init(Default::default)
}

async fn probe(conn: &mut mysql_async::Conn, charset: &str, three_byte_leads: Option<&[u8]>) -> Result<Vec<(Vec<u8>, char)>, LoadError> {
    let server = |source| LoadError::Server { charset: charset.to_string(), source };
    let rows: Vec<(Vec<u8>, Vec<u8>)> = conn.query(probe_sql(charset, three_byte_leads)).await.map_err(server)?;
    rows.into_iter()
        .map(|(seq, utf8)| {
            let text = String::from_utf8(utf8).map_err(|_| LoadError::Table {
                charset: charset.to_string(),
                reason: format!("the server converted {} to bytes that are not UTF-8", hex(&seq)),
            })?;
            let c = text.chars().next().ok_or_else(|| LoadError::Table {
                charset: charset.to_string(),
                reason: format!("the server converted {} to nothing", hex(&seq)),
            })?;
            Ok((seq, c))
        })
        .collect()
}

/// The encodings of `charsets` at the server behind `conn`: built in where sitesync has one,
/// else learnt from the server (once per server version and process).
pub async fn load(conn: &mut mysql_async::Conn, charsets: &[String]) -> Result<HashMap<String, TextEncoding>, LoadError> {
    let mut out = HashMap::new();
    let mut version: Option<String> = None;
    for name in charsets {
        let builtin = TextEncoding::of_charset(name);
        if builtin != TextEncoding::Unsupported || !is_charset_name(name) {
            out.insert(name.clone(), builtin);
            continue;
        }
        if version.is_none() {
            let v: Option<String> =
                conn.query_first("SELECT @@version").await.map_err(|source| LoadError::Server { charset: name.clone(), source })?;
            version = Some(v.unwrap_or_default());
        }
        let cache_key = (version.clone().unwrap_or_default(), name.clone());
        let cached = learnt().lock().expect("charset cache").get(&cache_key).copied();
        let table = match cached {
            Some(t) => t,
            None => {
                let maxlen: Option<u32> = conn
                    .exec_first("SELECT MAXLEN FROM information_schema.CHARACTER_SETS WHERE CHARACTER_SET_NAME = ?", (name,))
                    .await
                    .map_err(|source| LoadError::Server { charset: name.clone(), source })?;
                let mut pairs = probe(conn, name, None).await?;
                if maxlen.unwrap_or(1) >= 3 {
                    let mut starts = [false; 256];
                    for (seq, _) in &pairs {
                        starts[seq[0] as usize] = true;
                    }
                    let leads: Vec<u8> = (0x80..=0xFFu8).filter(|&b| !starts[b as usize]).collect();
                    if !leads.is_empty() {
                        pairs.extend(probe(conn, name, Some(&leads)).await?);
                    }
                }
                let table =
                    CharsetTable::from_sequences(name, pairs).map_err(|reason| LoadError::Table { charset: name.clone(), reason })?;
                let table: &'static CharsetTable = Box::leak(Box::new(table));
                learnt().lock().expect("charset cache").insert(cache_key, table);
                table
            }
        };
        out.insert(name.clone(), TextEncoding::Table(table));
    }
    Ok(out)
}

/// The character sets the tables of `database` use, and its and its tables' defaults (the
/// character sets an `ALTER TABLE ... ADD` column would get).
pub async fn in_use(conn: &mut mysql_async::Conn, database: &str) -> Result<Vec<String>, mysql_async::Error> {
    conn.exec(
        "SELECT CHARACTER_SET_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND CHARACTER_SET_NAME IS NOT NULL \
         UNION SELECT c.CHARACTER_SET_NAME FROM information_schema.TABLES AS t \
           JOIN information_schema.COLLATIONS AS c ON c.COLLATION_NAME = t.TABLE_COLLATION WHERE t.TABLE_SCHEMA = ? \
         UNION SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
        (database, database, database),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> CharsetTable {
        // A made-up EUC-like set: ASCII, two-byte 0xA1xx, three-byte 0x8Fxxxx.
        let mut pairs: Vec<(Vec<u8>, char)> = (0..0x80u8).map(|b| (vec![b], b as char)).collect();
        pairs.push((vec![0xA1, 0xA1], '甲'));
        pairs.push((vec![0x8F, 0xA1, 0xA1], '乙'));
        CharsetTable::from_sequences("test", pairs).unwrap()
    }

    #[test]
    fn sequences_of_every_length_decode_and_encode_back() {
        let t = table();
        let bytes = [b'a', 0xA1, 0xA1, 0x8F, 0xA1, 0xA1, b'z'];
        assert_eq!(t.decode(&bytes).unwrap(), "a甲乙z");
        assert_eq!(t.encode("a甲乙z").unwrap(), bytes);
        assert_eq!(key(&[0x8F, 0xA1, 0xA2]), 0x038F_A1A2);
        assert_eq!(unkey(0x038F_A1A2), vec![0x8F, 0xA1, 0xA2]);
        assert_eq!(unkey(key(&[0])), vec![0]);
    }

    #[test]
    fn bytes_that_are_no_character_are_refused_by_name() {
        let t = table();
        let e = t.decode(&[b'a', 0xA1, 0xA2]).unwrap_err();
        assert!(e.contains("0xA1A2 at byte 1") && e.contains("test"), "{e}");
        assert!(t.decode(&[0xA1]).is_err(), "a lead byte alone");
        assert!(t.encode("€").unwrap_err().contains("U+20AC"));
        let dup = CharsetTable::from_sequences("dup", [(vec![0xA1], 'x'), (vec![0xA2], 'x')]).unwrap_err();
        assert!(dup.contains("0xA1 and 0xA2"), "{dup}");
    }

    #[test]
    fn only_charset_names_reach_the_probe() {
        assert!(is_charset_name("latin2") && is_charset_name("utf16le"));
        assert!(!is_charset_name("latin2) USING utf8mb4) --") && !is_charset_name(""));
        assert!(probe_sql("big5", None).contains("USING big5"));
        assert!(probe_sql("ujis", Some(&[0x8F])).contains("l.n IN (143)"));
    }
}
