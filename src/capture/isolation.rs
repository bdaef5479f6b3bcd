//! One table's problem stops its entity, not the site.
//!
//! When capture cannot turn an entity's rows into records (a value it cannot decode exactly, a
//! table map that no longer fits the configuration), it records the entity as stopped at the
//! position before that transaction (`control::stopped`), says so (error log with table and
//! position, `sitesync_capture_entity_stopped`, `/readyz` detail, `sitesync status`) and goes on
//! with every other entity. Nothing of the stopped entity is lost: `sitesync resume` (after the
//! cause is fixed) makes capture read the binlog again from where the entity stopped, publishing
//! only that entity's changes up to where it had read for the others (the catch-up), then
//! everything as before. Replayed transactions carry `transaction.id` `catchup-<gtid>`, so that
//! an applier that already applied the transaction's other rows does not skip them as a
//! duplicate; the entity's own rows were never published, and last-writer-wins or a plain upsert
//! makes a second replay (after a crash mid-catch-up) harmless.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::control::{Control, StoppedEntities};
use crate::position::{Gtid, GtidState};
use crate::telemetry::{ErrorKind, Health, Metrics};

use super::CaptureError;

/// `transaction.id` prefix of a transaction read again for resumed entities.
pub const CATCH_UP_TRANSACTION_PREFIX: &str = "catchup-";

/// Reading the binlog again for resumed entities.
struct CatchUp {
    /// Capture had read this far for every other entity.
    until: GtidState,
    /// The entities read again.
    entities: HashSet<String>,
    /// A transaction past `until` began: done at its commit.
    past: bool,
}

/// The stopped entities of one capture, and the catch-up of resumed ones.
pub(super) struct Isolation {
    table: StoppedEntities,
    site: String,
    metrics: Metrics,
    health: Arc<Health>,
    /// Entity -> why it stopped.
    stopped: HashMap<String, String>,
    catch_up: Option<CatchUp>,
    /// `sitesync resume` was read: read again from the resumed entities' position once this
    /// transaction (and any snapshot) is over.
    pub rewind: bool,
}

impl Isolation {
    pub fn new(ctl: &Control, site: &str, metrics: Metrics, health: Arc<Health>) -> Self {
        Isolation { table: ctl.stopped(), site: site.to_string(), metrics, health, stopped: HashMap::new(), catch_up: None, rewind: false }
    }

    /// At every connect: reads the stopped entities; where resumed ones must be read again
    /// from, if anywhere (`mysql`: MySQL GTID sets, else MariaDB).
    pub async fn load(&mut self, position: &GtidState, mysql: bool) -> Result<Option<GtidState>, CaptureError> {
        let rewinding = std::mem::take(&mut self.rewind);
        let rows = self.table.list().await?;
        self.stopped = rows.iter().filter(|r| !r.resume).map(|r| (r.entity.clone(), r.reason.clone())).collect();
        for entity in self.stopped.keys() {
            self.metrics.capture_entity_stopped.with_label_values(&[&self.site, entity]).set(1);
        }
        self.show();
        if self.catch_up.is_some() && !rewinding {
            // A reconnect while catching up goes on from where it was.
            return Ok(None);
        }
        let resuming: Vec<_> = rows.iter().filter(|r| r.resume).collect();
        let Some(first) = resuming.first() else {
            self.catch_up = None;
            return Ok(None);
        };
        let parse = |text: &str, what: &str| {
            GtidState::parse(text, mysql).map_err(|e| CaptureError::Config(format!("stopped_entities.{what} of {}: {e}", first.entity)))
        };
        // After a restart mid-catch-up, `until` is the stored one: the checkpoint may be behind it.
        let until = match resuming.iter().find_map(|r| r.catch_up_until.as_deref()) {
            Some(stored) => parse(stored, "catch_up_until")?,
            None => position.clone(),
        };
        let start = parse(&first.gtid_state, "gtid_state")?;
        let entities: Vec<String> = resuming.iter().map(|r| r.entity.clone()).collect();
        self.table.begin_catch_up(&entities, &until.to_string()).await?;
        if start.to_string() == until.to_string() {
            self.catch_up = Some(CatchUp { until, entities: entities.into_iter().collect(), past: true });
            self.finish().await?;
            return Ok(None);
        }
        tracing::info!(site = %self.site, entities = %entities.join(", "), from = %start, until = %until, "resuming stopped entities: reading their changes again");
        self.catch_up = Some(CatchUp { until, entities: entities.into_iter().collect(), past: false });
        Ok(Some(start))
    }

    /// Whether the transaction `gtid` was read before for the other entities (only resumed
    /// entities' rows are published from it).
    pub fn begins(&mut self, gtid: &Gtid) -> bool {
        match self.catch_up.as_mut() {
            Some(c) if !c.past && c.until.contains(gtid) => true,
            Some(c) => {
                c.past = true;
                false
            }
            None => false,
        }
    }

    /// Whether rows of `entity` are left out of the transaction being read.
    pub fn skips(&self, entity: &str, replay: bool) -> bool {
        self.stopped.contains_key(entity) || (replay && !self.catch_up.as_ref().is_some_and(|c| c.entities.contains(entity)))
    }

    /// Stops `entity` at `position` (before the transaction being read), loudly.
    pub async fn stop(&mut self, entity: &str, table: &str, position: &GtidState, place: &str, reason: &str) -> Result<(), CaptureError> {
        let reason = format!("table {table}, binlog {place}: {reason}");
        self.table.stop(entity, &position.to_string(), &reason).await?;
        tracing::error!(
            site = %self.site, entity, table, position = %position, binlog = place, reason = %reason,
            "capture of this entity stopped; the other entities go on. Fix the cause, then run `sitesync resume --entity {entity}`: its changes since are read again"
        );
        self.metrics.capture_entity_stopped.with_label_values(&[&self.site, entity]).set(1);
        self.metrics.error(&self.site, ErrorKind::Decode);
        if let Some(c) = self.catch_up.as_mut() {
            c.entities.remove(entity);
        }
        self.stopped.insert(entity.to_string(), reason);
        self.show();
        Ok(())
    }

    /// After each commit: whether the catch-up is over (capture reached where it had read).
    pub async fn committed(&mut self, position: &GtidState) -> Result<(), CaptureError> {
        let done = self.catch_up.as_ref().is_some_and(|c| c.past || c.until.to_string() == position.to_string());
        if done {
            self.finish().await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), CaptureError> {
        let Some(c) = self.catch_up.take() else { return Ok(()) };
        let entities: Vec<String> = c.entities.into_iter().collect();
        self.table.caught_up(&entities).await?;
        for entity in &entities {
            self.metrics.capture_entity_stopped.with_label_values(&[&self.site, entity]).set(0);
        }
        if !entities.is_empty() {
            tracing::info!(site = %self.site, entities = %entities.join(", "), "resumed entities caught up; capture goes on with every entity");
        }
        Ok(())
    }

    fn show(&self) {
        let mut lines: Vec<String> = self.stopped.iter().map(|(e, why)| format!("entity {e} (capture): {why}")).collect();
        lines.sort();
        if let Ok(mut shown) = self.health.stopped_entities.lock() {
            *shown = lines;
        }
    }
}
