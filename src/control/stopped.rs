//! Entities whose capture stopped alone (`stopped_entities`): a table whose rows cannot be
//! turned into records stops its entity, not the site. Each row says where the entity stopped
//! (the GTID state before the transaction it could not read) and why. `sitesync resume` asks for
//! it to go on; capture then reads the binlog again from there for that entity only, up to
//! `catch_up_until` (how far it had read for the others), and deletes the row once past it.

use serde_json::{Map, Value};
use sqlx::Row;

use super::{Control, ControlError};

/// The table's definition, for [`super::Control::ddl`].
pub(super) fn ddl(db: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.`stopped_entities` (
           id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
           entity VARCHAR(64) NOT NULL,
           gtid_state TEXT NOT NULL,
           reason TEXT NOT NULL,
           stopped_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
           resume TINYINT NOT NULL DEFAULT 0,
           catch_up_until TEXT NULL,
           UNIQUE KEY (entity)
         ) ENGINE=InnoDB"
    )
}

/// One stopped entity.
#[derive(Debug, Clone, PartialEq)]
pub struct StoppedEntity {
    /// Entity name.
    pub entity: String,
    /// Capture position before the transaction it could not read.
    pub gtid_state: String,
    /// Why, with the table and binlog position.
    pub reason: String,
    /// When (UTC, `YYYY-MM-DD HH:MM:SS`).
    pub stopped_at: String,
    /// `sitesync resume` asked for it to go on.
    pub resume: bool,
    /// While catching up: the position up to which only this entity is read again.
    pub catch_up_until: Option<String>,
}

/// The `stopped_entities` table of one control database.
#[derive(Clone)]
pub struct StoppedEntities {
    ctl: Control,
}

impl StoppedEntities {
    pub(super) fn new(ctl: Control) -> Self {
        Self { ctl }
    }

    /// Records that `entity` stopped at `gtid_state`. Stopping again (while catching up) keeps
    /// the earlier position, which covers the later one.
    pub async fn stop(&self, entity: &str, gtid_state: &str, reason: &str) -> Result<(), ControlError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO `{}`.`stopped_entities` (entity, gtid_state, reason) VALUES (?, ?, ?)
             ON DUPLICATE KEY UPDATE reason = VALUES(reason), resume = 0, catch_up_until = NULL, stopped_at = CURRENT_TIMESTAMP(6)",
            self.ctl.database()
        )))
        .bind(entity)
        .bind(gtid_state)
        .bind(reason)
        .execute(self.ctl.pool())
        .await
        .map_err(self.ctl.err("recording a stopped entity"))?;
        Ok(())
    }

    /// Every stopped entity, the earliest stopped first.
    pub async fn list(&self) -> Result<Vec<StoppedEntity>, ControlError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT entity, gtid_state, reason, DATE_FORMAT(stopped_at, '%Y-%m-%d %H:%i:%s'), resume, catch_up_until
             FROM `{}`.`stopped_entities` ORDER BY id",
            self.ctl.database()
        )))
        .fetch_all(self.ctl.pool())
        .await
        .map_err(self.ctl.err("reading stopped entities"))?;
        Ok(rows
            .iter()
            .map(|r| StoppedEntity {
                entity: r.get(0),
                gtid_state: r.get(1),
                reason: r.get(2),
                stopped_at: r.get(3),
                resume: r.get::<i8, _>(4) != 0,
                catch_up_until: r.get(5),
            })
            .collect())
    }

    /// Asks capture to go on with `entities` (every stopped one when empty); the names it applies to.
    pub async fn request_resume(&self, entities: &[String]) -> Result<Vec<String>, ControlError> {
        let stopped = self.list().await?;
        let chosen: Vec<String> =
            stopped.into_iter().filter(|s| !s.resume && (entities.is_empty() || entities.contains(&s.entity))).map(|s| s.entity).collect();
        for entity in &chosen {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE `{}`.`stopped_entities` SET resume = 1 WHERE entity = ?",
                self.ctl.database()
            )))
            .bind(entity)
            .execute(self.ctl.pool())
            .await
            .map_err(self.ctl.err("asking to resume an entity"))?;
        }
        Ok(chosen)
    }

    /// Capture starts catching up the resumed entities: until `position`.
    pub async fn begin_catch_up(&self, entities: &[String], position: &str) -> Result<(), ControlError> {
        for entity in entities {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE `{}`.`stopped_entities` SET catch_up_until = ? WHERE entity = ? AND resume = 1",
                self.ctl.database()
            )))
            .bind(position)
            .bind(entity)
            .execute(self.ctl.pool())
            .await
            .map_err(self.ctl.err("starting to catch up an entity"))?;
        }
        Ok(())
    }

    /// The entities caught up: no longer stopped.
    pub async fn caught_up(&self, entities: &[String]) -> Result<(), ControlError> {
        for entity in entities {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM `{}`.`stopped_entities` WHERE entity = ? AND resume = 1",
                self.ctl.database()
            )))
            .bind(entity)
            .execute(self.ctl.pool())
            .await
            .map_err(self.ctl.err("clearing a caught-up entity"))?;
        }
        Ok(())
    }
}

/// Whether a `stopped_entities` change read in the binlog is `sitesync resume` (its resume flag
/// going from 0 to 1).
pub fn resume_of_change(before: Option<&Map<String, Value>>, after: Option<&Map<String, Value>>) -> bool {
    let flag = |image: Option<&Map<String, Value>>| image.and_then(|i| i.get("resume")).and_then(Value::as_i64) == Some(1);
    flag(after) && !flag(before)
}
