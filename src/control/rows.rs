//! What the control database knows of single rows: `row_versions` (the stamp and digest of the
//! version the applier wrote), `identity_map` (which local row an origin's row became) and
//! `received_rows` (rows the applier created from another site's change). The applier runs
//! these statements inside its own transactions, next to the row they are about; some read the
//! row itself, so they take the target table's SQL (`from`, a `where_` clause of `?`s, the
//! primary key's text) from the applier.

use sqlx::{AssertSqlSafe, MySql, Transaction};

use crate::mysql::session::{statement_chunks, MAX_STATEMENT_ROWS};
use serde_json::{Map, Value};

use crate::stamp::{self, Stamp, VersionEntry};

/// The `row_versions` entries of `entity` for `row_keys` (row key, entry). Row keys compare
/// exactly (the control database is utf8mb4_bin).
pub async fn read_versions(
    db: &str,
    conn: &mut sqlx::MySqlConnection,
    entity: &str,
    row_keys: &[&str],
) -> Result<Vec<(String, VersionEntry)>, sqlx::Error> {
    let mut out = Vec::new();
    for chunk in statement_chunks(row_keys, MAX_STATEMENT_ROWS) {
        let sql = format!(
            "SELECT row_key, origin, version, depth, COALESCE(row_version, version), deleted, content FROM `{db}`.`row_versions` WHERE entity = ? AND row_key IN ({})",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut q = sqlx::query_as::<_, (String, String, String, u32, String, i8, Option<String>)>(AssertSqlSafe(sql)).bind(entity);
        for k in chunk {
            q = q.bind(*k);
        }
        out.extend(q.fetch_all(&mut *conn).await?.into_iter().map(|(key, site, version, depth, row_version, deleted, content)| {
            (key, VersionEntry { stamp: crate::stamp::Stamp { version, depth, site }, row_version, deleted: deleted == 1, content })
        }));
    }
    Ok(out)
}

/// Forgets, inside `tx`, what `row_versions` knew under a row key the row no longer has.
pub async fn forget_versions(db: &str, tx: &mut Transaction<'_, MySql>, entity: &str, row_key: &str) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!("DELETE FROM `{db}`.`row_versions` WHERE entity = ? AND row_key = ?")))
        .bind(entity)
        .bind(row_key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records, inside `tx`, the stamp of the version each row now has (entity, row key, entry),
/// many per statement; a later entry for a row wins.
pub async fn write_versions(db: &str, tx: &mut Transaction<'_, MySql>, entries: &[(&str, &str, &VersionEntry)]) -> Result<(), sqlx::Error> {
    for chunk in statement_chunks(entries, MAX_STATEMENT_ROWS) {
        let mut sql =
            format!("INSERT INTO `{db}`.`row_versions` (entity, row_key, origin, version, depth, row_version, deleted, content) VALUES ");
        sql.push_str(&vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", "));
        sql.push_str(
            " ON DUPLICATE KEY UPDATE origin = VALUES(origin), version = VALUES(version), depth = VALUES(depth), row_version = VALUES(row_version), deleted = VALUES(deleted), content = VALUES(content)",
        );
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
        for (entity, row_key, e) in chunk {
            q = q
                .bind(*entity)
                .bind(*row_key)
                .bind(&e.stamp.site)
                .bind(&e.stamp.version)
                .bind(e.stamp.depth)
                .bind(&e.row_version)
                .bind(e.deleted as i8)
                .bind(&e.content);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The statements about rows of one entity table that read the row too.
pub struct RowStatements {
    /// Control database.
    pub db: String,
    /// The target table, qualified.
    pub from: String,
    /// `CAST(pk AS CHAR)` of the target's one-column primary key (empty where it has none).
    pub pk_text: String,
}

impl RowStatements {
    /// Records as received, of `n` candidate rows, those the target does not hold yet (run
    /// before the write that creates them): one statement instead of a read and an insert.
    /// `pk` is the target's quoted one-column primary key. Binds, per row: entity, local key
    /// (the id as text), origin, id.
    pub fn mark_received_if_absent(&self, pk: &str, n: usize) -> String {
        let mut rows = String::from("SELECT ? AS entity, ? AS local_key, ? AS origin, ? AS id");
        for _ in 1..n {
            rows.push_str(" UNION ALL SELECT ?, ?, ?, ?");
        }
        format!(
            "INSERT INTO `{}`.`received_rows` (entity, local_key, origin)
             SELECT v.entity, v.local_key, v.origin FROM ({rows}) AS v
             WHERE NOT EXISTS (SELECT 1 FROM {} AS t WHERE t.{pk} = v.id)
             ON DUPLICATE KEY UPDATE origin = VALUES(origin)",
            self.db, self.from
        )
    }

    /// Local id the identity map holds for (entity, origin, origin_key): binds those three.
    pub fn mapped_id(&self) -> String {
        format!("SELECT local_key FROM `{}`.`identity_map` WHERE entity = ? AND origin = ? AND origin_key = ?", self.db)
    }

    /// Records the digest (`content`) of the row at `where_`: binds the where values, then
    /// entity and row key.
    pub fn record_content(&self, content: &str, where_: &str) -> String {
        format!(
            "UPDATE `{}`.`row_versions` SET content = (SELECT {content} FROM {} WHERE {where_} LIMIT 1) WHERE entity = ? AND row_key = ?",
            self.db, self.from
        )
    }

    /// Records which local row (at `where_`) an origin's row became: binds entity, origin,
    /// origin key, then the where values.
    pub fn remember_identity(&self, where_: &str) -> String {
        format!(
            "INSERT INTO `{}`.`identity_map` (entity, origin, origin_key, local_key)
             SELECT ?, ?, ?, {} FROM {} WHERE {where_} LIMIT 1
             ON DUPLICATE KEY UPDATE local_key = VALUES(local_key)",
            self.db, self.pk_text, self.from
        )
    }

    /// Records that the row at `where_` was created here from another site's change: binds
    /// entity, origin, then the where values.
    pub fn mark_received(&self, where_: &str) -> String {
        format!(
            "INSERT INTO `{}`.`received_rows` (entity, local_key, origin)
             SELECT ?, {}, ? FROM {} WHERE {where_} LIMIT 1
             ON DUPLICATE KEY UPDATE origin = VALUES(origin)",
            self.db, self.pk_text, self.from
        )
    }
}

/// A `row_versions` row as capture reads it in the binlog: (entity, row key, entry).
pub fn version_of_image(image: &Map<String, Value>) -> Option<(String, String, VersionEntry)> {
    let text = |k: &str| image.get(k).map(stamp::version_text);
    let (entity, row_key, site, version) = (text("entity")?, text("row_key")?, text("origin")?, text("version")?);
    let depth = image.get("depth").and_then(Value::as_u64).unwrap_or(0) as u32;
    let row_version = image.get("row_version").filter(|v| !v.is_null()).map(stamp::version_text).unwrap_or_else(|| version.clone());
    let deleted = image.get("deleted").and_then(Value::as_u64).unwrap_or(0) == 1;
    let content = image.get("content").filter(|v| !v.is_null()).map(stamp::version_text);
    Some((entity, row_key, VersionEntry { stamp: Stamp { version, depth, site }, row_version, deleted, content }))
}
