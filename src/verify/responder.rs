//! The origin's half of verify, inside `sitesync run` (beside capture): answers the requests
//! other sites send on the control channel about this site's rows.
//!
//! - buckets and rows: read with the same [`Scan`] as the asking site, paced by `[verify]`
//!   (`rows_per_second`, and a pause while this site's apply lag exceeds `max_lag_seconds`).
//!   Before a rows answer goes out, the responder waits (a second or two) until capture has
//!   read the binlog past the moment the rows were read, so that everything the answer saw is
//!   on this site's topic when the asking site looks at the topic's end (bucket answers only
//!   point at rows to look at, and need no such wait).
//! - repairs: a snapshot request limited to the given rows of this site; capture publishes
//!   them through the pipeline; the answer goes out when it is done.
//!
//! A request for an entity that no route carries from here to the asking site is refused: a
//! site learns nothing about rows it is not meant to receive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::canonical::{BucketSums, RowSink, Scan, Scanned, Side, Wanted};
use super::{Pace, VerifyError};
use crate::channel::{Body, Channel, ControlMessage};
use crate::config::Config;
use crate::control::{self, Control};
use crate::shutdown::{retry_while_unreachable, Shutdown};
use crate::telemetry::Metrics;

/// Rows per answer message.
const ROWS_PER_PART: usize = 2000;
/// Buckets per answer message.
const BUCKETS_PER_PART: usize = 8000;
/// Longest wait for capture to pass the moment an answer was read.
const CAPTURE_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for a repair's snapshot to be published.
const REPAIR_WAIT: Duration = Duration::from_secs(600);

/// What the responder needs.
pub struct ResponderContext {
    /// The federation.
    pub config: Arc<Config>,
    /// This site.
    pub site: String,
    /// This process's metrics (capture's position, apply lag).
    pub metrics: Metrics,
    /// Stops it.
    pub shutdown: Shutdown,
}

/// Answers requests until shutdown.
pub async fn run(ctx: ResponderContext) {
    // Neither a missing control topic (no `init` yet) nor a database down stops capture or
    // apply: the responder waits for them.
    let opened = retry_while_unreachable(
        &ctx.shutdown,
        "the control topic (run `sitesync init`) to answer verify requests",
        &ctx.site,
        |_| true,
        || Channel::open(&ctx.config, &ctx.site),
    );
    let Some(Ok(channel)) = opened.await else { return };
    let url = ctx.config.sites[&ctx.site].mysql.expose().to_string();
    let connected = retry_while_unreachable(
        &ctx.shutdown,
        "the database to answer verify requests",
        &ctx.site,
        |_| true,
        || control::connect(&ctx.site, &url, 2),
    );
    let Some(Ok(pool)) = connected.await else { return };
    let responder = Responder { ctl: Control::new(pool.clone(), &ctx.config.federation.control_database), pool, channel, ctx };
    tracing::info!(site = %responder.ctx.site, topic = responder.channel.topic(), "answering verify requests");
    loop {
        let message = tokio::select! {
            _ = responder.ctx.shutdown.wait() => return,
            m = responder.channel.next(Duration::from_secs(1)) => m,
        };
        match message {
            Ok(Some(m)) => {
                let (id, from) = (m.id.clone(), m.from.clone());
                // Stopping does not wait for an answer: the asking site's wait times out.
                let answered = tokio::select! {
                    _ = responder.ctx.shutdown.wait() => return,
                    r = responder.answer(m) => r,
                };
                if let Err(e) = answered {
                    tracing::warn!(site = %responder.ctx.site, request = %id, from = %from, error = %e, "verify request failed");
                    let _ = responder.channel.send(&id, &from, Body::Failed { message: e.to_string() }).await;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(site = %responder.ctx.site, error = %e, "reading the control topic");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

struct Responder {
    ctx: ResponderContext,
    pool: sqlx::MySqlPool,
    ctl: Control,
    channel: Channel,
}

impl Responder {
    fn pace(&self) -> Pace {
        let (metrics, site, origins) = (self.ctx.metrics.clone(), self.ctx.site.clone(), self.ctx.config.origins_of(&self.ctx.site));
        Pace::new(self.ctx.config.verify.rows_per_second, Some(apply_lag(metrics, site, origins)), self.ctx.config.verify.max_lag_seconds)
    }

    /// The scan of `entity` for `asker`, once the request is checked against the configuration.
    async fn scan(&self, asker: &str, entity: &str) -> Result<Scan, VerifyError> {
        let config = &self.ctx.config;
        if !config.entities.contains_key(entity) {
            return Err(VerifyError::Config(format!("entity `{entity}` is not configured at `{}`", self.ctx.site)));
        }
        if !config.routes_entity(&self.ctx.site, asker, entity) {
            return Err(VerifyError::Config(format!("no route carries entity `{entity}` from `{}` to `{asker}`", self.ctx.site)));
        }
        let db = config.database_of(&self.ctx.site);
        Ok(Scan::plan(&self.pool, config, db, &config.federation.control_database, entity, &origin_side(asker)).await?)
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::MySql>, VerifyError> {
        self.pool
            .acquire()
            .await
            .map_err(|e| VerifyError::Database { what: "connecting to this site's database".into(), message: e.to_string() })
    }

    /// Waits until capture has read past `read_at` (or [`CAPTURE_WAIT`] passed).
    async fn capture_past(&self, read_at: Instant, read_at_ms: i64) {
        // The source timestamp has one-second steps: past the next second for certain.
        let needed = (read_at_ms / 1000 + 2) as f64;
        let gauge = self.ctx.metrics.capture_source_timestamp.with_label_values(&[&self.ctx.site]);
        while gauge.get() < needed && read_at.elapsed() < CAPTURE_WAIT {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A joining site's history: this site's own rows of `entities` (empty: every entity routed
    /// from here to `asker`), published for `asker` alone, with progress until done.
    async fn snapshot_for(&self, id: &str, asker: &str, entities: Vec<String>) -> Result<(), VerifyError> {
        let config = &self.ctx.config;
        let routed: Vec<String> = config.entities.keys().filter(|e| config.routes_entity(&self.ctx.site, asker, e)).cloned().collect();
        let entities = if entities.is_empty() { routed.clone() } else { entities };
        if let Some(e) = entities.iter().find(|e| !routed.contains(e)) {
            return Err(VerifyError::Config(format!("no route carries entity `{e}` from `{}` to `{asker}`", self.ctx.site)));
        }
        if entities.is_empty() {
            let body = Body::SnapshotProgress {
                request: 0,
                status: "done".into(),
                rows_done: 0,
                rows_total: 0,
                message: Some("nothing is routed".into()),
            };
            return Ok(self.channel.send(id, asker, body).await?);
        }
        let request = self
            .ctl
            .snapshots()
            .request_for(&entities.join(","), asker)
            .await
            .map_err(|e| VerifyError::Database { what: "asking capture for a snapshot".into(), message: e.to_string() })?;
        tracing::info!(site = %self.ctx.site, request = id, asker, snapshot = request, entities = %entities.join(","), "publishing history for a joining site");
        let mut last = None;
        loop {
            let state = self
                .ctl
                .snapshots()
                .get(request)
                .await
                .map_err(|e| VerifyError::Database { what: "reading a snapshot request".into(), message: e.to_string() })?
                .ok_or_else(|| VerifyError::Refused { site: self.ctx.site.clone(), message: format!("snapshot {request} vanished") })?;
            let now = (state.status.clone(), state.rows_done);
            if last.as_ref() != Some(&now) {
                let body = Body::SnapshotProgress {
                    request,
                    status: state.status.clone(),
                    rows_done: state.rows_done,
                    rows_total: state.rows_total,
                    message: state.message.clone(),
                };
                self.channel.send(id, asker, body).await?;
                last = Some(now);
            }
            if matches!(state.status.as_str(), "done" | "failed") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn answer(&self, m: ControlMessage) -> Result<(), VerifyError> {
        let (id, asker) = (m.id.as_str(), m.from.as_str());
        match m.body {
            Body::BucketsRequest { entity, buckets } => {
                let buckets = buckets.clamp(1, 1 << 20).next_power_of_two();
                let scan = self.scan(asker, &entity).await?;
                let side = origin_side(asker);
                let mut sums = BucketSums::new(&side, buckets);
                scan.run(&mut *self.conn().await?, &mut self.pace(), &mut sums).await?;
                let filled: Vec<(u32, u64, String)> =
                    sums.sums.iter().enumerate().filter(|(_, s)| s.0 > 0).map(|(b, s)| (b as u32, s.0, format!("{:032x}", s.1))).collect();
                let parts: Vec<&[(u32, u64, String)]> =
                    if filled.is_empty() { vec![&[]] } else { filled.chunks(BUCKETS_PER_PART).collect() };
                let n = parts.len();
                for (i, part) in parts.into_iter().enumerate() {
                    let body = Body::Buckets { part: i as u32, last: i + 1 == n, sums: part.to_vec() };
                    self.channel.send(id, asker, body).await?;
                }
                tracing::info!(site = %self.ctx.site, request = id, asker, entity, buckets, "answered bucket checksums");
            }
            Body::RowsRequest { entity, buckets, which } => {
                let buckets = buckets.clamp(1, 1 << 20).next_power_of_two();
                let scan = self.scan(asker, &entity).await?;
                let side = origin_side(asker);
                let (read_at, read_at_ms) = (Instant::now(), crate::record::now_ms());
                // Parts go out while the scan reads: memory holds one part.
                let wanted = Wanted { side: &side, buckets, wanted: which.into_iter().collect(), keys: None };
                let mut parts =
                    Parts { channel: &self.channel, id, asker, wanted, columns: &scan.columns, part: 0, rows: Vec::new(), sent: 0 };
                scan.run(&mut *self.conn().await?, &mut self.pace(), &mut parts).await?;
                // The last part waits until capture has published what the read saw.
                self.capture_past(read_at, read_at_ms).await;
                let sent = parts.sent + parts.rows.len();
                parts.flush(true).await?;
                tracing::info!(site = %self.ctx.site, request = id, asker, entity, rows = sent, "answered rows");
            }
            Body::RepairRequest { entity, rows } => {
                self.scan(asker, &entity).await?;
                let request = self
                    .ctl
                    .snapshots()
                    .request_rows(&entity, &rows)
                    .await
                    .map_err(|e| VerifyError::Database { what: "asking capture to republish rows".into(), message: e.to_string() })?;
                tracing::info!(site = %self.ctx.site, request = id, asker, entity, rows = rows.len(), snapshot = request, "republishing rows for a repair");
                let started = Instant::now();
                loop {
                    let state = self
                        .ctl
                        .snapshots()
                        .get(request)
                        .await
                        .map_err(|e| VerifyError::Database { what: "reading the repair's snapshot".into(), message: e.to_string() })?;
                    match state.as_ref().map(|s| s.status.as_str()) {
                        Some("done") => {
                            let rows = state.map(|s| s.rows_done).unwrap_or(0) as u64;
                            self.channel.send(id, asker, Body::Repaired { request, rows }).await?;
                            break;
                        }
                        Some("failed") => {
                            let why = state.and_then(|s| s.message).unwrap_or_default();
                            return Err(VerifyError::Refused {
                                site: self.ctx.site.clone(),
                                message: format!("snapshot {request} failed: {why}"),
                            });
                        }
                        _ if started.elapsed() > REPAIR_WAIT => {
                            return Err(VerifyError::Refused {
                                site: self.ctx.site.clone(),
                                message: format!(
                                    "snapshot {request} did not finish within {} s (is capture running?)",
                                    REPAIR_WAIT.as_secs()
                                ),
                            })
                        }
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
            Body::SnapshotRequest { entities } => self.snapshot_for(id, asker, entities).await?,
            other => tracing::debug!(site = %self.ctx.site, request = id, ?other, "not a request: ignored"),
        }
        Ok(())
    }
}

/// This site's side when `asker` asks.
fn origin_side(asker: &str) -> Side {
    Side::Origin { peer: asker.to_string() }
}

/// The largest apply lag of `site` behind `origins`, as this process's metrics say.
pub(super) fn apply_lag(metrics: Metrics, site: String, origins: Vec<String>) -> super::Lag {
    std::sync::Arc::new(move || {
        origins.iter().map(|o| metrics.apply_lag.with_label_values(&[site.as_str(), o.as_str()]).get()).fold(0.0, f64::max)
    })
}

/// A rows answer sent in parts of [`ROWS_PER_PART`] as the scan finds them.
struct Parts<'a> {
    channel: &'a Channel,
    id: &'a str,
    asker: &'a str,
    wanted: Wanted<'a>,
    columns: &'a [String],
    part: u32,
    rows: Vec<crate::channel::RowDigest>,
    sent: usize,
}

impl Parts<'_> {
    async fn flush(&mut self, last: bool) -> Result<(), VerifyError> {
        let rows = std::mem::take(&mut self.rows);
        self.sent += rows.len();
        self.channel.send(self.id, self.asker, Body::Rows { part: self.part, last, rows }).await?;
        self.part += 1;
        Ok(())
    }
}

impl RowSink for Parts<'_> {
    type Error = VerifyError;
    async fn row(&mut self, row: Scanned) -> Result<(), VerifyError> {
        if let Some(d) = self.wanted.take(&row, self.columns) {
            self.rows.push(d);
            if self.rows.len() >= ROWS_PER_PART {
                self.flush(false).await?;
            }
        }
        Ok(())
    }
}
