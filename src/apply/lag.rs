//! How far this site is behind each origin, reported every second by a task of its own, so a
//! stalled applier (a lock wait, a retry loop) shows a growing lag instead of its last value.
//!
//! An origin is behind by the age of the oldest change received from it and not yet applied;
//! with nothing waiting, by the time since it was last known caught up (its newest applied
//! change or its capture's heartbeat), less the heartbeat interval. An idle origin whose
//! capture is alive reads 0; one whose capture stopped reads a growing lag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::record::now_ms;
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// Heartbeats come every second from an idle capture; within this, an origin counts as caught up.
const HEARTBEAT_GRACE_MS: i64 = 2500;

#[derive(Default, Clone, Copy)]
struct OriginLag {
    /// Source commit time of the oldest change received and not applied yet.
    oldest_pending_ms: Option<i64>,
    /// When the origin was last known caught up.
    last_seen_ms: Option<i64>,
}

/// Lag bookkeeping shared by the applier and its reporter.
pub struct Lag {
    origins: Mutex<HashMap<String, OriginLag>>,
    /// An origin never heard of since start is behind since then.
    started_ms: i64,
}

impl Lag {
    /// Tracks `origins` from now on.
    pub fn new(origins: &[String]) -> Arc<Self> {
        let map = origins.iter().map(|o| (o.clone(), OriginLag::default())).collect();
        Arc::new(Lag { origins: Mutex::new(map), started_ms: now_ms() })
    }

    fn with(&self, origin: &str, f: impl FnOnce(&mut OriginLag)) {
        let mut map = self.origins.lock().expect("lag lock");
        f(map.entry(origin.to_string()).or_default());
    }

    /// A change committed at `source_ts_ms` arrived from `origin`.
    pub fn received(&self, origin: &str, source_ts_ms: i64) {
        self.with(origin, |o| o.oldest_pending_ms = Some(o.oldest_pending_ms.map_or(source_ts_ms, |p| p.min(source_ts_ms))));
    }

    /// `origin`'s capture says it is caught up as of `ts_ms`.
    pub fn heartbeat(&self, origin: &str, ts_ms: i64) {
        self.with(origin, |o| o.last_seen_ms = Some(o.last_seen_ms.map_or(ts_ms, |s| s.max(ts_ms))));
    }

    /// Changes up to `newest_ms` were applied; `still_pending_ms` is the oldest change still
    /// waiting (a transaction whose last record has not arrived), if any.
    pub fn applied(&self, origin: &str, newest_ms: i64, still_pending_ms: Option<i64>) {
        self.with(origin, |o| {
            o.last_seen_ms = Some(o.last_seen_ms.map_or(newest_ms, |s| s.max(newest_ms)));
            o.oldest_pending_ms = still_pending_ms;
        });
    }

    /// Seconds `origin` is behind, now.
    pub fn seconds(&self, origin: &str, now: i64) -> f64 {
        let map = self.origins.lock().expect("lag lock");
        let o = map.get(origin).copied().unwrap_or_default();
        let behind_ms = match o.oldest_pending_ms {
            Some(pending) => now - pending,
            None => now - o.last_seen_ms.unwrap_or(self.started_ms) - HEARTBEAT_GRACE_MS,
        };
        (behind_ms as f64 / 1000.0).max(0.0)
    }

    /// Sets `sitesync_apply_lag_seconds` every second until shutdown.
    pub fn report(self: Arc<Self>, metrics: Metrics, site: String, shutdown: Shutdown) {
        tokio::spawn(async move {
            loop {
                let origins: Vec<String> = self.origins.lock().expect("lag lock").keys().cloned().collect();
                let now = now_ms();
                for origin in origins {
                    metrics.apply_lag.with_label_values(&[&site, &origin]).set(self.seconds(&origin, now));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait() => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_changes_count_from_their_commit_and_idle_origins_from_their_heartbeat() {
        let lag = Lag::new(&["a".to_string()]);
        let t = now_ms();
        lag.heartbeat("a", t - 1000);
        assert_eq!(lag.seconds("a", t), 0.0, "a fresh heartbeat: caught up");
        lag.received("a", t - 7000);
        lag.received("a", t - 3000);
        assert_eq!(lag.seconds("a", t), 7.0, "the oldest waiting change counts");
        lag.applied("a", t - 3000, None);
        assert_eq!(lag.seconds("a", t), 0.0);
        // Last known caught up at t - 1 s (the heartbeat); 11.5 s later, less the grace.
        assert_eq!(lag.seconds("a", t + 10_500), 9.0, "no heartbeat for 11.5 s: behind");
    }
}
