//! The processor runner: the only place that talks to the bus and the store.

use crate::steps::{decode, Outcome, Processor};
use mailpipe_bus::{commit, commit_points, retry, BusError, Drain, EventBus, Message, Position, Record, Subscription, DEAD_LETTER_TOPIC, EVENTS_TOPIC};
use mailpipe_store::{EventStore, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const LINGER: Duration = Duration::from_millis(10);
/// How long a poll waits once stopping.
const STOP_POLL: Duration = Duration::from_millis(20);

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
        let mut drain = Drain::default();
        loop {
            let stopping = *shutdown.borrow();
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
            let drained = drain.drained(stopping, idle, sub.lag());
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
        Ok(commit(sub, &upto).await?)
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

