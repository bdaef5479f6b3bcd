//! Character sets: how the bytes of a text column become the text of a record, and back.
//!
//! A record carries text as Unicode; a value must arrive byte for byte, so every encoding here is
//! exact or refuses the value (with the bytes named), never a guess:
//! - utf8mb3, utf8mb4, ascii: the bytes are UTF-8;
//! - latin1 and gbk: tables written in code and checked against the server ([`fixed`]);
//! - ucs2, utf16, utf16le, utf32: computed (ucs2 is UTF-16 without surrogates);
//! - binary: base64;
//! - every other character set (the ISO-8859 family, cp125x, big5, sjis, ujis, euckr, ...) is
//!   learnt from the server it is read from ([`server`]): only the byte sequences that the server
//!   converts to utf8mb4 and back unchanged are characters, which is exactly what the applier's
//!   utf8mb4 text becomes again in a column of the same character set at the target.
//!
//! The applier writes text as utf8mb4 and lets its server convert it, except for gbk (written as
//! bytes with the same table, because MySQL has no conversion for 2,149 gbk characters) and
//! binary.

mod fixed;
mod server;

pub use fixed::latin1_to_string;
pub use server::{in_use, load, CharsetTable, LoadError};

/// Collation id of the `binary` character set.
pub const BINARY_CHARSET: u16 = 63;

/// How the bytes of a character column are turned into text, and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    /// utf8mb3, utf8mb4, ascii: the bytes are UTF-8.
    Utf8,
    /// MySQL's latin1 (cp1252 with the five undefined bytes mapped to C1 controls).
    Latin1,
    /// MySQL's gbk, one to one with Unicode (see [`gbk_table`]).
    Gbk,
    /// ucs2: two bytes big-endian per character, the Basic Multilingual Plane only.
    Ucs2,
    /// utf16: big-endian UTF-16.
    Utf16Be,
    /// utf16le: little-endian UTF-16.
    Utf16Le,
    /// utf32: four bytes big-endian per character.
    Utf32,
    /// A character set learnt from the server (see [`load`]).
    Table(&'static CharsetTable),
    /// Binary: base64.
    Binary,
    /// A character set sitesync cannot decode exactly; the value is refused.
    Unsupported,
}

const UNSUPPORTED: &str = "character set is not supported by this sitesync, or came into use at the source after \
                           capture connected (a restart of the site's sitesync loads it)";

impl TextEncoding {
    /// The built-in encoding of a character set name (from `information_schema`), or
    /// `Unsupported` for those that must be learnt from the server with [`load`].
    pub fn of_charset(name: &str) -> TextEncoding {
        match name {
            "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => TextEncoding::Utf8,
            "latin1" => TextEncoding::Latin1,
            "gbk" => TextEncoding::Gbk,
            "ucs2" => TextEncoding::Ucs2,
            "utf16" => TextEncoding::Utf16Be,
            "utf16le" => TextEncoding::Utf16Le,
            "utf32" => TextEncoding::Utf32,
            "binary" => TextEncoding::Binary,
            _ => TextEncoding::Unsupported,
        }
    }

    /// The column bytes as text, or why they cannot be text exactly.
    pub fn decode(self, bytes: &[u8]) -> Result<String, String> {
        match self {
            TextEncoding::Utf8 => String::from_utf8(bytes.to_vec())
                .map_err(|e| format!("bytes are not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to())),
            TextEncoding::Latin1 => Ok(latin1_to_string(bytes)),
            TextEncoding::Gbk => fixed::gbk_decode(bytes),
            TextEncoding::Ucs2 => utf16_decode(bytes, "ucs2", u16::from_be_bytes, false),
            TextEncoding::Utf16Be => utf16_decode(bytes, "utf16", u16::from_be_bytes, true),
            TextEncoding::Utf16Le => utf16_decode(bytes, "utf16le", u16::from_le_bytes, true),
            TextEncoding::Utf32 => utf32_decode(bytes),
            TextEncoding::Table(table) => table.decode(bytes),
            TextEncoding::Binary => {
                use base64::Engine as _;
                Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            TextEncoding::Unsupported => Err(UNSUPPORTED.into()),
        }
    }

    /// The text as column bytes: the inverse of [`TextEncoding::decode`].
    pub fn encode(self, text: &str) -> Result<Vec<u8>, String> {
        match self {
            TextEncoding::Utf8 => Ok(text.as_bytes().to_vec()),
            TextEncoding::Latin1 => text
                .chars()
                .map(|c| fixed::latin1_byte(c).ok_or_else(|| format!("character U+{:04X} is not in latin1", c as u32)))
                .collect(),
            TextEncoding::Gbk => fixed::gbk_encode(text),
            TextEncoding::Ucs2 => {
                let mut out = Vec::with_capacity(text.len() * 2);
                for c in text.chars() {
                    let u = u16::try_from(c as u32).map_err(|_| format!("character U+{:04X} is not in ucs2", c as u32))?;
                    out.extend_from_slice(&u.to_be_bytes());
                }
                Ok(out)
            }
            TextEncoding::Utf16Be => Ok(text.encode_utf16().flat_map(u16::to_be_bytes).collect()),
            TextEncoding::Utf16Le => Ok(text.encode_utf16().flat_map(u16::to_le_bytes).collect()),
            TextEncoding::Utf32 => Ok(text.chars().flat_map(|c| (c as u32).to_be_bytes()).collect()),
            TextEncoding::Table(table) => table.encode(text),
            TextEncoding::Binary => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| "binary value is not base64".into())
            }
            TextEncoding::Unsupported => Err(UNSUPPORTED.into()),
        }
    }
}

/// UTF-16 (or ucs2, without surrogate pairs) to text; fails on bytes that are not characters.
fn utf16_decode(bytes: &[u8], name: &str, unit: fn([u8; 2]) -> u16, pairs: bool) -> Result<String, String> {
    if !bytes.len().is_multiple_of(2) {
        return Err(format!("bytes are not valid {name} (odd length {})", bytes.len()));
    }
    let units = bytes.chunks_exact(2).map(|b| unit([b[0], b[1]]));
    let mut out = String::with_capacity(bytes.len());
    for (i, c) in char::decode_utf16(units).enumerate() {
        match c {
            Ok(c) if pairs || (c as u32) <= 0xFFFF => out.push(c),
            _ => return Err(format!("bytes are not valid {name} (a surrogate near byte {})", i * 2)),
        }
    }
    Ok(out)
}

/// utf32 to text; fails on values that are not characters.
fn utf32_decode(bytes: &[u8]) -> Result<String, String> {
    if !bytes.len().is_multiple_of(4) {
        return Err(format!("bytes are not valid utf32 (length {} is not a multiple of 4)", bytes.len()));
    }
    bytes
        .chunks_exact(4)
        .enumerate()
        .map(|(i, b)| {
            let u = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            char::from_u32(u).ok_or_else(|| format!("bytes are not valid utf32 (0x{u:08X} at byte {})", i * 4))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unicode_family_round_trips_and_refuses_what_is_not_a_character() {
        let text = "Žluťoučký 𝄞 €";
        for enc in [TextEncoding::Utf16Be, TextEncoding::Utf16Le, TextEncoding::Utf32, TextEncoding::Utf8] {
            assert_eq!(enc.decode(&enc.encode(text).unwrap()).unwrap(), text, "{enc:?}");
        }
        assert_eq!(TextEncoding::Utf16Be.encode("é𝄞").unwrap(), vec![0x00, 0xE9, 0xD8, 0x34, 0xDD, 0x1E]);
        assert_eq!(TextEncoding::Utf32.encode("é").unwrap(), vec![0, 0, 0, 0xE9]);
        assert_eq!(TextEncoding::Ucs2.decode(&[0x01, 0x7D]).unwrap(), "Ž");
        assert!(TextEncoding::Ucs2.encode("𝄞").is_err(), "ucs2 has no characters past U+FFFF");
        assert!(TextEncoding::Ucs2.decode(&[0xD8, 0x34, 0xDD, 0x1E]).is_err(), "ucs2 has no surrogate pairs");
        assert!(TextEncoding::Utf16Be.decode(&[0xD8, 0x34]).is_err(), "a lone surrogate is not a character");
        assert!(TextEncoding::Utf16Le.decode(&[0x41]).is_err());
        assert!(TextEncoding::Utf32.decode(&[0, 0x11, 0, 0]).is_err());
        assert_eq!(TextEncoding::of_charset("big5"), TextEncoding::Unsupported, "learnt from the server, not built in");
    }
}
