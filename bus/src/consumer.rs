//! What every consumer of the bus does the same way: retrying what a retry can cure, and
//! knowing when a stopping consumer has read everything.

use crate::{BusError, Position, Subscription};
use std::future::Future;
use std::time::{Duration, Instant};

/// An error that may go away by itself (a full disk, a restarting server).
pub trait Retryable {
    fn retryable(&self) -> bool;
}

impl Retryable for BusError {
    fn retryable(&self) -> bool {
        BusError::retryable(self)
    }
}

/// Retries `op` while it fails in a way a retry can cure, with backoff (100 ms doubling to
/// 5 s); nothing is acknowledged meanwhile, so nothing is lost.
pub async fn retry<T, E, F, Fut>(what: &'static str, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display + Retryable,
{
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Err(e) if e.retryable() => tokio::time::sleep(backoff.next(what, &e)).await,
            done => return done,
        }
    }
}

/// Commits, retrying while the bus is unreachable (at worst the records are read again, and
/// their consumer recognises them).
pub async fn commit(sub: &mut dyn Subscription, upto: &[Position]) -> Result<(), BusError> {
    let mut backoff = Backoff::default();
    loop {
        match sub.commit(upto).await {
            Err(e) if e.retryable() => tokio::time::sleep(backoff.next("committing offsets", &e)).await,
            done => return done,
        }
    }
}

/// 100 ms, doubling up to 5 s. A failure that keeps happening is logged once every 10 s
/// with a count, whichever retry loop meets it (an outage is not a flood of lines onto a
/// disk that may be the thing that is full).
struct Backoff(Duration);

/// One throttle for each thing retried.
fn throttle(what: &'static str) -> std::sync::Arc<crate::Throttle> {
    static THROTTLES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<&'static str, std::sync::Arc<crate::Throttle>>>> = std::sync::OnceLock::new();
    let mut throttles = THROTTLES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    throttles.entry(what).or_insert_with(|| std::sync::Arc::new(crate::Throttle::every(Duration::from_secs(10)))).clone()
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    /// Logs the failure; the wait before the next try.
    fn next(&mut self, what: &'static str, error: &impl std::fmt::Display) -> Duration {
        if let Some(failures) = throttle(what).log() {
            tracing::warn!(error = %error, what, failures, retry_in_ms = self.0.as_millis() as u64, "retrying ({failures} failures since the last line like this)");
        }
        let wait = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        wait
    }
}

/// Longest a stopping consumer keeps reading when the bus cannot say exactly what is left
/// (Kafka's lag comes from statistics, and one of a partition revoked meanwhile can stay).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(3);

/// When a stopping consumer is done: nothing arrived in its last poll, and either the bus
/// says nothing is left or `DRAIN_LIMIT` has passed since the stop.
#[derive(Default)]
pub struct Drain {
    since: Option<Instant>,
}

impl Drain {
    pub fn drained(&mut self, stopping: bool, idle: bool, lag: u64) -> bool {
        if !stopping {
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        idle && (lag == 0 || since.elapsed() > DRAIN_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_lag_ends_the_drain_after_the_limit() {
        let mut drain = Drain::default();
        assert!(!drain.drained(false, true, 0), "not stopping");
        assert!(!drain.drained(true, false, 0), "records still arriving");
        assert!(drain.drained(true, true, 0), "nothing left");
        let mut stale = Drain::default();
        assert!(!stale.drained(true, true, 5), "the bus says records are left");
        stale.since = Some(Instant::now() - DRAIN_LIMIT - Duration::from_millis(1));
        assert!(stale.drained(true, true, 5), "a lag that never moves does not hold the stop forever");
    }
}
