//! `verify_state`: when continuous verification last compared each origin and entity, and
//! what it found. A pass that a crash or restart interrupted goes on with the pairs not yet
//! verified within the interval: the ones done are not read again.

use sqlx::Row;

use super::{Control, ControlError};

/// The table's definition, for [`super::Control::ddl`].
pub(super) fn ddl(db: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.`verify_state` (
               origin VARCHAR(64) NOT NULL,
               entity VARCHAR(64) NOT NULL,
               checked_at_ms BIGINT NOT NULL,
               compared BIGINT NOT NULL,
               differences BIGINT NOT NULL,
               repaired BIGINT NOT NULL,
               PRIMARY KEY (origin, entity)
             ) ENGINE=InnoDB"
    )
}

/// The last verification of one origin and entity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    /// Origin.
    pub origin: String,
    /// Entity.
    pub entity: String,
    /// When it ended, ms since the epoch.
    pub checked_at_ms: i64,
    /// Rows of the origin compared.
    pub compared: i64,
    /// Differences left.
    pub differences: i64,
    /// Rows repaired.
    pub repaired: i64,
}

/// The `verify_state` table of one control database.
#[derive(Clone)]
pub struct VerifyState {
    ctl: Control,
}

impl VerifyState {
    pub(super) fn new(ctl: Control) -> Self {
        Self { ctl }
    }

    /// Every pair verified so far.
    pub async fn list(&self) -> Result<Vec<Verified>, ControlError> {
        let sql = format!(
            "SELECT origin, entity, checked_at_ms, compared, differences, repaired FROM `{}`.`verify_state` ORDER BY origin, entity",
            self.ctl.database()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(self.ctl.pool()).await.map_err(self.ctl.err("reading verify_state"))?;
        Ok(rows
            .iter()
            .map(|r| Verified {
                origin: r.get(0),
                entity: r.get(1),
                checked_at_ms: r.get(2),
                compared: r.get(3),
                differences: r.get(4),
                repaired: r.get(5),
            })
            .collect())
    }

    /// Records a verification that just ended.
    pub async fn record(&self, v: &Verified) -> Result<(), ControlError> {
        let sql = format!(
            "INSERT INTO `{}`.`verify_state` (origin, entity, checked_at_ms, compared, differences, repaired) VALUES (?, ?, ?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE checked_at_ms = VALUES(checked_at_ms), compared = VALUES(compared),
               differences = VALUES(differences), repaired = VALUES(repaired)",
            self.ctl.database()
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&v.origin)
            .bind(&v.entity)
            .bind(v.checked_at_ms)
            .bind(v.compared)
            .bind(v.differences)
            .bind(v.repaired)
            .execute(self.ctl.pool())
            .await
            .map_err(self.ctl.err("writing verify_state"))?;
        Ok(())
    }
}
