//! The event store seam: idempotent inserts (by `event_id`), typed questions scoped to one
//! tenant (`Aggregate`s, compiled by each store for its engine, and per-message lookups), a
//! health check. Backends: DataFusion over Parquet (feature `datafusion`, the
//! embedded default) and ClickHouse (feature `clickhouse`).

#[cfg(feature = "clickhouse")]
pub mod clickhouse;
#[cfg(feature = "datafusion")]
pub mod datafusion;
pub mod aggregate;
mod query;

use async_trait::async_trait;
use mailpipe_schemas::Event;

pub use aggregate::{Aggregate, AggregateAnswer, AggregateRow, Dimension, Filters, Frame, Grain, Measure, QueryError};
pub use query::{SentMessage, UNMATCHED_CAMPAIGN};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store i/o on {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("store engine: {0}")]
    Engine(String),
    #[error(transparent)]
    Query(#[from] QueryError),
}

impl StoreError {
    /// Whether trying again later can succeed (the caller's input was fine).
    pub fn retryable(&self) -> bool {
        !matches!(self, StoreError::Query(_))
    }
}

impl mailpipe_bus::Retryable for StoreError {
    fn retryable(&self) -> bool {
        StoreError::retryable(self)
    }
}

#[async_trait]
pub trait EventStore: Send + Sync {
    /// Adds the events whose `event_id` is not stored yet and returns how many were new. They
    /// are queryable when this returns, durable after the next `flush`.
    async fn insert(&self, events: &[Event]) -> Result<usize, StoreError>;

    /// Makes every event inserted so far durable.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Answers an analytics question about one tenant's data (validated first); no question
    /// can reach another tenant's rows.
    async fn aggregate(&self, tenant: &str, q: &Aggregate) -> Result<AggregateAnswer, StoreError>;

    /// The send a message id belongs to (to join bounces, complaints and replies to it).
    async fn message(&self, tenant: &str, message_id: &str) -> Result<Option<SentMessage>, StoreError>;

    /// Events stored, over every tenant (for operators, progress bars and tests).
    async fn count(&self) -> Result<u64, StoreError>;

    async fn health(&self) -> Result<(), StoreError>;
}
