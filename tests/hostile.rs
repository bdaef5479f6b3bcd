//! Hostile and malformed records on a site's topic (issue 15), against real MariaDB and Kafka:
//! the test produces them straight onto site `a`'s topic, between valid ones, and site `b`'s
//! `sitesync run` applies what it can. Truncated, oversized and nested JSON, bytes that are not
//! UTF-8, wrong types at the envelope's fields and in rows, fields missing, entities the
//! configuration does not name (`sentinel`, SQL in the name, NUL, thousands of characters),
//! message keys and natural keys that are not the record's, column names no table can have
//! and names it does not have (with backticks, quotes, `DROP TABLE`), values the columns
//! cannot hold (300 in a TINYINT, a string too long, bad dates, an ENUM member that is not one,
//! beside the ENUM error value that makes the write leave strict mode), bad base64, another
//! origin, a newer version, transactions cut short or started in the middle, a bad record
//! inside a transaction of good ones, references whose natural key is 100 KB. Then: the
//! applier still runs; every hostile record is a dead letter naming what is wrong (or, for the
//! transactions out of order, dropped and counted, or discarded); every valid record was
//! applied, value for value; no table was created or dropped and the sentinel row is there;
//! `dlq replay` applies none of them; the metrics hold no invented entity name.
//!
//! The random part is seeded (`SITESYNC_HOSTILE_SEED`, printed); `SITESYNC_HOSTILE_CASES` sets
//! how many random cases join the fixed ones (default 150).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::rng::Rng;
use common::{Federation, Spec};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Map, Value};
use sitesync::record::{self, ChangeRecord, Op, RefKey, SitesyncMeta, Source, TransactionInfo};

const SCHEMA: &str = "CREATE TABLE person (id INT PRIMARY KEY, name VARCHAR(10) NULL, n TINYINT NULL, e ENUM('a','b') NULL, \
                      d DATE NULL, bin VARBINARY(8) NULL) ENGINE=InnoDB;\n\
                      CREATE TABLE tag (id BIGINT AUTO_INCREMENT PRIMARY KEY, token VARCHAR(64) NOT NULL, \
                      parent_id BIGINT NOT NULL DEFAULT 0, label VARCHAR(20) NULL, UNIQUE KEY (token)) ENGINE=InnoDB;\n\
                      CREATE TABLE sentinel (x INT PRIMARY KEY) ENGINE=InnoDB;\n\
                      INSERT INTO sentinel VALUES (42)";

const ENTITIES: &str = "[entities.person]\ntable = \"person\"\n\n\
                        [entities.tag]\ntable = \"tag\"\nkey = [\"token\"]\nrefs = { parent_id = \"tag\" }\n\n\
                        [entities.other]\ntable = \"sentinel\"\n\n\
                        [[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"person\", \"tag\"]\n\n\
                        [[routes]]\nfrom = [\"b\"]\nto = [\"a\"]\nentities = [\"other\"]\n";

/// Names that would do harm if spliced into SQL, or that no MySQL name can be.
const NASTY: &[&str] = &[
    "sentinel",
    "person`; DROP TABLE sentinel; --",
    "x'; DROP TABLE sentinel; --",
    "\"; DELETE FROM person; --",
    "a\0b",
    "`",
    "😀",
    "trailing ",
    "tag/*",
    "CREATE TABLE evil (x INT)",
];

/// What a case must come to at site b.
#[derive(Debug, Clone)]
enum Expect {
    /// A dead letter whose reason contains one of these.
    Dead(Vec<String>),
    /// Applied: the row `person.id` / `tag.token` with these values (checked at the end).
    Applied,
    /// Dropped: its transaction's first record never arrived (counted, logged).
    Dropped,
    /// Left incomplete: discarded when the next transaction starts.
    Discarded,
    /// Not b's to apply (addressed elsewhere, an entity not routed to b).
    Skipped,
}

fn dead(culprits: &[&str]) -> Expect {
    Expect::Dead(culprits.iter().map(|c| c.to_string()).collect())
}

/// A column's name in a server message: `'n'` or `` `n` ``.
fn column_named(c: &str) -> Expect {
    Expect::Dead(vec![format!("'{c}'"), format!("`{c}`")])
}

struct Case {
    what: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    expect: Expect,
}

/// Builds records of site a's stream (GTIDs 0-777-n, rising) and the cases made of them.
struct Gen {
    seq: u64,
    cases: Vec<Case>,
    /// person id -> (name, n, e, d, HEX(bin)) as b must end.
    persons: BTreeMap<i64, [String; 5]>,
    /// tag token -> label as b must end.
    tags: BTreeMap<String, String>,
    /// Hostile person ids start here (valid ones stay below).
    next_hostile: i64,
    next_valid: i64,
}

impl Gen {
    fn new() -> Gen {
        Gen { seq: 100, cases: Vec::new(), persons: BTreeMap::new(), tags: BTreeMap::new(), next_hostile: 10_000, next_valid: 1 }
    }

    fn record(&mut self, entity: &str, op: Op, before: Option<Map<String, Value>>, after: Option<Map<String, Value>>) -> ChangeRecord {
        self.seq += 1;
        let gtid = format!("0-777-{}", self.seq);
        let key_column = if entity == "tag" { "token" } else { "id" };
        let image = after.as_ref().or(before.as_ref()).unwrap();
        let mut key = Map::new();
        key.insert(key_column.into(), image.get(key_column).cloned().unwrap_or(Value::Null));
        ChangeRecord {
            op,
            before,
            after,
            source: Source {
                connector: "sitesync".into(),
                version: "0.1.0".into(),
                name: "hostile".into(),
                site: "a".into(),
                db: "lims".into(),
                table: entity.into(),
                server_id: 777,
                gtid: Some(gtid.clone()),
                file: "mysql-bin.000001".into(),
                pos: self.seq * 100,
                row: 0,
                ts_ms: record::now_ms() / 1000 * 1000,
                snapshot: "false".into(),
            },
            ts_ms: record::now_ms(),
            transaction: TransactionInfo { id: gtid, total_order: 1, data_collection_order: 1 },
            sitesync: SitesyncMeta {
                v: record::RECORD_VERSION,
                origin: "a".into(),
                entity: entity.into(),
                key,
                last_in_transaction: true,
                refs: Vec::new(),
                stamp: None,
                to: None,
            },
        }
    }

    /// A person insert; hostile ones take ids no valid row has.
    fn person(&mut self, hostile: bool) -> ChangeRecord {
        let id = if hostile {
            self.next_hostile += 1;
            self.next_hostile
        } else {
            self.next_valid += 1;
            self.next_valid
        };
        let after = json!({"id": id, "name": format!("p{id}"), "n": (id % 200) - 100, "e": "a", "d": "2024-02-29", "bin": "AP8="});
        self.record("person", Op::Create, None, Some(after.as_object().unwrap().clone()))
    }

    fn push(&mut self, what: impl Into<String>, r: &ChangeRecord, expect: Expect) {
        let key = Some(record::key_bytes(&r.sitesync.entity, &r.sitesync.key));
        self.push_raw(what, key, Some(serde_json::to_vec(r).unwrap()), expect);
    }

    fn push_value(&mut self, what: impl Into<String>, r: &ChangeRecord, value: Value, expect: Expect) {
        let key = Some(record::key_bytes(&r.sitesync.entity, &r.sitesync.key));
        self.push_raw(what, key, Some(serde_json::to_vec(&value).unwrap()), expect);
    }

    fn push_raw(&mut self, what: impl Into<String>, key: Option<Vec<u8>>, value: Option<Vec<u8>>, expect: Expect) {
        self.cases.push(Case { what: what.into(), key, value, expect });
    }

    /// A valid person, remembered as b must have it.
    fn valid_person(&mut self, name: &str, e: &str) {
        let mut r = self.person(false);
        let id = r.after.as_ref().unwrap()["id"].as_i64().unwrap();
        let after = r.after.as_mut().unwrap();
        after.insert("name".into(), json!(name));
        after.insert("e".into(), json!(e));
        let n = after["n"].as_i64().unwrap();
        let hex: String = name.bytes().map(|b| format!("{b:02X}")).collect();
        self.persons.insert(id, [hex, n.to_string(), e.to_string(), "2024-02-29".into(), "00FF".into()]);
        self.push(format!("valid person {id}"), &r, Expect::Applied);
    }

    fn valid_tag(&mut self, token: &str, label: &str) {
        let after = json!({"id": self.seq + 5000, "token": token, "parent_id": 0, "label": label});
        let r = self.record("tag", Op::Create, None, Some(after.as_object().unwrap().clone()));
        self.tags.insert(token.to_string(), label.to_string());
        self.push(format!("valid tag {token:?}"), &r, Expect::Applied);
    }
}

/// The fixed cases, then `random` more drawn from the same kinds, valid records between them.
fn cases(rng: &mut Rng, random: usize) -> Gen {
    let mut g = Gen::new();
    g.valid_person("first", "a");
    g.valid_tag("root", "the root");

    // Malformed JSON.
    let r = g.person(true);
    let bytes = serde_json::to_vec(&r).unwrap();
    for at in [0, 1, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        g.push_raw(
            format!("truncated at {at}"),
            Some(record::key_bytes("person", &r.sitesync.key)),
            Some(bytes[..at].to_vec()),
            dead(&["line 1 column"]),
        );
    }
    for text in ["{}", "null", "[]", "\"x\"", "{\"op\":\"c\"}"] {
        g.push_raw(format!("value {text}"), Some(b"{}".to_vec()), Some(text.as_bytes().to_vec()), dead(&["not a sitesync change record"]));
    }
    g.push_raw("no value (a tombstone)", Some(b"{}".to_vec()), None, dead(&["no value"]));
    // Each of these is a transaction of its own (a GTID applied once is not applied again: a
    // copy of it is skipped as published twice; a dead letter's GTID does not count).
    let r = g.person(true);
    let mut not_utf8 = serde_json::to_vec(&r).unwrap();
    let at = not_utf8.windows(6).position(|w| w == b"\"name\"").unwrap() + 9;
    not_utf8[at] = 0xFF;
    g.push_raw("a byte that is not UTF-8", Some(record::key_bytes("person", &r.sitesync.key)), Some(not_utf8), dead(&["line 1 column"]));
    let r = g.person(true);
    let text = serde_json::to_string(&r).unwrap();
    let nested = text.replacen("\"after\":{", &format!("\"after\":{{\"deep\":{}1{},", "[".repeat(5000), "]".repeat(5000)), 1);
    g.push_raw(
        "5000 nested arrays",
        Some(record::key_bytes("person", &r.sitesync.key)),
        Some(nested.into_bytes()),
        dead(&["recursion limit"]),
    );
    let r = g.person(true);
    let text = serde_json::to_string(&r).unwrap();
    let huge = text.replacen("\"after\":{", "\"after\":{\"n\":1e400,", 1);
    g.push_raw(
        "a number beyond any double",
        Some(record::key_bytes("person", &r.sitesync.key)),
        Some(huge.into_bytes()),
        dead(&["number out of range"]),
    );
    let mut r = g.person(true);
    r.after.as_mut().unwrap().insert("name".into(), json!("x".repeat(900_000)));
    g.push("a 900 kB name for a VARCHAR(10)", &r, column_named("name"));

    // Wrong types at the envelope's fields and in the rows.
    let wrong: &[(&str, Value, &str)] = &[
        ("op", json!(5), "op"),
        ("op", json!("x"), "op"),
        ("sitesync.v", json!("1"), "sitesync.v"),
        ("source.server_id", json!(-1), "server_id"),
        ("source.pos", json!(1.5), "pos"),
        ("transaction.total_order", json!("1"), "total_order"),
        ("transaction.id", json!(7), "transaction.id"),
        ("sitesync.last_in_transaction", json!("yes"), "last_in_transaction"),
        ("sitesync.origin", json!(["a"]), "sitesync.origin"),
        ("after", json!([1]), "after"),
        ("sitesync.key", json!("id"), "sitesync.key"),
        ("sitesync.refs", json!({}), "refs"),
        ("sitesync.stamp", json!(5), "stamp"),
        ("ts_ms", json!(1.5), "ts_ms"),
        ("after.name", json!(true), "after.name"),
        ("after.n", json!([1]), "after.n"),
        ("after.name", json!({"a": 1}), "after.name"),
        ("sitesync.key.id", json!(false), "sitesync.key.id"),
    ];
    for (path, value, culprit) in wrong {
        let r = g.person(true);
        let mut v = serde_json::to_value(&r).unwrap();
        set(&mut v, path, value.clone());
        g.push_value(format!("{path} = {value}"), &r, v, dead(&[culprit]));
    }
    // A wrong value the error message quotes whole: the reason stored is cut to fit.
    let r = g.person(true);
    let mut v = serde_json::to_value(&r).unwrap();
    set(&mut v, "sitesync.v", json!("v".repeat(100_000)));
    g.push_value("sitesync.v = a 100 kB string", &r, v, dead(&["sitesync.v"]));
    for path in ["sitesync", "op", "source.pos", "sitesync.entity", "transaction"] {
        let r = g.person(true);
        let mut v = serde_json::to_value(&r).unwrap();
        let (parent, field) = path.rsplit_once('.').map(|(p, f)| (Some(p), f)).unwrap_or((None, path));
        let holder = match parent {
            Some(p) => v.get_mut(p).unwrap(),
            None => &mut v,
        };
        holder.as_object_mut().unwrap().remove(field);
        g.push_value(format!("{path} missing"), &r, v, dead(&[field]));
    }

    // Entities the configuration does not name.
    let long = "e".repeat(5000);
    for entity in NASTY.iter().copied().chain(["nosuch", long.as_str()]) {
        let mut r = g.person(true);
        r.sitesync.entity = entity.to_string();
        g.push(format!("entity {:?}", record::shown(entity)), &r, dead(&["is not in the configuration"]));
    }

    // A dead letter whose GTID is far ahead of its stream: the valid transactions after it (with
    // the stream's real, lower numbers) are still applied, not skipped as already seen.
    let resume = g.seq;
    g.seq += 1_000_000;
    let mut r = g.person(true);
    r.sitesync.entity = "forged".into();
    g.push("a dead letter with a forged GTID far ahead", &r, dead(&["is not in the configuration"]));
    g.seq = resume;
    g.valid_person("after", "b"); // after the forged GTID

    // Message keys and natural keys that are not the record's.
    let other: record::Row = [("id".to_string(), json!(1))].into_iter().collect();
    for (what, key) in [
        ("no message key", None),
        ("message key not JSON", Some(b"person:1".to_vec())),
        ("message key not UTF-8", Some(vec![b'{', 0xC0, b'}'])),
        ("message key of another entity", Some(record::key_bytes("tag", &other))),
        ("message key of another row", Some(record::key_bytes("person", &other))),
    ] {
        let r = g.person(true);
        g.push_raw(what, key, Some(serde_json::to_vec(&r).unwrap()), dead(&["message key"]));
    }
    for (what, key) in
        [("another row", json!({"id": 1})), ("a column more", json!({"id": 0, "name": "x"})), ("another column", json!({"name": "x"}))]
    {
        let mut r = g.person(true);
        let mut key = key.as_object().unwrap().clone();
        if let Some(id) = key.get_mut("id").filter(|v| **v == json!(0)) {
            *id = r.after.as_ref().unwrap()["id"].clone();
        }
        r.sitesync.key = key;
        g.push(format!("sitesync.key of {what}"), &r, dead(&["`sitesync.key`"]));
    }

    // Column names no table can have.
    let names = ["x\0y".to_string(), "c".repeat(65), "c".repeat(100_000), "😀".into(), "trailing ".into(), String::new()];
    for name in &names {
        let mut r = g.person(true);
        r.after.as_mut().unwrap().insert(name.clone(), json!(1));
        g.push(format!("column {:?}", record::shown(name)), &r, dead(&["cannot be a MySQL column name"]));
    }

    // Values the columns cannot hold, and bad base64.
    let values: &[(&str, Value)] = &[
        ("n", json!(300)),
        ("n", json!(-129)),
        ("n", json!("many")),
        ("name", json!("elevenchars")),
        ("d", json!("2023-02-30")),
        ("d", json!("not a date")),
        ("e", json!("zzz")),
    ];
    for (column, value) in values {
        let mut r = g.person(true);
        r.after.as_mut().unwrap().insert(column.to_string(), value.clone());
        g.push(format!("{column} = {value}"), &r, column_named(column));
    }
    // The ENUM error value is written outside strict mode: the other value must still be refused.
    let mut r = g.person(true);
    r.after.as_mut().unwrap().insert("e".into(), json!(""));
    r.after.as_mut().unwrap().insert("n".into(), json!(300));
    g.push("n = 300 beside the ENUM error value", &r, column_named("n"));
    let mut r = g.person(true);
    r.after.as_mut().unwrap().insert("bin".into(), json!("not base64!"));
    g.push("bad base64", &r, dead(&["not base64"]));

    // Another origin, a newer version, an image missing.
    let mut r = g.person(true);
    r.sitesync.origin = "b".into();
    g.push("origin b on a's topic", &r, dead(&["record says origin"]));
    let mut r = g.person(true);
    r.sitesync.v = 2;
    g.push("version 2", &r, dead(&["newer"]));
    let mut r = g.person(true);
    r.after = None;
    g.push("an insert without its row", &r, dead(&["lacks its row image"]));

    // A bad record inside a transaction of good ones: the whole transaction is dead.
    g.seq += 1;
    let gtid = format!("0-777-{}", g.seq);
    let mut members = Vec::new();
    for i in 1..=3u64 {
        let mut r = g.person(true);
        r.transaction = TransactionInfo { id: gtid.clone(), total_order: i, data_collection_order: i };
        r.source.gtid = Some(gtid.clone());
        r.sitesync.last_in_transaction = i == 3;
        if i == 2 {
            r.after.as_mut().unwrap().insert("n".into(), json!(true));
        }
        members.push(r);
    }
    for (i, r) in members.iter().enumerate() {
        g.push(format!("record {} of a transaction with a bad one", i + 1), r, dead(&["`after.n`"]));
    }

    // Transactions out of order, records not for b.
    let mut r = g.person(true);
    r.transaction.total_order = 3;
    g.push("starts in the middle", &r, Expect::Dropped);
    let mut r = g.person(true);
    r.sitesync.last_in_transaction = false;
    g.push("never ends", &r, Expect::Discarded);
    let mut r = g.person(true);
    r.sitesync.to = Some("c".into());
    g.push("addressed to another site", &r, Expect::Skipped);
    let mut r = g.person(true);
    r.sitesync.entity = "other".into();
    g.push("an entity routed elsewhere", &r, Expect::Skipped);

    // Valid records with hostile values and unknown fields: applied as they are.
    g.valid_person("'; DROP --", "b");
    g.valid_person("`\0\"\\", "");
    g.valid_tag("tab`le'\"; --", "DROP TABLE sentinel");
    let r = g.person(false);
    let id = r.after.as_ref().unwrap()["id"].as_i64().unwrap();
    let mut v = serde_json::to_value(&r).unwrap();
    v["sitesync"]["future"] = json!({"x": 1});
    v["extra"] = json!("ignored");
    g.persons.insert(
        id,
        [
            format!("p{id}").bytes().map(|b| format!("{b:02X}")).collect(),
            ((id % 200) - 100).to_string(),
            "a".into(),
            "2024-02-29".into(),
            "00FF".into(),
        ],
    );
    g.push_value("unknown fields", &r, v, Expect::Applied);

    // Random cases of the kinds above.
    for i in 0..random {
        if i % 5 == 0 {
            let name: String = (0..rng.below(8)).map(|_| *rng.choose(&["a", "'", "`", "\"", ";", "é", " "])).collect();
            let e = *rng.choose(&["a", "b", ""]);
            g.valid_person(&name.chars().take(10).collect::<String>(), e);
        }
        let mut r = g.person(true);
        match rng.below(6) {
            0 => {
                let bytes = serde_json::to_vec(&r).unwrap();
                let at = rng.below(bytes.len());
                g.push_raw(
                    format!("random: truncated at {at}"),
                    Some(record::key_bytes("person", &r.sitesync.key)),
                    Some(bytes[..at].to_vec()),
                    dead(&["line 1 column"]),
                );
            }
            1 => {
                let mut bytes = serde_json::to_vec(&r).unwrap();
                let at = rng.below(bytes.len());
                bytes[at] = 0xFF;
                g.push_raw(
                    format!("random: byte {at} not UTF-8"),
                    Some(record::key_bytes("person", &r.sitesync.key)),
                    Some(bytes),
                    dead(&["line 1 column"]),
                );
            }
            2 => {
                let entity: String = (0..1 + rng.below(4)).map(|_| *rng.choose(NASTY)).collect();
                r.sitesync.entity = entity.clone();
                g.push(format!("random: entity {:?}", record::shown(&entity)), &r, dead(&["is not in the configuration"]));
            }
            3 => {
                let name = format!("{}\0{}", rng.choose(NASTY), rng.below(1000));
                r.after.as_mut().unwrap().insert(name.clone(), json!(rng.below(10)));
                g.push(format!("random: column {:?}", record::shown(&name)), &r, dead(&["cannot be a MySQL column name"]));
            }
            4 => {
                let (column, value) = rng.choose(values).clone();
                r.after.as_mut().unwrap().insert(column.to_string(), value.clone());
                g.push(format!("random: {column} = {value}"), &r, column_named(column));
            }
            _ => {
                let (path, value, culprit) = rng.choose(wrong).clone();
                let mut v = serde_json::to_value(&r).unwrap();
                set(&mut v, path, value.clone());
                g.push_value(format!("random: {path} = {value}"), &r, v, dead(&[culprit]));
            }
        }
    }

    // Last of tag's changes: a reference to a row that never comes, under a 100 kB natural key,
    // and columns b's table does not have, which wait for a schema change, then are dead
    // letters (a later change of tag without them would show the origin dropped them, and
    // the rest of the change would apply).
    let token = format!("hostile-{}", g.seq);
    let after = json!({"id": g.seq + 5000, "token": token, "parent_id": 77, "label": "l"});
    let mut r = g.record("tag", Op::Create, None, Some(after.as_object().unwrap().clone()));
    r.sitesync.refs = vec![RefKey {
        entity: "tag".into(),
        id: json!(77),
        key: [("token".to_string(), json!("k".repeat(100_000)))].into_iter().collect(),
    }];
    g.push("a reference under a 100 kB key that never arrives", &r, dead(&["has not arrived"]));
    let token = format!("hostile-{}", g.seq);
    let after = json!({"id": g.seq + 5000, "token": token, "parent_id": 0, "label": "l"});
    let mut r = g.record("tag", Op::Create, None, Some(after.as_object().unwrap().clone()));
    for name in ["nosuch", "x`; DROP TABLE sentinel; --", "label'", "\""] {
        r.after.as_mut().unwrap().insert(name.into(), json!(1));
    }
    g.push("tag columns b does not have", &r, dead(&["column `nosuch` does not exist"]));
    g.valid_person("the end", "a");
    g
}

/// Sets the field at the dotted `path` of `v` (creating the last one).
fn set(v: &mut Value, path: &str, value: Value) {
    let (parent, field) = path.rsplit_once('.').map(|(p, f)| (Some(p), f)).unwrap_or((None, path));
    let mut slot = v;
    for part in parent.into_iter().flat_map(|p| p.split('.')) {
        slot = slot.get_mut(part).unwrap_or_else(|| panic!("no {part} in {path}"));
    }
    slot.as_object_mut().unwrap_or_else(|| panic!("{path}")).insert(field.to_string(), value);
}

async fn produce(producer: &FutureProducer, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> i64 {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    match producer.send(record, Duration::from_secs(30)).await {
        Ok(delivery) => delivery.offset,
        Err((e, _)) => panic!("producing to {topic}: {e} (Kafka restarted? run the test again)"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_become_dead_letters_and_the_stream_goes_on() {
    let seed = std::env::var("SITESYNC_HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| record::now_ms() as u64);
    let random = std::env::var("SITESYNC_HOSTILE_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
    println!("hostile: seed {seed} (replay: SITESYNC_HOSTILE_SEED={seed} SITESYNC_HOSTILE_CASES={random})");
    let started = Instant::now();
    let mut fed = Federation::new(
        "hostile",
        Spec { sites: &["a", "b"], schema: SCHEMA, entities_and_routes: ENTITIES, ref_wait_seconds: 2, ..Spec::default() },
    )
    .await;
    let listen = fed.listen("b");
    fed.start("b", &["run"]);

    let g = cases(&mut Rng(seed), random);
    let topic = format!("{}.a", fed.topic_prefix);
    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &fed.kafka).create().expect("a producer");
    let mut at: BTreeMap<i64, &Case> = BTreeMap::new();
    for case in &g.cases {
        let offset = produce(&producer, &topic, case.key.as_deref(), case.value.as_deref()).await;
        at.insert(offset, case);
    }
    let produced = started.elapsed();

    // The stream went on: the last valid record is applied (with everything before it).
    let last = *g.persons.keys().last().unwrap();
    let pool = fed.pool("b").clone();
    fed.wait_for(Duration::from_secs(120), "the last valid record at b", || {
        let pool = pool.clone();
        async move { common::rows(&pool, &format!("SELECT COUNT(*) FROM person WHERE id = {last}")).await == vec![vec!["1".to_string()]] }
    })
    .await;
    let expected_dead: usize = g.cases.iter().filter(|c| matches!(c.expect, Expect::Dead(_))).count();
    let ctl = fed.control_db.clone();
    let count_sql = format!("SELECT COUNT(*) FROM `{ctl}`.dead_letters");
    // Parked ones become dead letters after `ref_wait_seconds` (the checks below say which
    // is missing, if one is).
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::rows(&pool, &count_sql).await[0][0].parse::<usize>().unwrap() < expected_dead && Instant::now() < deadline {
        fed.assert_running();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fed.assert_running();

    // Each dead letter at the offset of a hostile record, with a reason naming what is wrong.
    let letters = fed
        .rows("b", &format!("SELECT CAST(kafka_offset AS CHAR), IFNULL(entity, ''), reason FROM `{ctl}`.dead_letters ORDER BY id"))
        .await;
    let mut by_offset: BTreeMap<i64, (String, String)> = BTreeMap::new();
    for l in &letters {
        assert!(by_offset.insert(l[0].parse().unwrap(), (l[1].clone(), l[2].clone())).is_none(), "two dead letters at offset {}", l[0]);
    }
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for (offset, case) in &at {
        let letter = by_offset.get(offset);
        match (&case.expect, letter) {
            (Expect::Dead(culprits), Some((entity, reason))) => {
                assert!(
                    !reason.is_empty() && culprits.iter().any(|c| reason.contains(c.as_str())),
                    "{}: the reason does not name {culprits:?}: {reason}",
                    case.what
                );
                assert!(entity.chars().count() <= 64);
                *tally.entry("dead letter").or_default() += 1;
            }
            (Expect::Dead(_), None) => panic!("{} (offset {offset}): no dead letter", case.what),
            (_, Some((_, reason))) => panic!("{} (offset {offset}): a dead letter it should not be: {reason}", case.what),
            (Expect::Applied, None) => *tally.entry("applied").or_default() += 1,
            (Expect::Dropped, None) => *tally.entry("dropped").or_default() += 1,
            (Expect::Discarded, None) => *tally.entry("discarded").or_default() += 1,
            (Expect::Skipped, None) => *tally.entry("skipped").or_default() += 1,
        }
    }
    assert_eq!(letters.len(), expected_dead, "dead letters that are no hostile record's");

    // Every valid record applied, value for value; no hostile row; nothing created or dropped.
    let persons = fed
        .rows(
            "b",
            "SELECT CAST(id AS CHAR), HEX(name), CAST(n AS CHAR), CAST(e AS CHAR), CAST(d AS CHAR), HEX(bin) FROM person ORDER BY id",
        )
        .await;
    let want: Vec<Vec<String>> =
        g.persons.iter().map(|(id, v)| std::iter::once(id.to_string()).chain(v.iter().cloned()).collect()).collect();
    assert_eq!(persons, want, "b's persons are exactly the valid records'");
    let tags = fed.rows("b", "SELECT token, label FROM tag ORDER BY token").await;
    let want: Vec<Vec<String>> = g.tags.iter().map(|(t, l)| vec![t.clone(), l.clone()]).collect();
    let mut tags_sorted = tags.clone();
    tags_sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(tags_sorted, want_sorted, "b's tags are exactly the valid records'");
    assert_eq!(fed.rows("b", "SELECT x FROM sentinel").await, vec![vec!["42".to_string()]], "the sentinel row is there");
    let tables: BTreeSet<String> = fed
        .rows("b", &format!("SELECT table_name FROM information_schema.tables WHERE table_schema = '{}'", fed.app_db))
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(tables, ["person", "sentinel", "tag"].into_iter().map(String::from).collect(), "no table created or dropped");

    // The refusals that are not dead letters are counted and said.
    let metrics = common::http_get(listen, "/metrics").unwrap_or_default();
    let dropped = common::metric(&metrics, "sitesync_apply_records_total", &["outcome=\"dropped\""]).unwrap_or(0.0);
    assert!(dropped >= 1.0, "a record that starts in the middle is counted as dropped:\n{metrics}");
    assert!(fed.logs_contain("dropping the incomplete copy"), "an incomplete transaction is discarded, and said");
    let unknown =
        common::metric(&metrics, "sitesync_apply_records_total", &["entity=\"(unknown)\"", "outcome=\"dead_letter\""]).unwrap_or(0.0);
    assert!(unknown >= 1.0, "records of unknown entities are counted under (unknown):\n{metrics}");
    for name in ["DROP", "nosuch", "😀", "eeeeeeee"] {
        assert!(!metrics.contains(name), "an invented entity name reached the metrics ({name})");
    }

    // `dlq list --json` lists them; `dlq replay` applies none (exit 1), and nothing changes.
    let out = fed.command("b", &["dlq", "list", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), expected_dead);
    assert!(listed.iter().all(|l| l["reason"].as_str().is_some_and(|r| !r.is_empty())));
    let out = fed.command("b", &["dlq", "replay"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", common::output_text(&out));
    let text = common::output_text(&out);
    assert!(text.contains(&format!("0 replayed, {expected_dead} still failing")), "{text}");
    assert_eq!(fed.rows("b", "SELECT COUNT(*) FROM person").await, vec![vec![g.persons.len().to_string()]]);
    assert_eq!(fed.rows("b", "SELECT x FROM sentinel").await, vec![vec!["42".to_string()]]);

    // Still running, and still applying: one more valid record goes through.
    let mut g2 = Gen { seq: g.seq + 10, next_valid: last + 1, ..Gen::new() };
    g2.valid_person("after all", "b");
    let case = &g2.cases[0];
    produce(&producer, &topic, case.key.as_deref(), case.value.as_deref()).await;
    fed.wait_rows("b", &format!("SELECT HEX(name) FROM person WHERE id = {}", last + 2), &[&["616674657220616C6C"]]).await;
    fed.assert_running();
    let valid = g.cases.iter().filter(|c| matches!(c.expect, Expect::Applied)).count();
    println!(
        "hostile: {} records, {} hostile ({random} of them random) and {valid} valid between them: {tally:?}; produced in {:.1} s, all checked in {:.1} s",
        g.cases.len(),
        g.cases.len() - valid,
        produced.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
