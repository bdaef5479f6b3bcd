//! A seeded property test of everything apply reads off the wire, without servers: generated
//! records, valid and hostile (truncated and oversized JSON, wrong types at every field,
//! unknown entities, columns and keys, identifiers with backticks, quotes, NUL bytes and
//! thousands of characters, values the column cannot hold, bad base64, bytes that are not
//! UTF-8, transactions out of order), each followed by a valid one, go through the same code
//! the applier runs up to the database: the head and the origin check, the assembler, the whole
//! record, vetting, the plan's choice of path and the values and columns each statement would
//! take. Nothing may panic; every hostile record must be refused with a reason that names what
//! is wrong (or be one whose values only the server can judge: those are counted apart and
//! checked against a real server by `tests/hostile.rs`); only columns of the local table may
//! reach a statement; the valid record after it must go through.
//!
//! `SITESYNC_FUZZ_SEED=N` replays a run (the seed is printed), `SITESYNC_FUZZ_CASES=N` sets how
//! many cases run (default 20,000).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::assemble::{Assembler, Incoming};
use super::keyed::Known;
use super::target::to_sql;
use super::writer::{BatchWrite, EntityPlan, Plans};
use super::{head_of, plan_for, vet, ApplyError, TargetTable};
use crate::config::{Config, OnDelete};
use crate::mysql::schema::{ColumnSchema, TableSchema};
use crate::record::{self, shown, ChangeRecord, Op};

/// splitmix64: small, fast, and the same sequence everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Text that SQL would choke on if it were ever spliced in: backticks, quotes, NUL,
    /// comments, statement ends, non-ASCII, emoji, sometimes thousands of characters.
    fn nasty(&mut self) -> String {
        const PARTS: &[&str] = &[
            "`",
            "``",
            "'",
            "\"",
            "\\",
            "\0",
            ";",
            "--",
            "/*",
            "*/",
            " ",
            "\n",
            "\r",
            "\t",
            "%",
            "_",
            "a",
            "Z",
            "0",
            "é",
            "中",
            "😀",
            "\u{2028}",
            "\u{7f}",
            "\u{ffff}",
            "DROP TABLE sentinel",
            "); DELETE FROM person; --",
            "${X}",
        ];
        let n = match self.below(10) {
            0 => 0,
            1 => 64 + self.below(3000),
            _ => 1 + self.below(12),
        };
        (0..n).map(|_| *self.pick(PARTS)).collect()
    }
}

fn column(name: &str, data_type: &str, column_type: &str) -> ColumnSchema {
    let text = matches!(data_type, "varchar" | "char" | "text" | "enum" | "set");
    ColumnSchema {
        name: name.into(),
        data_type: data_type.into(),
        column_type: column_type.into(),
        generated: false,
        charset: text.then(|| "utf8mb4".into()),
        collation: text.then(|| "utf8mb4_general_ci".into()),
        datetime_precision: 0,
    }
}

const CONFIG: &str = r#"
[federation]
name = "fuzz"
topic_prefix = "fz"
database = "lims"
control_database = "ctl"

[kafka]
bootstrap_servers = "127.0.0.1:9092"

[sites.a]
mysql = "mysql://u@127.0.0.1:3307/lims"
server_id = 1

[sites.b]
mysql = "mysql://u@127.0.0.1:3308/lims"
server_id = 2

[entities.person]
table = "person"
exclude = ["secret"]

[entities.tag]
table = "tag"
key = ["token"]
refs = { parent_id = "tag" }
conflict = { version_column = "mtime" }
on_delete = { set = { active = 0 } }

[entities.other]
table = "other"

[[routes]]
from = ["a"]
to = ["b"]
entities = ["person", "tag"]

[[routes]]
from = ["b"]
to = ["a"]
entities = ["other"]
"#;

/// Site `b` applying what site `a` publishes: the configuration and the plans of its tables.
struct Fixture {
    config: Config,
    plans: Plans,
}

impl Fixture {
    fn new() -> Fixture {
        let config = Config::from_toml(CONFIG, Path::new("fuzz.toml"), &|_| None).expect("the fixture's configuration loads");
        let mut generated = column("g", "int", "int(11)");
        generated.generated = true;
        let person = TableSchema {
            db: "lims".into(),
            table: "person".into(),
            columns: vec![
                column("id", "int", "int(11)"),
                column("name", "varchar", "varchar(10)"),
                column("n", "tinyint", "tinyint(4)"),
                column("e", "enum", "enum('a','b')"),
                column("d", "date", "date"),
                column("b", "varbinary", "varbinary(8)"),
                column("secret", "varchar", "varchar(10)"),
                generated,
            ],
            primary_key: vec!["id".into()],
            unique_keys: vec![],
        };
        let tag = TableSchema {
            db: "lims".into(),
            table: "tag".into(),
            columns: vec![
                column("id", "bigint", "bigint(20)"),
                column("token", "varchar", "varchar(32)"),
                column("parent_id", "bigint", "bigint(20)"),
                column("mtime", "bigint", "bigint(20)"),
                column("label", "varchar", "varchar(20)"),
                column("active", "tinyint", "tinyint(1)"),
            ],
            primary_key: vec!["id".into()],
            unique_keys: vec![vec!["token".into()]],
        };
        let mut plans = Plans::new();
        for (name, schema) in [("person", person), ("tag", tag)] {
            let plan =
                EntityPlan::new(name, &config.entities[name], TargetTable::from_schema(schema), "ctl", "b").expect("the fixture's plans");
            plans.insert(name.to_string(), Arc::new(plan));
        }
        Fixture { config, plans }
    }
}

/// What the applier would do with a message, as far as it can be told without a database.
#[derive(Debug)]
enum Verdict {
    /// Its transaction is not complete yet.
    Pending,
    /// Dropped: its transaction's first record never arrived (logged and counted).
    Dropped,
    /// A dead letter with this reason.
    Dead(String),
    /// Parked with this reason (a dead letter after `apply.ref_wait_seconds`).
    Waits(String),
    /// Not this site's to apply.
    Skipped,
    /// Statements would be written (their columns all the local table's).
    Written,
}

/// What a case must come to.
#[derive(Debug, Clone)]
enum Expect {
    /// Applied (or skipped as not this site's).
    Valid,
    /// Refused, with a reason containing this.
    Refused(String),
    /// Refused, or parked while waiting for the column (a reason containing this).
    RefusedOrWaits(String),
    /// Only the server can tell (a value beyond the column's range): the pipeline lets it
    /// through, the database refuses it (`tests/hostile.rs`).
    Server,
    /// Dropped as the middle of a transaction whose start never came.
    Dropped,
    /// Left incomplete: the next transaction's first record discards it.
    Discarded,
}

/// The outcome for one record of a complete transaction.
fn verdict_of(fx: &Fixture, inc: &Incoming) -> Verdict {
    if let Err(reason) = &inc.head {
        return Verdict::Dead(reason.clone());
    }
    let r = match vet::read(&fx.config, &fx.plans, inc) {
        Ok(r) => r,
        Err(e) => return refusal(e),
    };
    let Some(plan) = plan_for(&fx.config, "b", &fx.plans, "a", &r) else { return Verdict::Skipped };
    match statements(plan, &fx.plans, &r) {
        Ok(columns) => {
            for c in columns.iter().flatten() {
                assert!(plan.target.columns.contains_key(c), "column {c:?} would reach SQL without being the local table's");
            }
            Verdict::Written
        }
        Err(e) => refusal(e),
    }
}

fn refusal(e: ApplyError) -> Verdict {
    match e {
        ApplyError::Wait(why) => Verdict::Waits(why),
        e @ ApplyError::MissingColumn { .. } => Verdict::Waits(e.to_string()),
        e => Verdict::Dead(e.to_string()),
    }
}

/// The columns of the statements `r` would take, by the path the applier would choose for it
/// (the set-based one, or the per-record one up to its first lookup).
fn statements(plan: &EntityPlan, plans: &Plans, r: &ChangeRecord) -> Result<Vec<Vec<String>>, ApplyError> {
    let keys = |k: Vec<(String, super::target::SqlValue)>| k.into_iter().map(|(c, _)| c).collect::<Vec<_>>();
    if plan.needs_nothing_looked_up(r, plans) {
        match plan.batch_write("a", r, plans) {
            Some(Ok(BatchWrite::Skip)) => return Ok(vec![]),
            Some(Ok(BatchWrite::Upsert { columns, values, .. })) => {
                assert_eq!(columns.len(), values.len());
                return Ok(vec![columns]);
            }
            Some(Ok(BatchWrite::Delete(key))) => {
                assert_eq!(key.len(), plan.key_columns.len());
                return Ok(vec![plan.key_columns.clone()]);
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    } else {
        // The set-based decision, from a batch that knows nothing yet.
        plan.decide("a", r, plans, &mut Known::default())?;
    }
    let mut out = Vec::new();
    let refs = &r.sitesync.refs;
    let version = |image: &Map<String, Value>| -> Result<(), ApplyError> {
        if let Some(conflict) = &plan.config.conflict {
            let col = plan.target.column(&conflict.version_column)?;
            if let Some(v) = image.get(&conflict.version_column) {
                to_sql(col, v)?;
            }
        }
        Ok(())
    };
    match r.op {
        Op::Delete => {
            let before = r.before.as_ref().expect("checked when parsed");
            plan.references(before, refs, plans, true)?;
            out.push(keys(plan.key_values(before)?));
            version(before)?;
            if let OnDelete::Set(values) = &plan.config.on_delete {
                let mut sets = Vec::new();
                for (name, value) in values {
                    let col = plan.target.column(name)?;
                    to_sql(col, value)?;
                    sets.push(col.name.clone());
                }
                out.push(sets);
            }
        }
        Op::Create | Op::Read | Op::Update => {
            let after = r.after.as_ref().expect("checked when parsed");
            plan.references(after, refs, plans, false)?;
            out.push(keys(plan.assignments(after, "a")?));
            out.push(keys(plan.key_values(after)?));
            if let (Op::Update, Some(before)) = (r.op, &r.before) {
                plan.references(before, refs, plans, true)?;
                out.push(keys(plan.key_values(before)?));
            }
            version(after)?;
        }
    }
    Ok(out)
}

/// A valid record of `person` or `tag` from site `a`, as capture writes it.
fn valid(rng: &mut Rng, txn: u64) -> ChangeRecord {
    let tag = rng.chance(40);
    let op = *rng.pick(&[Op::Create, Op::Update, Op::Delete, Op::Read]);
    let id = rng.below(1000) as i64 + 1;
    let image = |rng: &mut Rng| -> Map<String, Value> {
        let mut m = Map::new();
        if tag {
            m.insert("id".into(), json!(id));
            m.insert("token".into(), json!(format!("t{id}{}", rng.nasty().chars().take(8).collect::<String>())));
            m.insert("parent_id".into(), json!(if rng.chance(50) { 0 } else { rng.below(1000) as i64 + 1 }));
            m.insert("mtime".into(), json!(rng.below(1 << 30)));
            m.insert("label".into(), json!(rng.nasty().chars().take(20).collect::<String>()));
            m.insert("active".into(), json!(1));
        } else {
            m.insert("id".into(), json!(id));
            m.insert("name".into(), json!(rng.nasty().chars().take(10).collect::<String>()));
            m.insert("n".into(), json!(rng.below(256) as i64 - 128));
            m.insert("e".into(), json!(*rng.pick(&["a", "b", ""])));
            m.insert("d".into(), json!(*rng.pick(&["2020-01-02", "0000-00-00", "9999-12-31"])));
            let bytes: Vec<u8> = (0..rng.below(9)).map(|_| rng.next() as u8).collect();
            m.insert("b".into(), json!(base64::engine::general_purpose::STANDARD.encode(bytes)));
            if rng.chance(30) {
                m.remove("name");
            }
            if rng.chance(10) {
                m.insert("g".into(), json!(5));
            }
        }
        m
    };
    let after = image(rng);
    // An update keeps the key: its before image is the same row.
    let mut before = image(rng);
    for k in ["id", "token"] {
        if let Some(v) = after.get(k) {
            before.insert(k.into(), v.clone());
        }
    }
    let (before, after) = match op {
        Op::Create | Op::Read => (None, Some(after)),
        Op::Update => (Some(before), Some(after)),
        Op::Delete => (Some(before), None),
    };
    let image = after.as_ref().or(before.as_ref()).unwrap();
    let key_column = if tag { "token" } else { "id" };
    let mut key = Map::new();
    key.insert(key_column.into(), image[key_column].clone());
    let mut refs = Vec::new();
    if tag {
        if let Some(parent) = image.get("parent_id").filter(|p| **p != json!(0)) {
            refs.push(record::RefKey {
                entity: "tag".into(),
                id: parent.clone(),
                key: [("token".to_string(), json!("p"))].into_iter().collect(),
            });
        }
    }
    let snapshot = op == Op::Read;
    let gtid = format!("0-1-{txn}");
    let txn_id = if snapshot { format!("snapshot-1-1-tag-{txn}") } else { gtid.clone() };
    ChangeRecord {
        op,
        before,
        after,
        source: record::Source {
            connector: "sitesync".into(),
            version: "0.1.0".into(),
            name: "fuzz".into(),
            site: "a".into(),
            db: "lims".into(),
            table: if tag { "tag" } else { "person" }.into(),
            server_id: 1,
            gtid: (!snapshot).then_some(gtid),
            file: "bin.000001".into(),
            pos: 4 + txn,
            row: 0,
            ts_ms: 1_700_000_000_000,
            snapshot: if snapshot { "true" } else { "false" }.into(),
        },
        ts_ms: 1_700_000_000_001,
        transaction: record::TransactionInfo { id: txn_id, total_order: 1, data_collection_order: 1 },
        sitesync: record::SitesyncMeta {
            v: record::RECORD_VERSION,
            origin: "a".into(),
            entity: if tag { "tag" } else { "person" }.into(),
            key,
            last_in_transaction: true,
            refs,
            stamp: (tag && rng.chance(30)).then(|| crate::stamp::Stamp { version: "5".into(), depth: 1, site: "a".into() }),
            to: None,
        },
    }
}

/// A message: key and value bytes.
struct Message {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

fn message_of(r: &ChangeRecord) -> Message {
    Message { key: Some(record::key_bytes(&r.sitesync.entity, &r.sitesync.key)), value: Some(serde_json::to_vec(r).unwrap()) }
}

/// Every path of `v` outside the row images and keys (`source.server_id`, `sitesync.refs[0].id`).
fn paths(v: &Value, at: String, out: &mut Vec<String>) {
    if let Value::Object(m) = v {
        for (k, child) in m {
            let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
            out.push(path.clone());
            if !matches!(k.as_str(), "before" | "after" | "key") {
                paths(child, path, out);
            }
        }
    } else if let Value::Array(items) = v {
        for (i, child) in items.iter().enumerate() {
            let path = format!("{at}[{i}]");
            paths(child, path, out);
        }
    }
}

fn at_path<'v>(v: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    let mut cur = v;
    for part in path.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        cur = cur.get_mut(name)?;
        if let Some(i) = index {
            cur = cur.get_mut(i)?;
        }
    }
    Some(cur)
}

/// The required fields of the envelope (removing any other leaves a valid record).
const REQUIRED: &[&str] = &[
    "op",
    "source",
    "ts_ms",
    "transaction",
    "sitesync",
    "source.connector",
    "source.version",
    "source.name",
    "source.site",
    "source.db",
    "source.table",
    "source.server_id",
    "source.file",
    "source.pos",
    "source.row",
    "source.ts_ms",
    "source.snapshot",
    "transaction.id",
    "transaction.total_order",
    "transaction.data_collection_order",
    "sitesync.v",
    "sitesync.origin",
    "sitesync.entity",
    "sitesync.key",
    "sitesync.last_in_transaction",
];

/// A hostile variant of `r` (or `r` itself), and what it must come to.
fn hostile(rng: &mut Rng, r: &ChangeRecord) -> (String, Message, Expect) {
    let mut m = message_of(r);
    let written = match r.op {
        Op::Delete => "before",
        _ => "after",
    };
    let is_person = r.sitesync.entity == "person";
    let mut value: Value = serde_json::to_value(r).unwrap();
    let rewrite = |value: &Value, m: &mut Message| m.value = Some(serde_json::to_vec(value).unwrap());
    match rng.below(24) {
        0 => ("valid".into(), m, Expect::Valid),
        1 => {
            let bytes = m.value.as_mut().unwrap();
            let at = rng.below(bytes.len());
            bytes.truncate(at);
            (format!("value truncated at byte {at}"), m, Expect::Refused("line 1 column".into()))
        }
        2 => {
            let tail = rng.pick(&["x", "}", " {}", "\0", ","]).to_string();
            m.value.as_mut().unwrap().extend_from_slice(tail.as_bytes());
            (format!("trailing {tail:?}"), m, Expect::Refused("trailing".into()))
        }
        3 => {
            let bytes = m.value.as_mut().unwrap();
            let at = rng.below(bytes.len());
            bytes[at] = *rng.pick(&[0xFF, 0xFE, 0xC3, 0x80]);
            // A lone continuation or lead byte never makes valid JSON text... except a 0xC3
            // followed by a continuation byte, which is a character: say only that a
            // position is named when it is refused.
            (format!("byte {at} not UTF-8"), m, Expect::RefusedOrWaits(String::new()))
        }
        4 => {
            let depth = 129 + rng.below(2000);
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            let text = String::from_utf8(m.value.take().unwrap()).unwrap();
            let target = format!("\"{written}\":{{");
            let text = text.replacen(&target, &format!("{target}\"deep\":{nested},"), 1);
            m.value = Some(text.into_bytes());
            (format!("{depth} nested arrays in {written}"), m, Expect::Refused("recursion limit".into()))
        }
        5 => {
            let number = rng.pick(&["1e400", "-1e400", &"9".repeat(400)]).to_string();
            let text = String::from_utf8(m.value.take().unwrap()).unwrap();
            let target = format!("\"{written}\":{{");
            let text = text.replacen(&target, &format!("{target}\"n\":{number},"), 1);
            m.value = Some(text.into_bytes());
            (format!("number {}...", &number[..number.len().min(8)]), m, Expect::Refused("number out of range".into()))
        }
        6 => {
            let mut all = Vec::new();
            paths(&value, String::new(), &mut all);
            let path = rng.pick(&all).clone();
            let slot = at_path(&mut value, &path).unwrap();
            let wrong = match slot {
                Value::String(_) => rng.pick(&[json!(7), json!(true), json!([]), json!({})]).clone(),
                Value::Number(_) => rng.pick(&[json!("7"), json!(true), json!([1]), json!({}), json!(1.5)]).clone(),
                Value::Bool(_) => rng.pick(&[json!(1), json!("true"), json!(null)]).clone(),
                Value::Object(_) => rng.pick(&[json!("x"), json!(5), json!([])]).clone(),
                Value::Array(_) => rng.pick(&[json!("x"), json!(5), json!({})]).clone(),
                Value::Null => return ("valid (null field)".into(), m, Expect::Valid),
            };
            // Integers take 1.5 as an error too; a reference's id is a column value of any kind.
            if path.ends_with(".id") && path.starts_with("sitesync.refs") && (wrong.is_number() || wrong.is_string()) {
                return ("valid (a reference id may be any column value)".into(), m, Expect::Valid);
            }
            *slot = wrong.clone();
            rewrite(&value, &mut m);
            let culprit = path.rsplit('.').next().unwrap().split('[').next().unwrap().to_string();
            (format!("{path} = {wrong}"), m, Expect::Refused(culprit))
        }
        7 => {
            let path = *rng.pick(REQUIRED);
            let (parent, field) = path.rsplit_once('.').map(|(p, f)| (Some(p), f)).unwrap_or((None, path));
            let holder = match parent {
                Some(p) => at_path(&mut value, p).unwrap(),
                None => &mut value,
            };
            holder.as_object_mut().unwrap().remove(field);
            rewrite(&value, &mut m);
            (format!("{path} missing"), m, Expect::Refused(field.to_string()))
        }
        8 => {
            let col = if is_person { *rng.pick(&["name", "n", "id"]) } else { *rng.pick(&["label", "token", "mtime"]) };
            let wrong = rng.pick(&[json!(true), json!([1, 2]), json!({"a": 1})]).clone();
            value[written][col] = wrong.clone();
            rewrite(&value, &mut m);
            (format!("{written}.{col} = {wrong}"), m, Expect::Refused(format!("`{written}.{col}`")))
        }
        9 => {
            let entity = format!("x{}", rng.nasty());
            value["sitesync"]["entity"] = json!(entity);
            rewrite(&value, &mut m);
            m.key = Some(record::key_bytes(&entity, &r.sitesync.key));
            (format!("unknown entity {:?}", shown(&entity)), m, Expect::Refused("is not in the configuration".into()))
        }
        10 => {
            let (what, key) = match rng.below(6) {
                0 => ("no key", None),
                1 => ("key not JSON", Some(b"{\"entity\":".to_vec())),
                2 => ("key of another entity", Some(record::key_bytes(if is_person { "tag" } else { "person" }, &r.sitesync.key))),
                3 => {
                    let mut other = r.sitesync.key.clone();
                    for v in other.values_mut() {
                        *v = json!(format!("{v}{}", rng.nasty()));
                    }
                    ("key of another row", Some(record::key_bytes(&r.sitesync.entity, &other)))
                }
                4 => ("key with a field more", Some(format!(r#"{{"entity":"{}","key":{{}},"x":1}}"#, r.sitesync.entity).into_bytes())),
                _ => ("key not UTF-8", Some(vec![b'{', 0xFF, b'}'])),
            };
            m.key = key;
            (what.into(), m, Expect::Refused("message key".into()))
        }
        11 => {
            let key_column = if is_person { "id" } else { "token" };
            let (what, key) = match rng.below(3) {
                0 => ("sitesync.key of another row", json!({key_column: format!("other{}", rng.nasty())})),
                1 => ("sitesync.key with a column more", json!({key_column: value[written][key_column].clone(), "name": "x"})),
                _ => ("sitesync.key of another column", json!({"n": 1})),
            };
            value["sitesync"]["key"] = key;
            rewrite(&value, &mut m);
            let r2: ChangeRecord = serde_json::from_value(value).unwrap();
            m.key = Some(record::key_bytes(&r2.sitesync.entity, &r2.sitesync.key));
            (what.into(), m, Expect::Refused("`sitesync.key`".into()))
        }
        12 => {
            let name = rng.nasty();
            let name = if name.is_empty() { "nosuch".to_string() } else { name };
            if ["id", "name", "n", "e", "d", "b", "secret", "g", "token", "parent_id", "mtime", "label", "active"].contains(&name.as_str())
            {
                return ("valid (a real column)".into(), m, Expect::Valid);
            }
            value[written][&name] = json!(1);
            rewrite(&value, &mut m);
            let expect = if written == "before" {
                // A before image serves to find the row: only its key columns are read.
                Expect::Valid
            } else if crate::mysql::ident::is_identifier(&name) {
                Expect::RefusedOrWaits(format!("column `{}` does not exist", shown(&name)))
            } else {
                Expect::Refused("cannot be a MySQL column name".into())
            };
            (format!("column {:?} in {written}", shown(&name)), m, expect)
        }
        13 if is_person && written == "after" => {
            let (col, v) = rng
                .pick(&[
                    ("n", json!(300)),
                    ("n", json!(-129)),
                    ("n", json!(1.5)),
                    ("n", json!("many")),
                    ("name", json!("elevenchars")),
                    ("name", json!("x".repeat(100_000))),
                    ("d", json!("2023-02-30")),
                    ("d", json!("not a date")),
                    ("e", json!("zzz")),
                ])
                .clone();
            value["after"][col] = v;
            rewrite(&value, &mut m);
            (format!("{col} beyond its column"), m, Expect::Server)
        }
        14 if is_person && written == "after" => {
            value["after"]["b"] = json!(rng.pick(&["not base64!", "QUJD=", "=", "////=====", "é"]).to_string());
            rewrite(&value, &mut m);
            ("bad base64".into(), m, Expect::Refused("`b`".into()))
        }
        15 => {
            value["sitesync"]["origin"] = json!(rng.pick(&["b", "c", "", "a\0"]).to_string());
            rewrite(&value, &mut m);
            ("another origin".into(), m, Expect::Refused("record says origin".into()))
        }
        16 => {
            value["sitesync"]["v"] = json!(2 + rng.below(100));
            rewrite(&value, &mut m);
            ("newer version".into(), m, Expect::Refused("is newer than".into()))
        }
        17 => {
            m.value = None;
            ("no value".into(), m, Expect::Refused("no value".into()))
        }
        18 => {
            let image = if written == "after" { "after" } else { "before" };
            value[image] = Value::Null;
            rewrite(&value, &mut m);
            (format!("{image} null"), m, Expect::Refused("lacks its row image".into()))
        }
        19 => {
            value["transaction"]["total_order"] = json!(2 + rng.below(5));
            rewrite(&value, &mut m);
            ("starts in the middle".into(), m, Expect::Dropped)
        }
        20 => {
            value["sitesync"]["last_in_transaction"] = json!(false);
            rewrite(&value, &mut m);
            ("never ends".into(), m, Expect::Discarded)
        }
        21 => {
            let to = rng.pick(&["c", "a", "zz"]).to_string();
            value["sitesync"]["to"] = json!(to);
            rewrite(&value, &mut m);
            (format!("addressed to {to}"), m, Expect::Valid)
        }
        22 => {
            // Configured but not routed here: skipped, not refused.
            value["sitesync"]["entity"] = json!("other");
            rewrite(&value, &mut m);
            m.key = Some(record::key_bytes("other", &r.sitesync.key));
            ("entity not routed here".into(), m, Expect::Valid)
        }
        _ => {
            // Unknown fields are ignored (newer records may add some).
            value["sitesync"]["future"] = json!({"x": rng.nasty()});
            value["extra"] = json!(rng.nasty());
            rewrite(&value, &mut m);
            ("unknown fields".into(), m, Expect::Valid)
        }
    }
}

/// Pushes one message through the assembler and, once its transaction is complete, through
/// everything after: the verdict of each of its records (the last one's returned).
fn push(fx: &Fixture, asm: &mut Assembler, offset: &mut i64, m: Message) -> (Verdict, usize) {
    let head = head_of("a", m.value.as_deref());
    let inc = Incoming { offset: *offset, key: m.key, value: m.value, head };
    *offset += 1;
    let pushed = asm.push("fz.a", 0, "a", inc);
    if pushed.dropped.is_some() {
        return (Verdict::Dropped, pushed.discarded);
    }
    let Some(txn) = pushed.complete else { return (Verdict::Pending, pushed.discarded) };
    let verdicts: Vec<Verdict> = txn.records.iter().map(|inc| verdict_of(fx, inc)).collect();
    (verdicts.into_iter().last().expect("a complete transaction has records"), pushed.discarded)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn hostile_records_are_refused_with_their_reason_and_the_stream_goes_on() {
    let seed = env_u64("SITESYNC_FUZZ_SEED").unwrap_or_else(|| record::now_ms() as u64);
    let cases = env_u64("SITESYNC_FUZZ_CASES").unwrap_or(20_000);
    println!("fuzz: seed {seed}, {cases} cases (replay: SITESYNC_FUZZ_SEED={seed} SITESYNC_FUZZ_CASES={cases})");
    let fx = Fixture::new();
    let mut rng = Rng(seed);
    let mut asm = Assembler::default();
    let mut offset = 0;
    let mut tally: BTreeMap<&'static str, u64> = BTreeMap::new();
    let started = std::time::Instant::now();
    for case in 0..cases {
        let txn = 2 * case + 1;
        let r = valid(&mut rng, txn);
        let (what, m, expect) = hostile(&mut rng, &r);
        let shown_value = m.value.as_deref().map(|v| shown(&String::from_utf8_lossy(&v[..v.len().min(300)]))).unwrap_or_default();
        let context = || format!("case {case} ({what}), seed {seed}: value {shown_value}");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let (verdict, _) = push(&fx, &mut asm, &mut offset, m);
            // The stream goes on: a valid record after it is applied.
            let good = valid(&mut rng, txn + 1);
            let good_is_ours = plan_for(&fx.config, "b", &fx.plans, "a", &good).is_some();
            let (after, discarded) = push(&fx, &mut asm, &mut offset, message_of(&good));
            (verdict, after, discarded, good_is_ours)
        }));
        let (verdict, after, discarded, good_is_ours) = match outcome {
            Ok(v) => v,
            Err(panic) => {
                let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                panic!("{}: panicked: {}", context(), message.unwrap_or_default());
            }
        };
        let named = |reason: &str, culprit: &str| {
            assert!(!reason.is_empty(), "{}: refused without a reason", context());
            assert!(reason.contains(culprit), "{}: the reason does not name `{culprit}`: {reason}", context());
        };
        let kind = match (&expect, &verdict) {
            (Expect::Valid, Verdict::Written | Verdict::Skipped) => "valid",
            (Expect::Refused(culprit), Verdict::Dead(reason)) => {
                named(reason, culprit);
                "refused"
            }
            (Expect::RefusedOrWaits(culprit), Verdict::Dead(reason)) => {
                named(reason, culprit);
                "refused"
            }
            (Expect::RefusedOrWaits(culprit), Verdict::Waits(reason)) => {
                named(reason, culprit);
                "waits for the column"
            }
            // A byte that is still UTF-8 (0xC3 before a continuation byte) in a string: a
            // valid record with another character.
            (Expect::RefusedOrWaits(c), Verdict::Written | Verdict::Skipped) if c.is_empty() => "valid",
            (Expect::Server, Verdict::Written) => "left to the server",
            (Expect::Dropped, Verdict::Dropped) => "dropped",
            (Expect::Discarded, Verdict::Pending) if discarded == 1 => "discarded",
            (expect, verdict) => panic!("{}: expected {expect:?}, got {verdict:?}", context()),
        };
        *tally.entry(kind).or_default() += 1;
        match after {
            Verdict::Written => {}
            Verdict::Skipped if !good_is_ours => {}
            other => panic!("{}: the valid record after it was not applied: {other:?}", context()),
        }
    }
    println!(
        "fuzz: {cases} cases in {:.1} s, each followed by a valid record that went through: {tally:?}",
        started.elapsed().as_secs_f64()
    );
}
