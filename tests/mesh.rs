//! The mesh converges: a randomized, seeded test of a LIMS2-like federation (issue 11, section 5).
//!
//! Three sites (a: the university, b and c: colleges) hold the LIMS2 schema of
//! `tests/fixtures/lims2.sql`, each with its own history: local-only people, lab groups, tags and
//! instruments, and rows present everywhere with the same values under different local ids.
//! Every site's application (one task per site, its own pool, its own RNG derived from the seed)
//! writes random transactions while `sitesync run` replicates, and each site asks for a snapshot
//! early on. The test keeps an oracle of every row change each application made; once the
//! federation has gone quiet it checks:
//!
//! - `converge`: the sites hold the same rows by natural key (references compared as the
//!   natural key they point to, 0 as 0);
//! - `oracle`: a row owned by one site is what that site last wrote, with the rules applied
//!   (filter, exclude, on_delete, many-to-one); a shared "hot" person, written concurrently
//!   everywhere, holds one of the values written, the same at every site;
//! - `untouched`: sitesync never changed a row under the site that owns it;
//! - `avatars`: they never leave their site;
//! - `equipment`: the university holds the colleges' instruments with their `source_site`;
//! - `control`: nothing parked, no dead letters;
//! - `topics`: a site's topic holds only changes its own application made (no echo), snapshot
//!   records only of rows it owns, a GTID on every streamed record;
//! - `quiet`: nothing is published once converged.
//!
//! The workload also hands rows over on purpose (the causal tie): a site renames one of its
//! people or labs at the start of a second, another site waits until the rename has arrived and
//! activates the row within that second (same mtime); the later change must win everywhere.
//! After the workload the test waits until the sites match the oracle, or nothing has moved
//! for 20 s (rows, topics, parked), or 120 s; a failing run prints each check's failures by
//! category and leaves every failure (`mesh-failures.tsv`) and every write the oracle knows
//! (`mesh-oracle.txt`) in its directory under `target/tmp`.
//!
//! `SITESYNC_MESH_SEED` replays a seed (the workload's choices; how the sites interleave is the
//! machine's), `SITESYNC_MESH_TXNS` sets the transactions per site (default 150) and
//! `SITESYNC_MESH_LONG=1` multiplies them by ten. `SITESYNC_MESH_NO_REF=null` writes NULL where
//! LIMS2 writes 0 for "no reference" (schema, history and workload), and
//! `SITESYNC_MESH_SNAPSHOT=before` has every site take its snapshot (and wait for it) before its
//! workload starts instead of during it, and `SITESYNC_MESH_SITES=a,b` lets only those sites'
//! applications write: ways to look past one problem at the others.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::rng::Rng;
use common::{Federation, Spec};
use serde_json::Value;
use sqlx::mysql::{MySql, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{AssertSqlSafe, Row};

// ───────────────────────────── the federation ─────────────────────────────

const SITES: [&str; 3] = ["a", "b", "c"];
/// The university: it gathers the colleges' (b, c) instruments.
const UNIV: usize = 0;
/// People present at every site that every site updates concurrently.
const HOT: usize = 5;
const LIMS2: &str = include_str!("fixtures/lims2.sql");

const ENTITIES_AND_ROUTES: &str = r#"
[entities.user]
table = "user"
key = ["token"]
exclude = ["avatar"]
filter = "is_temporary = 0"
on_delete = { set = { atime = 0 } }
refs = { creator_id = "user", approver_id = "user", group_id = "tag" }
conflict = { version_column = "mtime" }

[entities.lab]
table = "lab"
key = ["code"]
filter = "is_temporary = 0"
on_delete = "ignore"
refs = { pi_id = "user", creator_id = "user" }
conflict = { version_column = "mtime" }

[entities.tag]
table = "tag"
key = ["uuid"]
refs = { parent_id = "tag" }

[entities.user_lab]
table = "user_lab"
key = ["user_id", "lab_id"]
refs = { user_id = "user", lab_id = "lab" }

[entities.user_tag]
table = "user_tag"
key = ["user_id", "tag_id"]
refs = { user_id = "user", tag_id = "tag" }

[entities.equipment]
table = "equipment"
key = ["ref_no"]
refs = { group_id = "lab" }
origin_column = "source_site"

[[routes]]
from = ["*"]
to = ["*"]
entities = ["user", "lab", "tag", "user_lab", "user_tag"]

[[routes]]
from = ["b", "c"]
to = ["a"]
entities = ["equipment"]

# The university feeds a warehouse: its users and every college's instruments.
[export]
entities = ["user", "equipment"]
sites = ["a"]
"#;

struct Knobs {
    seed: u64,
    txns: usize,
    null_refs: bool,
    snapshot_before: bool,
    /// Whose applications write (the others only take their snapshot and rows handed to them).
    writers: [bool; 3],
}

fn knobs() -> Knobs {
    let seed = std::env::var("SITESYNC_MESH_SEED")
        .ok()
        .map(|s| s.trim().parse().expect("SITESYNC_MESH_SEED: an unsigned integer"))
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_000);
    let mut txns = std::env::var("SITESYNC_MESH_TXNS").ok().map(|s| s.trim().parse().expect("SITESYNC_MESH_TXNS: a number")).unwrap_or(150);
    if std::env::var("SITESYNC_MESH_LONG").is_ok_and(|v| v == "1") {
        txns *= 10;
    }
    let snapshot_before = std::env::var("SITESYNC_MESH_SNAPSHOT").is_ok_and(|v| v == "before");
    let writers = match std::env::var("SITESYNC_MESH_SITES") {
        Ok(list) => SITES.map(|s| list.split(',').any(|w| w.trim() == s)),
        Err(_) => [true; 3],
    };
    Knobs { seed, txns, null_refs: null_refs(), snapshot_before, writers }
}

/// `SITESYNC_MESH_NO_REF=null`: NULL instead of LIMS2's 0 for "no reference".
fn null_refs() -> bool {
    std::env::var("SITESYNC_MESH_NO_REF").is_ok_and(|v| v == "null")
}

/// "No reference", as SQL and as the oracle and the checker show it.
fn no_ref() -> &'static str {
    if null_refs() {
        "NULL"
    } else {
        "0"
    }
}

fn schema(null_refs: bool) -> String {
    let mut schema = LIMS2.to_string();
    if null_refs {
        for c in ["creator_id", "approver_id", "group_id", "pi_id", "parent_id"] {
            schema = schema.replace(&format!("{c} INT NOT NULL DEFAULT 0"), &format!("{c} INT NULL DEFAULT NULL"));
        }
    }
    schema
}

// ───────────────────────────── a small PRNG ─────────────────────────────

// ───────────────────────────── entities ─────────────────────────────

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum E {
    User,
    Lab,
    Tag,
    UserLab,
    UserTag,
    Equipment,
}

const ENTITIES: [E; 6] = [E::User, E::Lab, E::Tag, E::UserLab, E::UserTag, E::Equipment];

impl E {
    /// Entity name, which is also its table.
    fn name(self) -> &'static str {
        match self {
            E::User => "user",
            E::Lab => "lab",
            E::Tag => "tag",
            E::UserLab => "user_lab",
            E::UserTag => "user_tag",
            E::Equipment => "equipment",
        }
    }
    fn by_name(name: &str) -> Option<E> {
        ENTITIES.into_iter().find(|e| e.name() == name)
    }
    /// The replicated columns in order, each with the entity it refers to (a reference).
    fn cols(self) -> &'static [(&'static str, Option<E>)] {
        match self {
            E::User => &[
                ("token", None),
                ("name", None),
                ("email", None),
                ("is_temporary", None),
                ("atime", None),
                ("creator_id", Some(E::User)),
                ("approver_id", Some(E::User)),
                ("group_id", Some(E::Tag)),
                ("mtime", None),
            ],
            E::Lab => &[
                ("code", None),
                ("name", None),
                ("pi_id", Some(E::User)),
                ("creator_id", Some(E::User)),
                ("is_temporary", None),
                ("atime", None),
                ("mtime", None),
            ],
            E::Tag => &[("uuid", None), ("name", None), ("parent_id", Some(E::Tag))],
            E::UserLab => &[("user_id", Some(E::User)), ("lab_id", Some(E::Lab)), ("type", None)],
            E::UserTag => &[("user_id", Some(E::User)), ("tag_id", Some(E::Tag))],
            E::Equipment => &[("ref_no", None), ("name", None), ("group_id", Some(E::Lab)), ("mtime", None)],
        }
    }
    /// The natural key.
    fn key(self) -> &'static [&'static str] {
        match self {
            E::User => &["token"],
            E::Lab => &["code"],
            E::Tag => &["uuid"],
            E::UserLab => &["user_id", "lab_id"],
            E::UserTag => &["user_id", "tag_id"],
            E::Equipment => &["ref_no"],
        }
    }
    fn col(self, name: &str) -> usize {
        self.cols().iter().position(|(c, _)| *c == name).unwrap_or_else(|| panic!("{} has no column {name}", self.name()))
    }
    fn composite(self) -> bool {
        matches!(self, E::UserLab | E::UserTag)
    }
}

/// Whether rows of `e` made at `origin` are applied at `site` (the routes above).
fn routed(e: E, origin: usize, site: usize) -> bool {
    origin != site && (e != E::Equipment || (site == UNIV && origin != UNIV))
}

/// How the test names a row whatever its key becomes: entity and the natural key it was created
/// with (memberships, whose key is made of references: the site and local id that created it).
fn ident(e: E, key: &str) -> String {
    format!("{}:{key}", e.name())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A row as the checker and the oracle compare it: every replicated column as text, references
/// as the natural key of the row they point to ("0"/"NULL" for none, "#dangling:<id>" for an id
/// that points nowhere).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DbRow {
    id: i64,
    vals: Vec<String>,
    /// The reference columns' raw local ids, in column order.
    raws: Vec<String>,
    /// user: HEX(avatar); equipment: source_site; else "NULL".
    extra: String,
}

impl DbRow {
    fn key(&self, e: E) -> String {
        e.key().iter().map(|k| self.vals[e.col(k)].clone()).collect::<Vec<_>>().join("|")
    }
    fn temporary(&self, e: E) -> bool {
        matches!(e, E::User | E::Lab) && self.vals[e.col("is_temporary")] == "1"
    }
}

fn select_sql(e: E, filter: &str) -> String {
    let mut cols = vec!["CAST(t.id AS CHAR)".to_string()];
    let mut joins = String::new();
    for (n, (c, target)) in e.cols().iter().enumerate() {
        match target {
            None => cols.push(format!("CAST(t.`{c}` AS CHAR)")),
            Some(target) => {
                let k = target.key()[0];
                joins.push_str(&format!(" LEFT JOIN `{}` j{n} ON j{n}.id = t.`{c}`", target.name()));
                cols.push(format!(
                    "CASE WHEN t.`{c}` IS NULL THEN 'NULL' WHEN t.`{c}` = 0 THEN '0' \
                     ELSE COALESCE(CAST(j{n}.`{k}` AS CHAR), CONCAT('#dangling:', t.`{c}`)) END"
                ));
            }
        }
    }
    for (c, target) in e.cols() {
        if target.is_some() {
            cols.push(format!("CAST(t.`{c}` AS CHAR)"));
        }
    }
    cols.push(
        match e {
            E::User => "HEX(t.avatar)",
            E::Equipment => "t.source_site",
            _ => "NULL",
        }
        .to_string(),
    );
    format!("SELECT {} FROM `{}` t{joins} {filter}", cols.join(", "), e.name())
}

fn parse_row(e: E, cells: &[Option<String>]) -> DbRow {
    let text = |c: &Option<String>| c.clone().unwrap_or_else(|| "NULL".into());
    let n = e.cols().len();
    let refs = e.cols().iter().filter(|(_, t)| t.is_some()).count();
    DbRow {
        id: cells[0].as_deref().unwrap_or("0").parse().unwrap_or(0),
        vals: cells[1..1 + n].iter().map(text).collect(),
        raws: cells[1 + n..1 + n + refs].iter().map(text).collect(),
        extra: text(&cells[1 + n + refs]),
    }
}

#[derive(Clone)]
enum Bind {
    I(Option<i64>),
    S(Option<String>),
    B(Option<Vec<u8>>),
}

fn query(sql: String, binds: &[Bind]) -> sqlx::query::Query<'static, MySql, sqlx::mysql::MySqlArguments> {
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for b in binds {
        q = match b.clone() {
            Bind::I(v) => q.bind(v),
            Bind::S(v) => q.bind(v),
            Bind::B(v) => q.bind(v),
        };
    }
    q
}

fn cell(row: &MySqlRow, i: usize) -> Option<String> {
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v;
    }
    if let Ok(v) = row.try_get::<Option<Vec<u8>>, _>(i) {
        return v.map(|b| String::from_utf8_lossy(&b).into_owned());
    }
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map(|v| v.to_string());
    }
    panic!("column {i}: select it as text")
}

async fn fetch<'c, X: sqlx::Executor<'c, Database = MySql>>(
    x: X,
    sql: String,
    binds: &[Bind],
) -> Result<Vec<Vec<Option<String>>>, sqlx::Error> {
    let rows = query(sql, binds).fetch_all(x).await?;
    Ok(rows.iter().map(|r| (0..r.len()).map(|i| cell(r, i)).collect()).collect())
}

async fn exec<'c, X: sqlx::Executor<'c, Database = MySql>>(x: X, sql: String, binds: &[Bind]) -> Result<u64, sqlx::Error> {
    Ok(query(sql, binds).execute(x).await?.last_insert_id())
}

// ───────────────────────────── history ─────────────────────────────

/// A value of the history: SQL at its site, an image in the oracle.
#[derive(Clone)]
enum H {
    I(i64),
    S(String),
    Null,
    NoRef,
    /// The row of this entity and natural key, by its local id at the site.
    Ref(E, String),
}

/// A row that exists at a site before sitesync (inserted before `init`, so never captured).
struct HRow {
    e: E,
    id: i64,
    key: String,
    /// Present at every site with the same values (under its own id at each).
    shared: bool,
    /// Others may reference it (never deleted, its key never changes).
    public: bool,
    /// Its site never writes it again (others may give it an avatar).
    frozen: bool,
    cols: Vec<(&'static str, H)>,
    avatar: Option<Vec<u8>>,
}

impl HRow {
    fn identity(&self, site: usize) -> String {
        match (self.e.composite(), self.shared) {
            (true, true) => format!("{}:*:{}", self.e.name(), self.key),
            (true, false) => format!("{}:{}:{}", self.e.name(), SITES[site], self.id),
            _ => ident(self.e, &self.key),
        }
    }
    fn int(&self, col: &str) -> i64 {
        match self.cols.iter().find(|(c, _)| *c == col) {
            Some((_, H::I(n))) => *n,
            _ => 0,
        }
    }
}

/// Site `i`'s history: its local-only rows first, so that the shared rows (admin, hot people,
/// the organisation root and a few tags, a membership) get a different id at every site.
fn history(i: usize) -> Vec<HRow> {
    use H::*;
    let site = SITES[i];
    let s = |v: &str| S(v.to_string());
    let mut next: HashMap<E, i64> = HashMap::new();
    let mut rows = Vec::new();
    let mut add = |e: E, key: String, shared: bool, public: bool, frozen: bool, cols: Vec<(&'static str, H)>, avatar: Option<Vec<u8>>| {
        let id = next.entry(e).or_insert(0);
        *id += 1;
        rows.push(HRow { e, id: *id, key, shared, public, frozen, cols, avatar });
    };
    // People: local-only ones (one temporary), then the admin and the hot people.
    for n in 0..3 + 2 * i as i64 {
        let token = format!("h-{site}-{n}");
        let cols = vec![
            ("token", S(token.clone())),
            ("name", S(format!("Hist {site} {n}"))),
            ("email", if n % 2 == 0 { S(format!("h{n}@{site}.edu")) } else { Null }),
            ("is_temporary", I((n == 2) as i64)),
            ("atime", I(if n % 2 == 1 { 1_600_000_000 + n } else { 0 })),
            ("creator_id", Ref(E::User, "admin".into())),
            ("approver_id", NoRef),
            ("group_id", if n % 3 == 0 { Ref(E::Tag, "org-root".into()) } else { NoRef }),
            ("mtime", I(1000 + n)),
        ];
        add(E::User, token, false, n < 2, n == 1, cols, (n == 0).then(|| vec![0xA0, i as u8]));
    }
    let admin = vec![
        ("token", s("admin")),
        ("name", s("Administrator")),
        ("email", s("admin@lims.edu")),
        ("is_temporary", I(0)),
        ("atime", I(1_500_000_000)),
        ("creator_id", NoRef),
        ("approver_id", NoRef),
        ("group_id", Ref(E::Tag, "org-root".into())),
        ("mtime", I(1000)),
    ];
    add(E::User, "admin".into(), true, true, false, admin, Some(vec![0xAD, i as u8]));
    for n in 0..HOT {
        let cols = vec![
            ("token", S(format!("hot-{n}"))),
            ("name", S(format!("Hot {n}"))),
            ("email", S(format!("hot{n}@lims.edu"))),
            ("is_temporary", I(0)),
            ("atime", I(0)),
            ("creator_id", Ref(E::User, "admin".into())),
            ("approver_id", NoRef),
            ("group_id", Ref(E::Tag, format!("org-s{}", n % 3))),
            ("mtime", I(1000)),
        ];
        add(E::User, format!("hot-{n}"), true, true, false, cols, None);
    }
    // The organisation tree: local-only tags under the shared root, then the shared ones.
    for n in 0..1 + i {
        let uuid = format!("h-{site}-tag-{n}");
        add(
            E::Tag,
            uuid.clone(),
            false,
            false,
            false,
            vec![("uuid", S(uuid)), ("name", S(format!("Hist tag {site} {n}"))), ("parent_id", Ref(E::Tag, "org-root".into()))],
            None,
        );
    }
    for (uuid, name, parent) in [
        ("org-root", "University", None),
        ("org-s0", "School of Science", Some("org-root")),
        ("org-s1", "School of Medicine", Some("org-root")),
        ("org-s2", "School of Engineering", Some("org-root")),
        ("org-s3", "Department of Chemistry", Some("org-s0")),
    ] {
        let parent = parent.map_or(NoRef, |p| Ref(E::Tag, p.into()));
        add(E::Tag, uuid.into(), true, true, false, vec![("uuid", s(uuid)), ("name", s(name)), ("parent_id", parent)], None);
    }
    // Lab groups (one temporary at the colleges), local-only.
    for n in 0..2 + i as i64 {
        let code = format!("h-{site}-L{n}");
        let cols = vec![
            ("code", S(code.clone())),
            ("name", S(format!("Hist lab {site} {n}"))),
            ("pi_id", Ref(E::User, format!("h-{site}-{}", n % 2))),
            ("creator_id", Ref(E::User, "admin".into())),
            ("is_temporary", I((n == 2) as i64)),
            ("atime", I(1_600_000_000)),
            ("mtime", I(1000)),
        ];
        add(E::Lab, code, false, n < 2, false, cols, None);
    }
    for (user, lab, kind) in [("0", "L0", "pi"), ("1", "L0", "member"), ("1", "L1", "member")] {
        let (token, code) = (format!("h-{site}-{user}"), format!("h-{site}-{lab}"));
        let cols = vec![("user_id", Ref(E::User, token.clone())), ("lab_id", Ref(E::Lab, code.clone())), ("type", s(kind))];
        add(E::UserLab, format!("{token}|{code}"), false, false, false, cols, None);
    }
    for (token, uuid, shared) in
        [(format!("h-{site}-0"), "org-s1", false), ("hot-0".into(), "org-s1", true), ("admin".into(), "org-root", true)]
    {
        let cols = vec![("user_id", Ref(E::User, token.clone())), ("tag_id", Ref(E::Tag, uuid.into()))];
        add(E::UserTag, format!("{token}|{uuid}"), shared, false, false, cols, None);
    }
    // Instruments: three at each college, one at the university.
    for n in 0..if i == UNIV { 1 } else { 3 } {
        let ref_no = format!("E-{site}-h{n}");
        let group = if n == 2 || i == UNIV { NoRef } else { Ref(E::Lab, format!("h-{site}-L{}", n % 2)) };
        let cols = vec![
            ("ref_no", S(ref_no.clone())),
            ("name", S(format!("Hist instrument {site} {n}"))),
            ("group_id", group),
            ("mtime", I(1000)),
        ];
        add(E::Equipment, ref_no, false, false, false, cols, None);
    }
    rows
}

/// `Spec::seed`: site `i`'s history as SQL.
fn history_sql(i: usize, _site: &str) -> String {
    let rows = history(i);
    let id_of =
        |e: E, key: &str| rows.iter().find(|r| r.e == e && r.key == key).unwrap_or_else(|| panic!("history: no {} {key}", e.name())).id;
    let mut sql = Vec::new();
    for r in &rows {
        let mut cols = vec!["id".to_string()];
        let mut vals = vec![r.id.to_string()];
        for (c, v) in &r.cols {
            cols.push(format!("`{c}`"));
            vals.push(match v {
                H::I(n) => n.to_string(),
                H::S(s) => format!("'{s}'"),
                H::Null => "NULL".into(),
                H::NoRef => no_ref().into(),
                H::Ref(e, k) => id_of(*e, k).to_string(),
            });
        }
        if let Some(a) = &r.avatar {
            cols.push("avatar".into());
            vals.push(format!("x'{}'", hex(a)));
        }
        sql.push(format!("INSERT INTO `{}` ({}) VALUES ({})", r.e.name(), cols.join(", "), vals.join(", ")));
    }
    sql.join(";\n")
}

// ───────────────────────────── the oracle ─────────────────────────────

/// A column value as written: text ("NULL" for NULL; "0"/"NULL" for no reference), or a
/// reference to a row (its identity: its natural key is looked up when compared).
#[derive(Clone, Debug, PartialEq)]
enum V {
    S(String),
    Ref(String),
}

type Image = BTreeMap<&'static str, V>;

/// Every write to one row, in commit order.
struct ORow {
    e: E,
    /// The site where it was created (or holds it in its history); None: history everywhere.
    creator: Option<usize>,
    /// The site whose application may write it now (None: shared).
    owner: Option<usize>,
    /// Written concurrently by every site.
    hot: bool,
    /// (writer, image): writer None for history, image None for a delete.
    images: Vec<(Option<usize>, Option<Image>)>,
}

/// What a site's application did in one transaction, as the oracle records it at commit.
enum OOp {
    Insert {
        id: String,
        e: E,
        image: Image,
        public: bool,
        frozen: bool,
    },
    /// `changed`: the columns the statement set; the others must be as the site last wrote them.
    Update {
        id: String,
        changed: &'static [&'static str],
        image: Image,
    },
    Delete {
        id: String,
    },
    Avatar {
        id: String,
        token: String,
        hex: String,
    },
    /// The site takes the row over (it changes it on top of the previous owner's last change).
    HandIn {
        id: String,
    },
}

#[derive(Default)]
struct Oracle {
    rows: BTreeMap<String, ORow>,
    /// Rows each site's application wrote (avatars included), and how many changes it made to each.
    wrote: [BTreeMap<String, usize>; 3],
    /// Rows each site owns: its history, what its application created, what it took over.
    owned: [BTreeSet<String>; 3],
    /// token -> HEX of the last avatar each site's application (or history) wrote.
    avatars: [BTreeMap<String, String>; 3],
    /// People and labs others may reference: (natural key, creating site).
    public_users: Vec<(String, usize)>,
    public_labs: Vec<(String, usize)>,
    /// People nobody writes again after their insert: others give them avatars.
    frozen_users: Vec<(String, usize)>,
    /// A site's row found changed (by sitesync) under its application: (site, message).
    interference: Vec<(usize, String)>,
    /// The test's own consistency: must stay empty.
    sanity: Vec<String>,
}

impl Oracle {
    fn from_history() -> Oracle {
        let mut o = Oracle::default();
        for i in 0..3 {
            for r in history(i) {
                let id = r.identity(i);
                let mut image = Image::new();
                for (c, v) in &r.cols {
                    image.insert(
                        c,
                        match v {
                            H::I(n) => V::S(n.to_string()),
                            H::S(s) => V::S(s.clone()),
                            H::Null => V::S("NULL".into()),
                            H::NoRef => V::S(no_ref().into()),
                            H::Ref(e, k) => V::Ref(ident(*e, k)),
                        },
                    );
                }
                o.owned[i].insert(id.clone());
                if let Some(a) = &r.avatar {
                    o.avatars[i].insert(r.key.clone(), hex(a));
                }
                if r.shared {
                    let hot = r.e == E::User && r.key.starts_with("hot-");
                    o.rows.entry(id).or_insert(ORow { e: r.e, creator: None, owner: None, hot, images: vec![(None, Some(image))] });
                    continue;
                }
                if r.public && r.e == E::User && r.int("is_temporary") == 0 {
                    o.public_users.push((r.key.clone(), i));
                }
                if r.public && r.e == E::Lab && r.int("is_temporary") == 0 {
                    o.public_labs.push((r.key.clone(), i));
                }
                if r.frozen {
                    o.frozen_users.push((r.key.clone(), i));
                }
                o.rows.insert(id, ORow { e: r.e, creator: Some(i), owner: Some(i), hot: false, images: vec![(None, Some(image))] });
            }
        }
        o
    }

    fn last_image<'a>(&'a self, id: &str) -> Option<&'a Image> {
        self.rows.get(id)?.images.iter().rev().find_map(|(_, i)| i.as_ref())
    }

    /// The natural key a row has now (its last image's).
    fn current_key(&self, id: &str) -> Option<String> {
        let row = self.rows.get(id)?;
        Some(self.key_of(row.e, self.last_image(id)?))
    }

    fn text(&self, v: &V) -> String {
        match v {
            V::S(s) => s.clone(),
            V::Ref(id) => self.current_key(id).unwrap_or_else(|| format!("#unknown:{id}")),
        }
    }

    fn key_of(&self, e: E, image: &Image) -> String {
        e.key().iter().map(|k| image.get(k).map(|v| self.text(v)).unwrap_or_default()).collect::<Vec<_>>().join("|")
    }

    /// An image as the checker reads rows: every replicated column as text.
    fn display(&self, e: E, image: &Image) -> Vec<String> {
        e.cols().iter().map(|(c, _)| image.get(c).map(|v| self.text(v)).unwrap_or_else(|| "#unset".into())).collect()
    }

    /// Every natural key the row ever had (memberships: any combination of their references'
    /// keys, since capture may read a referenced row's key later than the change).
    fn keys_ever(&self, id: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let Some(row) = self.rows.get(id) else { return out };
        for image in row.images.iter().filter_map(|(_, i)| i.as_ref()) {
            let mut combos = vec![String::new()];
            for (n, k) in row.e.key().iter().enumerate() {
                let parts: BTreeSet<String> = match image.get(k) {
                    Some(V::Ref(r)) => self.keys_ever(r),
                    Some(v) => [self.text(v)].into(),
                    None => BTreeSet::new(),
                };
                combos =
                    combos.iter().flat_map(|c| parts.iter().map(move |p| if n == 0 { p.clone() } else { format!("{c}|{p}") })).collect();
            }
            out.extend(combos);
        }
        out
    }

    /// (entity, natural key) of every key these rows ever had.
    fn keys_of<'a>(&self, ids: impl Iterator<Item = &'a String>) -> BTreeSet<(E, String)> {
        let mut out = BTreeSet::new();
        for id in ids {
            if let Some(row) = self.rows.get(id) {
                out.extend(self.keys_ever(id).into_iter().map(|k| (row.e, k)));
            }
        }
        out
    }

    /// Records one committed transaction of `site`'s application.
    fn apply(&mut self, site: usize, ops: Vec<OOp>) {
        let name = SITES[site];
        for op in ops {
            match op {
                OOp::Insert { id, e, image, public, frozen } => {
                    let key = self.key_of(e, &image);
                    match e {
                        E::User if public => self.public_users.push((key.clone(), site)),
                        E::Lab if public => self.public_labs.push((key.clone(), site)),
                        _ => {}
                    }
                    if frozen {
                        self.frozen_users.push((key, site));
                    }
                    if self.rows.contains_key(&id) {
                        self.sanity.push(format!("{name} inserted {id}, which the oracle already holds"));
                    }
                    self.rows.insert(
                        id.clone(),
                        ORow { e, creator: Some(site), owner: Some(site), hot: false, images: vec![(Some(site), Some(image))] },
                    );
                    *self.wrote[site].entry(id.clone()).or_default() += 1;
                    self.owned[site].insert(id);
                }
                OOp::Update { id, changed, image } => {
                    let Some(prev) = self.last_image(&id).cloned() else {
                        self.sanity.push(format!("{name} updated {id}, which the oracle has no image of"));
                        continue;
                    };
                    let (hot, owner) = (self.rows[&id].hot, self.rows[&id].owner);
                    let image = if hot {
                        image
                    } else {
                        if owner != Some(site) {
                            self.sanity.push(format!("{name} updated {id}, owned by {:?}", owner.map(|o| SITES[o])));
                        }
                        let mut merged = prev.clone();
                        for (c, v) in image {
                            if changed.contains(&c) {
                                merged.insert(c, v);
                            } else if prev.get(c) != Some(&v) {
                                self.interference.push((site, format!("{id}: column {c} was {:?} as {name} last wrote it, the database had {v:?} when {name} next wrote the row", prev.get(c))));
                            }
                        }
                        merged
                    };
                    let row = self.rows.get_mut(&id).expect("has an image");
                    row.images.push((Some(site), Some(image)));
                    *self.wrote[site].entry(id).or_default() += 1;
                }
                OOp::Delete { id } => match self.rows.get_mut(&id) {
                    Some(row) => {
                        row.images.push((Some(site), None));
                        *self.wrote[site].entry(id).or_default() += 1;
                    }
                    None => self.sanity.push(format!("{name} deleted {id}, unknown to the oracle")),
                },
                OOp::Avatar { id, token, hex } => {
                    self.avatars[site].insert(token, hex);
                    *self.wrote[site].entry(id).or_default() += 1;
                }
                OOp::HandIn { id } => {
                    if let Some(row) = self.rows.get_mut(&id) {
                        row.owner = Some(site);
                    }
                    self.owned[site].insert(id);
                }
            }
        }
    }

    /// The last few writes of a row: who, and at which mtime.
    fn recent(&self, id: &str) -> String {
        let Some(row) = self.rows.get(id) else { return String::new() };
        let n = row.images.len();
        let mut last: Vec<&(Option<usize>, Option<Image>)> = row.images[n.saturating_sub(3)..].iter().collect();
        if row.hot {
            // The newest by version instead: which writes tie for the win.
            let mtime =
                |i: &Option<Image>| i.as_ref().and_then(|i| i.get("mtime")).map(|m| self.text(m).parse::<i64>().unwrap_or(0)).unwrap_or(0);
            last = row.images.iter().collect();
            last.sort_by_key(|(w, i)| std::cmp::Reverse((mtime(i), *w)));
            last.truncate(4);
        }
        let parts: Vec<String> = last
            .into_iter()
            .map(|(w, i)| {
                let who = w.map_or("history", |w| SITES[w]);
                match i {
                    Some(i) => match i.get("mtime") {
                        Some(m) => format!("{who}@{}", self.text(m)),
                        None => who.to_string(),
                    },
                    None => format!("{who}:delete"),
                }
            })
            .collect();
        format!("[{} write(s), {}: {}]", n, if row.hot { "newest" } else { "last" }, parts.join(", "))
    }

    /// Every row and every write to it, for reading a failure.
    fn dump(&self) -> String {
        let mut out = String::new();
        for (id, row) in &self.rows {
            let site = |s: Option<usize>| s.map_or("*", |s| SITES[s]);
            out.push_str(&format!(
                "{id} [{}] created at {}, owned by {}{}\n",
                row.e.name(),
                site(row.creator),
                site(row.owner),
                if row.hot { ", hot" } else { "" }
            ));
            for (w, image) in &row.images {
                match image {
                    Some(i) => out.push_str(&format!("    {}: {:?}\n", w.map_or("history", |w| SITES[w]), self.display(row.e, i))),
                    None => out.push_str(&format!("    {}: deleted\n", w.map_or("history", |w| SITES[w]))),
                }
            }
        }
        out
    }

    /// The image a non-hot row must have at `site` in the end (None: absent there).
    fn final_at(&self, row: &ORow, site: usize) -> Option<Image> {
        let temporary = |i: &Image| i.get("is_temporary") == Some(&V::S("1".into()));
        let (writer, last) = row.images.last()?;
        match last {
            None => {
                let deleter = writer.expect("deletes have a writer");
                let prev = row.images.iter().rev().find_map(|(_, i)| i.as_ref())?;
                let origin = row.creator.unwrap_or(deleter);
                if site == deleter || temporary(prev) || !routed(row.e, origin, site) {
                    return None;
                }
                match row.e {
                    // on_delete = { set = { atime = 0 } }
                    E::User => {
                        let mut i = prev.clone();
                        i.insert("atime", V::S("0".into()));
                        Some(i)
                    }
                    // on_delete = "ignore"
                    E::Lab => Some(prev.clone()),
                    _ => None,
                }
            }
            Some(image) if temporary(image) => (row.creator == Some(site)).then(|| image.clone()),
            Some(image) => match row.creator {
                None => Some(image.clone()),
                Some(c) => (c == site || routed(row.e, c, site)).then(|| image.clone()),
            },
        }
    }

    /// Every row `site` must hold in the end, by entity and natural key: (identity, what); and
    /// the oracle's own inconsistencies (two rows expected under one key).
    fn expected(&self, site: usize) -> (Expected, Vec<String>) {
        let mut out: BTreeMap<E, BTreeMap<String, (String, Want)>> = ENTITIES.iter().map(|e| (*e, BTreeMap::new())).collect();
        let mut sanity = Vec::new();
        for (id, row) in &self.rows {
            let (key, want) = if row.hot {
                let mut all: Vec<Vec<String>> = Vec::new();
                for image in row.images.iter().filter_map(|(_, i)| i.as_ref()) {
                    let d = self.display(row.e, image);
                    if !all.contains(&d) {
                        all.push(d);
                    }
                }
                (self.current_key(id).unwrap_or_default(), Want::OneOf(all))
            } else {
                let Some(image) = self.final_at(row, site) else { continue };
                (self.key_of(row.e, &image), Want::Exact(self.display(row.e, &image)))
            };
            if let Some((other, _)) = out.get_mut(&row.e).unwrap().insert(key.clone(), (id.clone(), want)) {
                sanity.push(format!("{}: rows {other} and {id} both expected under key {key}", SITES[site]));
            }
        }
        (out, sanity)
    }
}

#[derive(Clone, Debug)]
enum Want {
    Exact(Vec<String>),
    /// A hot row: any value some site wrote, the same everywhere.
    OneOf(Vec<Vec<String>>),
}

// ───────────────────────────── the workload ─────────────────────────────
//
// Who may write what, so that the oracle knows every row's final value exactly:
// - a row belongs to the site that created it (or holds it in its history): only that site
//   updates or deletes it, until it hands it over to another site (the causal tie, below);
// - the hot people (history everywhere) are updated by every site at once: real conflicts;
// - references go to rows that never go away and whose key never changes (the admin, the hot
//   people, the shared tags, other sites' public people and labs once they have arrived), or
//   to the site's own rows; keys change (tag uuid, lab code) and rows are deleted only where
//   no other site refers to them;
// - a membership belongs to the site of its person (for a hot person, of its lab or tag);
// - avatars go on the site's own people, the hot people, the admin, and other sites' people
//   that nobody writes any more (frozen).

/// What a site's application knows of its own rows (local ids), and the rows present everywhere.
#[derive(Clone, Default)]
struct Model {
    users: BTreeMap<i64, MUser>,
    labs: BTreeMap<i64, MLab>,
    /// Own tags: local id -> parent's local id (or 0).
    tags: BTreeMap<i64, MTag>,
    user_labs: BTreeMap<i64, (i64, i64)>,
    user_tags: BTreeMap<i64, (i64, i64)>,
    equipment: BTreeMap<i64, String>,
    admin: i64,
    hot: Vec<(i64, String)>,
    shared_tags: Vec<i64>,
    /// Local id -> identity, for every row above.
    ids: HashMap<(E, i64), String>,
}

#[derive(Clone)]
struct MUser {
    token: String,
    temp: bool,
    /// Only this site refers to it: it may be deleted.
    private: bool,
    /// Never written again: others give it avatars.
    frozen: bool,
    /// Created by the workload (history rows are never deleted).
    created: bool,
    /// This site writes it (false once handed over to another site).
    mine: bool,
    /// This site may connect it to labs and tags (not a row taken over from another site).
    connectable: bool,
}

#[derive(Clone)]
struct MLab {
    temp: bool,
    private: bool,
    created: bool,
    mine: bool,
    connectable: bool,
}

#[derive(Clone)]
struct MTag {
    parent: i64,
    created: bool,
}

impl Model {
    fn from_history(i: usize) -> Model {
        let rows = history(i);
        let id_of = |e: E, key: &str| rows.iter().find(|r| r.e == e && r.key == key).unwrap().id;
        let ref_id = |r: &HRow, col: &str| match r.cols.iter().find(|(c, _)| *c == col) {
            Some((_, H::Ref(e, k))) => id_of(*e, k),
            _ => 0,
        };
        let mut m = Model::default();
        for r in &rows {
            m.ids.insert((r.e, r.id), r.identity(i));
            let temp = r.int("is_temporary") == 1;
            match r.e {
                E::User if r.shared && r.key == "admin" => m.admin = r.id,
                E::User if r.shared => m.hot.push((r.id, r.key.clone())),
                E::User => {
                    let u = MUser {
                        token: r.key.clone(),
                        temp,
                        private: !r.public,
                        frozen: r.frozen,
                        created: false,
                        mine: true,
                        connectable: true,
                    };
                    m.users.insert(r.id, u);
                }
                E::Lab => {
                    m.labs.insert(r.id, MLab { temp, private: !r.public, created: false, mine: true, connectable: true });
                }
                E::Tag if r.shared => m.shared_tags.push(r.id),
                E::Tag => {
                    m.tags.insert(r.id, MTag { parent: ref_id(r, "parent_id"), created: false });
                }
                E::UserLab => {
                    m.user_labs.insert(r.id, (ref_id(r, "user_id"), ref_id(r, "lab_id")));
                }
                E::UserTag if r.shared => {}
                E::UserTag => {
                    m.user_tags.insert(r.id, (ref_id(r, "user_id"), ref_id(r, "tag_id")));
                }
                E::Equipment => {
                    m.equipment.insert(r.id, r.key.clone());
                }
            }
        }
        m
    }

    /// Whether `tag` is `of` or below it in this site's own tree.
    fn below(&self, tag: i64, of: i64) -> bool {
        let mut t = tag;
        for _ in 0..100_000 {
            if t == of {
                return true;
            }
            match self.tags.get(&t) {
                Some(m) => t = m.parent,
                None => return false,
            }
        }
        true
    }
}

/// A row handed from one site to another: the taker waits until the giver's last change has
/// arrived, then changes the row on top of it, if it can, within the same second.
struct Handoff {
    e: E,
    id: String,
    key: String,
    expected: Vec<String>,
    mtime: String,
    from: usize,
}

/// What the sites' applications share: the oracle, rows handed to each site, progress.
struct Shared {
    oracle: Mutex<Oracle>,
    handoffs: Mutex<Vec<VecDeque<Handoff>>>,
    /// Transactions done per site (the kill variant waits on it).
    progress: [AtomicUsize; 3],
    /// Sites whose transactions are all done.
    done: AtomicUsize,
}

/// What one site's application did, for the summary.
#[derive(Default)]
struct Stats {
    committed: usize,
    failed: usize,
    /// The first few errors (deadlocks with the applier happen; the transaction is dropped).
    errors: Vec<String>,
    ops: BTreeMap<&'static str, usize>,
    handoffs_sent: usize,
    handoffs_taken: usize,
    /// Rows taken over within the same second as the giver's last change (same mtime).
    causal_ties: usize,
    handoffs_lost: Vec<String>,
    snapshot: String,
}

type Tx = sqlx::Transaction<'static, MySql>;
type Res<T> = Result<T, sqlx::Error>;

/// Row changes and their weights.
const OPS: [(&str, u64); 23] = [
    ("insert user", 12),
    ("insert lab", 6),
    ("insert tag", 8),
    ("insert equipment", 6),
    ("update user", 14),
    ("update hot user", 10),
    ("update lab", 6),
    ("rename tag", 5),
    ("move tag", 4),
    ("change tag uuid", 2),
    ("change lab code", 2),
    ("make permanent", 4),
    ("connect user_lab", 8),
    ("disconnect user_lab", 3),
    ("change user_lab type", 2),
    ("connect user_tag", 8),
    ("disconnect user_tag", 3),
    ("delete tag", 2),
    ("update equipment", 3),
    ("delete equipment", 2),
    ("delete user", 1),
    ("delete lab", 1),
    ("avatar", 5),
];

/// One site's application.
struct Gen {
    i: usize,
    rng: Rng,
    pool: MySqlPool,
    /// The model as of the last commit.
    m: Model,
    shared: Arc<Shared>,
    snapshot: Option<std::process::Command>,
    /// Take the snapshot, and wait for it, before the first transaction.
    snapshot_before: bool,
    /// Makes names unique.
    counter: u64,
    stats: Stats,
    /// "No reference": Some(0) as LIMS2 writes it, or None (NULL).
    none: Option<i64>,
}

impl Gen {
    async fn run(mut self, txns: usize) -> Stats {
        let snapshot_at = self.rng.below((txns / 3).max(1));
        if self.snapshot_before || txns == 0 {
            self.request_snapshot(0).await;
        }
        for n in 0..txns {
            self.take_handoffs().await;
            if n == snapshot_at {
                self.request_snapshot(n).await;
            }
            if self.rng.chance(3) {
                self.hand_off().await;
            } else {
                self.txn().await;
            }
            self.shared.progress[self.i].store(n + 1, SeqCst);
            let pause = self.rng.below(25) as u64;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        self.shared.done.fetch_add(1, SeqCst);
        // Rows handed over after this site's last transaction are still taken.
        loop {
            self.take_handoffs().await;
            if self.shared.done.load(SeqCst) == 3 && self.shared.handoffs.lock().unwrap()[self.i].is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stats
    }

    fn site(&self) -> &'static str {
        SITES[self.i]
    }

    fn next_n(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn error(&mut self, what: &str, e: sqlx::Error) {
        self.stats.failed += 1;
        if self.stats.errors.len() < 5 {
            self.stats.errors.push(format!("{what}: {e}"));
        }
    }

    async fn request_snapshot(&mut self, n: usize) {
        let Some(cmd) = self.snapshot.take() else { return };
        self.stats.snapshot = match tokio::process::Command::from(cmd).output().await {
            Ok(out) if out.status.success() && self.snapshot_before => "taken before the workload".to_string(),
            Ok(out) if out.status.success() => format!("asked before transaction {n}"),
            Ok(out) => {
                format!("FAILED before transaction {n}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
            }
            Err(e) => format!("FAILED to start: {e}"),
        };
    }

    /// One transaction of 1 to 20 row changes; the model and the oracle take it at commit.
    async fn txn(&mut self) {
        let changes = 1 + self.rng.below(20);
        let mut p = self.m.clone();
        let mut ops = Vec::new();
        let mut tx = match self.pool.begin().await {
            Ok(tx) => tx,
            Err(e) => return self.error("begin", e),
        };
        for _ in 0..changes {
            if let Err(e) = self.change(&mut tx, &mut p, &mut ops).await {
                let _ = tx.rollback().await;
                return self.error("change", e);
            }
        }
        match tx.commit().await {
            Ok(()) => {
                self.m = p;
                self.stats.committed += 1;
                self.shared.oracle.lock().unwrap().apply(self.i, ops);
            }
            Err(e) => {
                self.error("commit", e);
                self.shared.oracle.lock().unwrap().sanity.push(format!("{}: a COMMIT failed, its outcome unknown", self.site()));
            }
        }
    }

    async fn change(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<()> {
        let total: u64 = OPS.iter().map(|(_, w)| w).sum();
        for _ in 0..8 {
            let mut roll = self.rng.next() % total;
            let op = OPS
                .iter()
                .find(|(_, w)| {
                    if roll < *w {
                        true
                    } else {
                        roll -= w;
                        false
                    }
                })
                .unwrap()
                .0;
            let done = match op {
                "insert user" => self.insert_user(tx, p, ops).await?,
                "insert lab" => self.insert_lab(tx, p, ops).await?,
                "insert tag" => self.insert_tag(tx, p, ops).await?,
                "insert equipment" => self.insert_equipment(tx, p, ops).await?,
                "update user" => self.update_user(tx, p, ops, false).await?,
                "update hot user" => self.update_user(tx, p, ops, true).await?,
                "update lab" => self.update_lab(tx, p, ops).await?,
                "rename tag" => self.update_tag(tx, p, ops, "name").await?,
                "move tag" => self.update_tag(tx, p, ops, "parent_id").await?,
                "change tag uuid" => self.update_tag(tx, p, ops, "uuid").await?,
                "change lab code" => self.change_lab_code(tx, p, ops).await?,
                "make permanent" => self.make_permanent(tx, p, ops).await?,
                "connect user_lab" => self.connect_lab(tx, p, ops).await?,
                "disconnect user_lab" => self.disconnect(tx, p, ops, E::UserLab).await?,
                "change user_lab type" => self.change_membership_type(tx, p, ops).await?,
                "connect user_tag" => self.connect_tag(tx, p, ops).await?,
                "disconnect user_tag" => self.disconnect(tx, p, ops, E::UserTag).await?,
                "delete tag" => self.delete_tag(tx, p, ops).await?,
                "update equipment" => self.update_equipment(tx, p, ops).await?,
                "delete equipment" => self.delete_equipment(tx, p, ops).await?,
                "delete user" => self.delete_user(tx, p, ops).await?,
                "delete lab" => self.delete_lab(tx, p, ops).await?,
                "avatar" => self.avatar(tx, p, ops).await?,
                other => unreachable!("{other}"),
            };
            if done {
                *self.stats.ops.entry(op).or_default() += 1;
                return Ok(());
            }
        }
        Ok(())
    }

    // ── references: only to rows that never go away and whose key never changes, or to
    //    this site's own rows; 0 (or NULL) sometimes ──

    /// A permanent person: the admin, a hot person, one of this site's, or another site's
    /// public one once it has arrived here.
    async fn user_ref(&mut self, tx: &mut Tx, p: &Model, none_ok: bool) -> Res<Option<i64>> {
        let roll = self.rng.below(100);
        if none_ok && roll < 20 {
            return Ok(self.none);
        }
        if roll < 40 {
            return Ok(Some(p.admin));
        }
        if roll < 55 {
            return Ok(self.rng.pick(&p.hot).map(|(id, _)| id));
        }
        if roll < 80 {
            let own: Vec<i64> = p.users.iter().filter(|(_, u)| !u.temp).map(|(id, _)| *id).collect();
            if let Some(id) = self.rng.pick(&own) {
                return Ok(Some(id));
            }
        }
        let candidate = {
            let o = self.shared.oracle.lock().unwrap();
            let list: Vec<String> = o.public_users.iter().filter(|(_, s)| *s != self.i).map(|(k, _)| k.clone()).collect();
            self.rng.pick(&list)
        };
        if let Some(token) = candidate {
            if let Some(id) = lookup(tx, E::User, &token).await? {
                return Ok(Some(id));
            }
        }
        Ok(Some(p.admin))
    }

    /// A permanent lab: one of this site's or another site's public one once arrived.
    async fn lab_ref(&mut self, tx: &mut Tx, p: &Model) -> Res<Option<i64>> {
        let roll = self.rng.below(100);
        if roll < 30 {
            return Ok(self.none);
        }
        let own: Vec<i64> = p.labs.iter().filter(|(_, l)| !l.temp).map(|(id, _)| *id).collect();
        if roll < 65 {
            if let Some(id) = self.rng.pick(&own) {
                return Ok(Some(id));
            }
        }
        let candidate = {
            let o = self.shared.oracle.lock().unwrap();
            let list: Vec<String> = o.public_labs.iter().filter(|(_, s)| *s != self.i).map(|(k, _)| k.clone()).collect();
            self.rng.pick(&list)
        };
        if let Some(code) = candidate {
            if let Some(id) = lookup(tx, E::Lab, &code).await? {
                return Ok(Some(id));
            }
        }
        Ok(self.rng.pick(&own).or(self.none))
    }

    /// A person's organisation: a shared tag, or none.
    fn group_ref(&mut self, p: &Model) -> Option<i64> {
        if self.rng.chance(40) {
            self.none
        } else {
            self.rng.pick(&p.shared_tags)
        }
    }

    /// A tag's parent: a shared tag or one of this site's own, never below `moving`.
    fn parent_ref(&mut self, p: &Model, moving: Option<i64>) -> Option<i64> {
        let roll = self.rng.below(100);
        if roll < 5 {
            return self.none;
        }
        if roll < 50 {
            return self.rng.pick(&p.shared_tags);
        }
        let own: Vec<i64> = p.tags.keys().copied().filter(|t| moving.is_none_or(|m| !p.below(*t, m))).collect();
        self.rng.pick(&own).or_else(|| self.rng.pick(&p.shared_tags))
    }

    // ── inserts ──

    async fn insert_user(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let n = self.next_n();
        let token = format!("u-{}-{n}", self.site());
        let temp = self.rng.chance(20);
        let private = temp || self.rng.chance(30);
        let frozen = !private && self.rng.chance(25);
        let name = self.rng.name();
        let email = self.rng.chance(70).then(|| format!("u{n}@{}.edu", self.site()));
        let avatar = self.rng.chance(30).then(|| self.rng.blob());
        let active = self.rng.chance(50);
        let creator = self.user_ref(tx, p, true).await?;
        let approver = if self.rng.chance(30) { self.user_ref(tx, p, false).await? } else { self.none };
        let group = self.group_ref(p);
        let sql = "INSERT INTO `user` (token, name, email, avatar, is_temporary, atime, creator_id, approver_id, group_id, mtime) \
                   VALUES (?, ?, ?, ?, ?, IF(?, UNIX_TIMESTAMP(), 0), ?, ?, ?, UNIX_TIMESTAMP())";
        let binds = [
            Bind::S(Some(token.clone())),
            Bind::S(Some(name)),
            Bind::S(email),
            Bind::B(avatar.clone()),
            Bind::I(Some(temp as i64)),
            Bind::I(Some(active as i64)),
            Bind::I(creator),
            Bind::I(approver),
            Bind::I(group),
        ];
        let id = exec(&mut **tx, sql.into(), &binds).await? as i64;
        let identity = ident(E::User, &token);
        p.users.insert(id, MUser { token: token.clone(), temp, private, frozen, created: true, mine: true, connectable: true });
        p.ids.insert((E::User, id), identity.clone());
        let image = read_back(tx, E::User, id, p).await?;
        ops.push(OOp::Insert { id: identity.clone(), e: E::User, image, public: !private, frozen });
        if let Some(a) = avatar {
            ops.push(OOp::Avatar { id: identity, token, hex: hex(&a) });
        }
        Ok(true)
    }

    async fn insert_lab(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let n = self.next_n();
        let code = format!("L-{}-{n}", self.site());
        let temp = self.rng.chance(15);
        let private = temp || self.rng.chance(35);
        let pi = if self.rng.chance(80) { self.user_ref(tx, p, false).await? } else { self.none };
        let creator = self.user_ref(tx, p, true).await?;
        let active = self.rng.chance(60);
        let sql = "INSERT INTO lab (code, name, pi_id, creator_id, is_temporary, atime, mtime) VALUES (?, ?, ?, ?, ?, IF(?, UNIX_TIMESTAMP(), 0), UNIX_TIMESTAMP())";
        let name = format!("Lab of {}", self.rng.name());
        let binds = [
            Bind::S(Some(code.clone())),
            Bind::S(Some(name)),
            Bind::I(pi),
            Bind::I(creator),
            Bind::I(Some(temp as i64)),
            Bind::I(Some(active as i64)),
        ];
        let id = exec(&mut **tx, sql.into(), &binds).await? as i64;
        let identity = ident(E::Lab, &code);
        p.labs.insert(id, MLab { temp, private, created: true, mine: true, connectable: true });
        p.ids.insert((E::Lab, id), identity.clone());
        let image = read_back(tx, E::Lab, id, p).await?;
        ops.push(OOp::Insert { id: identity, e: E::Lab, image, public: !private, frozen: false });
        Ok(true)
    }

    async fn insert_tag(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let n = self.next_n();
        let uuid = format!("t-{}-{n}-{:08x}", self.site(), self.rng.next() as u32);
        let parent = self.parent_ref(p, None);
        let name = format!("Group {}", self.rng.name());
        let sql = "INSERT INTO tag (uuid, name, parent_id) VALUES (?, ?, ?)";
        let id = exec(&mut **tx, sql.into(), &[Bind::S(Some(uuid.clone())), Bind::S(Some(name)), Bind::I(parent)]).await? as i64;
        let identity = ident(E::Tag, &uuid);
        p.tags.insert(id, MTag { parent: parent.unwrap_or(0), created: true });
        p.ids.insert((E::Tag, id), identity.clone());
        let image = read_back(tx, E::Tag, id, p).await?;
        ops.push(OOp::Insert { id: identity, e: E::Tag, image, public: false, frozen: false });
        Ok(true)
    }

    async fn insert_equipment(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let n = self.next_n();
        let ref_no = format!("E-{}-{n}", self.site());
        let group = self.lab_ref(tx, p).await?;
        let name = format!("Instrument {}", self.rng.below(100_000));
        let sql = "INSERT INTO equipment (ref_no, name, group_id, mtime) VALUES (?, ?, ?, UNIX_TIMESTAMP())";
        let id = exec(&mut **tx, sql.into(), &[Bind::S(Some(ref_no.clone())), Bind::S(Some(name)), Bind::I(group)]).await? as i64;
        let identity = ident(E::Equipment, &ref_no);
        p.equipment.insert(id, ref_no);
        p.ids.insert((E::Equipment, id), identity.clone());
        let image = read_back(tx, E::Equipment, id, p).await?;
        ops.push(OOp::Insert { id: identity, e: E::Equipment, image, public: false, frozen: false });
        Ok(true)
    }

    // ── updates: LIMS2 writes mtime = UNIX_TIMESTAMP() with every change of a person or lab ──

    /// A change to a person or lab: SET clause, its binds, the columns it sets.
    fn person_change(&mut self, email: bool) -> (String, Vec<Bind>, &'static [&'static str]) {
        match self.rng.below(if email { 4 } else { 3 }) {
            0 => ("name = ?".into(), vec![Bind::S(Some(self.rng.name()))], &["name", "mtime"]),
            1 => ("atime = UNIX_TIMESTAMP()".into(), vec![], &["atime", "mtime"]),
            2 => ("atime = 0".into(), vec![], &["atime", "mtime"]),
            _ => {
                let email = self.rng.chance(80).then(|| format!("x{}@{}.edu", self.rng.below(100_000), self.site()));
                ("email = ?".into(), vec![Bind::S(email)], &["email", "mtime"])
            }
        }
    }

    async fn update_user(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>, hot: bool) -> Res<bool> {
        let candidates: Vec<i64> = if hot {
            p.hot.iter().map(|(id, _)| *id).collect()
        } else {
            p.users.iter().filter(|(_, u)| u.mine && !u.frozen).map(|(id, _)| *id).collect()
        };
        let Some(id) = self.rng.pick(&candidates) else { return Ok(false) };
        let (set, mut binds, changed) = self.person_change(true);
        binds.push(Bind::I(Some(id)));
        exec(&mut **tx, format!("UPDATE `user` SET {set}, mtime = UNIX_TIMESTAMP() WHERE id = ?"), &binds).await?;
        let image = read_back(tx, E::User, id, p).await?;
        ops.push(OOp::Update { id: p.ids[&(E::User, id)].clone(), changed, image });
        Ok(true)
    }

    async fn update_lab(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let candidates: Vec<i64> = p.labs.iter().filter(|(_, l)| l.mine).map(|(id, _)| *id).collect();
        let Some(id) = self.rng.pick(&candidates) else { return Ok(false) };
        let (set, mut binds, changed) = self.person_change(false);
        binds.push(Bind::I(Some(id)));
        exec(&mut **tx, format!("UPDATE lab SET {set}, mtime = UNIX_TIMESTAMP() WHERE id = ?"), &binds).await?;
        let image = read_back(tx, E::Lab, id, p).await?;
        ops.push(OOp::Update { id: p.ids[&(E::Lab, id)].clone(), changed, image });
        Ok(true)
    }

    /// Renames a tag, moves it in the tree (never under itself), or changes its uuid.
    async fn update_tag(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>, what: &'static str) -> Res<bool> {
        let own: Vec<i64> = p.tags.keys().copied().collect();
        let Some(id) = self.rng.pick(&own) else { return Ok(false) };
        let (set, bind, changed): (&str, Bind, &'static [&'static str]) = match what {
            "name" => ("name = ?", Bind::S(Some(format!("Group {}", self.rng.name()))), &["name"]),
            "uuid" => {
                let n = self.next_n();
                ("uuid = ?", Bind::S(Some(format!("t-{}-{n}-{:08x}", self.site(), self.rng.next() as u32))), &["uuid"])
            }
            _ => {
                let parent = self.parent_ref(p, Some(id));
                if parent.unwrap_or(0) == p.tags[&id].parent {
                    return Ok(false);
                }
                p.tags.get_mut(&id).unwrap().parent = parent.unwrap_or(0);
                ("parent_id = ?", Bind::I(parent), &["parent_id"])
            }
        };
        exec(&mut **tx, format!("UPDATE tag SET {set} WHERE id = ?"), &[bind, Bind::I(Some(id))]).await?;
        let image = read_back(tx, E::Tag, id, p).await?;
        ops.push(OOp::Update { id: p.ids[&(E::Tag, id)].clone(), changed, image });
        Ok(true)
    }

    /// A lab's code changes: only a lab no other site refers to.
    async fn change_lab_code(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let candidates: Vec<i64> = p.labs.iter().filter(|(_, l)| l.mine && l.private).map(|(id, _)| *id).collect();
        let Some(id) = self.rng.pick(&candidates) else { return Ok(false) };
        let code = format!("L-{}-{}", self.site(), self.next_n());
        exec(&mut **tx, "UPDATE lab SET code = ?, mtime = UNIX_TIMESTAMP() WHERE id = ?".into(), &[Bind::S(Some(code)), Bind::I(Some(id))])
            .await?;
        let image = read_back(tx, E::Lab, id, p).await?;
        ops.push(OOp::Update { id: p.ids[&(E::Lab, id)].clone(), changed: &["code", "mtime"], image });
        Ok(true)
    }

    /// A temporary person or lab becomes permanent: from now on it is everywhere.
    async fn make_permanent(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let users: Vec<i64> = p.users.iter().filter(|(_, u)| u.mine && u.temp).map(|(id, _)| *id).collect();
        let labs: Vec<i64> = p.labs.iter().filter(|(_, l)| l.mine && l.temp).map(|(id, _)| *id).collect();
        let (e, id) = match (self.rng.chance(60), self.rng.pick(&users), self.rng.pick(&labs)) {
            (true, Some(u), _) | (false, Some(u), None) => (E::User, u),
            (_, _, Some(l)) => (E::Lab, l),
            _ => return Ok(false),
        };
        exec(&mut **tx, format!("UPDATE `{}` SET is_temporary = 0, mtime = UNIX_TIMESTAMP() WHERE id = ?", e.name()), &[Bind::I(Some(id))])
            .await?;
        match e {
            E::User => p.users.get_mut(&id).unwrap().temp = false,
            _ => p.labs.get_mut(&id).unwrap().temp = false,
        }
        let image = read_back(tx, e, id, p).await?;
        ops.push(OOp::Update { id: p.ids[&(e, id)].clone(), changed: &["is_temporary", "mtime"], image });
        Ok(true)
    }

    // ── memberships: each pair is connected by one site only (one of its people, or a hot
    //    person and one of its labs or tags) ──

    async fn connect_lab(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let own_users: Vec<i64> = p.users.iter().filter(|(_, u)| u.mine && u.connectable && !u.temp).map(|(id, _)| *id).collect();
        let own_labs: Vec<i64> = p.labs.iter().filter(|(_, l)| l.mine && l.connectable && !l.temp).map(|(id, _)| *id).collect();
        let hot = self.rng.chance(40);
        let (user, lab) = if hot {
            (self.rng.pick(&p.hot).map(|(id, _)| id), self.rng.pick(&own_labs))
        } else {
            let user = self.rng.pick(&own_users);
            let lab = if self.rng.chance(50) { self.rng.pick(&own_labs) } else { self.lab_ref(tx, p).await?.filter(|l| *l != 0) };
            (user, lab)
        };
        let (Some(user), Some(lab)) = (user, lab) else { return Ok(false) };
        if p.user_labs.values().any(|pair| *pair == (user, lab)) {
            return Ok(false);
        }
        let kind = self.rng.pick(&["member", "pi", "manager"]).unwrap();
        let id = exec(
            &mut **tx,
            "INSERT INTO user_lab (user_id, lab_id, type) VALUES (?, ?, ?)".into(),
            &[Bind::I(Some(user)), Bind::I(Some(lab)), Bind::S(Some(kind.into()))],
        )
        .await? as i64;
        let identity = format!("user_lab:{}:{id}", self.site());
        p.user_labs.insert(id, (user, lab));
        p.ids.insert((E::UserLab, id), identity.clone());
        let image = read_back(tx, E::UserLab, id, p).await?;
        ops.push(OOp::Insert { id: identity, e: E::UserLab, image, public: false, frozen: false });
        Ok(true)
    }

    async fn connect_tag(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let own_users: Vec<i64> = p.users.iter().filter(|(_, u)| u.mine && u.connectable && !u.temp).map(|(id, _)| *id).collect();
        let own_tags: Vec<i64> = p.tags.keys().copied().collect();
        let (user, tag) = if self.rng.chance(40) {
            (self.rng.pick(&p.hot).map(|(id, _)| id), self.rng.pick(&own_tags))
        } else {
            let tag = if self.rng.chance(50) { self.rng.pick(&p.shared_tags) } else { self.rng.pick(&own_tags) };
            (self.rng.pick(&own_users), tag)
        };
        let (Some(user), Some(tag)) = (user, tag) else { return Ok(false) };
        if p.user_tags.values().any(|pair| *pair == (user, tag)) {
            return Ok(false);
        }
        let id = exec(&mut **tx, "INSERT INTO user_tag (user_id, tag_id) VALUES (?, ?)".into(), &[Bind::I(Some(user)), Bind::I(Some(tag))])
            .await? as i64;
        let identity = format!("user_tag:{}:{id}", self.site());
        p.user_tags.insert(id, (user, tag));
        p.ids.insert((E::UserTag, id), identity.clone());
        let image = read_back(tx, E::UserTag, id, p).await?;
        ops.push(OOp::Insert { id: identity, e: E::UserTag, image, public: false, frozen: false });
        Ok(true)
    }

    async fn disconnect(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>, e: E) -> Res<bool> {
        let pairs = if e == E::UserLab { &mut p.user_labs } else { &mut p.user_tags };
        let ids: Vec<i64> = pairs.keys().copied().collect();
        let Some(id) = self.rng.pick(&ids) else { return Ok(false) };
        pairs.remove(&id);
        exec(&mut **tx, format!("DELETE FROM `{}` WHERE id = ?", e.name()), &[Bind::I(Some(id))]).await?;
        ops.push(OOp::Delete { id: p.ids[&(e, id)].clone() });
        Ok(true)
    }

    async fn change_membership_type(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let ids: Vec<i64> = p.user_labs.keys().copied().collect();
        let Some(id) = self.rng.pick(&ids) else { return Ok(false) };
        let kind = self.rng.pick(&["member", "pi", "manager", "student"]).unwrap();
        exec(&mut **tx, "UPDATE user_lab SET type = ? WHERE id = ?".into(), &[Bind::S(Some(kind.into())), Bind::I(Some(id))]).await?;
        let image = read_back(tx, E::UserLab, id, p).await?;
        ops.push(OOp::Update { id: p.ids[&(E::UserLab, id)].clone(), changed: &["type"], image });
        Ok(true)
    }

    // ── deletes ──

    /// A leaf tag this site created, its memberships first.
    async fn delete_tag(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let leaves: Vec<i64> =
            p.tags.iter().filter(|(id, t)| t.created && !p.tags.values().any(|c| c.parent == **id)).map(|(id, _)| *id).collect();
        let Some(id) = self.rng.pick(&leaves) else { return Ok(false) };
        let refs = count(
            tx,
            "SELECT CAST((SELECT COUNT(*) FROM tag WHERE parent_id = ?) + (SELECT COUNT(*) FROM `user` WHERE group_id = ?) AS CHAR)",
            id,
            2,
        )
        .await?;
        if refs != 0 {
            return Ok(false);
        }
        let members: Vec<i64> = p.user_tags.iter().filter(|(_, (_, t))| *t == id).map(|(m, _)| *m).collect();
        for m in members {
            exec(&mut **tx, "DELETE FROM user_tag WHERE id = ?".into(), &[Bind::I(Some(m))]).await?;
            p.user_tags.remove(&m);
            ops.push(OOp::Delete { id: p.ids[&(E::UserTag, m)].clone() });
        }
        exec(&mut **tx, "DELETE FROM tag WHERE id = ?".into(), &[Bind::I(Some(id))]).await?;
        p.tags.remove(&id);
        ops.push(OOp::Delete { id: p.ids[&(E::Tag, id)].clone() });
        Ok(true)
    }

    async fn update_equipment(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let ids: Vec<i64> = p.equipment.keys().copied().collect();
        let Some(id) = self.rng.pick(&ids) else { return Ok(false) };
        let (set, bind, changed): (&str, Bind, &'static [&'static str]) = if self.rng.chance(30) {
            ("group_id = ?", Bind::I(self.lab_ref(tx, p).await?), &["group_id", "mtime"])
        } else {
            ("name = ?", Bind::S(Some(format!("Instrument {}", self.rng.below(100_000)))), &["name", "mtime"])
        };
        exec(&mut **tx, format!("UPDATE equipment SET {set}, mtime = UNIX_TIMESTAMP() WHERE id = ?"), &[bind, Bind::I(Some(id))]).await?;
        let image = read_back(tx, E::Equipment, id, p).await?;
        ops.push(OOp::Update { id: p.ids[&(E::Equipment, id)].clone(), changed, image });
        Ok(true)
    }

    async fn delete_equipment(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let ids: Vec<i64> = p.equipment.keys().copied().collect();
        let Some(id) = self.rng.pick(&ids) else { return Ok(false) };
        exec(&mut **tx, "DELETE FROM equipment WHERE id = ?".into(), &[Bind::I(Some(id))]).await?;
        p.equipment.remove(&id);
        ops.push(OOp::Delete { id: p.ids[&(E::Equipment, id)].clone() });
        Ok(true)
    }

    /// Rarely: a person this site created, that nothing refers to and nobody else writes.
    async fn delete_user(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let ids: Vec<i64> = p.users.iter().filter(|(_, u)| u.created && u.mine && u.private && !u.frozen).map(|(id, _)| *id).collect();
        let Some(id) = self.rng.pick(&ids) else { return Ok(false) };
        let refs = count(
            tx,
            "SELECT CAST((SELECT COUNT(*) FROM `user` WHERE creator_id = ? OR approver_id = ?) + (SELECT COUNT(*) FROM lab WHERE pi_id = ? OR creator_id = ?) \
             + (SELECT COUNT(*) FROM user_lab WHERE user_id = ?) + (SELECT COUNT(*) FROM user_tag WHERE user_id = ?) AS CHAR)",
            id,
            6,
        )
        .await?;
        if refs != 0 {
            return Ok(false);
        }
        exec(&mut **tx, "DELETE FROM `user` WHERE id = ?".into(), &[Bind::I(Some(id))]).await?;
        p.users.remove(&id);
        ops.push(OOp::Delete { id: p.ids[&(E::User, id)].clone() });
        Ok(true)
    }

    /// Rarely: a lab this site created, that nothing refers to and nobody else writes.
    async fn delete_lab(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let ids: Vec<i64> = p.labs.iter().filter(|(_, l)| l.created && l.mine && l.private).map(|(id, _)| *id).collect();
        let Some(id) = self.rng.pick(&ids) else { return Ok(false) };
        let refs = count(
            tx,
            "SELECT CAST((SELECT COUNT(*) FROM user_lab WHERE lab_id = ?) + (SELECT COUNT(*) FROM equipment WHERE group_id = ?) AS CHAR)",
            id,
            2,
        )
        .await?;
        if refs != 0 {
            return Ok(false);
        }
        exec(&mut **tx, "DELETE FROM lab WHERE id = ?".into(), &[Bind::I(Some(id))]).await?;
        p.labs.remove(&id);
        ops.push(OOp::Delete { id: p.ids[&(E::Lab, id)].clone() });
        Ok(true)
    }

    /// An avatar, which never leaves the site: on one of this site's people, a hot person, the
    /// admin, or another site's person nobody writes any more.
    async fn avatar(&mut self, tx: &mut Tx, p: &mut Model, ops: &mut Vec<OOp>) -> Res<bool> {
        let roll = self.rng.below(100);
        let target: Option<(i64, String)> = if roll < 40 {
            let own: Vec<(i64, String)> = p.users.iter().filter(|(_, u)| u.mine).map(|(id, u)| (*id, u.token.clone())).collect();
            self.rng.pick(&own)
        } else if roll < 60 {
            self.rng.pick(&p.hot)
        } else if roll < 70 {
            Some((p.admin, "admin".into()))
        } else {
            let candidate = {
                let o = self.shared.oracle.lock().unwrap();
                let list: Vec<String> = o.frozen_users.iter().filter(|(_, s)| *s != self.i).map(|(k, _)| k.clone()).collect();
                self.rng.pick(&list)
            };
            match candidate {
                Some(token) => lookup(tx, E::User, &token).await?.map(|id| (id, token)),
                None => None,
            }
        };
        let Some((id, token)) = target else { return Ok(false) };
        let blob = self.rng.blob();
        exec(&mut **tx, "UPDATE `user` SET avatar = ? WHERE id = ?".into(), &[Bind::B(Some(blob.clone())), Bind::I(Some(id))]).await?;
        ops.push(OOp::Avatar { id: ident(E::User, &token), token, hex: hex(&blob) });
        Ok(true)
    }

    // ── the causal tie: a change on top of a received one, within the same second ──

    /// Renames one of this site's public people or labs (and deactivates it) at the start of
    /// a second, then hands it to another site, which activates it as soon as the rename has
    /// arrived there: the same mtime, the later change.
    async fn hand_off(&mut self) {
        let users: Vec<i64> =
            self.m.users.iter().filter(|(_, u)| u.mine && !u.private && !u.frozen && !u.temp).map(|(id, _)| *id).collect();
        let labs: Vec<i64> = self.m.labs.iter().filter(|(_, l)| l.mine && !l.private && !l.temp).map(|(id, _)| *id).collect();
        let (e, id) = match (self.rng.chance(60), self.rng.pick(&users), self.rng.pick(&labs)) {
            (true, Some(u), _) | (false, Some(u), None) => (E::User, u),
            (_, _, Some(l)) => (E::Lab, l),
            _ => return self.txn().await,
        };
        let to = (self.i + 1 + self.rng.below(2)) % 3;
        let into_second = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_millis() as u64;
        tokio::time::sleep(Duration::from_millis(1000 - into_second + 5)).await;
        let mut p = self.m.clone();
        let identity = p.ids[&(e, id)].clone();
        let name = format!("Renamed {}", self.rng.name());
        let result: Res<Image> = async {
            let mut tx = self.pool.begin().await?;
            exec(
                &mut *tx,
                format!("UPDATE `{}` SET name = ?, atime = 0, mtime = UNIX_TIMESTAMP() WHERE id = ?", e.name()),
                &[Bind::S(Some(name)), Bind::I(Some(id))],
            )
            .await?;
            let image = read_back(&mut tx, e, id, &p).await?;
            tx.commit().await?;
            Ok(image)
        }
        .await;
        let image = match result {
            Ok(image) => image,
            Err(err) => return self.error("hand-off", err),
        };
        match e {
            E::User => p.users.get_mut(&id).unwrap().mine = false,
            _ => p.labs.get_mut(&id).unwrap().mine = false,
        }
        self.m = p;
        self.stats.committed += 1;
        let handoff = {
            let mut o = self.shared.oracle.lock().unwrap();
            o.apply(self.i, vec![OOp::Update { id: identity.clone(), changed: &["name", "atime", "mtime"], image }]);
            let last = o.last_image(&identity).unwrap().clone();
            let expected = o.display(e, &last);
            Handoff { e, key: o.key_of(e, &last), mtime: expected[e.col("mtime")].clone(), expected, id: identity, from: self.i }
        };
        self.shared.handoffs.lock().unwrap()[to].push_back(handoff);
        self.stats.handoffs_sent += 1;
    }

    /// Takes the rows handed to this site: waits (3 s at most) until the giver's last change is
    /// here, then activates the row on top of it.
    async fn take_handoffs(&mut self) {
        let taken: Vec<Handoff> = self.shared.handoffs.lock().unwrap()[self.i].drain(..).collect();
        for h in taken {
            let sql = select_sql(h.e, &format!("WHERE t.`{}` = ?", h.e.key()[0]));
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut seen = None;
            let local = loop {
                if let Ok(rows) = fetch(&self.pool, sql.clone(), &[Bind::S(Some(h.key.clone()))]).await {
                    if let Some(cells) = rows.first() {
                        let row = parse_row(h.e, cells);
                        if row.vals == h.expected {
                            break Some(row.id);
                        }
                        seen = Some(row.vals);
                    }
                }
                if Instant::now() > deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            };
            let Some(local) = local else {
                self.stats.handoffs_lost.push(format!(
                    "{} {} from {}: not arrived within 3 s (expected {:?}, here {:?})",
                    h.e.name(),
                    h.key,
                    SITES[h.from],
                    h.expected,
                    seen
                ));
                continue;
            };
            let mut p = self.m.clone();
            p.ids.insert((h.e, local), h.id.clone());
            let result: Res<Image> = async {
                let mut tx = self.pool.begin().await?;
                exec(
                    &mut *tx,
                    format!("UPDATE `{}` SET atime = UNIX_TIMESTAMP(), mtime = UNIX_TIMESTAMP() WHERE id = ?", h.e.name()),
                    &[Bind::I(Some(local))],
                )
                .await?;
                let image = read_back(&mut tx, h.e, local, &p).await?;
                tx.commit().await?;
                Ok(image)
            }
            .await;
            let image = match result {
                Ok(image) => image,
                Err(err) => {
                    self.error("take over", err);
                    continue;
                }
            };
            if image.get("mtime") == Some(&V::S(h.mtime.clone())) {
                self.stats.causal_ties += 1;
            }
            match h.e {
                E::User => {
                    p.users.insert(
                        local,
                        MUser {
                            token: h.key.clone(),
                            temp: false,
                            private: false,
                            frozen: false,
                            created: false,
                            mine: true,
                            connectable: false,
                        },
                    );
                }
                _ => {
                    p.labs.insert(local, MLab { temp: false, private: false, created: false, mine: true, connectable: false });
                }
            }
            self.m = p;
            self.stats.committed += 1;
            self.stats.handoffs_taken += 1;
            self.shared
                .oracle
                .lock()
                .unwrap()
                .apply(self.i, vec![OOp::HandIn { id: h.id.clone() }, OOp::Update { id: h.id, changed: &["atime", "mtime"], image }]);
        }
    }
}

/// The local id of the `e` row whose natural key is `key` (permanent rows only), if it is here.
async fn lookup(tx: &mut Tx, e: E, key: &str) -> Res<Option<i64>> {
    let sql = format!("SELECT CAST(id AS CHAR) FROM `{}` WHERE `{}` = ? AND is_temporary = 0", e.name(), e.key()[0]);
    let rows = fetch(&mut **tx, sql, &[Bind::S(Some(key.to_string()))]).await?;
    Ok(rows.first().and_then(|r| r[0].as_deref()).and_then(|v| v.parse().ok()))
}

/// A count, `id` bound `times` times.
async fn count(tx: &mut Tx, sql: &str, id: i64, times: usize) -> Res<i64> {
    let binds = vec![Bind::I(Some(id)); times];
    let rows = fetch(&mut **tx, sql.to_string(), &binds).await?;
    Ok(rows.first().and_then(|r| r[0].as_deref()).and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// The row as this site's application just wrote it (inside its transaction), references as
/// identities: this site's own rows by local id, anyone else's (whose key never changes) by key.
async fn read_back(tx: &mut Tx, e: E, id: i64, p: &Model) -> Res<Image> {
    let rows = fetch(&mut **tx, select_sql(e, "WHERE t.id = ?"), &[Bind::I(Some(id))]).await?;
    let cells = rows.first().ok_or(sqlx::Error::RowNotFound)?;
    let row = parse_row(e, cells);
    let mut image = Image::new();
    let mut r = 0;
    for (n, (c, target)) in e.cols().iter().enumerate() {
        let v = match target {
            None => V::S(row.vals[n].clone()),
            Some(t) => {
                let raw = &row.raws[r];
                r += 1;
                if raw == "NULL" || raw == "0" {
                    V::S(raw.clone())
                } else if let Some(identity) = raw.parse().ok().and_then(|local: i64| p.ids.get(&(*t, local))) {
                    V::Ref(identity.clone())
                } else if row.vals[n].starts_with('#') {
                    V::S(row.vals[n].clone())
                } else {
                    V::Ref(ident(*t, &row.vals[n]))
                }
            }
        };
        image.insert(c, v);
    }
    Ok(image)
}

// ───────────────────────────── the checker ─────────────────────────────

/// A site's rows: entity -> natural key -> row.
type State = BTreeMap<E, BTreeMap<String, DbRow>>;
type Expected = BTreeMap<E, BTreeMap<String, (String, Want)>>;

async fn read_states(fed: &Federation) -> Vec<State> {
    let mut out = Vec::new();
    for site in SITES {
        let mut state = State::new();
        for e in ENTITIES {
            let rows = fetch(fed.pool(site), select_sql(e, "ORDER BY t.id"), &[])
                .await
                .unwrap_or_else(|err| panic!("{site}: reading {}: {err}", e.name()));
            let mut by_key = BTreeMap::new();
            for cells in rows {
                let row = parse_row(e, &cells);
                let key = row.key(e);
                let key = if by_key.contains_key(&key) { format!("{key}#duplicate-id-{}", row.id) } else { key };
                by_key.insert(key, row);
            }
            state.insert(e, by_key);
        }
        out.push(state);
    }
    out
}

/// One check's failures, each with a category for the summary.
struct Check {
    name: &'static str,
    failures: Vec<(String, String)>,
}

impl Check {
    fn new(name: &'static str) -> Check {
        Check { name, failures: Vec::new() }
    }
    fn fail(&mut self, category: impl Into<String>, message: impl Into<String>) {
        self.failures.push((category.into(), message.into()));
    }
    /// Counts by category; every failure when there are at most 200, else 3 of each category
    /// (the full list goes to a file).
    fn report(&self) -> String {
        let all = self.failures.len() <= 200;
        let mut out = format!("==== {} failure(s) in check `{}`\n", self.failures.len(), self.name);
        let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (c, m) in &self.failures {
            by.entry(c).or_default().push(m);
        }
        for (c, messages) in by {
            out.push_str(&format!("  {:>5}  {c}\n", messages.len()));
            for m in messages.iter().take(if all { usize::MAX } else { 3 }) {
                out.push_str(&format!("           - {m}\n"));
            }
        }
        out
    }
    /// Every failure, one a line.
    fn full(&self) -> String {
        self.failures.iter().map(|(c, m)| format!("{}\t{c}\t{m}\n", self.name)).collect()
    }
}

/// A column's value at every site, for diffs: "a='x' b='y' c=-".
fn at_sites(states: &[State], e: E, key: &str, col: usize) -> String {
    (0..3)
        .map(|s| match states[s][&e].get(key) {
            Some(row) => format!("{}='{}'", SITES[s], row.vals[col]),
            None => format!("{}=-", SITES[s]),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// converge: the sites that hold a row (temporary ones aside) hold the same values, and a row
/// held somewhere is held everywhere it is routed.
fn check_converge(states: &[State], exp: &[Expected], oracle: &Oracle) -> Check {
    let mut check = Check::new("converge");
    for e in ENTITIES {
        let keys: BTreeSet<&String> = (0..3).flat_map(|s| states[s][&e].iter().filter(|(_, r)| !r.temporary(e)).map(|(k, _)| k)).collect();
        for key in keys {
            let rows: Vec<Option<&DbRow>> = (0..3).map(|s| states[s][&e].get(key).filter(|r| !r.temporary(e))).collect();
            let present: Vec<usize> = (0..3).filter(|s| rows[*s].is_some()).collect();
            for (n, (c, _)) in e.cols().iter().enumerate() {
                let values: BTreeSet<&String> = present.iter().map(|s| &rows[*s].unwrap().vals[n]).collect();
                if values.len() > 1 {
                    let id = (0..3).find_map(|s| exp[s][&e].get(key).map(|(id, _)| id.clone())).unwrap_or_default();
                    check.fail(
                        format!("diverged {}.{c}", e.name()),
                        format!("{} {key}: column {c} differs: {} {}", e.name(), at_sites(states, e, key, n), oracle.recent(&id)),
                    );
                }
            }
            let known = (0..3).any(|s| exp[s][&e].contains_key(key));
            let missing: Vec<&str> = (0..3)
                .filter(|s| rows[*s].is_none() && (exp[*s][&e].contains_key(key) || (!known && e != E::Equipment)))
                .map(|s| SITES[s])
                .collect();
            if !missing.is_empty() {
                let held: Vec<&str> = present.iter().map(|s| SITES[*s]).collect();
                check.fail(format!("not everywhere {}", e.name()), format!("{} {key}: held at {held:?}, missing at {missing:?}", e.name()));
            }
        }
    }
    check
}

/// oracle: every site holds exactly what the applications wrote, the rules applied.
fn check_oracle(states: &[State], exp: &[Expected], oracle: &Oracle) -> Check {
    let mut check = Check::new("oracle");
    for s in 0..3 {
        let site = SITES[s];
        for e in ENTITIES {
            let actual = &states[s][&e];
            for (key, (id, want)) in &exp[s][&e] {
                let Some(row) = actual.get(key) else {
                    let what = match want {
                        Want::Exact(v) => format!("{v:?}"),
                        Want::OneOf(v) => format!("one of {} values", v.len()),
                    };
                    check.fail(
                        format!("missing {} at {site}", e.name()),
                        format!("{site}: {} {key} ({id}) missing, expected {what}", e.name()),
                    );
                    continue;
                };
                match want {
                    Want::Exact(v) if *v != row.vals => {
                        let diffs: Vec<String> = e
                            .cols()
                            .iter()
                            .enumerate()
                            .filter(|(n, _)| v[*n] != row.vals[*n])
                            .map(|(n, (c, _))| format!("{c}: expected '{}', {}", v[n], at_sites(states, e, key, n)))
                            .collect();
                        let cols: Vec<&str> =
                            e.cols().iter().enumerate().filter(|(n, _)| v[*n] != row.vals[*n]).map(|(_, (c, _))| *c).collect();
                        check.fail(
                            format!("wrong {}.{} at {site}", e.name(), cols.join("+")),
                            format!("{site}: {} {key} ({id}): {} {}", e.name(), diffs.join("; "), oracle.recent(id)),
                        );
                    }
                    Want::OneOf(vs) if !vs.contains(&row.vals) => {
                        check.fail(
                            format!("hot {} not a written value at {site}", e.name()),
                            format!("{site}: {} {key}: {:?} is none of the {} values written", e.name(), row.vals, vs.len()),
                        );
                    }
                    _ => {}
                }
            }
            for (key, row) in actual {
                if !exp[s][&e].contains_key(key) {
                    check.fail(
                        format!("unexpected {} at {site}", e.name()),
                        format!("{site}: {} {key} should not be here: {:?}", e.name(), row.vals),
                    );
                }
            }
        }
    }
    check
}

/// untouched: a site's application found one of its own rows changed under it.
fn check_untouched(oracle: &Oracle) -> Check {
    let mut check = Check::new("untouched");
    for (site, message) in &oracle.interference {
        check.fail(format!("owned row changed at {}", SITES[*site]), format!("{}: {message}", SITES[*site]));
    }
    check
}

/// avatars: each site keeps its own; a row from elsewhere has none unless this site gave it one.
fn check_avatars(states: &[State], oracle: &Oracle) -> Check {
    let mut check = Check::new("avatars");
    for s in 0..3 {
        for (token, row) in &states[s][&E::User] {
            let want = oracle.avatars[s].get(token).map(String::as_str).unwrap_or("NULL");
            if row.extra != want {
                check.fail(format!("avatar at {}", SITES[s]), format!("{}: user {token}: avatar {}, expected {want}", SITES[s], row.extra));
            }
        }
    }
    check
}

/// equipment: the university holds its own instruments and the colleges', each college's with
/// its `source_site`; colleges hold only their own.
fn check_equipment(states: &[State], exp: &[Expected], oracle: &Oracle) -> Check {
    let mut check = Check::new("equipment");
    let creator = |ref_no: &str| oracle.rows.get(&ident(E::Equipment, ref_no)).and_then(|r| r.creator);
    for s in 0..3 {
        let site = SITES[s];
        for (ref_no, row) in &states[s][&E::Equipment] {
            let from = creator(ref_no);
            let want = match from {
                Some(c) if c != s && s == UNIV => SITES[c].to_string(),
                Some(c) if c != s => {
                    check.fail(
                        format!("{site} holds another's instrument"),
                        format!("{site}: holds {ref_no} of {} (source_site {})", SITES[c], row.extra),
                    );
                    continue;
                }
                Some(_) => "NULL".to_string(),
                None => {
                    check.fail(format!("unknown instrument at {site}"), format!("{site}: {ref_no} was written by no application"));
                    continue;
                }
            };
            if row.extra != want {
                check.fail(format!("source_site at {site}"), format!("{site}: {ref_no}: source_site {}, expected {want}", row.extra));
            }
        }
        for ref_no in exp[s][&E::Equipment].keys() {
            if !states[s][&E::Equipment].contains_key(ref_no) {
                let from = creator(ref_no).map_or("?", |c| SITES[c]);
                check.fail(format!("instrument missing at {site}"), format!("{site}: lacks {ref_no} of {from}"));
            }
        }
    }
    check
}

/// A reason without its particulars, to count reasons alike together.
fn shape(reason: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for ch in reason.chars() {
        match ch {
            '{' => {
                if depth == 0 {
                    out.push_str("{…}");
                }
                depth += 1;
            }
            '}' => depth -= 1,
            _ if depth > 0 => {}
            c if c.is_ascii_digit() => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            c => out.push(c),
        }
    }
    out.chars().take(140).collect()
}

/// control: nothing parked, no dead letters, at any site.
/// The export topics of the university, replayed as a sink would (the last record of a key
/// wins; a delete or a tombstone removes it), against its tables: every row the filter lets out,
/// with its id, natural key and version, and nothing else. Empty when they match.
fn export_differences(fed: &Federation, at_site: &[(&str, Vec<Vec<String>>)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (table, rows) in at_site {
        let topic = format!("{}.export.a.{}.{table}", fed.topic_prefix, fed.app_db);
        let key_column = if *table == "user" { "token" } else { "ref_no" };
        let mut replayed: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
        for (key, value) in fed.topic_payloads_of(&topic) {
            let Some(value) = value else {
                replayed.remove(&key);
                continue;
            };
            let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
            let after = &v["payload"]["after"];
            if after.is_null() {
                replayed.remove(&key);
            } else {
                let text = |c: &str| match &after[c] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                replayed.insert(key, vec![text("id"), text(key_column), text("mtime")]);
            }
        }
        let mut exported: Vec<Vec<String>> = replayed.into_values().collect();
        exported.sort_by_key(|r| r[0].parse::<i64>().unwrap_or(0));
        if &exported != rows {
            let missing: Vec<&Vec<String>> = rows.iter().filter(|r| !exported.contains(r)).take(5).collect();
            let extra: Vec<&Vec<String>> = exported.iter().filter(|r| !rows.contains(r)).take(5).collect();
            out.push((
                format!("export of {table}"),
                format!("{} rows exported, {} at a; missing (id, key, mtime) {missing:?}; not at a {extra:?}", exported.len(), rows.len()),
            ));
        }
    }
    out
}

/// [`export_differences`] once the export stream has caught up (it may trail capture).
async fn check_export(fed: &Federation) -> Check {
    let mut check = Check::new("export");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let users = fed.rows("a", "SELECT CAST(id AS CHAR), token, CAST(mtime AS CHAR) FROM user WHERE is_temporary = 0 ORDER BY id").await;
        let equipment = fed.rows("a", "SELECT CAST(id AS CHAR), ref_no, CAST(mtime AS CHAR) FROM equipment ORDER BY id").await;
        let counts = (users.len(), equipment.len());
        let differences = export_differences(fed, &[("user", users), ("equipment", equipment)]);
        if differences.is_empty() {
            eprintln!("export: replayed, the topics hold a's {} users and {} instruments exactly", counts.0, counts.1);
            return check;
        }
        if Instant::now() > deadline {
            for (category, message) in differences {
                check.fail(category, message);
            }
            return check;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn check_control(fed: &Federation) -> Check {
    let mut check = Check::new("control");
    let ctl = &fed.control_db;
    for site in SITES {
        let parked = fed.rows(site, &format!("SELECT origin, CAST(kafka_offset AS CHAR), reason, LEFT(REPLACE(row_keys, '\\n', ' '), 200) FROM `{ctl}`.parked ORDER BY id")).await;
        for r in parked {
            check.fail(
                format!("parked at {site}: {}", shape(&r[2])),
                format!("{site}: parked from {} at offset {}: {} [rows {}]", r[0], r[1], r[2], r[3]),
            );
        }
        let dead = fed.rows(site, &format!("SELECT COALESCE(origin, '?'), COALESCE(entity, '?'), CAST(kafka_offset AS CHAR), reason FROM `{ctl}`.dead_letters ORDER BY id")).await;
        for r in dead {
            check.fail(
                format!("dead letter at {site}: {}", shape(&r[3])),
                format!("{site}: dead letter from {} ({}) at offset {}: {}", r[0], r[1], r[2], r[3]),
            );
        }
    }
    check
}

async fn parked_total(fed: &Federation) -> i64 {
    let mut n = 0;
    for site in SITES {
        n += fed.scalar(site, &format!("SELECT COUNT(*) FROM `{}`.parked", fed.control_db)).await;
        n += fed.scalar(site, &format!("SELECT COUNT(*) FROM `{}`.dead_letters", fed.control_db)).await;
    }
    n
}

/// Every message of `site`'s topic, from the beginning: (offset, key, value).
fn read_topic(fed: &Federation, site: &str) -> Result<Vec<(i64, Value, Value)>, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let topic = format!("{}.{site}", fed.topic_prefix);
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &fed.kafka)
        .set("group.id", format!("mesh-check-{}-{site}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let (low, high) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if high <= low {
        return Ok(out);
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning).map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = low - 1;
    while last < high - 1 {
        if Instant::now() > deadline {
            return Err(format!("{topic}: read up to offset {last} of {high} in 60 s"));
        }
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else { continue };
        let msg = msg.map_err(|e| e.to_string())?;
        last = msg.offset();
        let parse = |b: Option<&[u8]>| b.and_then(|b| serde_json::from_slice::<Value>(b).ok()).unwrap_or(Value::Null);
        out.push((msg.offset(), parse(msg.key()), parse(msg.payload())));
    }
    Ok(out)
}

fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "NULL".into(),
        other => other.to_string(),
    }
}

/// The natural key of a record, references (memberships) as the natural keys it carries.
fn record_key(e: E, value: &Value) -> String {
    let key = &value["sitesync"]["key"];
    let refs = value["sitesync"]["refs"].as_array().cloned().unwrap_or_default();
    e.key()
        .iter()
        .map(|k| {
            let v = &key[*k];
            match e.cols()[e.col(k)].1 {
                Some(target) => refs
                    .iter()
                    .find(|r| r["entity"] == target.name() && &r["id"] == v)
                    .map(|r| json_text(&r["key"][target.key()[0]]))
                    .unwrap_or_else(|| format!("#{k}={}", json_text(v))),
                None => json_text(v),
            }
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// topics: a site's topic holds only what its own application wrote or held in its history
/// (no echo); snapshot records only of rows it owns; a GTID on every streamed record.
fn check_topics(fed: &Federation, oracle: &Oracle) -> (Check, String) {
    let mut check = Check::new("topics");
    let mut info = String::new();
    // natural key -> the rows that ever had it, for saying whose a record's row is.
    let mut whose: HashMap<(E, String), Vec<&String>> = HashMap::new();
    for (id, row) in &oracle.rows {
        for k in oracle.keys_ever(id) {
            whose.entry((row.e, k)).or_default().push(id);
        }
    }
    let describe = |e: E, key: &str| -> String {
        match whose.get(&(e, key.to_string())) {
            None => "a row no application wrote".into(),
            Some(ids) => ids
                .iter()
                .map(|id| {
                    let row = &oracle.rows[*id];
                    let creator = row.creator.map_or("every site's history", |c| SITES[c]);
                    let writers: BTreeSet<&str> = row.images.iter().filter_map(|(w, _)| w.map(|w| SITES[w])).collect();
                    format!("{id} (from {creator}, written by {writers:?})")
                })
                .collect::<Vec<_>>()
                .join(", "),
        }
    };
    let mut unnamed_refs: HashMap<&str, usize> = HashMap::new();
    for (s, &site) in SITES.iter().enumerate() {
        let wrote = oracle.keys_of(oracle.wrote[s].keys().chain(oracle.owned[s].iter()));
        // How many changes its application made under each key: more records than that are
        // echoes too (of rows it also writes, such as the hot people).
        let mut changes: HashMap<(E, String), usize> = HashMap::new();
        for (id, n) in &oracle.wrote[s] {
            let e = oracle.rows[id].e;
            for k in oracle.keys_ever(id) {
                *changes.entry((e, k)).or_default() += n;
            }
        }
        // Streamed records per key; a transaction published again after a crash (same GTID and
        // place in it) counts once.
        let mut streamed: BTreeMap<(E, String), Vec<i64>> = BTreeMap::new();
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        let owned = oracle.keys_of(oracle.owned[s].iter());
        let records = match read_topic(fed, site) {
            Ok(r) => r,
            Err(e) => {
                check.fail(format!("unreadable topic {site}"), e);
                continue;
            }
        };
        let mut ops: BTreeMap<String, usize> = BTreeMap::new();
        for (offset, _key, value) in &records {
            let op = json_text(&value["op"]);
            *ops.entry(op.clone()).or_default() += 1;
            let Some(e) = value["sitesync"]["entity"].as_str().and_then(E::by_name) else {
                check.fail(
                    format!("unreadable record on {site}"),
                    format!(
                        "{site}@{offset}: not a change record of a known entity: {}",
                        value.to_string().chars().take(200).collect::<String>()
                    ),
                );
                continue;
            };
            let key = record_key(e, value);
            let origin = json_text(&value["sitesync"]["origin"]);
            if origin != site || json_text(&value["source"]["site"]) != site {
                check.fail(format!("wrong origin on {site}"), format!("{site}@{offset}: {} {key} says origin {origin}", e.name()));
            }
            if op == "r" {
                if !owned.contains(&(e, key.clone())) {
                    check.fail(
                        format!("snapshot of a row {site} does not own: {}", e.name()),
                        format!("{site}@{offset}: op r {} {key}: {}", e.name(), describe(e, &key)),
                    );
                }
            } else {
                let gtid = &value["source"]["gtid"];
                // A copy published again after a crash is judged by its first copy: read again
                // later, a reference to a row deleted since has no natural key in it.
                let first = gtid.is_null() || seen.insert((json_text(gtid), json_text(&value["transaction"]["total_order"])));
                // A membership whose tag or person capture could only name by id (it read the
                // reference after the row was deleted, catching up after a kill) cannot be told
                // apart here; appliers find it by the identity map.
                let unnamed = key.contains('#');
                if unnamed {
                    *unnamed_refs.entry(site).or_default() += 1;
                }
                if first && !unnamed && !wrote.contains(&(e, key.clone())) {
                    check.fail(
                        format!("echo on {site}: {} op {op}", e.name()),
                        format!("{site}@{offset}: op {op} {} {key}: {}", e.name(), describe(e, &key)),
                    );
                }
                if first {
                    streamed.entry((e, key.clone())).or_default().push(*offset);
                }
                if value["source"]["gtid"].is_null() {
                    check.fail(format!("no gtid on {site}"), format!("{site}@{offset}: op {op} {} {key} has no source.gtid", e.name()));
                }
            }
        }
        for ((e, key), offsets) in streamed {
            let made = changes.get(&(e, key.clone())).copied().unwrap_or(0);
            if made > 0 && offsets.len() > made {
                check.fail(
                    format!("echo on {site}: more records than changes, {}", e.name()),
                    format!(
                        "{site}: {} {key}: {} records (offsets {:?}), its application made {made} change(s): {}",
                        e.name(),
                        offsets.len(),
                        offsets,
                        describe(e, &key)
                    ),
                );
            }
        }
        info.push_str(&format!(
            "  topic {site}: {} records {ops:?}, {} with a reference named by id only\n",
            records.len(),
            unnamed_refs.get(site).copied().unwrap_or(0)
        ));
    }
    (check, info)
}

fn watermarks(fed: &Federation) -> Vec<i64> {
    SITES.iter().map(|s| fed.topic_records(s)).collect()
}

// ───────────────────────────── the scenario ─────────────────────────────

async fn mesh(test: &str, kill: bool) {
    let k = knobs();
    eprintln!("mesh seed = {}", k.seed);
    eprintln!("{test}: replay with SITESYNC_MESH_SEED={}", k.seed);
    eprintln!(
        "{test}: {} transactions per site{}{}{}",
        k.txns,
        if kill { ", one site's sitesync killed -9 mid-workload" } else { "" },
        if k.null_refs { ", NULL for no reference" } else { ", 0 for no reference (LIMS2)" },
        if k.snapshot_before { ", snapshots before the workload" } else { ", snapshots during the workload" }
    );
    if k.writers != [true; 3] {
        eprintln!("{test}: only {:?} write", (0..3).filter(|i| k.writers[*i]).map(|i| SITES[i]).collect::<Vec<_>>());
    }
    let started = Instant::now();
    let schema = schema(k.null_refs);
    let mut fed = Federation::new(
        test,
        // Changes that refer to another site's history wait until that site's snapshot, asked
        // anywhere in the first third of the workload (over a minute into a long run): longer
        // than that, or they would become dead letters by design. A change still parked at the
        // end fails the `control` check all the same.
        Spec {
            sites: &SITES,
            schema: &schema,
            entities_and_routes: ENTITIES_AND_ROUTES,
            ref_wait_seconds: 600,
            seed: history_sql,
            ..Spec::default()
        },
    )
    .await;
    let mut runs: Vec<usize> = SITES.iter().map(|s| fed.start(s, &["run"])).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The university's export stream gets its history while the applications write.
    let out = fed.command("a", &["snapshot", "--export", "--no-wait"]).output().unwrap();
    assert!(out.status.success(), "snapshot --export: {}", common::output_text(&out));

    // The workload: one application per site, all at once.
    let shared = Arc::new(Shared {
        oracle: Mutex::new(Oracle::from_history()),
        handoffs: Mutex::new(vec![VecDeque::new(), VecDeque::new(), VecDeque::new()]),
        progress: Default::default(),
        done: AtomicUsize::new(0),
    });
    let workload_started = Instant::now();
    let mut tasks = Vec::new();
    for (i, site) in SITES.iter().enumerate() {
        let pool = MySqlPoolOptions::new().max_connections(2).connect(&format!("{}/{}", common::server_url(i), fed.app_db)).await.unwrap();
        let gen = Gen {
            i,
            rng: Rng::new(k.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            pool,
            m: Model::from_history(i),
            shared: shared.clone(),
            snapshot: Some(fed.command(site, if k.snapshot_before { &["snapshot"] } else { &["snapshot", "--no-wait"] })),
            snapshot_before: k.snapshot_before,
            counter: 0,
            stats: Stats::default(),
            none: if k.null_refs { None } else { Some(0) },
        };
        tasks.push(tokio::spawn(gen.run(if k.writers[i] { k.txns } else { 0 })));
    }
    if kill {
        let victim = Rng::new(k.seed ^ 0x6B69_6C6C).below(3);
        while shared.progress[victim].load(SeqCst) < k.txns / 2 && shared.done.load(SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "{test}: kill -9 of `sitesync run` at {} after {} of its transactions",
            SITES[victim],
            shared.progress[victim].load(SeqCst)
        );
        fed.kill9(runs[victim]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        runs[victim] = fed.start(SITES[victim], &["run"]);
    }
    let mut stats = Vec::new();
    for t in tasks {
        stats.push(t.await.expect("a workload task panicked"));
    }
    let workload = workload_started.elapsed();
    let oracle = Arc::try_unwrap(shared).ok().expect("tasks are done").oracle.into_inner().unwrap();
    for (i, st) in stats.iter().enumerate() {
        eprintln!(
            "{test}: {} committed {} transactions ({} failed{}), snapshot {}, handed over {} rows, took {} ({} in the same second), lost {}",
            SITES[i],
            st.committed,
            st.failed,
            if st.errors.is_empty() { String::new() } else { format!(": {:?}", st.errors) },
            st.snapshot,
            st.handoffs_sent,
            st.handoffs_taken,
            st.causal_ties,
            st.handoffs_lost.len()
        );
        eprintln!("{test}: {} changes: {:?}", SITES[i], st.ops);
        for lost in st.handoffs_lost.iter().take(3) {
            eprintln!("{test}: {} hand-over not taken: {lost}", SITES[i]);
        }
    }
    eprintln!("{test}: workload done after {:.1} s", workload.as_secs_f64());

    // Convergence: until every row is as the oracle says and nothing waits, or nothing has
    // moved for 20 s (the rows, the topics, parked and dead letters), or 120 s.
    let (exp, inconsistent): (Vec<Expected>, Vec<Vec<String>>) = (0..3).map(|s| oracle.expected(s)).unzip();
    let wait_started = Instant::now();
    let (mut last_print, mut still_since) = (0u64, Instant::now());
    let converged = loop {
        let states = read_states(&fed).await;
        let problems = check_converge(&states, &exp, &oracle).failures.len()
            + check_oracle(&states, &exp, &oracle).failures.len()
            + check_avatars(&states, &oracle).failures.len()
            + check_equipment(&states, &exp, &oracle).failures.len();
        let waiting = parked_total(&fed).await;
        if problems == 0 && waiting == 0 {
            break true;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (format!("{states:?}"), watermarks(&fed), waiting).hash(&mut h);
        let print = h.finish();
        if print != last_print {
            last_print = print;
            still_since = Instant::now();
        }
        if still_since.elapsed() > Duration::from_secs(20) || wait_started.elapsed() > Duration::from_secs(120) {
            eprintln!("{test}: not converged: {problems} row problem(s), {waiting} parked or dead");
            break false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!("{test}: {} after {:.1} s", if converged { "converged" } else { "gave up waiting" }, wait_started.elapsed().as_secs_f64());

    // Quiet: once converged, nothing more is published.
    let mut quiet = Check::new("quiet");
    let before = watermarks(&fed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = watermarks(&fed);
    for s in 0..3 {
        if after[s] != before[s] {
            quiet.fail(
                format!("topic {} grew", SITES[s]),
                format!("topic {}: {} records, {} five seconds later", SITES[s], before[s], after[s]),
            );
        }
    }

    // verify through Kafka agrees at every site: converged means no difference, and none is
    // invented by per-site ids, temporaries, deactivations, hand-overs or many-to-one routes.
    let mut verified = Check::new("verify");
    for site in SITES {
        let out = fed.command(site, &["verify", "--json"]).output().unwrap();
        if !out.status.success() {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            verified.fail(format!("verify at {site}"), format!("exit {:?}: {}", out.status.code(), text.replace('\n', " ")));
        }
    }

    let states = read_states(&fed).await;
    let (topics, topic_info) = check_topics(&fed, &oracle);
    let mut sanity = Check::new("test-sanity");
    for s in oracle.sanity.iter().chain(inconsistent.iter().flatten()) {
        sanity.fail("oracle", s.clone());
    }
    for (i, st) in stats.iter().enumerate() {
        if k.writers[i] && st.committed < k.txns / 2 {
            sanity.fail("workload", format!("{}: only {} of {} transactions committed: {:?}", SITES[i], st.committed, k.txns, st.errors));
        }
        if st.snapshot.is_empty() || st.snapshot.starts_with("FAILED") {
            sanity.fail("workload", format!("{}: snapshot {}", SITES[i], st.snapshot));
        }
    }
    let checks = vec![
        check_converge(&states, &exp, &oracle),
        check_oracle(&states, &exp, &oracle),
        check_untouched(&oracle),
        check_avatars(&states, &oracle),
        check_equipment(&states, &exp, &oracle),
        check_control(&fed).await,
        check_export(&fed).await,
        topics,
        quiet,
        verified,
        sanity,
    ];
    let rows: usize = (0..3).map(|s| states[s].values().map(BTreeMap::len).sum::<usize>()).sum();
    eprintln!("{test}: {rows} rows at the three sites\n{topic_info}");
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.failures.is_empty()).collect();
    for c in &failed {
        eprintln!("{}", c.report());
    }
    std::fs::write(fed.dir.join("mesh-oracle.txt"), oracle.dump()).unwrap();
    let all = fed.dir.join("mesh-failures.tsv");
    std::fs::write(&all, failed.iter().map(|c| c.full()).collect::<String>()).unwrap();
    if !failed.is_empty() {
        eprintln!(
            "{test}: every failure, one a line: {}; every write of every row: {}",
            all.display(),
            fed.dir.join("mesh-oracle.txt").display()
        );
    }
    eprintln!("{test}: seed {} took {:.1} s", k.seed, started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        fed.dump_logs();
    }
    fed.assert_running();
    let summary: Vec<String> = failed.iter().map(|c| format!("{} ({})", c.name, c.failures.len())).collect();
    assert!(failed.is_empty(), "mesh seed {}: the mesh did not converge: {}", k.seed, summary.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lims2_mesh_converges_under_a_random_workload() {
    mesh("mesh", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lims2_mesh_converges_when_a_site_is_killed_mid_workload() {
    mesh("meshkill", true).await;
}
