//! Parked transactions: those waiting for the rows they reference (or for a schema change) are
//! stored in the control database, tried again after each batch and every second, and become
//! dead letters after `apply.ref_wait_seconds`.

use std::collections::{HashMap, HashSet};

use super::*;

/// The rows that the parked records (a JSON array) rename to.
pub(super) fn rename_targets_of(records: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Vec<ChangeRecord>>(records).map(|rs| rs.iter().filter_map(rename_target).collect()).unwrap_or_default()
}

impl Applier {
    /// Tries the parked transactions again, oldest first; those that waited too long become
    /// dead letters. Returns whether any left the parking.
    pub(super) async fn retry_parked(&mut self) -> Result<(), ApplyError> {
        let parked = self.control.list_parked().await?;
        let limit = self.ctx.config.apply.ref_wait_seconds as i64;
        self.rename_targets = parked.iter().flat_map(|p| rename_targets_of(&p.records)).collect();
        // The changes waiting behind one are evidence too: a later one without a column the
        // first needs shows that the origin dropped it.
        for p in &parked {
            if let Ok(records) = serde_json::from_slice::<Vec<ChangeRecord>>(&p.records) {
                for r in &records {
                    self.note_columns(&p.origin, r, true);
                }
            }
        }
        let mut still: HashSet<String> = HashSet::new();
        for p in parked {
            let keys: Vec<String> = p.row_keys.lines().map(str::to_string).collect();
            let records: Result<Vec<ChangeRecord>, _> = serde_json::from_slice(&p.records);
            // Behind older parked changes of the same rows, it waits; a snapshot chunk only
            // with those of its rows (see `waiting_behind_parked`).
            let mut behind: Vec<ChangeRecord> = Vec::new();
            let records = match records {
                Ok(rs) if keys.iter().any(|k| still.contains(k)) => {
                    let snapshot = rs.first().is_some_and(|r| record::is_snapshot_transaction(&r.transaction.id));
                    let waits = |r: &ChangeRecord| {
                        let rows = touched_rows(r);
                        rows.iter().any(|k| still.contains(k)) && (!snapshot || self.rename_targets.contains(&rows[0]))
                    };
                    let (now, later) = waiting_behind_parked(snapshot, &rs, waits);
                    if now.is_empty() {
                        still.extend(keys);
                        continue;
                    }
                    let mut rs: Vec<Option<ChangeRecord>> = rs.into_iter().map(Some).collect();
                    behind = later.iter().map(|&i| rs[i].take().expect("each index once")).collect();
                    Ok(now.iter().map(|&i| rs[i].take().expect("each index once")).collect())
                }
                other => other,
            };
            let mut tx = self.control.pool().begin().await.map_err(ApplyError::Database)?;
            // The echo marker first, as in every apply transaction.
            self.control.write_marker(&mut tx).await.map_err(ApplyError::Database)?;
            let outcome = match &records {
                Ok(records) => {
                    let refs: Vec<&ChangeRecord> = records.iter().collect();
                    self.apply_records(&mut tx, &p.origin, &refs).await
                }
                Err(e) => Err(ApplyError::Definite(format!("parked records unreadable: {e}"))),
            };
            match outcome {
                Ok(outcomes) => {
                    // The rows that waited behind others stay parked.
                    self.leave_parked(&mut tx, &p, &behind, &mut still).await?;
                    tx.commit().await.map_err(ApplyError::Database)?;
                    let mut counts = HashMap::new();
                    for (r, o) in records.as_ref().expect("applied").iter().zip(outcomes) {
                        *counts.entry((p.origin.clone(), r.sitesync.entity.clone(), o)).or_default() += 1;
                    }
                    self.count(counts);
                    tracing::info!(site = %self.ctx.site, origin = %p.origin, offset = p.offset, "parked transaction applied");
                }
                Err(ApplyError::Wait(reason)) if p.age_seconds < limit => {
                    drop(tx);
                    let _ = reason;
                    still.extend(keys);
                }
                Err(e @ (ApplyError::Wait(_) | ApplyError::Definite(_))) => {
                    drop(tx);
                    let reason = match e {
                        ApplyError::Wait(why) => format!("waited {} s for referenced rows: {why}", p.age_seconds),
                        other => other.to_string(),
                    };
                    let mut tx = self.control.pool().begin().await.map_err(ApplyError::Database)?;
                    let entities: Vec<String> = match &records {
                        Ok(rs) => rs.iter().map(|r| r.sitesync.entity.clone()).collect(),
                        Err(_) => vec![String::new()],
                    };
                    let values: Vec<Vec<u8>> = match &records {
                        Ok(rs) => rs.iter().map(|r| serde_json::to_vec(r).unwrap_or_default()).collect(),
                        Err(_) => vec![p.records.clone()],
                    };
                    for (entity, value) in entities.iter().zip(&values) {
                        self.control
                            .insert_dead_letter(
                                &mut tx,
                                &NewDeadLetter {
                                    origin: Some(&p.origin),
                                    topic: &p.topic,
                                    partition: p.partition,
                                    offset: p.offset,
                                    entity: Some(entity).filter(|e| !e.is_empty()).map(String::as_str),
                                    reason: &reason,
                                    key: None,
                                    value: Some(value),
                                },
                            )
                            .await
                            .map_err(ApplyError::Database)?;
                        self.ctx.metrics.apply_records.with_label_values(&[&self.ctx.site, &p.origin, entity, "dead_letter"]).inc();
                    }
                    // The rows that waited behind others stay parked.
                    self.leave_parked(&mut tx, &p, &behind, &mut still).await?;
                    tx.commit().await.map_err(ApplyError::Database)?;
                    tracing::warn!(site = %self.ctx.site, origin = %p.origin, offset = p.offset, reason = %reason, "parked transaction becomes a dead letter");
                    self.refresh_dead_letter_gauge().await;
                }
                Err(e) => return Err(e),
            }
        }
        self.parked_keys = still;
        Ok(())
    }

    /// After part of a parked entry left: deletes it, or keeps only `behind` (the rows that
    /// wait behind older parked changes), whose rows then still wait.
    async fn leave_parked(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        p: &control::Parked,
        behind: &[ChangeRecord],
        still: &mut HashSet<String>,
    ) -> Result<(), ApplyError> {
        if behind.is_empty() {
            return self.control.delete_parked(tx, p.id).await.map_err(ApplyError::Database);
        }
        let refs: Vec<&ChangeRecord> = behind.iter().collect();
        let keys = row_keys(&p.origin, &refs);
        let json = serde_json::to_vec(behind).map_err(|e| ApplyError::Definite(e.to_string()))?;
        self.control.shrink_parked(tx, p.id, &keys.join("\n"), &json).await.map_err(ApplyError::Database)?;
        still.extend(keys);
        Ok(())
    }
}
