//! Parked transactions: those waiting for the rows they reference (or for a schema change) are
//! stored in the control database, tried again after each batch and every second, and become
//! dead letters after `apply.ref_wait_seconds`.

use std::collections::{HashMap, HashSet};

use super::*;

impl Applier {
    /// Tries the parked transactions again, oldest first; those that waited too long become
    /// dead letters. Returns whether any left the parking.
    pub(super) async fn retry_parked(&mut self) -> Result<(), ApplyError> {
        let parked = self.control.list_parked().await?;
        let limit = self.ctx.config.apply.ref_wait_seconds as i64;
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
            let keys: Vec<String> = p.row_keys.lines().map(|k| scoped(&p.origin, k)).collect();
            let records: Result<Vec<ChangeRecord>, _> = serde_json::from_slice(&p.records);
            // Behind older parked changes of the same rows, it waits; a snapshot chunk does
            // not (see `Applier::try_apply`): they may be waiting for the rows it brings.
            let snapshot = records.as_ref().is_ok_and(|rs| rs.first().is_some_and(|r| record::is_snapshot_transaction(&r.transaction.id)));
            if !snapshot && keys.iter().any(|k| still.contains(k)) {
                still.extend(keys);
                continue;
            }
            let mut tx = self.control.pool().begin().await.map_err(ApplyError::Database)?;
            // The echo marker first, as in every apply transaction.
            self.control.write_marker(&mut tx).await.map_err(ApplyError::Database)?;
            let outcome = match &records {
                Ok(records) if snapshot => {
                    // A snapshot chunk's rows go as they can; the rest stays parked.
                    let refs: Vec<&ChangeRecord> = records.iter().collect();
                    let (outcomes, waiting, why) = match self.apply_what_can(&mut tx, &p.origin, &refs).await {
                        Ok(done) => done,
                        Err(ApplyError::Wait(why)) => (Vec::new(), (0..records.len()).collect(), why),
                        Err(e) => return Err(e),
                    };
                    if waiting.len() == records.len() {
                        Err(ApplyError::Wait(why))
                    } else {
                        if !waiting.is_empty() {
                            let rest: Vec<&ChangeRecord> = waiting.iter().map(|&i| &records[i]).collect();
                            let rest_keys = row_keys(&p.origin, &rest);
                            let json = serde_json::to_vec(&rest).map_err(|e| ApplyError::Definite(e.to_string()))?;
                            self.control.shrink_parked(&mut tx, p.id, &rest_keys.join("\n"), &json).await.map_err(ApplyError::Database)?;
                            still.extend(rest_keys.iter().map(|k| scoped(&p.origin, k)));
                        }
                        let applied =
                            outcomes.into_iter().enumerate().filter(|(i, _)| !waiting.contains(i)).map(|(_, o)| o).collect::<Vec<_>>();
                        let mut counts = HashMap::new();
                        for (i, o) in (0..records.len()).filter(|i| !waiting.contains(i)).zip(applied) {
                            *counts.entry((p.origin.clone(), records[i].sitesync.entity.clone(), o)).or_default() += 1;
                        }
                        if waiting.is_empty() {
                            self.control.delete_parked(&mut tx, p.id).await.map_err(ApplyError::Database)?;
                        }
                        tx.commit().await.map_err(ApplyError::Database)?;
                        self.count(counts);
                        tracing::info!(site = %self.ctx.site, origin = %p.origin, offset = p.offset, waiting = waiting.len(), "parked snapshot rows applied");
                        continue;
                    }
                }
                Ok(records) => {
                    let refs: Vec<&ChangeRecord> = records.iter().collect();
                    self.apply_records(&mut tx, &p.origin, &refs).await
                }
                Err(e) => Err(ApplyError::Definite(format!("parked records unreadable: {e}"))),
            };
            match outcome {
                Ok(outcomes) => {
                    self.control.delete_parked(&mut tx, p.id).await.map_err(ApplyError::Database)?;
                    tx.commit().await.map_err(ApplyError::Database)?;
                    let mut counts = HashMap::new();
                    for (r, o) in records.as_ref().expect("applied").iter().zip(outcomes) {
                        *counts.entry((p.origin.clone(), r.sitesync.entity.clone(), o)).or_default() += 1;
                    }
                    self.count(counts);
                    tracing::info!(site = %self.ctx.site, origin = %p.origin, offset = p.offset, "parked transaction applied");
                }
                Err(e) if e.policy() == Policy::Wait && p.age_seconds < limit => {
                    let reason = match &e {
                        ApplyError::Wait(why) => why.clone(),
                        other => other.to_string(),
                    };
                    drop(tx);
                    if reason != p.reason {
                        tracing::debug!(site = %self.ctx.site, origin = %p.origin, offset = p.offset, was = %p.reason, now = %reason, "a parked transaction waits for something else now");
                    }
                    still.extend(keys);
                }
                Err(e) if matches!(e.policy(), Policy::Wait | Policy::DeadLetter) => {
                    drop(tx);
                    let reason = match e {
                        ApplyError::Wait(why) => format!("waited {} s for referenced rows: {why}", p.age_seconds),
                        other if other.policy() == Policy::Wait => format!("waited {} s: {other}", p.age_seconds),
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
                                    entity: Some(entity).filter(|e| !e.is_empty()).map(|e| vet::fit_entity(e)),
                                    reason: &vet::fit_reason(&reason),
                                    key: None,
                                    value: Some(value),
                                },
                            )
                            .await
                            .map_err(ApplyError::Database)?;
                        self.ctx.metrics.records(
                            &self.ctx.site,
                            &p.origin,
                            vet::entity_label(&self.ctx.config, entity),
                            Outcome::DeadLetter,
                            1,
                        );
                    }
                    self.control.delete_parked(&mut tx, p.id).await.map_err(ApplyError::Database)?;
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
}
