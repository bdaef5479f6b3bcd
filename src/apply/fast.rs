//! The fast path: the changes of a batch's source transactions join multi-row statements. Rows
//! written by primary key as they are go straight into the pending statements; rows that need
//! looking up first are decided against what the batch read up front (keyed.rs); anything that
//! could wait sends the batch to the careful path instead.

use std::collections::{HashMap, HashSet};

use super::keyed::{Decision, Known};
use super::target::{bind, SqlValue};
use super::writer::{row_key_of_texts, sql_text};
use super::*;
use crate::control::RowStatements;

/// Why the fast path did not finish a batch.
#[derive(Debug)]
pub(super) enum FastError {
    /// Something only the careful path handles (a wait for a referenced row, a column a table
    /// lacks, a row not as the batch read it): the batch is applied again, carefully.
    NeedsCare,
    /// A failure handled like any other (retried, or a dead letter).
    Failed(ApplyError),
}

impl From<ApplyError> for FastError {
    fn from(e: ApplyError) -> Self {
        FastError::Failed(e)
    }
}

/// Writes decided but not sent yet, and what the batch knows of the rows it touches.
#[derive(Default)]
pub(super) struct Pending {
    /// Entity of the rows in `ops` (one table per multi-row statement).
    entity: String,
    ops: Vec<RowOp>,
    /// Rows of entities that need looking up, as the batch knows them.
    pub(super) known: Known,
}

/// One row's part in a multi-row statement.
enum RowOp {
    /// Insert or update by primary key (`create`: from an insert or snapshot row, whose row,
    /// if this creates it, is recorded as received).
    Upsert { columns: Vec<String>, values: Vec<SqlValue>, create: Option<String> },
    /// Insert a new row (its id is read back after).
    Insert { columns: Vec<String>, values: Vec<SqlValue>, key: Vec<(String, SqlValue)> },
    /// Delete by primary key.
    Delete(Vec<SqlValue>),
}

impl RowOp {
    fn kind(&self) -> &'static str {
        match self {
            RowOp::Delete(_) => "delete",
            RowOp::Upsert { .. } => "upsert",
            RowOp::Insert { .. } => "insert",
        }
    }

    /// Ops of one statement: the same kind with the same columns.
    fn joins(&self, other: &RowOp) -> bool {
        match (self, other) {
            (RowOp::Upsert { columns: a, .. }, RowOp::Upsert { columns: b, .. }) => a == b,
            (RowOp::Insert { columns: a, .. }, RowOp::Insert { columns: b, .. }) => a == b,
            (RowOp::Delete(_), RowOp::Delete(_)) => true,
            _ => false,
        }
    }
}

impl Applier {
    /// The fast path for one source transaction: records join multi-row statements; a record
    /// that cannot is written alone, in order.
    pub(super) async fn write_fast(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        pending: &mut Pending,
        origin: &str,
        records: &[Incoming],
    ) -> Result<Vec<Outcome>, FastError> {
        let mut outcomes = Vec::with_capacity(records.len());
        for inc in records {
            let r = &self.read(inc)?;
            self.note_columns(origin, r, false);
            let entity = &r.sitesync.entity;
            let Some(plan) = plan_for(&self.ctx.config, &self.ctx.site, &self.plans, origin, r) else {
                outcomes.push(Outcome::Skipped);
                continue;
            };
            let outcome = if plan.needs_nothing_looked_up(r, &self.plans) {
                match plan.batch_write(origin, r, &self.plans) {
                    Some(Ok(BatchWrite::Skip)) => Outcome::Skipped,
                    Some(Ok(BatchWrite::Upsert { columns, values, create })) => {
                        let create = create.then(|| origin.to_string());
                        self.push(tx, pending, entity, RowOp::Upsert { columns, values, create }).await?;
                        Outcome::Applied
                    }
                    Some(Ok(BatchWrite::Delete(key))) => {
                        self.push(tx, pending, entity, RowOp::Delete(key)).await?;
                        Outcome::Applied
                    }
                    Some(Err(ApplyError::MissingColumn { .. })) => return Err(self.needs_care_for_schema()),
                    Some(Err(e)) => return Err(e.into()),
                    None => self.apply_alone(tx, pending, origin, r, plan).await?,
                }
            } else {
                self.write_decided(tx, pending, origin, r, plan).await?
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// A record of an entity that needs looking up, decided against what the batch knows.
    async fn write_decided(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        pending: &mut Pending,
        origin: &str,
        r: &ChangeRecord,
        plan: &EntityPlan,
    ) -> Result<Outcome, FastError> {
        let entity = &r.sitesync.entity;
        let mut flushed = false;
        loop {
            let decision = match plan.decide(origin, r, &self.plans, &mut pending.known) {
                Err(ApplyError::MissingColumn { .. }) => return Err(self.needs_care_for_schema()),
                other => other?,
            };
            return Ok(match decision {
                Decision::AfterFlush if !flushed => {
                    self.flush_all(tx, pending).await?;
                    flushed = true;
                    continue;
                }
                Decision::Unknown | Decision::AfterFlush => self.apply_alone(tx, pending, origin, r, plan).await?,
                Decision::Skip => Outcome::Skipped,
                Decision::Lost => Outcome::ConflictLost,
                Decision::Insert { columns, values, key } => {
                    self.push(tx, pending, entity, RowOp::Insert { columns, values, key }).await?;
                    Outcome::Applied
                }
                Decision::Upsert { columns, values } => {
                    // Rows it creates are recorded by the decision (keyed.rs).
                    self.push(tx, pending, entity, RowOp::Upsert { columns, values, create: None }).await?;
                    Outcome::Applied
                }
                Decision::Update { sets, key } => {
                    // Statements go out in the order of the changes.
                    self.flush_ops(tx, pending).await?;
                    if plan.update(tx, &sets, key).await.map_err(needs_care_on_schema)? == 0 {
                        // The row was read (and locked) by its key: it cannot have gone.
                        return Err(FastError::NeedsCare);
                    }
                    Outcome::Applied
                }
            });
        }
    }

    /// A record written by the per-record path, after everything pending; what the batch knew
    /// of its table is forgotten.
    async fn apply_alone(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        pending: &mut Pending,
        origin: &str,
        r: &ChangeRecord,
        plan: &EntityPlan,
    ) -> Result<Outcome, FastError> {
        self.flush_all(tx, pending).await?;
        let outcome = plan.apply(tx, origin, r, &self.plans).await;
        let same_table: HashSet<&str> =
            self.plans.values().filter(|p| p.config.table == plan.config.table).map(|p| p.name.as_str()).collect();
        pending.known.forget(&same_table);
        match outcome {
            Ok(o) => Ok(o),
            Err(ApplyError::MissingColumn { .. }) => Err(self.needs_care_for_schema()),
            Err(ApplyError::Wait(_)) => Err(FastError::NeedsCare),
            Err(e) => Err(e.into()),
        }
    }

    async fn push(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        pending: &mut Pending,
        entity: &str,
        op: RowOp,
    ) -> Result<(), FastError> {
        if pending.entity != entity {
            self.flush_ops(tx, pending).await?;
            pending.entity = entity.to_string();
        }
        pending.ops.push(op);
        Ok(())
    }

    /// Sends everything pending: rows, then identity-map entries and versions.
    pub(super) async fn flush_all(&self, tx: &mut sqlx::Transaction<'_, sqlx::MySql>, pending: &mut Pending) -> Result<(), FastError> {
        self.flush_ops(tx, pending).await?;
        if pending.known.has_pending() {
            self.write_known(tx, &mut pending.known).await?;
        }
        Ok(())
    }

    /// Sends the pending rows of one entity, as few statements as order allows.
    async fn flush_ops(&self, tx: &mut sqlx::Transaction<'_, sqlx::MySql>, pending: &mut Pending) -> Result<(), FastError> {
        if pending.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut pending.ops);
        let plan = self.plans[&pending.entity].clone();
        let statements = if plan.upserts() && plan.integer_key() { in_rounds(&plan.target.primary_key, ops) } else { in_runs(ops) };
        let mut inserted = Vec::new();
        for statement in statements {
            let (rows, began, kind) = (statement.len(), std::time::Instant::now(), statement[0].kind());
            let result = match &statement[0] {
                RowOp::Delete(_) => {
                    let keys: Vec<Vec<SqlValue>> = statement
                        .into_iter()
                        .map(|op| match op {
                            RowOp::Delete(k) => k,
                            _ => unreachable!("one kind per statement"),
                        })
                        .collect();
                    plan.delete_rows(tx, &keys).await
                }
                RowOp::Upsert { columns, .. } | RowOp::Insert { columns, .. } => {
                    let columns = columns.clone();
                    let insert = matches!(statement[0], RowOp::Insert { .. });
                    let mut rows = Vec::with_capacity(statement.len());
                    let mut creating = Vec::new();
                    for op in statement {
                        match op {
                            RowOp::Upsert { values, create, .. } => {
                                if let Some(origin) = create {
                                    creating.push((rows.len(), origin));
                                }
                                rows.push(values)
                            }
                            RowOp::Insert { values, key, .. } => {
                                rows.push(values);
                                inserted.push(key);
                            }
                            RowOp::Delete(_) => unreachable!("one kind per statement"),
                        }
                    }
                    self.mark_received_if_absent(tx, &plan, &columns, &rows, &creating).await.map_err(needs_care_on_schema)?;
                    if insert {
                        plan.insert_rows(tx, &columns, &rows).await
                    } else {
                        plan.upsert_rows(tx, &columns, &rows).await
                    }
                }
            };
            result.map_err(needs_care_on_schema)?;
            tracing::trace!(entity = %pending.entity, kind, rows, ms = began.elapsed().as_secs_f64() * 1e3, "rows written");
        }
        Ok(self.read_inserted_ids(tx, &mut pending.known, &plan, &inserted).await?)
    }
}

impl Applier {
    /// The fast path met a column a table lacks: the careful path reads the tables again.
    fn needs_care_for_schema(&self) -> FastError {
        self.schema_changed.store(true, Ordering::Relaxed);
        FastError::NeedsCare
    }

    /// Records as received the rows at `creating` (index into `rows`, origin) that are not
    /// here yet, before they are written: one statement per chunk, only where inserts and
    /// snapshot rows go in by primary key (one-column keys).
    async fn mark_received_if_absent(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        plan: &EntityPlan,
        columns: &[String],
        rows: &[Vec<SqlValue>],
        creating: &[(usize, String)],
    ) -> Result<(), ApplyError> {
        let [pk] = plan.target.primary_key.as_slice() else { return Ok(()) };
        let Some(at) = columns.iter().position(|c| c == pk) else { return Ok(()) };
        let statements = RowStatements { db: self.control.database().to_string(), from: plan.target.qualified(), pk_text: String::new() };
        let pk = crate::mysql::quote(pk);
        for chunk in crate::mysql::session::statement_chunks(creating, crate::mysql::session::MAX_STATEMENT_ROWS) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(statements.mark_received_if_absent(&pk, chunk.len())));
            for (i, origin) in chunk {
                let id = &rows[*i][at];
                q = bind(q.bind(&plan.name).bind(sql_text(id)).bind(origin), id.clone());
            }
            q.execute(&mut **tx).await.map_err(ApplyError::classify)?;
        }
        Ok(())
    }
}

/// A local table that lacks a column the records have: the careful path waits for it.
fn needs_care_on_schema(e: ApplyError) -> FastError {
    match e {
        // The careful path reads the table again first (`Applier::apply_batch`).
        ApplyError::MissingColumn { column, message } => {
            tracing::debug!(?column, %message, "a statement met a column the table lacks");
            FastError::NeedsCare
        }
        other => FastError::Failed(other),
    }
}

/// Consecutive ops of one kind and the same columns, one statement each, in order.
fn in_runs(ops: Vec<RowOp>) -> Vec<Vec<RowOp>> {
    let mut out: Vec<Vec<RowOp>> = Vec::new();
    for op in ops {
        match out.last_mut() {
            Some(run) if run[0].joins(&op) => run.push(op),
            _ => out.push(vec![op]),
        }
    }
    out
}

/// Changes to different rows commute (no other unique key, integer primary key): the n-th
/// change of every row goes in round n, and each round is one DELETE and one upsert per column
/// set. Every row still sees its own changes in order; a delete followed by an insert of the
/// same key (sysbench's mix, a row moved back and forth) stays two statements apart.
fn in_rounds(pk: &[String], ops: Vec<RowOp>) -> Vec<Vec<RowOp>> {
    let key_of = |op: &RowOp| -> Option<String> {
        let values: Vec<&SqlValue> = match op {
            RowOp::Delete(k) => k.iter().collect(),
            RowOp::Upsert { columns, values, .. } | RowOp::Insert { columns, values, .. } => {
                pk.iter().map(|c| columns.iter().position(|x| x == c).map(|i| &values[i])).collect::<Option<Vec<_>>>()?
            }
        };
        Some(row_key_of_texts(values.into_iter().map(sql_text)))
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut rounds: Vec<Vec<RowOp>> = Vec::new();
    let mut keys = Vec::with_capacity(ops.len());
    for op in &ops {
        match key_of(op) {
            Some(k) => keys.push(k),
            // A row without its whole key: keep the plain order.
            None => return in_runs(ops),
        }
    }
    for (op, key) in ops.into_iter().zip(keys) {
        let n = seen.entry(key).or_insert(0);
        if rounds.len() <= *n {
            rounds.resize_with(*n + 1, Vec::new);
        }
        rounds[*n].push(op);
        *n += 1;
    }
    let mut out = Vec::new();
    for round in rounds {
        let (deletes, writes): (Vec<RowOp>, Vec<RowOp>) = round.into_iter().partition(|op| matches!(op, RowOp::Delete(_)));
        if !deletes.is_empty() {
            out.push(deletes);
        }
        let mut by_columns: Vec<Vec<RowOp>> = Vec::new();
        for op in writes {
            match by_columns.iter_mut().find(|s| s[0].joins(&op)) {
                Some(s) => s.push(op),
                None => by_columns.push(vec![op]),
            }
        }
        out.extend(by_columns);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: i64, columns: &[&str]) -> RowOp {
        let mut values = vec![SqlValue::Int(id)];
        values.extend(columns.iter().skip(1).map(|_| SqlValue::Text("v".into())));
        RowOp::Upsert { columns: columns.iter().map(|c| c.to_string()).collect(), values, create: None }
    }

    fn delete(id: i64) -> RowOp {
        RowOp::Delete(vec![SqlValue::Int(id)])
    }

    /// Each statement as (kind, ids in order).
    fn shape(statements: &[Vec<RowOp>]) -> Vec<(&'static str, Vec<i64>)> {
        statements
            .iter()
            .map(|s| {
                let ids = s
                    .iter()
                    .map(|op| match op {
                        RowOp::Delete(k) | RowOp::Upsert { values: k, .. } | RowOp::Insert { values: k, .. } => match k[0] {
                            SqlValue::Int(i) => i,
                            _ => -1,
                        },
                    })
                    .collect();
                (s[0].kind(), ids)
            })
            .collect()
    }

    #[test]
    fn runs_keep_the_order_and_join_only_neighbours_of_one_shape() {
        let ops = vec![upsert(1, &["id", "a"]), upsert(2, &["id", "a"]), delete(1), upsert(3, &["id", "a"]), upsert(4, &["id", "b"])];
        assert_eq!(shape(&in_runs(ops)), [("upsert", vec![1, 2]), ("delete", vec![1]), ("upsert", vec![3]), ("upsert", vec![4])]);
    }

    #[test]
    fn rounds_keep_each_rows_changes_in_order_and_join_the_rest() {
        let pk = vec!["id".to_string()];
        // Row 1: upsert, delete, upsert again; rows 2 and 3 once each.
        let ops = vec![upsert(1, &["id", "a"]), upsert(2, &["id", "a"]), delete(1), upsert(3, &["id", "b"]), upsert(1, &["id", "a"])];
        assert_eq!(
            shape(&in_rounds(&pk, ops)),
            [("upsert", vec![1, 2]), ("upsert", vec![3]), ("delete", vec![1]), ("upsert", vec![1])],
            "round 1: every row's first change; round 2: row 1's delete; round 3: its upsert"
        );
        // A row without its key column: the plain order.
        let ops = vec![upsert(1, &["id", "a"]), RowOp::Upsert { columns: vec!["a".into()], values: vec![SqlValue::Null], create: None }];
        assert_eq!(in_rounds(&pk, ops).len(), 2);
    }
}
