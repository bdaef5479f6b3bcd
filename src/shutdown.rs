//! Cooperative shutdown: one signal, awaited by every long-lived task.

use tokio::sync::watch;

/// A cloneable handle: `trigger` once, and every `wait` returns.
#[derive(Clone)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// A new, untriggered shutdown.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self { tx: std::sync::Arc::new(tx), rx }
    }

    /// Asks every task to stop.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// Whether shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Returns once shutdown is asked for.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `attempt` until it succeeds, fails in a way waiting cannot mend (`transient` says
/// which), or shutdown is asked for (`None`). Between attempts it says what it waits for and
/// backs off from 1 s to 10 s: a process started while its database or Kafka is down waits for
/// them, not ready, instead of exiting.
pub async fn retry_while_unreachable<T, E, F, Fut>(
    shutdown: &Shutdown,
    what: &str,
    site: &str,
    transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Option<Result<T, E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = std::time::Duration::from_secs(1);
    loop {
        let result = tokio::select! {
            biased;
            _ = shutdown.wait() => return None,
            result = attempt() => result,
        };
        match result {
            Err(e) if transient(&e) => {
                tracing::warn!(site, error = %e, retry_in_s = backoff.as_secs(), "waiting for {what}");
                tokio::select! {
                    _ = shutdown.wait() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
            other => return Some(other),
        }
    }
}
