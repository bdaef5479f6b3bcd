//! The console's small charts: every [`INTERVAL`], the applied rate and lag per origin, read
//! from the process's own metrics, kept for the last hour in memory.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// Between samples.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: an hour.
pub const KEPT: usize = 360;

/// One sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// When, ms since the epoch.
    pub t_ms: i64,
    /// Records applied per second since the previous sample, by origin.
    pub applied_per_second: BTreeMap<String, f64>,
    /// `sitesync_apply_lag_seconds`, by origin.
    pub lag_seconds: BTreeMap<String, f64>,
}

/// The last hour of samples.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("lock").iter().cloned().collect()
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().expect("lock");
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Samples `site`'s metrics for `origins` until shutdown.
    pub async fn run(&self, metrics: Metrics, site: String, origins: Vec<String>, shutdown: Shutdown) {
        let mut previous: Option<(std::time::Instant, BTreeMap<String, u64>)> = None;
        loop {
            let now = std::time::Instant::now();
            let applied = metrics.applied_by_origin(&site);
            let lag = metrics.lag_by_origin(&site);
            if let Some((then, before)) = &previous {
                let seconds = now.duration_since(*then).as_secs_f64().max(0.001);
                let rate = |o: &String| {
                    (applied.get(o).copied().unwrap_or(0).saturating_sub(before.get(o).copied().unwrap_or(0))) as f64 / seconds
                };
                self.push(Sample {
                    t_ms: crate::record::now_ms(),
                    applied_per_second: origins.iter().map(|o| (o.clone(), rate(o))).collect(),
                    lag_seconds: origins.iter().filter_map(|o| lag.get(o).map(|l| (o.clone(), *l))).collect(),
                });
            }
            previous = Some((now, applied));
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(INTERVAL) => {}
            }
        }
    }
}
