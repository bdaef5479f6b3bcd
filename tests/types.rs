//! Capture is exact for every column type: one table at site A holds every MySQL/MariaDB column
//! type at its edges, sitesync carries it to site B (capture at A, apply at B), and B's table must
//! equal A's byte for byte (`HEX()` of every column, or the exact text where `HEX()` would round),
//! after inserts, updates (including a key change) and deletes. The records on A's topic are also
//! checked against `schemas/record-value.schema.json` and the encodings `schemas/README.md` documents.

mod common;

use std::time::Duration;

use common::{Federation, Spec};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// The 64 members of the widest SET.
fn set64_members() -> String {
    (0..64).map(|i| format!("'m{i}'")).collect::<Vec<_>>().join(",")
}

fn schema() -> String {
    format!(
        "
CREATE TABLE all_types (
  id INT NOT NULL PRIMARY KEY,
  yr YEAR NULL,
  g GEOMETRY NULL,
  t8 TINYINT NULL, t8u TINYINT UNSIGNED NULL,
  t16 SMALLINT NULL, t16u SMALLINT UNSIGNED NULL,
  t24 MEDIUMINT NULL, t24u MEDIUMINT UNSIGNED NULL,
  t32 INT NULL, t32u INT UNSIGNED NULL,
  t64 BIGINT NULL, t64u BIGINT UNSIGNED NULL,
  dec65 DECIMAL(65,30) NULL, dec0 DECIMAL(65,0) NULL, dec52 DECIMAL(5,2) NULL, decu DECIMAL(10,4) UNSIGNED NULL,
  fl FLOAT NULL, db DOUBLE NULL,
  b1 BIT(1) NULL, b7 BIT(7) NULL, b8 BIT(8) NULL, b9 BIT(9) NULL, b33 BIT(33) NULL, b64 BIT(64) NULL,
  d DATE NULL,
  dt0 DATETIME NULL, dt1 DATETIME(1) NULL, dt2 DATETIME(2) NULL, dt3 DATETIME(3) NULL,
  dt4 DATETIME(4) NULL, dt5 DATETIME(5) NULL, dt6 DATETIME(6) NULL,
  ts0 TIMESTAMP NULL DEFAULT NULL, ts1 TIMESTAMP(1) NULL DEFAULT NULL, ts2 TIMESTAMP(2) NULL DEFAULT NULL,
  ts3 TIMESTAMP(3) NULL DEFAULT NULL, ts4 TIMESTAMP(4) NULL DEFAULT NULL, ts5 TIMESTAMP(5) NULL DEFAULT NULL,
  ts6 TIMESTAMP(6) NULL DEFAULT NULL,
  tm0 TIME NULL, tm1 TIME(1) NULL, tm2 TIME(2) NULL, tm3 TIME(3) NULL, tm4 TIME(4) NULL, tm5 TIME(5) NULL, tm6 TIME(6) NULL,
  c_u CHAR(20) NULL, v_u VARCHAR(300) NULL, tx_u TEXT NULL,
  c_l CHAR(20) CHARACTER SET latin1 NULL, v_l VARCHAR(300) CHARACTER SET latin1 NULL, tx_l TEXT CHARACTER SET latin1 NULL,
  c_g CHAR(20) CHARACTER SET gbk NULL, v_g VARCHAR(300) CHARACTER SET gbk NULL, tx_g MEDIUMTEXT CHARACTER SET gbk NULL,
  v_a VARCHAR(200) CHARACTER SET ascii NULL, v_u3 VARCHAR(50) CHARACTER SET utf8mb3 NULL,
  bn BINARY(16) NULL, vb VARBINARY(300) NULL, tb TINYBLOB NULL, bl BLOB NULL, mb MEDIUMBLOB NULL, lb LONGBLOB NULL,
  e ENUM('a','b,c','é','中文','😀') NULL,
  e_l ENUM('x','é','ÿ') CHARACTER SET latin1 NULL,
  e_g ENUM('甲','乙','·') CHARACTER SET gbk NULL,
  e_empty ENUM('','x') NULL,
  st SET('a','b','c','d','e','f','g','h','i') NULL,
  st_l SET('é','ß','x') CHARACTER SET latin1 NULL,
  st64 SET({}) NULL,
  j JSON NULL,
  u UUID NULL, i6 INET6 NULL, i4 INET4 NULL,
  gen_v BIGINT AS (t32 + 1) VIRTUAL,
  gen_s VARCHAR(400) AS (CONCAT(v_u, '!')) STORED,
  nn INT NOT NULL DEFAULT 7
) ENGINE=InnoDB;
CREATE TABLE keyed (
  k_bin VARBINARY(16) NOT NULL,
  k_l VARCHAR(20) CHARACTER SET latin1 NOT NULL,
  k_g VARCHAR(20) CHARACTER SET gbk NOT NULL,
  k_ts TIMESTAMP(6) NOT NULL DEFAULT '2000-01-01 00:00:00',
  k_dec DECIMAL(65,30) NOT NULL,
  k_u BIGINT UNSIGNED NOT NULL,
  k_t TIME(6) NOT NULL,
  v VARCHAR(20) NULL,
  PRIMARY KEY (k_bin, k_l, k_g, k_ts, k_dec, k_u, k_t)
) ENGINE=InnoDB
",
        set64_members()
    )
}

const ROUTE: &str = r#"
[entities.all_types]
table = "all_types"

[entities.keyed]
table = "keyed"

[[routes]]
from = ["a"]
to = ["b"]
entities = ["all_types", "keyed"]
"#;

fn hex(bytes: impl IntoIterator<Item = u8>) -> String {
    bytes.into_iter().map(|b| format!("{b:02X}")).collect()
}

/// Every byte value.
fn all_bytes() -> String {
    hex(0..=255u8)
}

/// Every two-byte sequence MySQL's gbk accepts (lead 0x81-0xFE, trail 0x40-0x7E and 0x80-0xFE),
/// after the ASCII bytes: 47,880 + 128 bytes, including the 2,149 sequences that MySQL stores
/// but cannot convert to Unicode (user-defined areas, A2E3, A3A0, ...).
fn all_gbk() -> String {
    let mut out: Vec<u8> = (0..=0x7Fu8).collect();
    for lead in 0x81..=0xFEu8 {
        for trail in (0x40..=0x7Eu8).chain(0x80..=0xFE) {
            out.push(lead);
            out.push(trail);
        }
    }
    hex(out)
}

/// `(column, SQL expression)` pairs to `INSERT INTO all_types (...) VALUES (...)`.
fn insert(session: &str, cols: &[(&str, String)]) -> String {
    let names: Vec<&str> = cols.iter().map(|(c, _)| *c).collect();
    let values: Vec<&str> = cols.iter().map(|(_, v)| v.as_str()).collect();
    format!(
        "{session} INSERT INTO all_types ({}) VALUES ({}); SET time_zone = DEFAULT, sql_mode = DEFAULT",
        names.join(", "),
        values.join(", ")
    )
}

fn s(v: &str) -> String {
    v.to_string()
}

/// Row 1: every column at its minimum, written in a +09:00 session.
fn row_min() -> Vec<(&'static str, String)> {
    let nines35 = "9".repeat(35);
    let nines30 = "9".repeat(30);
    let mut cols = vec![
        ("id", s("1")),
        ("yr", s("1901")),
        ("g", s("ST_GeomFromText('POINT(1.5 -2.25)')")),
        ("t8", s("-128")),
        ("t8u", s("0")),
        ("t16", s("-32768")),
        ("t16u", s("0")),
        ("t24", s("-8388608")),
        ("t24u", s("0")),
        ("t32", s("-2147483648")),
        ("t32u", s("0")),
        ("t64", s("-9223372036854775808")),
        ("t64u", s("0")),
        ("dec65", format!("-{nines35}.{nines30}")),
        ("dec0", format!("-{}", "9".repeat(65))),
        ("dec52", s("-999.99")),
        ("decu", s("0")),
        ("fl", s("-3.4028234663852886e38")),
        ("db", s("-1.7976931348623157e308")),
        ("b1", s("b'0'")),
        ("b7", s("0")),
        ("b8", s("0")),
        ("b9", s("0")),
        ("b33", s("0")),
        ("b64", s("0")),
        ("d", s("'1000-01-01'")),
        ("dt0", s("'1000-01-01 00:00:00'")),
    ];
    for n in 1..=6 {
        cols.push((["dt1", "dt2", "dt3", "dt4", "dt5", "dt6"][n - 1], format!("'1000-01-01 00:00:00.{}'", "0".repeat(n))));
    }
    // 1970-01-01 00:00:01 UTC, the smallest TIMESTAMP, as a +09:00 session writes it.
    cols.push(("ts0", s("'1970-01-01 09:00:01'")));
    for n in 1..=6 {
        cols.push((["ts1", "ts2", "ts3", "ts4", "ts5", "ts6"][n - 1], format!("'1970-01-01 09:00:01.{}1'", "0".repeat(n - 1))));
    }
    cols.push(("tm0", s("'-838:59:59'")));
    for n in 1..=6 {
        cols.push((["tm1", "tm2", "tm3", "tm4", "tm5", "tm6"][n - 1], format!("'-838:59:59.{}'", "9".repeat(n))));
    }
    cols.extend([
        ("c_u", s("''")),
        ("v_u", s("''")),
        ("tx_u", s("''")),
        ("c_l", s("''")),
        ("v_l", s("''")),
        ("tx_l", s("''")),
        ("c_g", s("''")),
        ("v_g", s("''")),
        ("tx_g", s("''")),
        ("v_a", s("''")),
        ("v_u3", s("''")),
        ("bn", s("x'00000000000000000000000000000000'")),
        ("vb", s("''")),
        ("tb", s("''")),
        ("bl", s("''")),
        ("mb", s("''")),
        ("lb", s("''")),
        ("e", s("'a'")),
        ("e_l", s("'x'")),
        ("e_g", s("'甲'")),
        ("e_empty", s("''")),
        ("st", s("''")),
        ("st_l", s("''")),
        ("st64", s("''")),
        ("j", s("'{}'")),
        ("u", s("'00000000-0000-0000-0000-000000000000'")),
        ("i6", s("'::'")),
        ("i4", s("'0.0.0.0'")),
        ("nn", s("-2147483648")),
    ]);
    cols
}

/// Row 2: every column at its maximum, written in a -05:00 session.
fn row_max() -> Vec<(&'static str, String)> {
    let nines35 = "9".repeat(35);
    let nines30 = "9".repeat(30);
    let mut cols = vec![
        ("id", s("2")),
        ("yr", s("2155")),
        ("g", s("ST_GeomFromText('POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))')")),
        ("t8", s("127")),
        ("t8u", s("255")),
        ("t16", s("32767")),
        ("t16u", s("65535")),
        ("t24", s("8388607")),
        ("t24u", s("16777215")),
        ("t32", s("2147483647")),
        ("t32u", s("4294967295")),
        ("t64", s("9223372036854775807")),
        ("t64u", s("18446744073709551615")),
        ("dec65", format!("{nines35}.{nines30}")),
        ("dec0", "9".repeat(65)),
        ("dec52", s("999.99")),
        ("decu", s("999999.9999")),
        ("fl", s("3.4028234663852886e38")),
        ("db", s("1.7976931348623157e308")),
        ("b1", s("b'1'")),
        ("b7", s("b'1111111'")),
        ("b8", s("b'11111111'")),
        ("b9", s("b'111111111'")),
        ("b33", s("x'01FFFFFFFF'")),
        ("b64", s("x'FFFFFFFFFFFFFFFF'")),
        ("d", s("'9999-12-31'")),
        ("dt0", s("'9999-12-31 23:59:59'")),
    ];
    for n in 1..=6 {
        cols.push((["dt1", "dt2", "dt3", "dt4", "dt5", "dt6"][n - 1], format!("'9999-12-31 23:59:59.{}'", "9".repeat(n))));
    }
    // 2038-01-19 03:14:07 UTC, the largest TIMESTAMP, as a -05:00 session writes it.
    cols.push(("ts0", s("'2038-01-18 22:14:07'")));
    for n in 1..=6 {
        cols.push((["ts1", "ts2", "ts3", "ts4", "ts5", "ts6"][n - 1], format!("'2038-01-18 22:14:07.{}'", "9".repeat(n))));
    }
    cols.push(("tm0", s("'838:59:59'")));
    for n in 1..=6 {
        cols.push((["tm1", "tm2", "tm3", "tm4", "tm5", "tm6"][n - 1], format!("'838:59:59.{}'", "9".repeat(n))));
    }
    cols.extend([
        ("c_u", s("'😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀'")),
        ("v_u", format!("'{}'", "𝄞中".repeat(150))),
        ("tx_u", format!("'{}'", "é😀".repeat(5000))),
        ("c_l", s("x'FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF'")),
        ("v_l", format!("x'{}'", "FF".repeat(300))),
        ("tx_l", format!("x'{}'", "FF".repeat(65535))),
        ("c_g", format!("x'{}'", "FEFE".repeat(20))),
        ("v_g", format!("x'{}'", "FEA0".repeat(300))),
        ("tx_g", format!("x'{}'", "D6D0".repeat(100_000))),
        ("v_a", format!("'{}'", "~".repeat(50))),
        ("v_u3", format!("'{}'", "\u{FFFF}".repeat(50))),
        ("bn", s("x'FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF'")),
        ("vb", format!("x'{}'", "FF".repeat(300))),
        ("tb", format!("x'{}'", "FF".repeat(255))),
        ("bl", format!("x'{}'", "FF".repeat(65535))),
        ("mb", format!("x'{}'", "FF".repeat(70_000))),
        ("lb", format!("x'{}'", "FF".repeat(200_000))),
        ("e", s("'😀'")),
        ("e_l", s("'ÿ'")),
        ("e_g", s("'·'")),
        ("e_empty", s("'x'")),
        ("st", s("'a,b,c,d,e,f,g,h,i'")),
        ("st_l", s("'é,ß,x'")),
        ("st64", format!("'{}'", (0..64).map(|i| format!("m{i}")).collect::<Vec<_>>().join(","))),
        ("j", s(r#"'{"big": 18446744073709551615, "neg": -9223372036854775808, "f": 1.5e300, "s": "😀\\"\\\\\\u0000", "a": [1, 2.50, null, true, {}], "k": {"z": 1, "a": 2}}'"#)),
        ("u", s("'ffffffff-ffff-ffff-ffff-ffffffffffff'")),
        ("i6", s("'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'")),
        ("i4", s("'255.255.255.255'")),
        ("nn", s("2147483647")),
    ]);
    cols
}

/// Row 3: zeros, zero dates, top bits only.
fn row_zero() -> Vec<(&'static str, String)> {
    let mut cols = vec![
        ("id", s("3")),
        ("yr", s("0")),
        ("t8", s("0")),
        ("t8u", s("0")),
        ("t16", s("0")),
        ("t24", s("-1")),
        ("t24u", s("8388608")),
        ("t32", s("0")),
        ("t64", s("-1")),
        ("t64u", s("9223372036854775808")),
        ("dec65", s("0")),
        ("dec0", s("0")),
        ("dec52", s("0")),
        ("decu", s("0.0001")),
        ("fl", s("0")),
        ("db", s("0")),
        ("b1", s("b'1'")),
        ("b7", s("b'1000000'")),
        ("b8", s("b'10000000'")),
        ("b9", s("b'100000000'")),
        ("b33", s("x'0100000000'")),
        ("b64", s("x'8000000000000000'")),
        ("d", s("'0000-00-00'")),
        ("dt0", s("'0000-00-00 00:00:00'")),
        ("ts0", s("'0000-00-00 00:00:00'")),
        ("tm0", s("'00:00:00'")),
    ];
    for i in 0..6 {
        let zeros = "0".repeat(i + 1);
        cols.push((["dt1", "dt2", "dt3", "dt4", "dt5", "dt6"][i], format!("'0000-00-00 00:00:00.{zeros}'")));
        cols.push((["ts1", "ts2", "ts3", "ts4", "ts5", "ts6"][i], format!("'0000-00-00 00:00:00.{zeros}'")));
        cols.push((["tm1", "tm2", "tm3", "tm4", "tm5", "tm6"][i], format!("'00:00:00.{zeros}'")));
    }
    cols.extend([
        ("c_u", s("'0'")),
        ("bn", s("x'80'")),
        ("vb", s("x'00'")),
        ("e", s("'b,c'")),
        ("e_empty", s("''")),
        ("st", s("'i'")),
        ("st64", s("'m63'")),
        ("j", s("'0'")),
    ]);
    cols
}

/// Row 5: text in every character set, every byte value, fractional negative TIMEs.
fn row_text() -> Vec<(&'static str, String)> {
    vec![
        ("id", s("5")),
        ("yr", s("2000")),
        ("t24", s("-3")),
        ("t24u", s("3")),
        ("t64u", s("9007199254740993")),
        ("t64", s("-9007199254740993")),
        ("dec65", s("-0.000000000000000000000000000001")),
        ("dec0", s("-1")),
        ("dec52", s("-0.01")),
        ("decu", s("1000.0001")),
        ("fl", s("1.1")),
        ("db", s("0.1")),
        ("b33", s("x'0080000001'")),
        ("d", s("'2024-02-29'")),
        ("dt0", s("'2024-02-00 10:00:00'")),
        ("dt1", s("'2024-00-00 00:00:00.5'")),
        ("dt6", s("'2024-02-29 23:59:59.000001'")),
        ("ts1", s("'2024-02-29 12:34:56.5'")),
        ("ts6", s("'2024-02-29 12:34:56.000001'")),
        ("tm0", s("'-00:00:01'")),
        ("tm1", s("'-00:00:00.1'")),
        ("tm2", s("'-00:00:01.01'")),
        ("tm3", s("'-00:00:00.001'")),
        ("tm4", s("'-12:00:00.0001'")),
        ("tm5", s("'-00:00:00.00001'")),
        ("tm6", s("'-00:00:00.000001'")),
        ("c_u", s("'中文😀 é'")),
        ("v_u", s(r"'Ünïcödé 😀 𝄞 中文 🇨🇳 a\0b tab\there ''quote'' \\backslash'")),
        ("tx_u", s("'👩\u{200D}👩\u{200D}👧\u{200D}👦 combining e\u{301} \u{FEFF}bom \u{10FFFF}'")),
        ("c_l", s("x'E9FF80A0'")),
        ("v_l", format!("x'{}'", hex(0x80..=0xFFu8))),
        ("tx_l", format!("x'{}'", all_bytes())),
        ("c_g", s("x'D6D0CEC4A140'")),
        ("v_g", s("x'A140A2E3A3A0A1A1FE50A6D9A8BCA989D6D0CEC4'")),
        ("tx_g", format!("x'{}'", all_gbk())),
        ("v_a", format!("x'{}'", hex(0..=0x7Fu8))),
        ("v_u3", s("'中文é€'")),
        ("bn", s("x'00FF8020000000000000000000000020'")),
        ("vb", format!("x'{}'", all_bytes())),
        ("tb", format!("x'{}'", hex(1..=255u8))),
        ("bl", format!("x'{}'", all_bytes())),
        ("mb", format!("x'{}'", all_bytes().repeat(300))),
        ("lb", format!("x'{}'", all_bytes().repeat(1000))),
        ("e", s("'中文'")),
        ("e_l", s("'é'")),
        ("e_g", s("'乙'")),
        ("e_empty", s("'x'")),
        ("st", s("'a,c,e,i'")),
        ("st_l", s("'é,x'")),
        ("st64", s("'m0,m31,m32,m63'")),
        ("j", s(r#"'[1, "中文", {"k": [true, false, null]}, -0.0, 1e-7]'"#)),
        // A time-based (version 1) UUID, which MariaDB stores with its time fields swapped.
        ("u", s("'6ccd780c-baba-1026-9564-5b8c656024db'")),
        ("i6", s("'2001:db8::ff00:42:8329'")),
        ("i4", s("'192.168.0.1'")),
    ]
}

/// Row 6: more edges (small and subnormal floats, times over 24 h, fractional timestamps).
fn row_more() -> Vec<(&'static str, String)> {
    vec![
        ("id", s("6")),
        ("yr", s("1999")),
        ("t8", s("-1")),
        ("t16", s("-1")),
        ("t32", s("-1")),
        ("t64", s("-9223372036854775807")),
        ("t64u", s("18446744073709551614")),
        ("dec65", s("100000000000000000000000000.000000001000000000000000000001")),
        ("dec0", s("1000000000000000000000000000000000000000000000000000000000000000")),
        ("dec52", s("0.5")),
        ("fl", s("1.17549435e-38")),
        ("db", s("5e-324")),
        ("b64", s("x'8000000000000001'")),
        ("dt3", s("'1999-12-31 23:59:59.999'")),
        ("ts3", s("'2000-01-01 08:59:59.999'")),
        ("tm0", s("'24:00:00'")),
        ("tm1", s("'100:00:00.5'")),
        ("tm2", s("'-25:30:00.99'")),
        ("tm3", s("'-838:00:00.5'")),
        ("tm6", s("'-838:59:58.999999'")),
        ("v_u", s("'x'")),
        ("c_g", s("x'A1A1'")),
        ("bn", s("x'20'")),
        ("e", s("'é'")),
        ("st", s("'b'")),
        ("j", s("'null'")),
    ]
}

/// Compares every column of `table` at A and B, exactly: `HEX()` for strings, binaries, BIT,
/// ENUM and SET (plus the ENUM index and SET bits), the server's own text for numbers and
/// temporals (HEX would round them), UNIX_TIMESTAMP for TIMESTAMP.
async fn exact_select(fed: &Federation, table: &str, order_by: &str) -> String {
    let cols = fed
        .rows(
            "a",
            &format!(
                "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION"
            ),
        )
        .await;
    let exprs: Vec<String> = cols
        .iter()
        .map(|c| {
            let (name, ty) = (&c[0], c[1].as_str());
            let e = match ty {
                "float" | "double" => format!("CONCAT(`{name}` + 0e0)"),
                "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "decimal" | "year" | "date" | "datetime" | "time" => {
                    format!("CAST(`{name}` AS CHAR)")
                }
                "timestamp" => format!("CONCAT(UNIX_TIMESTAMP(`{name}`), ' ', CAST(`{name}` AS CHAR))"),
                "enum" | "set" => format!("CONCAT(HEX(`{name}`), ' ', `{name}` + 0)"),
                _ => format!("HEX(`{name}`)"),
            };
            format!("COALESCE({e}, 'NULL')")
        })
        .collect();
    format!("SELECT {} FROM `{table}` ORDER BY {order_by}", exprs.join(", "))
}

async fn wait_equal(fed: &mut Federation, table: &str, order_by: &str, what: &str) -> Vec<Vec<String>> {
    let q = exact_select(fed, table, order_by).await;
    let (pa, pb) = (fed.pool("a").clone(), fed.pool("b").clone());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (a, b) = (common::rows(&pa, &q).await, common::rows(&pb, &q).await);
        if a == b {
            return a;
        }
        fed.assert_running();
        if std::time::Instant::now() > deadline {
            fed.dump_logs();
            let cols = fed
                .rows("a", &format!("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION"))
                .await;
            let mut report = format!("{what}: {table} differs: A has {} rows, B has {}\n", a.len(), b.len());
            let cut = |v: &str| if v.len() > 160 { format!("{}... ({} chars)", &v[..160], v.len()) } else { v.to_string() };
            // Rows by their first column (the key, or its first part).
            for ra in &a {
                match b.iter().find(|rb| rb[0] == ra[0]) {
                    None => report.push_str(&format!("  row {} is missing at B\n", cut(&ra[0]))),
                    Some(rb) => {
                        for (i, (va, vb)) in ra.iter().zip(rb.iter()).enumerate() {
                            if va != vb {
                                report.push_str(&format!("  row {} column {}: A {} | B {}\n", cut(&ra[0]), cols[i][0], cut(va), cut(vb)));
                            }
                        }
                    }
                }
            }
            for rb in b.iter().filter(|rb| !a.iter().any(|ra| ra[0] == rb[0])) {
                report.push_str(&format!("  row {} is at B only\n", cut(&rb[0])));
            }
            panic!("{report}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_type_arrives_byte_for_byte() {
    let schema = schema();
    let mut fed =
        Federation::new("types", Spec { sites: &["a", "b"], schema: &schema, entities_and_routes: ROUTE, ..Spec::default() }).await;
    fed.start("a", &["capture"]);
    fed.start("b", &["apply"]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Sessions in different time zones and SQL modes write the rows.
    fed.exec("a", &insert("SET time_zone = '+09:00';", &row_min())).await;
    fed.exec("a", &insert("SET time_zone = '-05:00';", &row_max())).await;
    fed.exec("a", &insert("SET time_zone = '+00:00';", &row_zero())).await;
    fed.exec("a", "INSERT INTO all_types (id) VALUES (4)").await;
    fed.exec("a", &insert("SET time_zone = '+09:00';", &row_text())).await;
    fed.exec("a", &insert("SET time_zone = '-05:00';", &row_more())).await;
    // ENUM's error value (index 0) exists only where a session without strict mode wrote it.
    fed.exec(
        "a",
        "SET sql_mode = ''; INSERT INTO all_types (id, e, e_empty, e_l, e_g) VALUES (7, 'no such member', 'nor this', 'zz', 'zz'); SET sql_mode = DEFAULT",
    )
    .await;
    fed.exec("a", "INSERT INTO all_types (id, e_empty, v_u) VALUES (8, '', 'the empty member, index 1')").await;
    let rows = wait_equal(&mut fed, "all_types", "id", "inserts").await;
    assert_eq!(rows.len(), 8);
    assert_eq!(
        fed.rows("a", "SELECT e + 0, e_empty + 0 FROM all_types WHERE id IN (7, 8) ORDER BY id").await,
        vec![vec!["0".to_string(), "0".to_string()], vec!["NULL".to_string(), "1".to_string()]],
        "the fixture holds ENUM index 0 and the '' member"
    );

    // Updates: every kind of value replaced by another edge, NULLs filled and made, a key change.
    fed.exec(
        "a",
        "SET time_zone = '+09:00'; UPDATE all_types SET t64u = 18446744073709551615, b64 = x'FFFFFFFFFFFFFFFF', \
         tx_g = x'A140A2E3A3A0FE4FFE50', ts6 = '2000-01-01 09:00:00.000001', tm6 = '-00:00:00.000001', d = NULL, \
         e = 'b,c', st = 'a,c,i', yr = 0, fl = -1.1, db = -0.0, dec65 = '-123.456', v_l = x'8081FF' WHERE id = 3; \
         SET time_zone = DEFAULT",
    )
    .await;
    fed.exec(
        "a",
        "UPDATE all_types SET yr = 2155, t24 = -8388608, t24u = 16777215, tm2 = '-00:00:00.01', tm1 = '-838:59:59.9', \
         ts0 = '1999-12-31 23:59:59', c_g = x'A3A0', bn = x'FF', e_empty = '' WHERE id = 4",
    )
    .await;
    let all_nullable: Vec<String> = fed
        .rows("a", "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'all_types' AND IS_NULLABLE = 'YES' AND EXTRA = ''")
        .await
        .into_iter()
        .map(|r| format!("`{}` = NULL", r[0]))
        .collect();
    fed.exec("a", &format!("UPDATE all_types SET {} WHERE id = 2", all_nullable.join(", "))).await;
    fed.exec("a", "UPDATE all_types SET id = 60 WHERE id = 6").await;
    fed.exec("a", "DELETE FROM all_types WHERE id IN (1, 5)").await;
    let rows = wait_equal(&mut fed, "all_types", "id", "updates and deletes").await;
    assert_eq!(rows.iter().map(|r| r[0].clone()).collect::<Vec<_>>(), ["2", "3", "4", "7", "8", "60"]);

    // A composite primary key of binary, latin1, gbk, TIMESTAMP, DECIMAL, BIGINT UNSIGNED and
    // TIME: updates and deletes find their row by exact key values.
    fed.exec(
        "a",
        "SET time_zone = '+09:00'; INSERT INTO keyed VALUES \
         (x'00FF', x'E9FF', x'A140D6D0', '2024-02-29 09:00:00.123456', '-0.000000000000000000000000000001', 18446744073709551615, '-838:59:59.000001', 'one'), \
         (x'', '', '', '1970-01-01 09:00:01', '0', 0, '00:00:00', 'two'), \
         (x'80', x'80', x'A3A0', '2038-01-19 12:14:07.999999', '1', 1, '838:59:59', 'three'); SET time_zone = DEFAULT",
    )
    .await;
    wait_equal(&mut fed, "keyed", "k_bin, k_l, k_g", "keyed inserts").await;
    fed.exec("a", "UPDATE keyed SET v = 'ONE' WHERE k_bin = x'00FF'").await;
    fed.exec("a", "UPDATE keyed SET k_bin = x'FF00', v = 'moved' WHERE k_bin = x'80'").await;
    fed.exec("a", "DELETE FROM keyed WHERE k_bin = x''").await;
    let keyed = wait_equal(&mut fed, "keyed", "k_bin, k_l, k_g", "keyed updates and deletes").await;
    assert_eq!(keyed.len(), 2);

    check_records(&fed);
}

fn load_schema(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The record structs as serialized match the schemas (no stack needed), and the schemas
/// reject what the applier would reject.
#[test]
fn record_structs_match_the_schemas() {
    use sitesync::record::{self, ChangeRecord, Op, RefKey, SitesyncMeta, Source, TransactionInfo};
    let (value_schema, key_schema) = (load_schema("record-value.schema.json"), load_schema("record-key.schema.json"));
    let row =
        |pairs: &[(&str, Value)]| -> serde_json::Map<String, Value> { pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() };
    let key = row(&[("token", Value::from("alice"))]);
    let record = ChangeRecord {
        op: Op::Update,
        before: Some(row(&[("id", Value::from(5)), ("n", Value::from(u64::MAX)), ("d", Value::from("1.50")), ("x", Value::Null)])),
        after: Some(row(&[("id", Value::from(5)), ("n", Value::from(-1)), ("f", Value::from(0.1))])),
        source: Source {
            connector: "sitesync".into(),
            version: "0.1.0".into(),
            name: "sdu".into(),
            site: "jinan".into(),
            db: "lims".into(),
            table: "user".into(),
            server_id: 1,
            gtid: Some("0-1-42".into()),
            file: "mysql-bin.000003".into(),
            pos: 1234,
            row: 0,
            ts_ms: 1_700_000_300_000,
            snapshot: "false".into(),
        },
        ts_ms: 1_700_000_300_123,
        transaction: TransactionInfo { id: "0-1-42".into(), total_order: 3, data_collection_order: 1 },
        sitesync: SitesyncMeta {
            v: record::RECORD_VERSION,
            origin: "jinan".into(),
            entity: "user".into(),
            key: key.clone(),
            last_in_transaction: true,
            stamp: Some(sitesync::stamp::Stamp { version: "1700000300".into(), depth: 1, site: "qingdao".into() }),
            refs: vec![RefKey { entity: "tag".into(), id: Value::from(7), key: row(&[("name", Value::from("x"))]) }],
            to: Some("qingdao".into()),
        },
    };
    let value = serde_json::to_value(&record).unwrap();
    schema_check::validate(&value_schema, &value_schema, &value, "value").unwrap();
    let key_value: Value = serde_json::from_slice(&record::key_bytes("user", &key)).unwrap();
    schema_check::validate(&key_schema, &key_schema, &key_value, "key").unwrap();

    let mut no_refs = record.clone();
    no_refs.sitesync.refs.clear();
    no_refs.source.gtid = None;
    schema_check::validate(&value_schema, &value_schema, &serde_json::to_value(&no_refs).unwrap(), "value").unwrap();

    // What the schemas refuse: a delete with an after image, a missing field, an unknown one.
    let mut delete = value.clone();
    delete["op"] = Value::from("d");
    assert!(schema_check::validate(&value_schema, &value_schema, &delete, "value").is_err());
    let mut missing = value.clone();
    missing["source"].as_object_mut().unwrap().remove("pos");
    assert!(schema_check::validate(&value_schema, &value_schema, &missing, "value").is_err());
    let mut extra = value.clone();
    extra["sitesync"]["surprise"] = Value::from(1);
    assert!(schema_check::validate(&value_schema, &value_schema, &extra, "value").is_err());
    let mut nested = value;
    nested["after"]["id"] = serde_json::json!({"not": "a column value"});
    assert!(schema_check::validate(&value_schema, &value_schema, &nested, "value").is_err());
}

/// Reads A's topic and checks every record against the schemas and the documented encodings.
fn check_records(fed: &Federation) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let topic = format!("{}.a", fed.topic_prefix);
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka())
        .set("group.id", format!("types-check-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let total = fed.topic_records("a");
    let (value_schema, key_schema) = (load_schema("record-value.schema.json"), load_schema("record-key.schema.json"));
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (records.len() as i64) < total {
        assert!(std::time::Instant::now() < deadline, "read {} of {total} records", records.len());
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else { continue };
        let msg = msg.unwrap();
        let key: Value = serde_json::from_slice(msg.key().unwrap()).unwrap();
        let value: Value = serde_json::from_slice(msg.payload().unwrap()).unwrap();
        if let Err(e) = schema_check::validate(&key_schema, &key_schema, &key, "key") {
            panic!("key {key} does not match schemas/record-key.schema.json: {e}");
        }
        if let Err(e) = schema_check::validate(&value_schema, &value_schema, &value, "value") {
            panic!("record {value} does not match schemas/record-value.schema.json: {e}");
        }
        records.push(value);
    }
    let after = |id: i64| -> &serde_json::Map<String, Value> {
        records
            .iter()
            .find(|r| r["op"] == "c" && r["source"]["table"] == "all_types" && r["after"]["id"] == id)
            .and_then(|r| r["after"].as_object())
            .unwrap_or_else(|| panic!("no insert record for id {id}"))
    };
    // The encodings schemas/README.md documents.
    let max = after(2);
    assert_eq!(max["t64u"].to_string(), "18446744073709551615");
    assert_eq!(max["t64"].to_string(), "9223372036854775807");
    assert_eq!(max["dec65"], Value::from(format!("{}.{}", "9".repeat(35), "9".repeat(30))));
    assert_eq!(max["ts6"], "2038-01-19T03:14:07.999999Z");
    assert_eq!(max["ts0"], "2038-01-19T03:14:07Z");
    assert_eq!(max["dt6"], "9999-12-31 23:59:59.999999");
    assert_eq!(max["tm6"], "838:59:59.999999");
    assert_eq!(max["b64"].to_string(), "18446744073709551615");
    assert_eq!(max["b1"], 1);
    assert_eq!(max["yr"], 2155);
    assert_eq!(max["e"], "😀");
    assert_eq!(max["st_l"], "é,ß,x");
    assert_eq!(max["fl"].as_f64().unwrap() as f32, f32::MAX);
    assert_eq!(max["bn"], "/////////////////////w==");
    let min = after(1);
    assert_eq!(min["t64"].to_string(), "-9223372036854775808");
    assert_eq!(min["dec65"], Value::from(format!("-{}.{}", "9".repeat(35), "9".repeat(30))));
    assert_eq!(min["ts1"], "1970-01-01T00:00:01.1Z");
    assert_eq!(min["tm3"], "-838:59:59.999");
    assert_eq!(min["t24"], -8388608);
    assert_eq!(min["yr"], 1901);
    let zero = after(3);
    assert_eq!(zero["yr"], 0);
    assert_eq!(zero["d"], "0000-00-00");
    assert_eq!(zero["dt0"], "0000-00-00 00:00:00");
    assert_eq!(zero["dt3"], "0000-00-00 00:00:00.000");
    assert_eq!(zero["ts0"], "0000-00-00T00:00:00Z");
    assert_eq!(zero["ts2"], "0000-00-00T00:00:00.00Z");
    assert_eq!(zero["b64"].to_string(), "9223372036854775808");
    assert_eq!(zero["t24"], -1);
    assert_eq!(zero["dec65"], "0.000000000000000000000000000000");
    let text = after(5);
    assert_eq!(text["c_l"], "é\u{FF}€\u{A0}");
    assert_eq!(text["v_g"].as_str().unwrap().chars().count(), 10);
    assert!(text["v_g"].as_str().unwrap().ends_with("中文"));
    assert_eq!(text["tm1"], "-00:00:00.1");
    assert_eq!(text["tm2"], "-00:00:01.01");
    assert_eq!(text["t24"], -3);
    assert_eq!(text["t64u"].to_string(), "9007199254740993");
    assert_eq!(text["fl"].to_string(), "1.1");
    assert_eq!(text["j"], r#"[1, "中文", {"k": [true, false, null]}, -0.0, 1e-7]"#);
    assert_eq!(text["ts6"], "2024-02-29T03:34:56.000001Z");
    assert_eq!(text["u"], "bM14DLq6ECaVZFuMZWAk2w==", "a UUID's native bytes");
    assert_gbk_text_is_mysqls(fed, text["tx_g"].as_str().unwrap());
    let enum_zero = after(7);
    assert_eq!(enum_zero["e"], "");
    assert_eq!(enum_zero["e_empty"], 0, "index 0 of an ENUM with an '' member is the integer 0");
    assert_eq!(after(8)["e_empty"], "");
    let nulls = after(4);
    assert!(nulls["t8"].is_null() && nulls["lb"].is_null() && nulls["ts6"].is_null());
}

/// The text capture wrote for every gbk byte sequence is the server's own conversion of it,
/// wherever the server has one (it converts 2,149 sequences it stores to `?`).
fn assert_gbk_text_is_mysqls(fed: &Federation, captured: &str) {
    let rt = tokio::runtime::Handle::current();
    let server = tokio::task::block_in_place(|| {
        rt.block_on(fed.rows("a", &format!("SELECT HEX(CONVERT(CAST(x'{}' AS CHAR CHARACTER SET gbk) USING utf8mb4))", all_gbk())))
    });
    let hex_text = &server[0][0];
    let bytes: Vec<u8> = (0..hex_text.len()).step_by(2).map(|i| u8::from_str_radix(&hex_text[i..i + 2], 16).unwrap()).collect();
    let server: Vec<char> = String::from_utf8(bytes).unwrap().chars().collect();
    let captured: Vec<char> = captured.chars().collect();
    assert_eq!(server.len(), captured.len());
    let (mut same, mut unconvertible) = (0, 0);
    for (i, (s, c)) in server.iter().zip(captured.iter()).enumerate() {
        if *s == '?' && *c != '?' {
            unconvertible += 1;
        } else {
            assert_eq!(s, c, "character {i}: the server converts it to U+{:04X}, capture wrote U+{:04X}", *s as u32, *c as u32);
            same += 1;
        }
    }
    assert_eq!((same, unconvertible), (128 + 21_791, 2_149));
}

/// A small JSON Schema (2020-12) checker for the keywords `schemas/` uses: `$ref` (local),
/// `type`, `properties`, `required`, `additionalProperties`, `enum`, `const`, `items`,
/// `minimum`, `minLength`, `anyOf`, `oneOf`. Unknown keywords fail, so the schema cannot
/// silently say more than is checked here.
mod schema_check {
    use serde_json::Value;

    const KNOWN: &[&str] = &[
        "$schema",
        "$id",
        "$defs",
        "$ref",
        "$comment",
        "title",
        "description",
        "examples",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "enum",
        "const",
        "items",
        "minimum",
        "minLength",
        "anyOf",
        "oneOf",
        "format",
        "default",
    ];

    pub fn validate(root: &Value, schema: &Value, v: &Value, path: &str) -> Result<(), String> {
        let Some(obj) = schema.as_object() else {
            return match schema {
                Value::Bool(true) => Ok(()),
                _ => Err(format!("{path}: schema forbids a value here")),
            };
        };
        for k in obj.keys() {
            if !KNOWN.contains(&k.as_str()) {
                return Err(format!("{path}: schema keyword `{k}` is not understood by the test's checker"));
            }
        }
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            let target = r
                .strip_prefix("#/")
                .ok_or_else(|| format!("{path}: only local $ref supported"))?
                .split('/')
                .try_fold(root, |node, part| node.get(part))
                .ok_or_else(|| format!("{path}: dangling $ref {r}"))?;
            validate(root, target, v, path)?;
        }
        if let Some(t) = obj.get("type") {
            let types: Vec<&str> = match t {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => return Err(format!("{path}: bad type keyword")),
            };
            let ok = types.iter().any(|t| match *t {
                "null" => v.is_null(),
                "boolean" => v.is_boolean(),
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "number" => v.is_number(),
                "integer" => v.is_i64() || v.is_u64(),
                _ => false,
            });
            if !ok {
                return Err(format!("{path}: {v} is not of type {t}"));
            }
        }
        if let Some(e) = obj.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                return Err(format!("{path}: {v} is not one of {}", Value::Array(e.clone())));
            }
        }
        if let Some(c) = obj.get("const") {
            if c != v {
                return Err(format!("{path}: {v} is not {c}"));
            }
        }
        if let (Some(min), Some(n)) = (obj.get("minimum").and_then(Value::as_f64), v.as_f64()) {
            if n < min {
                return Err(format!("{path}: {n} < minimum {min}"));
            }
        }
        if let (Some(min), Some(s)) = (obj.get("minLength").and_then(Value::as_u64), v.as_str()) {
            if (s.chars().count() as u64) < min {
                return Err(format!("{path}: shorter than {min}"));
            }
        }
        for (kw, exactly_one) in [("anyOf", false), ("oneOf", true)] {
            if let Some(list) = obj.get(kw).and_then(Value::as_array) {
                let n = list.iter().filter(|s| validate(root, s, v, path).is_ok()).count();
                if n == 0 || (exactly_one && n != 1) {
                    return Err(format!("{path}: {v} matches {n} of the {kw} schemas"));
                }
            }
        }
        if let Some(m) = v.as_object() {
            let props = obj.get("properties").and_then(Value::as_object);
            if let Some(req) = obj.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !m.contains_key(r) {
                        return Err(format!("{path}: required `{r}` is missing"));
                    }
                }
            }
            for (k, val) in m {
                let p = format!("{path}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(s) => validate(root, s, val, &p)?,
                    None => {
                        if let Some(extra) = obj.get("additionalProperties") {
                            validate(root, extra, val, &p)?;
                        }
                    }
                }
            }
        }
        if let (Some(items), Some(a)) = (obj.get("items"), v.as_array()) {
            for (i, x) in a.iter().enumerate() {
                validate(root, items, x, &format!("{path}[{i}]"))?;
            }
        }
        Ok(())
    }
}
