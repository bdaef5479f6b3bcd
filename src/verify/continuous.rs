//! Continuous verification (`[verify] interval`): `sitesync run` verifies every origin and
//! entity routed to its site once per interval, in the background, and repairs what it finds
//! where `[verify] repair = true`.
//!
//! Each pair's last verification is kept in `verify_state`, so a pass that a crash or restart
//! cut short goes on with the pairs that are due, and the ones done are not read again. The
//! pace is `[verify]`'s, at both ends. Metrics: `sitesync_verify_rows_total`,
//! `sitesync_verify_differences`, `sitesync_verify_repaired_total` per origin and entity, and
//! `sitesync_verify_last_pass_timestamp_seconds` (every pair verified since then).

use std::sync::Arc;
use std::time::Duration;

use super::{pairs, Verifier};
use crate::config::Config;
use crate::control::Verified;
use crate::shutdown::{retry_while_unreachable, Shutdown};
use crate::telemetry::Metrics;

/// What the background verifier needs.
pub struct ContinuousContext {
    /// The federation.
    pub config: Arc<Config>,
    /// This site.
    pub site: String,
    /// This process's metrics.
    pub metrics: Metrics,
    /// Stops it.
    pub shutdown: Shutdown,
}

/// How long to wait before trying again after a failed verification (an origin down, Kafka
/// unreachable): the pair stays due.
const RETRY: Duration = Duration::from_secs(60);

/// Verifies until shutdown; returns at once when `[verify] interval` is not set.
pub async fn run(ctx: ContinuousContext) {
    let Some(interval) = ctx.config.verify.interval() else { return };
    let (config, site) = (ctx.config.clone(), ctx.site.clone());
    let opened = retry_while_unreachable(
        &ctx.shutdown,
        "the control topic and database to verify",
        &site,
        |_| true,
        || Verifier::open(&config, &site),
    );
    let Some(Ok(mut verifier)) = opened.await else { return };
    // This site's own reading pauses while its applier is far behind, as the origins' does.
    verifier.pause_while(super::responder::apply_lag(ctx.metrics.clone(), site.clone(), config.origins_of(&site)));
    tracing::info!(site = %site, interval = ?interval, repair = config.verify.repair, "continuous verification on");
    let interval_ms = interval.as_millis() as i64;
    loop {
        let state = match verifier.control().verified().list().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(site = %site, error = %e, "reading verify_state");
                if pause(&ctx.shutdown, RETRY).await {
                    return;
                }
                continue;
            }
        };
        let now = crate::record::now_ms();
        let last = |o: &str, e: &str| state.iter().find(|v| v.origin == o && v.entity == e).map(|v| v.checked_at_ms);
        let mut failed = false;
        for (origin, entity) in pairs(&config, &site) {
            if last(&origin, &entity).is_some_and(|at| now - at < interval_ms) {
                continue;
            }
            // Stopping does not wait for a verification: the pair stays due and runs again.
            let result = tokio::select! {
                _ = ctx.shutdown.wait() => return,
                r = verifier.pair(&origin, &entity, config.verify.repair) => r,
            };
            match result {
                Ok(report) => {
                    let labels = [site.as_str(), origin.as_str(), entity.as_str()];
                    ctx.metrics.verify_rows.with_label_values(&labels).inc_by(report.compared);
                    ctx.metrics.verify_differences.with_label_values(&labels).set(report.remaining() as i64);
                    ctx.metrics.verify_repaired.with_label_values(&labels).inc_by(report.repaired() as u64);
                    if report.remaining() > 0 {
                        tracing::warn!(site = %site, origin = %origin, entity = %entity, differences = report.remaining(), "verification found differences");
                    }
                    let done = Verified {
                        origin: origin.clone(),
                        entity: entity.clone(),
                        checked_at_ms: crate::record::now_ms(),
                        compared: report.compared as i64,
                        differences: report.remaining() as i64,
                        repaired: report.repaired() as i64,
                    };
                    if let Err(e) = verifier.control().verified().record(&done).await {
                        tracing::warn!(site = %site, error = %e, "recording a verification");
                    }
                }
                Err(e) => {
                    tracing::warn!(site = %site, origin = %origin, entity = %entity, error = %e, "verification failed; it stays due");
                    failed = true;
                }
            }
            if ctx.shutdown.is_triggered() {
                return;
            }
        }
        // Every pair verified since the oldest of their last verifications.
        if let Ok(state) = verifier.control().verified().list().await {
            let pairs = pairs(&config, &site);
            let times: Vec<i64> = pairs
                .iter()
                .filter_map(|(o, e)| state.iter().find(|v| &v.origin == o && &v.entity == e).map(|v| v.checked_at_ms))
                .collect();
            if times.len() == pairs.len() {
                if let Some(oldest) = times.iter().min() {
                    ctx.metrics.verify_last_pass.with_label_values(&[&site]).set(*oldest as f64 / 1000.0);
                }
            }
            // Sleep until the next pair is due.
            let now = crate::record::now_ms();
            let next = times.iter().map(|t| t + interval_ms - now).min().unwrap_or(0).max(0) as u64;
            let wait = if failed { RETRY.min(Duration::from_millis(next.max(1000))) } else { Duration::from_millis(next.max(1000)) };
            if pause(&ctx.shutdown, wait).await {
                return;
            }
        } else if pause(&ctx.shutdown, RETRY).await {
            return;
        }
    }
}

/// Sleeps `d`; true when shutdown came first.
async fn pause(shutdown: &Shutdown, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.wait() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
