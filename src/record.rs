//! The change record on Kafka: a Debezium-shaped envelope with sitesync's own block, and its
//! canonical key. See `schemas/` for the JSON Schema and how each MySQL type is written.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Version of the `sitesync` block; bumped on incompatible change.
pub const RECORD_VERSION: u32 = 1;

/// A row image: column name -> encoded value (excluded columns absent).
pub type Row = Map<String, Value>;

/// The operation of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Insert.
    #[serde(rename = "c")]
    Create,
    /// Update.
    #[serde(rename = "u")]
    Update,
    /// Delete.
    #[serde(rename = "d")]
    Delete,
    /// Snapshot read.
    #[serde(rename = "r")]
    Read,
}

impl Op {
    /// The one-letter code, as in the envelope and the metrics' `op` label.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
        }
    }
}

/// The `transaction.id` prefix of a snapshot chunk (`snapshot-<request>-<run>-<entity>-<chunk>`).
pub const SNAPSHOT_TRANSACTION_PREFIX: &str = "snapshot-";

/// Whether `transaction.id` names a snapshot chunk rather than a source transaction.
pub fn is_snapshot_transaction(id: &str) -> bool {
    id.starts_with(SNAPSHOT_TRANSACTION_PREFIX)
}

/// The message key: which entity and which natural key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordKey {
    /// Entity name from the configuration.
    pub entity: String,
    /// Natural key columns and their values, in configured order.
    pub key: Row,
}

/// `source`: where and when the change happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// Always `sitesync`.
    pub connector: String,
    /// sitesync version that captured the change.
    pub version: String,
    /// Federation name.
    pub name: String,
    /// Origin site id.
    pub site: String,
    /// Database at the origin.
    pub db: String,
    /// Table at the origin.
    pub table: String,
    /// Server id of the origin server that wrote the transaction.
    pub server_id: u32,
    /// GTID of the transaction.
    pub gtid: Option<String>,
    /// Binlog file.
    pub file: String,
    /// Position of the event in the binlog file.
    pub pos: u64,
    /// Row index within the rows event.
    pub row: u32,
    /// Commit time at the origin, milliseconds since the epoch.
    pub ts_ms: i64,
    /// `"true"` for snapshot reads, `"last"` for a snapshot's last row, else `"false"`.
    pub snapshot: String,
}

/// `transaction`: the source transaction this change belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionInfo {
    /// GTID of the transaction (or a snapshot id).
    pub id: String,
    /// 1-based position of this change among all changes of the transaction.
    pub total_order: u64,
    /// 1-based position among the changes of this table in the transaction.
    pub data_collection_order: u64,
}

/// `sitesync`: what the applier needs beyond Debezium's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SitesyncMeta {
    /// Record version ([`RECORD_VERSION`]).
    pub v: u32,
    /// Origin site id (never applied there).
    pub origin: String,
    /// Entity name.
    pub entity: String,
    /// Natural key.
    pub key: Row,
    /// True on the last change of its source transaction: the applier commits only whole ones.
    pub last_in_transaction: bool,
    /// The natural keys of the rows that reference columns point to, resolved at the origin,
    /// so that each site can find its own id for them. Absent when no reference needs it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<RefKey>,
    /// Last writer wins' stamp of the change (entities with `conflict`): its version, how many
    /// changes of that version it was made on top of, and the site whose application made it.
    /// Absent: the version column's value at depth 0, made at `origin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<crate::stamp::Stamp>,
    /// Only this site applies the record: the history an origin publishes for a joining site
    /// (the others already have it). Absent: every site routed from the origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

impl SitesyncMeta {
    /// Whether `site` applies the record (as far as its addressee goes).
    pub fn is_for(&self, site: &str) -> bool {
        self.to.as_deref().is_none_or(|to| to == site)
    }
}

/// A referenced row: the origin's id of it and its natural key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefKey {
    /// The referenced entity.
    pub entity: String,
    /// The origin's value of the reference column (the referenced row's primary key there).
    pub id: Value,
    /// The referenced row's natural key.
    pub key: Row,
}

/// The message value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// Operation.
    pub op: Op,
    /// Row before the change (updates and deletes).
    pub before: Option<Row>,
    /// Row after the change (inserts, updates, reads).
    pub after: Option<Row>,
    /// Origin and position.
    pub source: Source,
    /// When sitesync produced the record, milliseconds since the epoch.
    pub ts_ms: i64,
    /// Source transaction.
    pub transaction: TransactionInfo,
    /// sitesync's block.
    pub sitesync: SitesyncMeta,
}

/// Why a Kafka message is not a usable change record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The value is not valid JSON of the envelope's shape: where (the field's path, when the
    /// JSON itself was readable that far) and what.
    #[error("record value is not a sitesync change record: {0}")]
    Malformed(String),
    /// The message has no value.
    #[error("message has no value")]
    Empty,
    /// The record's version is newer than this sitesync understands.
    #[error("record version {0} is newer than this sitesync understands ({RECORD_VERSION})")]
    Version(u32),
    /// The record's fields contradict each other.
    #[error("inconsistent record: {0}")]
    Inconsistent(String),
}

/// Parses `bytes` as a `T`; an error names the field where it went wrong (`` `sitesync.v`:
/// invalid type ... ``). The path is found by parsing again, so the common case costs nothing more.
pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|plain| {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            // `?`: a place the parser could not name (inside text that is no JSON).
            Err(e) if e.path().to_string().split('.').any(|s| !matches!(s, "" | "?")) => {
                format!("`{}`: {}", shown(&e.path().to_string()), e.inner())
            }
            _ => plain.to_string(),
        }
    })
}

/// A name or text that came off the wire, as messages show it: control characters escaped
/// (a NUL shows as `\u{0}`), and at most 64 characters of it with the length of the rest.
pub fn shown(text: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == MAX {
            out.push_str(&format!("... ({} characters in all)", text.chars().count()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Checks that every value of `row` is a column value: null, a number or a string
/// (`schemas/`); `what` names the row in the error (`after`, `sitesync.key`).
fn column_values(row: &Row, what: &str) -> Result<(), RecordError> {
    for (column, value) in row {
        let kind = match value {
            Value::Null | Value::Number(_) | Value::String(_) => continue,
            Value::Bool(_) => "a boolean",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        };
        return Err(RecordError::Inconsistent(format!(
            "`{what}.{}` is {kind}, which is no column value (null, a number or a string)",
            shown(column)
        )));
    }
    Ok(())
}

impl ChangeRecord {
    /// Parses and checks a message value.
    pub fn from_slice(bytes: Option<&[u8]>) -> Result<Self, RecordError> {
        let bytes = bytes.ok_or(RecordError::Empty)?;
        let record: ChangeRecord = parse(bytes).map_err(RecordError::Malformed)?;
        if record.sitesync.v > RECORD_VERSION {
            return Err(RecordError::Version(record.sitesync.v));
        }
        let image_ok = match record.op {
            Op::Create | Op::Read => record.after.is_some(),
            Op::Update => record.after.is_some() && record.before.is_some(),
            Op::Delete => record.before.is_some(),
        };
        if !image_ok {
            return Err(RecordError::Inconsistent(format!("op `{}` lacks its row image", record.op.code())));
        }
        if record.sitesync.key.is_empty() {
            return Err(RecordError::Inconsistent("empty key".into()));
        }
        for (row, what) in [(&record.before, "before"), (&record.after, "after")] {
            if let Some(row) = row {
                column_values(row, what)?;
            }
        }
        column_values(&record.sitesync.key, "sitesync.key")?;
        for (i, r) in record.sitesync.refs.iter().enumerate() {
            column_values(&r.key, &format!("sitesync.refs[{i}].key"))?;
            if !matches!(r.id, Value::Null | Value::Number(_) | Value::String(_)) {
                return Err(RecordError::Inconsistent(format!("`sitesync.refs[{i}].id` is no column value (null, a number or a string)")));
            }
        }
        Ok(record)
    }
}

/// What the applier needs of a record before the whole of it: where it stands in its source
/// transaction. Read without the row images (serde skips them), so that a transaction still
/// arriving is held as compact message bytes, not as parsed rows.
#[derive(Debug, Clone)]
pub struct RecordHead {
    /// Origin site id.
    pub origin: String,
    /// Entity name.
    pub entity: String,
    /// Source transaction id.
    pub transaction_id: String,
    /// Position among the changes of the transaction (1-based).
    pub total_order: u64,
    /// The last change of its transaction.
    pub last_in_transaction: bool,
    /// Commit time at the origin, milliseconds since the epoch.
    pub ts_ms: i64,
}

impl RecordHead {
    /// Reads the head of a message value; the rest is checked when the record is read whole.
    pub fn from_slice(bytes: Option<&[u8]>) -> Result<Self, RecordError> {
        #[derive(Deserialize)]
        struct Head {
            source: HeadSource,
            transaction: HeadTransaction,
            sitesync: HeadMeta,
        }
        #[derive(Deserialize)]
        struct HeadSource {
            ts_ms: i64,
        }
        #[derive(Deserialize)]
        struct HeadTransaction {
            id: String,
            total_order: u64,
        }
        #[derive(Deserialize)]
        struct HeadMeta {
            v: u32,
            origin: String,
            entity: String,
            last_in_transaction: bool,
        }
        let head: Head = parse(bytes.ok_or(RecordError::Empty)?).map_err(RecordError::Malformed)?;
        if head.sitesync.v > RECORD_VERSION {
            return Err(RecordError::Version(head.sitesync.v));
        }
        Ok(RecordHead {
            origin: head.sitesync.origin,
            entity: head.sitesync.entity,
            transaction_id: head.transaction.id,
            total_order: head.transaction.total_order,
            last_in_transaction: head.sitesync.last_in_transaction,
            ts_ms: head.source.ts_ms,
        })
    }
}

/// The canonical message key bytes for `entity` and `key`.
pub fn key_bytes(entity: &str, key: &Row) -> Vec<u8> {
    #[derive(Serialize)]
    struct K<'a> {
        entity: &'a str,
        key: &'a Row,
    }
    serde_json::to_vec(&K { entity, key }).expect("a JSON map always serializes")
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_is_canonical_json_in_the_documented_shape() {
        let mut key = Row::new();
        key.insert("token".into(), json!("alice"));
        assert_eq!(key_bytes("user", &key), br#"{"entity":"user","key":{"token":"alice"}}"#);
    }

    #[test]
    fn rejects_records_without_their_image() {
        let v = json!({"op":"u","before":null,"after":{"id":1},
            "source":{"connector":"sitesync","version":"0","name":"f","site":"a","db":"d","table":"t","server_id":1,"gtid":"0-1-1","file":"f","pos":4,"row":0,"ts_ms":0,"snapshot":"false"},
            "ts_ms":0,"transaction":{"id":"0-1-1","total_order":1,"data_collection_order":1},
            "sitesync":{"v":1,"origin":"a","entity":"t","key":{"id":1},"last_in_transaction":true}});
        let err = ChangeRecord::from_slice(Some(v.to_string().as_bytes())).unwrap_err();
        assert!(err.to_string().contains("lacks its row image"));
        assert!(matches!(ChangeRecord::from_slice(Some(b"{")), Err(RecordError::Malformed(_))));
        assert!(matches!(ChangeRecord::from_slice(None), Err(RecordError::Empty)));
    }
}
