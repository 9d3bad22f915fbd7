//! The processor runner: the only place that talks to the bus and the store.

use crate::steps::{decode, Outcome, Processor};
use mailpipe_bus::{commit_points, BusError, EventBus, Message, Position, Record, Subscription, DEAD_LETTER_TOPIC, EVENTS_TOPIC};
use mailpipe_store::{EventStore, StoreError};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const LINGER: Duration = Duration::from_millis(10);
/// How long a poll waits once stopping.
const STOP_POLL: Duration = Duration::from_millis(20);
/// Longest a stopping runner keeps reading when the bus cannot say exactly what is left.
const DRAIN_LIMIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub group: String,
    pub batch_max: usize,
    pub flush_interval: Duration,
}

pub struct Runner {
    pub bus: Arc<dyn EventBus>,
    pub store: Arc<dyn EventStore>,
    pub steps: Vec<Box<dyn Processor>>,
    pub config: RunnerConfig,
}

impl Runner {
    /// Consumes until `shutdown` turns true, then drains what is already on the bus, flushes
    /// the store and commits, so a graceful stop leaves nothing to redo.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), RunnerError> {
        let mut sub = self.bus.subscribe(EVENTS_TOPIC, &self.config.group).await?;
        // Per partition, the position after the last record handled but not yet committed.
        let mut unflushed: BTreeMap<u32, Position> = BTreeMap::new();
        let mut last_flush = Instant::now();
        let mut stop_since: Option<Instant> = None;
        loop {
            let stopping = *shutdown.borrow();
            if stopping && stop_since.is_none() {
                stop_since = Some(Instant::now());
            }
            let wait = if stopping { STOP_POLL } else { self.config.flush_interval.min(Duration::from_millis(100)) };
            let records = tokio::select! {
                r = sub.poll(self.config.batch_max, wait) => r?,
                _ = shutdown.changed(), if !stopping => continue,
            };
            let full = records.len() >= self.config.batch_max;
            let idle = records.is_empty();
            if !idle {
                for p in commit_points(&records) {
                    unflushed.insert(p.partition, p);
                }
                self.handle(records).await?;
                if !full && !stopping {
                    // Let a trickle gather into a batch: far fewer wake-ups under load, for
                    // a few milliseconds of freshness.
                    tokio::time::sleep(LINGER).await;
                }
            }
            // Drained: nothing left to read, or (a bus whose lag is only an estimate) nothing
            // arrived for a while after the stop.
            let drained = stopping && idle && (sub.lag() == 0 || stop_since.is_some_and(|t| t.elapsed() > DRAIN_LIMIT));
            if !unflushed.is_empty() && (drained || last_flush.elapsed() >= self.config.flush_interval) {
                self.flush_and_commit(sub.as_mut(), &mut unflushed).await?;
                last_flush = Instant::now();
            }
            if drained {
                tracing::info!(group = %self.config.group, "processor drained and stopped");
                return Ok(());
            }
        }
    }

    async fn handle(&self, records: Vec<Record>) -> Result<(), RunnerError> {
        let mut events = Vec::with_capacity(records.len());
        let mut dead = Vec::new();
        'records: for record in &records {
            let mut event = match decode(&record.payload) {
                Ok(e) => e,
                Err(reason) => {
                    dead.push(dead_letter(record, &reason));
                    continue;
                }
            };
            for step in &self.steps {
                match step.process(event) {
                    Outcome::Next(e) => event = e,
                    Outcome::Drop(_) => continue 'records,
                    Outcome::DeadLetter(reason) => {
                        dead.push(dead_letter(record, &format!("{}: {reason}", step.name())));
                        continue 'records;
                    }
                }
            }
            events.push(event);
        }
        if !dead.is_empty() {
            let n = dead.len() as u64;
            retry("publishing dead letters", || self.bus.publish(DEAD_LETTER_TOPIC, dead.clone())).await?;
            metrics::counter!("mailpipe_processor_events_dead_lettered_total").increment(n);
            tracing::warn!(count = n, "events sent to the dead-letter lane");
        }
        let n = events.len() as u64;
        let stored = retry("inserting into the store", || self.store.insert(&events)).await?;
        metrics::counter!("mailpipe_processor_events_processed_total").increment(n);
        metrics::counter!("mailpipe_processor_duplicates_skipped_total").increment(n - stored as u64);
        Ok(())
    }

    async fn flush_and_commit(&self, sub: &mut dyn Subscription, unflushed: &mut BTreeMap<u32, Position>) -> Result<(), RunnerError> {
        retry("flushing the store", || self.store.flush()).await?;
        let upto: Vec<Position> = std::mem::take(unflushed).into_values().collect();
        commit(sub, &upto).await
    }
}

fn dead_letter(record: &Record, reason: &str) -> Message {
    let body = serde_json::json!({
        "reason": reason,
        "topic": EVENTS_TOPIC,
        "partition": record.position.partition,
        "offset": record.position.offset,
        "payload": String::from_utf8_lossy(&record.payload),
        "at": chrono::Utc::now().to_rfc3339(),
    });
    Message { key: record.key.clone(), payload: body.to_string().into_bytes() }
}

/// Commits, retrying while the bus is unreachable (nothing is lost meanwhile: at worst the
/// records are read again, and the store recognises them).
pub(crate) async fn commit(sub: &mut dyn Subscription, upto: &[Position]) -> Result<(), RunnerError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match sub.commit(upto).await {
            Ok(()) => return Ok(()),
            Err(e) if e.retryable() => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "retrying offset commit");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Retries an operation whose failure a retry can cure (a full disk, a restarting server),
/// with backoff; nothing is acknowledged meanwhile, so nothing is lost.
pub(crate) async fn retry<T, E, F, Fut>(what: &'static str, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display + Retryable,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retryable() => {
                tracing::warn!(error = %e, what, retry_in_ms = delay.as_millis() as u64, "retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

pub trait Retryable {
    fn retryable(&self) -> bool;
}
impl Retryable for BusError {
    fn retryable(&self) -> bool {
        BusError::retryable(self)
    }
}
impl Retryable for StoreError {
    fn retryable(&self) -> bool {
        StoreError::retryable(self)
    }
}
