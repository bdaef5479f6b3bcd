//! Rows in the form verify compares, read by the same code at every site: the natural key and
//! the replicated columns as text, references as the natural keys they point to, so that two
//! sites with different ids give the same text for the same content.
//!
//! Columns that do not travel are left out: excluded ones, the local primary key where rows
//! are matched by a natural key, and the origin column. Each row also says whether it passes
//! the entity's filter and how it came to this site (`received_rows`, `identity_map`), which
//! decides whether it belongs to the set compared with a given other site (see [`Side`]).
//!
//! One statement streams the table; the server resolves references through the referenced
//! tables' primary keys (correlated subqueries), so memory holds one row at a time.

use std::collections::BTreeMap;

use futures_util::TryStreamExt as _;
use sha2::{Digest as _, Sha256};
use sqlx::{AssertSqlSafe, Row as _};

use crate::channel::RowDigest;
use crate::config::{Config, Filter};
use crate::mysql::schema::{self, TableSchema};
use crate::mysql::types::TypeFamily;
use crate::mysql::{qualified, quote};

/// References inside natural keys inside natural keys ... at most this deep.
const MAX_REFERENCE_DEPTH: usize = 4;

/// Why rows could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The configuration and the table do not fit together.
    #[error("entities.{entity}: {message}")]
    Config {
        /// Entity.
        entity: String,
        /// What is wrong.
        message: String,
    },
    /// The database failed.
    #[error("reading {what}: {source}")]
    Database {
        /// What was read.
        what: String,
        /// The error.
        #[source]
        source: sqlx::Error,
    },
}

/// Which set of rows a site compares: what it should have sent to `peer` (`Origin`), or what
/// it should hold from `peer` (`Target`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// This site answers `peer` for its own rows: those passing the filter that its applier
    /// did not create from another site's change.
    Origin {
        /// The site that asks.
        peer: String,
    },
    /// This site holds rows of `origin`: created here from its changes, or this site's own
    /// rows that the identity map links to it (history both had).
    Target {
        /// The origin compared with.
        origin: String,
    },
}

/// One row read.
#[derive(Debug, Clone, PartialEq)]
pub struct Scanned {
    /// Natural key, canonical text.
    pub key: String,
    /// Local primary key as text (one-column keys).
    pub pk: Option<String>,
    /// Compared columns' text, in the order of [`Scan::columns`].
    pub values: Vec<Option<String>>,
    /// Passes the entity's filter.
    pub replicated: bool,
    /// The site whose change created the row here (`received_rows`), if any.
    pub received_from: Option<String>,
    /// The identity map links the row to the compared origin (Target side only).
    pub linked: bool,
    /// The entity's key is the primary key: ids are the same at every site.
    pub shared_ids: bool,
}

impl Scanned {
    /// Whether the row belongs to the set `side` compares (the bucket checksums). Where ids are
    /// shared (the key is the primary key) a row of this site's own that no other origin sent
    /// counts too: history both sites had is linked by nothing but its id.
    pub fn member(&self, side: &Side) -> bool {
        self.belongs(side, true)
    }

    /// Whether the origin answers for the row: on the origin's side its own rows; on this
    /// side the rows that came from the origin (a row of it that the origin lacks is gone).
    pub fn answered_for(&self, side: &Side) -> bool {
        self.belongs(side, false)
    }

    fn belongs(&self, side: &Side, count_shared_ids: bool) -> bool {
        self.replicated
            && match side {
                // Where ids are shared, the asking site's own rows that it sent here are in
                // its set too (nothing else links them there).
                Side::Origin { peer } => {
                    self.received_from.is_none()
                        || (count_shared_ids && self.shared_ids && self.received_from.as_deref() == Some(peer.as_str()))
                }
                Side::Target { origin } => {
                    self.received_from.as_deref() == Some(origin.as_str())
                        || (self.received_from.is_none() && (self.linked || (count_shared_ids && self.shared_ids)))
                }
            }
    }

    /// Digest of the compared columns (128 bits of SHA-256 over length-prefixed values).
    pub fn digest(&self) -> u128 {
        let mut h = Sha256::new();
        for v in &self.values {
            match v {
                None => h.update([0u8]),
                Some(s) => {
                    h.update([1u8]);
                    h.update((s.len() as u64).to_le_bytes());
                    h.update(s.as_bytes());
                }
            }
        }
        u128::from_le_bytes(h.finalize()[..16].try_into().expect("16 bytes"))
    }

    /// The row as it travels in a rows answer.
    pub fn to_digest(&self, columns: &[String], side: &Side) -> RowDigest {
        RowDigest {
            key: self.key.clone(),
            pk: self.pk.clone(),
            digest: format!("{:032x}", self.digest()),
            columns: columns.iter().zip(&self.values).map(|(c, v)| (c.clone(), column_hash(v.as_deref()))).collect(),
            owned: self.answered_for(side),
            replicated: self.replicated,
        }
    }
}

/// Short hash of one column's text (FNV-1a, 64 bits): enough to name which columns differ.
pub fn column_hash(value: Option<&str>) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    };
    match value {
        None => eat(0),
        Some(s) => {
            eat(1);
            s.bytes().for_each(&mut eat);
        }
    }
    format!("{h:016x}")
}

/// The bucket of natural key `key` among `buckets` (a power of two).
pub fn bucket_of(key: &str, buckets: u32) -> u32 {
    let h = Sha256::digest(key.as_bytes());
    let n = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
    (n & (buckets.max(1) as u64 - 1)) as u32
}

/// How one entity's rows are read at one site.
#[derive(Debug, Clone)]
pub struct Scan {
    sql: String,
    /// Rows are matched by a natural key (ids differ per site).
    natural: bool,
    /// Natural key columns.
    key_columns: Vec<String>,
    /// Compared columns, in name order.
    pub columns: Vec<String>,
    filter: Option<Filter>,
    /// (column, numeric) of the filter's columns.
    filter_columns: Vec<(String, bool)>,
    /// The database, for messages.
    table: String,
}

impl Scan {
    /// Plans the statement for `entity` at the site whose application database is `db` and
    /// control database `control_db`, compared with `side`.
    pub async fn plan(
        pool: &sqlx::MySqlPool,
        config: &Config,
        db: &str,
        control_db: &str,
        entity: &str,
        side: &Side,
    ) -> Result<Scan, ScanError> {
        let config_err = |message: String| ScanError::Config { entity: entity.to_string(), message };
        let cfg = config.entities.get(entity).ok_or_else(|| config_err("no such entity".into()))?;
        let mut schemas = Schemas { pool, db, tables: BTreeMap::new() };
        let table = schemas
            .get(&cfg.table)
            .await?
            .ok_or_else(|| config_err(format!("table {} does not exist at this site", qualified(db, &cfg.table))))?;
        let key_columns: Vec<String> = if cfg.key.is_empty() { table.primary_key.clone() } else { cfg.key.clone() };
        if key_columns.is_empty() {
            return Err(config_err(format!(
                "{} has neither a configured key nor a primary key to match rows by",
                qualified(db, &cfg.table)
            )));
        }
        let natural = {
            let (mut a, mut b) = (key_columns.clone(), table.primary_key.clone());
            a.sort();
            b.sort();
            a != b
        };
        let mut columns: Vec<String> = table
            .columns
            .iter()
            .map(|c| c.name.clone())
            .filter(|c| !cfg.exclude.contains(c))
            .filter(|c| cfg.origin_column.as_deref() != Some(c.as_str()))
            .filter(|c| !(natural && table.primary_key.contains(c) && !key_columns.contains(c)))
            .collect();
        columns.sort();

        let mut select = Vec::new();
        let mut aliases = 0usize;
        for k in &key_columns {
            select.push(schemas.value_sql(config, entity, &table, "t", k, 0, &mut aliases).await?);
        }
        let pk_text = match table.primary_key.as_slice() {
            [pk] => Some(format!("CAST(t.{} AS CHAR)", quote(pk))),
            _ => None,
        };
        select.push(pk_text.clone().unwrap_or_else(|| "NULL".into()));
        for c in &columns {
            select.push(schemas.value_sql(config, entity, &table, "t", c, 0, &mut aliases).await?);
        }
        let filter = cfg.filter.as_deref().map(Filter::parse).transpose().map_err(|e| config_err(format!("filter: {e}")))?;
        let mut filter_columns = Vec::new();
        for c in filter.as_ref().map(|f| f.columns()).unwrap_or_default() {
            let described = table.column(c).ok_or_else(|| config_err(format!("filter: {} has no column `{c}`", cfg.table)))?;
            let numeric = matches!(
                described.family(),
                TypeFamily::Integer | TypeFamily::Year | TypeFamily::Bit | TypeFamily::Decimal | TypeFamily::Float
            );
            select.push(plain_sql("t", c, &described.data_type));
            filter_columns.push((c.to_string(), numeric));
        }
        let literal = sql_literal(entity);
        match &pk_text {
            Some(pk) => {
                select.push(format!(
                    "(SELECT r.origin FROM `{control_db}`.`received_rows` r WHERE r.entity = {literal} AND r.local_key = {pk})"
                ));
                select.push(match side {
                    Side::Target { origin } => format!(
                        "IF(EXISTS (SELECT 1 FROM `{control_db}`.`identity_map` m WHERE m.entity = {literal} AND m.local_key = {pk} AND m.origin = {}), '1', '0')",
                        sql_literal(origin)
                    ),
                    Side::Origin { .. } => "'0'".into(),
                });
            }
            None => {
                select.push("NULL".into());
                select.push("'1'".into());
            }
        }
        let sql = format!("SELECT {} FROM {} t", select.join(", "), qualified(db, &cfg.table));
        Ok(Scan { sql, natural, key_columns, columns, filter, filter_columns, table: qualified(db, &cfg.table) })
    }

    /// Streams every row to `sink` (which may stop the scan by returning an error).
    pub async fn run<S: RowSink>(&self, conn: &mut sqlx::MySqlConnection, pace: &mut super::Pace, sink: &mut S) -> Result<u64, S::Error> {
        let db_err = |source| ScanError::Database { what: self.table.clone(), source };
        // TIMESTAMP as UTC text at every site, whatever the session's zone.
        // A paced reader may pause between rows longer than the server waits by default.
        sqlx::query("SET time_zone = '+00:00', net_write_timeout = 3600").execute(&mut *conn).await.map_err(db_err)?;
        let mut rows = sqlx::query(AssertSqlSafe(self.sql.clone())).fetch(&mut *conn);
        let mut n = 0u64;
        let nk = self.key_columns.len();
        let nc = self.columns.len();
        while let Some(row) = rows.try_next().await.map_err(db_err)? {
            let text = |i: usize| -> Result<Option<String>, ScanError> { row.try_get::<Option<String>, _>(i).map_err(db_err) };
            let mut key = BTreeMap::new();
            for (i, k) in self.key_columns.iter().enumerate() {
                key.insert(k.as_str(), text(i)?);
            }
            let key = serde_json::to_string(&key).expect("strings serialize");
            let pk = text(nk)?;
            let mut values = Vec::with_capacity(nc);
            for i in 0..nc {
                values.push(text(nk + 1 + i)?);
            }
            let base = nk + 1 + nc;
            let replicated = match &self.filter {
                None => true,
                Some(f) => {
                    let mut image = serde_json::Map::new();
                    for (i, (c, numeric)) in self.filter_columns.iter().enumerate() {
                        image.insert(c.clone(), filter_value(text(base + i)?, *numeric));
                    }
                    f.matches(&image)
                }
            };
            let base = base + self.filter_columns.len();
            let received_from = text(base)?;
            let linked = text(base + 1)?.as_deref() == Some("1");
            sink.row(Scanned { key, pk, values, replicated, received_from, linked, shared_ids: !self.natural }).await?;
            n += 1;
            pace.tick().await;
        }
        Ok(n)
    }
}

/// Takes a scan's rows one at a time (and may wait, to send what it has, between them).
pub trait RowSink {
    /// Why it stops the scan.
    type Error: From<ScanError>;
    /// One row.
    fn row(&mut self, row: Scanned) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
}

/// (rows, wrapping sum of digests) per bucket of the rows in `side`'s set: what both sites
/// compare first.
pub struct BucketSums<'a> {
    side: &'a Side,
    buckets: u32,
    /// The sums.
    pub sums: Sums,
}

impl<'a> BucketSums<'a> {
    /// Empty sums of `buckets` buckets.
    pub fn new(side: &'a Side, buckets: u32) -> Self {
        Self { side, buckets, sums: vec![(0, 0); buckets as usize] }
    }
}

impl RowSink for BucketSums<'_> {
    type Error = ScanError;
    async fn row(&mut self, row: Scanned) -> Result<(), ScanError> {
        if row.member(self.side) {
            let s = &mut self.sums[bucket_of(&row.key, self.buckets) as usize];
            s.0 += 1;
            s.1 = s.1.wrapping_add(row.digest());
        }
        Ok(())
    }
}

/// Which rows a rows answer holds: every row (whatever its set) in the buckets `wanted`, and
/// of `keys` if given.
pub struct Wanted<'a> {
    /// The side read.
    pub side: &'a Side,
    /// Bucket count of the pass.
    pub buckets: u32,
    /// The buckets.
    pub wanted: std::collections::HashSet<u32>,
    /// Only these keys.
    pub keys: Option<&'a std::collections::BTreeSet<String>>,
}

impl Wanted<'_> {
    /// The row as it travels, if wanted.
    pub fn take(&self, row: &Scanned, columns: &[String]) -> Option<RowDigest> {
        (self.wanted.contains(&bucket_of(&row.key, self.buckets)) && self.keys.is_none_or(|k| k.contains(&row.key)))
            .then(|| row.to_digest(columns, self.side))
    }
}

/// The wanted rows, kept.
pub struct Collect<'a> {
    /// Which.
    pub wanted: Wanted<'a>,
    /// The compared columns' names.
    pub columns: &'a [String],
    /// The rows.
    pub rows: Vec<RowDigest>,
}

impl RowSink for Collect<'_> {
    type Error = ScanError;
    async fn row(&mut self, row: Scanned) -> Result<(), ScanError> {
        if let Some(d) = self.wanted.take(&row, self.columns) {
            self.rows.push(d);
        }
        Ok(())
    }
}

/// (rows, sum of digests) per bucket.
pub type Sums = Vec<(u64, u128)>;

/// A filter column's text as the record's JSON value would be.
fn filter_value(text: Option<String>, numeric: bool) -> serde_json::Value {
    match text {
        None => serde_json::Value::Null,
        Some(t) if numeric => t
            .parse::<i64>()
            .map(serde_json::Value::from)
            .ok()
            .or_else(|| t.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(serde_json::Value::Number))
            .unwrap_or(serde_json::Value::String(t)),
        Some(t) => serde_json::Value::String(t),
    }
}

/// A SQL string literal.
fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Column `column` of `alias` as text that compares across sites.
fn plain_sql(alias: &str, column: &str, data_type: &str) -> String {
    let c = format!("{alias}.{}", quote(column));
    match data_type {
        "uuid" | "inet4" | "inet6" => format!("CAST({c} AS CHAR)"),
        _ => match TypeFamily::of(data_type) {
            TypeFamily::Binary => format!("HEX({c})"),
            TypeFamily::Bit => format!("CAST({c} + 0 AS CHAR)"),
            _ => format!("CAST({c} AS CHAR)"),
        },
    }
}

/// Table descriptions read once each.
struct Schemas<'a> {
    pool: &'a sqlx::MySqlPool,
    db: &'a str,
    tables: BTreeMap<String, Option<TableSchema>>,
}

impl Schemas<'_> {
    async fn get(&mut self, table: &str) -> Result<Option<TableSchema>, ScanError> {
        if !self.tables.contains_key(table) {
            let described = schema::load_sqlx(self.pool, self.db, table)
                .await
                .map_err(|source| ScanError::Database { what: format!("the schema of {}", qualified(self.db, table)), source })?;
            self.tables.insert(table.to_string(), described);
        }
        Ok(self.tables[table].clone())
    }

    /// Column `column` of the `entity` row at `alias` as compared text: references become the
    /// natural key of the row they point to (NULL and "no reference" values stay themselves,
    /// a reference to a missing row says so).
    #[allow(clippy::too_many_arguments)]
    async fn value_sql(
        &mut self,
        config: &Config,
        entity: &str,
        table: &TableSchema,
        alias: &str,
        column: &str,
        depth: usize,
        aliases: &mut usize,
    ) -> Result<String, ScanError> {
        let config_err = |message: String| ScanError::Config { entity: entity.to_string(), message };
        let described = table.column(column).ok_or_else(|| config_err(format!("{}.{} has no column `{column}`", table.db, table.table)))?;
        let plain = plain_sql(alias, column, &described.data_type);
        let cfg = &config.entities[entity];
        let Some(target) = cfg.refs.get(column) else { return Ok(plain) };
        let Some(target_cfg) = config.entities.get(&target.entity) else { return Ok(plain) };
        if target_cfg.key.is_empty() {
            // Ids are shared where the primary key is the key.
            return Ok(plain);
        }
        if depth >= MAX_REFERENCE_DEPTH {
            return Err(config_err(format!("references nest deeper than {MAX_REFERENCE_DEPTH} through `{column}`")));
        }
        let referenced = self
            .get(&target_cfg.table)
            .await?
            .ok_or_else(|| config_err(format!("`{column}` refers to {}, which does not exist", qualified(self.db, &target_cfg.table))))?;
        let [pk] = referenced.primary_key.as_slice() else {
            return Err(config_err(format!("`{column}` refers to {}, which has no one-column primary key", target_cfg.table)));
        };
        *aliases += 1;
        let r = format!("r{aliases}");
        let mut parts = Vec::new();
        for k in &target_cfg.key {
            let inner = Box::pin(self.value_sql(config, &target.entity, &referenced, &r, k, depth + 1, aliases)).await?;
            parts.push(format!("COALESCE(CONCAT(CHAR_LENGTH({inner}), ':', {inner}), 'N')"));
        }
        let key_text = if parts.len() == 1 { parts.remove(0) } else { format!("CONCAT_WS(',', {})", parts.join(", ")) };
        let c = format!("{alias}.{}", quote(column));
        let none: Vec<String> = target
            .none
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => sql_literal(s),
                other => other.to_string(),
            })
            .collect();
        let none_test =
            if none.is_empty() { String::new() } else { format!(" WHEN {c} IN ({}) THEN CONCAT('=', {plain})", none.join(", ")) };
        Ok(format!(
            "(CASE WHEN {c} IS NULL THEN NULL{none_test} ELSE COALESCE((SELECT {key_text} FROM {} {r} WHERE {r}.{} = {c} LIMIT 1), CONCAT('dangling ', {plain})) END)",
            qualified(self.db, &target_cfg.table),
            quote(pk)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&str>]) -> Scanned {
        Scanned {
            key: "{\"k\":\"1\"}".into(),
            pk: Some("1".into()),
            values: values.iter().map(|v| v.map(String::from)).collect(),
            replicated: true,
            received_from: None,
            linked: false,
            shared_ids: false,
        }
    }

    #[test]
    fn digests_tell_null_from_empty_and_where_a_value_ends() {
        assert_ne!(row(&[None]).digest(), row(&[Some("")]).digest());
        assert_ne!(row(&[Some("ab"), Some("c")]).digest(), row(&[Some("a"), Some("bc")]).digest());
        assert_eq!(row(&[Some("x"), None]).digest(), row(&[Some("x"), None]).digest());
        assert_ne!(column_hash(None), column_hash(Some("")));
    }

    #[test]
    fn buckets_spread_and_stay_in_range() {
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            let b = bucket_of(&format!("{{\"token\":\"u{i}\"}}"), 16);
            seen[b as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(bucket_of("x", 1), 0);
    }

    #[test]
    fn membership_follows_how_the_row_came() {
        let mut r = row(&[]);
        let target = Side::Target { origin: "a".into() };
        let origin = Side::Origin { peer: "b".into() };
        assert!(r.member(&origin));
        assert!(!r.member(&target), "own row, not linked to a");
        r.linked = true;
        assert!(r.member(&target), "history both had");
        r.received_from = Some("c".into());
        assert!(!r.member(&target) && !r.member(&origin), "c's row");
        r.received_from = Some("a".into());
        assert!(r.member(&target));
        r.replicated = false;
        assert!(!r.member(&target));
        let mut own = row(&[]);
        own.shared_ids = true;
        assert!(own.member(&target), "shared ids: history both had is compared");
        assert!(!own.answered_for(&target), "but a's answer never makes it gone here");
        own.received_from = Some("b".into());
        assert!(own.member(&origin) && !own.answered_for(&origin), "b's row at a: compared with b, not a's to republish");
    }
}
