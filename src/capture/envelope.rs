//! The record JSON, written straight into a byte buffer: the same bytes `serde_json` writes for a
//! [`ChangeRecord`](crate::record::ChangeRecord) (field order, escaping, number formatting), but
//! without building the record. Per-site and per-table parts are rendered once; a row costs its
//! values. `tests` below checks the bytes against `serde_json::to_vec(&ChangeRecord)`.

use std::sync::Arc;

use prometheus::IntCounter;
use serde::Serialize;
use serde_json::{Map, Value};

use super::table::TableInfo;
use crate::record::{Op, RECORD_VERSION};

/// A row image in table column order: `None` where a column is excluded.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Image(pub(super) Vec<Option<Value>>);

impl Image {
    /// The value of column `i`, if the image carries it.
    pub(super) fn get(&self, i: usize) -> Option<&Value> {
        self.0.get(i).and_then(Option::as_ref)
    }

    /// The columns `indexes` by name (what a filter reads).
    pub(super) fn to_map(&self, info: &TableInfo, indexes: &[usize]) -> Map<String, Value> {
        indexes.iter().filter_map(|&i| Some((info.columns[i].name.clone(), self.get(i)?.clone()))).collect()
    }

    /// `[v1, v2, ...]` of the columns `indexes`, `null` where absent: a row's identity as text.
    pub(super) fn values_json(&self, indexes: &[usize]) -> String {
        let mut out = Vec::with_capacity(16 * indexes.len());
        out.push(b'[');
        for (n, &i) in indexes.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            json_value(&mut out, self.get(i).unwrap_or(&Value::Null));
        }
        out.push(b']');
        String::from_utf8(out).expect("JSON is UTF-8")
    }
}

/// One column name as an object member prefix: `"name":`.
pub(super) fn member(name: &str) -> Box<str> {
    let mut out = serde_json::to_string(name).expect("a string serializes");
    out.push(':');
    out.into()
}

/// Appends the JSON of `value`.
pub(super) fn json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("writing JSON to memory cannot fail");
}

/// Appends the JSON of a column value: strings by [`json_str`], the rest by serde_json.
fn json_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => json_str(out, s),
        other => json(out, other),
    }
}

/// Appends `s` as a JSON string. Most text needs no escape: it is then copied whole, which is
/// what serde_json writes too; text that needs one is left to serde_json. (Escaping byte by
/// byte was the largest single cost of writing a record.)
pub(super) fn json_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        json(out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether JSON escapes any byte of `bytes` (a control character, `"` or `\`). Decided per
/// 16 bytes without branches, which the compiler vectorises.
fn needs_escape(bytes: &[u8]) -> bool {
    let special = |b: &u8| (*b < 0x20) | (*b == b'"') | (*b == b'\\');
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, b| any | special(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(special)
}

/// `{"name":value,...}` of the image's present columns `indexes` (all columns when `None`); a
/// column missing from the image is written as `null` when `nulls` (the key), skipped otherwise.
fn object(out: &mut Vec<u8>, members: &[Box<str>], image: &Image, indexes: impl Iterator<Item = usize>, nulls: bool) {
    out.push(b'{');
    let mut first = true;
    for i in indexes {
        let value = match image.get(i) {
            Some(v) => v,
            None if nulls => &Value::Null,
            None => continue,
        };
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(members[i].as_bytes());
        json_value(out, value);
    }
    out.push(b'}');
}

/// What a table contributes to each of its records, rendered when the table map is read.
#[derive(Debug)]
pub(super) struct TableParts {
    /// `"name":` per column.
    members: Vec<Box<str>>,
    /// `"db":"..","table":"..",`
    source: Box<str>,
    /// The entity name as a JSON string.
    entity: Box<str>,
    /// Indexes of the key columns, in configured order.
    key: Vec<usize>,
}

impl TableParts {
    pub(super) fn new(entity: &str, info: &TableInfo, key: Vec<usize>) -> Self {
        let mut source = String::from("\"db\":");
        source.push_str(&serde_json::to_string(&info.db).expect("a string serializes"));
        source.push_str(",\"table\":");
        source.push_str(&serde_json::to_string(&info.table).expect("a string serializes"));
        source.push(',');
        Self {
            members: info.columns.iter().map(|c| member(&c.name)).collect(),
            source: source.into(),
            entity: serde_json::to_string(entity).expect("a string serializes").into(),
            key,
        }
    }

    /// The natural key of `image` as the record writes it: `{"col":value,...}`.
    pub(super) fn key_json(&self, image: &Image) -> String {
        let mut out = Vec::with_capacity(32);
        object(&mut out, &self.members, image, self.key.iter().copied(), true);
        String::from_utf8(out).expect("JSON is UTF-8")
    }
}

/// What every record of this capture shares, rendered once.
#[derive(Debug)]
pub(super) struct SiteParts {
    /// `"connector":"sitesync","version":"..","name":"..","site":"..",`
    source: Box<str>,
    /// `"v":1,"origin":"..",`
    meta: Box<str>,
}

impl SiteParts {
    pub(super) fn new(federation: &str, site: &str) -> Self {
        let s = |v: &str| serde_json::to_string(v).expect("a string serializes");
        Self {
            source: format!(
                "\"connector\":\"sitesync\",\"version\":{},\"name\":{},\"site\":{},",
                s(env!("CARGO_PKG_VERSION")),
                s(federation),
                s(site)
            )
            .into(),
            meta: format!("\"v\":{RECORD_VERSION},\"origin\":{},", s(site)).into(),
        }
    }
}

/// A referenced row's natural key, as `sitesync.refs` carries it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RefEntry {
    pub(super) entity: String,
    pub(super) id: Value,
    /// The key object, already JSON.
    pub(super) key: Arc<str>,
}

/// A row change that leaves the site, before it gets its place in the stream.
pub(super) struct Change {
    pub(super) op: Op,
    pub(super) before: Option<Image>,
    pub(super) after: Option<Image>,
    /// The natural key object, JSON.
    pub(super) key: String,
    pub(super) refs: Vec<RefEntry>,
    /// Last writer wins' stamp (entities with `conflict`).
    pub(super) stamp: Option<crate::stamp::Stamp>,
}

/// Where a change stands: its position and transaction.
pub(super) struct Place<'a> {
    pub(super) server_id: u32,
    pub(super) gtid: Option<&'a str>,
    pub(super) txn_id: &'a str,
    pub(super) file: &'a str,
    pub(super) pos: u64,
    pub(super) row: u32,
    /// Commit time at the origin.
    pub(super) ts_ms: i64,
    /// When the record was produced.
    pub(super) now_ms: i64,
    pub(super) snapshot: &'static str,
    pub(super) total_order: u64,
    pub(super) data_collection_order: u64,
    /// Only this site applies the record (a snapshot for a joining site).
    pub(super) to: Option<&'a str>,
}

/// A record ready for Kafka: message key and value, and its counter.
#[derive(Default)]
pub(super) struct Encoded {
    pub(super) key: Vec<u8>,
    pub(super) value: Vec<u8>,
    /// Where `false` of `last_in_transaction` starts in `value`.
    last_flag: usize,
    pub(super) counter: Option<IntCounter>,
}

impl Encoded {
    /// Flags the record as the last of its transaction.
    pub(super) fn mark_last(&mut self) {
        let at = self.last_flag;
        debug_assert_eq!(&self.value[at..at + 5], b"false");
        self.value.splice(at..at + 5, *b"true");
    }

    /// Writes the record of `change` at `place` (reusing this record's buffers).
    pub(super) fn write(&mut self, site: &SiteParts, table: &TableParts, change: &Change, place: &Place<'_>, counter: IntCounter) {
        self.counter = Some(counter);
        let k = &mut self.key;
        k.clear();
        k.extend_from_slice(b"{\"entity\":");
        k.extend_from_slice(table.entity.as_bytes());
        k.extend_from_slice(b",\"key\":");
        k.extend_from_slice(change.key.as_bytes());
        k.push(b'}');

        let v = &mut self.value;
        v.clear();
        v.extend_from_slice(b"{\"op\":\"");
        v.extend_from_slice(change.op.code().as_bytes());
        v.extend_from_slice(b"\",\"before\":");
        image_or_null(v, table, change.before.as_ref());
        v.extend_from_slice(b",\"after\":");
        image_or_null(v, table, change.after.as_ref());
        v.extend_from_slice(b",\"source\":{");
        v.extend_from_slice(site.source.as_bytes());
        v.extend_from_slice(table.source.as_bytes());
        v.extend_from_slice(b"\"server_id\":");
        json(v, &place.server_id);
        v.extend_from_slice(b",\"gtid\":");
        match place.gtid {
            Some(gtid) => json_str(v, gtid),
            None => v.extend_from_slice(b"null"),
        }
        v.extend_from_slice(b",\"file\":");
        json_str(v, place.file);
        v.extend_from_slice(b",\"pos\":");
        json(v, &place.pos);
        v.extend_from_slice(b",\"row\":");
        json(v, &place.row);
        v.extend_from_slice(b",\"ts_ms\":");
        json(v, &place.ts_ms);
        v.extend_from_slice(b",\"snapshot\":");
        json_str(v, place.snapshot);
        v.extend_from_slice(b"},\"ts_ms\":");
        json(v, &place.now_ms);
        v.extend_from_slice(b",\"transaction\":{\"id\":");
        json_str(v, place.txn_id);
        v.extend_from_slice(b",\"total_order\":");
        json(v, &place.total_order);
        v.extend_from_slice(b",\"data_collection_order\":");
        json(v, &place.data_collection_order);
        v.extend_from_slice(b"},\"sitesync\":{");
        v.extend_from_slice(site.meta.as_bytes());
        v.extend_from_slice(b"\"entity\":");
        v.extend_from_slice(table.entity.as_bytes());
        v.extend_from_slice(b",\"key\":");
        v.extend_from_slice(change.key.as_bytes());
        v.extend_from_slice(b",\"last_in_transaction\":");
        self.last_flag = v.len();
        v.extend_from_slice(b"false");
        if !change.refs.is_empty() {
            v.extend_from_slice(b",\"refs\":[");
            for (n, r) in change.refs.iter().enumerate() {
                if n > 0 {
                    v.push(b',');
                }
                v.extend_from_slice(b"{\"entity\":");
                json_str(v, &r.entity);
                v.extend_from_slice(b",\"id\":");
                json_value(v, &r.id);
                v.extend_from_slice(b",\"key\":");
                v.extend_from_slice(r.key.as_bytes());
                v.push(b'}');
            }
            v.push(b']');
        }
        if let Some(stamp) = &change.stamp {
            v.extend_from_slice(b",\"stamp\":");
            serde_json::to_writer(&mut *v, stamp).expect("a stamp serializes");
        }
        if let Some(to) = place.to {
            v.extend_from_slice(b",\"to\":");
            json_str(v, to);
        }
        v.extend_from_slice(b"}}");
    }
}

fn image_or_null(out: &mut Vec<u8>, table: &TableParts, image: Option<&Image>) {
    match image {
        Some(image) => object(out, &table.members, image, 0..image.0.len(), false),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::table::ColumnInfo;
    use crate::record::{ChangeRecord, RefKey, Row, SitesyncMeta, Source, TransactionInfo};
    use mysql_async::consts::ColumnType;
    use serde_json::json;

    fn info() -> TableInfo {
        let col = |name: &str| ColumnInfo {
            name: name.into(),
            ctype: ColumnType::MYSQL_TYPE_VARCHAR,
            meta: vec![],
            unsigned: false,
            charset: 45,
            members: vec![],
        };
        TableInfo {
            db: "d\"b".into(),
            table: "tâble".into(),
            columns: ["id", "na\"me", "avatar", "ts", "n"].iter().map(|n| col(n)).collect(),
            primary_key: vec![0],
        }
    }

    fn map(image: &Image, info: &TableInfo) -> Row {
        image.to_map(info, &(0..info.columns.len()).collect::<Vec<_>>())
    }

    /// A stamp on updates (with a depth and a quote in the site), none otherwise.
    fn stamp_of(op: Op) -> Option<crate::stamp::Stamp> {
        (op == Op::Update).then(|| crate::stamp::Stamp { version: "2024-01-01 00:00:00".into(), depth: 3, site: "s\"1".into() })
    }

    /// The bytes must be serde_json's for the same record, whatever the values.
    #[test]
    fn bytes_are_serde_jsons() {
        let info = info();
        let table = TableParts::new("us\u{e9}r", &info, vec![1, 0]);
        let site = SiteParts::new("fed\n", "zijing\u{2028}ang");
        let after = Image(vec![
            Some(json!(18446744073709551615u64)),
            Some(json!("a \"quoted\"\t\u{1}\u{7f} 中文 😀")),
            None,
            Some(json!(-1.5e300)),
            Some(Value::Null),
        ]);
        let before = Image(vec![Some(json!(-7)), Some(json!("")), None, Some(json!(0.1)), Some(json!(1.0))]);
        let refs = vec![RefEntry { entity: "user".into(), id: json!(1), key: Arc::from(r#"{"token":"admin"}"#) }];
        for (op, before, after, refs, gtid, snapshot) in [
            (Op::Update, Some(before.clone()), Some(after.clone()), refs.clone(), Some("0-1-5"), "false"),
            (Op::Create, None, Some(after.clone()), Vec::new(), None, "last"),
            (Op::Delete, Some(before.clone()), None, refs.clone(), Some("x"), "true"),
        ] {
            let key_image = after.as_ref().or(before.as_ref()).unwrap();
            let change = Change {
                op,
                before: before.clone(),
                after: after.clone(),
                key: table.key_json(key_image),
                refs: refs.clone(),
                stamp: stamp_of(op),
            };
            let place = Place {
                server_id: 4_294_967_295,
                gtid,
                txn_id: "0-1-5",
                file: "bin.000001",
                pos: u64::MAX,
                row: 3,
                ts_ms: -1,
                now_ms: 1_700_000_000_123,
                snapshot,
                total_order: 9,
                data_collection_order: 2,
                to: Some("c\u{2028}"),
            };
            let mut encoded = Encoded::default();
            encoded.write(&site, &table, &change, &place, IntCounter::new("c", "c").unwrap());
            let key: Row = serde_json::from_str(&change.key).unwrap();
            let mut record = ChangeRecord {
                op,
                before: before.as_ref().map(|i| map(i, &info)),
                after: after.as_ref().map(|i| map(i, &info)),
                source: Source {
                    connector: "sitesync".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    name: "fed\n".into(),
                    site: "zijing\u{2028}ang".into(),
                    db: info.db.clone(),
                    table: info.table.clone(),
                    server_id: place.server_id,
                    gtid: gtid.map(String::from),
                    file: place.file.into(),
                    pos: place.pos,
                    row: place.row,
                    ts_ms: place.ts_ms,
                    snapshot: snapshot.into(),
                },
                ts_ms: place.now_ms,
                transaction: TransactionInfo { id: place.txn_id.into(), total_order: 9, data_collection_order: 2 },
                sitesync: SitesyncMeta {
                    v: RECORD_VERSION,
                    origin: "zijing\u{2028}ang".into(),
                    entity: "us\u{e9}r".into(),
                    key: key.clone(),
                    last_in_transaction: false,
                    stamp: stamp_of(op),
                    refs: refs
                        .iter()
                        .map(|r| RefKey { entity: r.entity.clone(), id: r.id.clone(), key: serde_json::from_str(&r.key).unwrap() })
                        .collect(),
                    to: Some("c\u{2028}".into()),
                },
            };
            assert_eq!(String::from_utf8(encoded.value.clone()).unwrap(), serde_json::to_string(&record).unwrap());
            assert_eq!(encoded.key, crate::record::key_bytes("us\u{e9}r", &key));
            record.sitesync.last_in_transaction = true;
            encoded.mark_last();
            assert_eq!(String::from_utf8(encoded.value).unwrap(), serde_json::to_string(&record).unwrap());
        }
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut texts: Vec<String> = (0..=0x7Fu8).map(|b| format!("{}", b as char)).collect();
        texts.extend(["", "plain ascii text, long enough for two chunks of sixteen", "é中😀\u{2028}\u{7f}"].map(String::from));
        texts.extend(
            ["\u{0}!\u{1f}\u{20}#[]\u{80}ÿ", " !#$%&'()*+,-./[]^_`{|}~\u{7f}\u{80}\u{ff}", "\u{100}\u{2020}\u{225c}\u{5c00}"]
                .map(String::from),
        );
        for c in (0..0x20u8).chain([b'"', b'\\']) {
            for at in [0, 1, 15, 16, 17, 31, 40] {
                let mut t: String = "x".repeat(41);
                t.replace_range(at..at + 1, &(c as char).to_string());
                texts.push(t);
            }
        }
        for t in texts {
            let mut out = Vec::new();
            json_str(&mut out, &t);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&t).unwrap(), "{t:?}");
        }
    }

    #[test]
    fn keys_write_absent_columns_as_null() {
        let info = info();
        let table = TableParts::new("e", &info, vec![2, 0]);
        let image = Image(vec![Some(json!(5)), None, None, None, None]);
        assert_eq!(table.key_json(&image), r#"{"avatar":null,"id":5}"#);
        assert_eq!(image.values_json(&[0, 2]), "[5,null]");
    }
}
