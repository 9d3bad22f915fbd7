//! The event bus seam: publish batches that are durable when the call returns, consume them
//! as a group, acknowledge after the downstream write is durable, replay from an offset.
//! Backends: the embedded on-disk log, and Kafka (feature `kafka`).

pub mod consumer;
pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;

use async_trait::async_trait;
use std::time::Duration;

pub use consumer::{commit, retry, Drain, Retryable};
pub use embedded::{EmbeddedBusConfig, EmbeddedEventBus};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaBusConfig, KafkaEventBus};

/// Topic of raw events, from the edge to the processors.
pub const EVENTS_TOPIC: &str = "events";
/// Topic of raw inbound mail (bounces, complaints, replies), from the edge to the classifier.
pub const INBOUND_TOPIC: &str = "inbound";
/// Largest message (key and payload) a backend takes: a 16 MiB inbound message with its
/// envelope. Kafka topics mailpipe creates get it as `max.message.bytes`; on topics created
/// otherwise, raise `max.message.bytes` of the inbound topic to it.
pub const MAX_MESSAGE_BYTES: usize = (16 << 20) + (64 << 10);
/// Topic of events a processor could not accept, with the reason.
pub const DEAD_LETTER_TOPIC: &str = "dead-letter";
/// Topic of suppression records: the whole state of one address of one tenant per record,
/// keyed by tenant and normalised address (one partition; compacted on Kafka).
pub const SUPPRESSIONS_TOPIC: &str = "suppressions";
/// Topic of manual suppressions and releases (the API, imports), for the suppression writer.
pub const SUPPRESSION_REQUESTS_TOPIC: &str = "suppression-requests";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus i/o on {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("the bus is shut down")]
    Closed,
    #[error("{0}")]
    Invalid(String),
}

impl BusError {
    /// Whether trying again later can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, BusError::Io { .. } | BusError::Unavailable(_))
    }
}

/// One log line per interval for a failure that repeats (a full disk, a broker gone), with a
/// count, so a fault never turns into a flood of log lines: the bus writer, the edge and the
/// query role use it.
pub struct Throttle {
    every_ms: u64,
    started: std::time::Instant,
    /// When the next line may be written, in milliseconds since `started`.
    next: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub fn every(interval: Duration) -> Throttle {
        Throttle { every_ms: interval.as_millis() as u64, started: std::time::Instant::now(), next: Default::default(), skipped: Default::default() }
    }

    /// Whether this failure is to be logged: the number of failures since the last line (this
    /// one included), or `None` to stay quiet.
    pub fn log(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.started.elapsed().as_millis() as u64;
        let next = self.next.load(Relaxed);
        if now >= next && self.next.compare_exchange(next, now + self.every_ms, Relaxed, Relaxed).is_ok() {
            Some(self.skipped.swap(0, Relaxed) + 1)
        } else {
            self.skipped.fetch_add(1, Relaxed);
            None
        }
    }
}

/// Where a record sits: a partition and an offset within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// A record read from the bus. `next` is the position to commit once it has been handled.
#[derive(Clone, Debug)]
pub struct Record {
    pub position: Position,
    pub next: Position,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// The positions to commit once `records` are handled: per partition, the one after its last
/// record.
pub fn commit_points<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<Position> {
    let mut by_partition = std::collections::BTreeMap::new();
    for r in records {
        let next = by_partition.entry(r.next.partition).or_insert(r.next);
        if r.next.offset > next.offset {
            *next = r.next;
        }
    }
    by_partition.into_values().collect()
}

/// A record to publish. The key chooses the partition (tenant + recipient keeps one
/// recipient's events in order).
#[derive(Clone, Debug)]
pub struct Message {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

#[async_trait]
pub trait EventBus: Send + Sync {
    /// Appends the messages; returns once every one of them is durable.
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), BusError> {
        self.append(topic, messages).await.map(|_| ())
    }

    /// Appends the messages like `publish`, and says where each one was written.
    async fn append(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Position>, BusError>;

    /// Joins `group` on `topic`, starting from the group's committed positions.
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Subscription>, BusError>;

    /// Reads `topic` from its start (or where `seek` puts it) as no group: for followers that
    /// keep their own position (the suppression index) and for reads by position. Its
    /// `commit` fails.
    async fn reader(&self, topic: &str) -> Result<Box<dyn Subscription>, BusError>;

    /// Fails when the bus cannot take writes.
    async fn health(&self) -> Result<(), BusError>;
}

#[async_trait]
pub trait Subscription: Send {
    /// Up to `max` records, waiting at most `wait` for the first one.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError>;

    /// Records that everything before these positions has been handled durably.
    async fn commit(&mut self, upto: &[Position]) -> Result<(), BusError>;

    /// Moves the read position (replay); does not change committed offsets.
    fn seek(&mut self, to: Position) -> Result<(), BusError>;

    /// How many records are appended but not yet read by this subscription (approximate).
    fn lag(&self) -> u64;
}
