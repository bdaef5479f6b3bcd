//! The fast path: records upserted or deleted by primary key join multi-row statements across
//! the source transactions of a batch; anything that could wait sends the batch to the careful
//! path instead.

use super::*;

/// Rows of one entity gathered for one multi-row statement.
#[derive(Default)]
pub(super) struct Group {
    entity: String,
    kind: Option<GroupKind>,
    rows: Vec<Vec<target::SqlValue>>,
}

pub(super) enum GroupKind {
    /// Upserts with these columns.
    Upsert(Vec<String>),
    /// Deletes by primary key.
    Delete,
}

impl Applier {
    /// The fast path for one source transaction: records join multi-row statements; a record
    /// that cannot is written alone, in order.
    pub(super) async fn write_fast(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        group: &mut Group,
        origin: &str,
        records: &[&ChangeRecord],
    ) -> Result<Vec<&'static str>, ApplyError> {
        let mut outcomes = Vec::with_capacity(records.len());
        for r in records {
            let entity = &r.sitesync.entity;
            let plan = match self.plans.get(entity) {
                Some(plan) if r.sitesync.origin != self.ctx.site && self.ctx.config.routes_entity(origin, &self.ctx.site, entity) => plan,
                _ => {
                    outcomes.push("skipped");
                    continue;
                }
            };
            let write = match plan.batch_write(origin, r, &self.plans) {
                Some(Ok(w)) => w,
                Some(Err(ApplyError::MissingColumn(_))) => return Err(ApplyError::NeedsCare),
                Some(Err(e)) => return Err(e),
                None => {
                    self.flush(tx, group).await?;
                    match plan.apply(tx, origin, r, &self.plans).await {
                        Ok(Outcome::Applied) => outcomes.push("applied"),
                        Ok(Outcome::Skipped) => outcomes.push("skipped"),
                        Ok(Outcome::ConflictLost) => outcomes.push("conflict_lost"),
                        Err(ApplyError::Wait(_) | ApplyError::MissingColumn(_)) => return Err(ApplyError::NeedsCare),
                        Err(e) => return Err(e),
                    }
                    continue;
                }
            };
            match write {
                BatchWrite::Skip => outcomes.push("skipped"),
                BatchWrite::Upsert { columns, values } => {
                    if !matches!(&group.kind, Some(GroupKind::Upsert(c)) if *c == columns && group.entity == *entity) {
                        self.flush(tx, group).await?;
                        group.entity = entity.clone();
                        group.kind = Some(GroupKind::Upsert(columns));
                    }
                    group.rows.push(values);
                    outcomes.push("applied");
                }
                BatchWrite::Delete(key) => {
                    if !matches!(&group.kind, Some(GroupKind::Delete)) || group.entity != *entity {
                        self.flush(tx, group).await?;
                        group.entity = entity.clone();
                        group.kind = Some(GroupKind::Delete);
                    }
                    group.rows.push(key);
                    outcomes.push("applied");
                }
            }
        }
        Ok(outcomes)
    }

    /// Writes the rows gathered in `group`.
    pub(super) async fn flush(&self, tx: &mut sqlx::Transaction<'_, sqlx::MySql>, group: &mut Group) -> Result<(), ApplyError> {
        let Some(kind) = group.kind.take() else { return Ok(()) };
        let rows = std::mem::take(&mut group.rows);
        let plan = &self.plans[&group.entity];
        let result = match &kind {
            GroupKind::Upsert(columns) => plan.upsert_rows(tx, columns, &rows).await,
            GroupKind::Delete => plan.delete_rows(tx, &rows).await,
        };
        match result {
            Err(ApplyError::MissingColumn(_)) => Err(ApplyError::NeedsCare),
            other => other,
        }
    }
}
