//! The event store seam: idempotent inserts (by `event_id`), typed queries scoped to one
//! tenant, a health check. Backends: DataFusion over Parquet (feature `datafusion`, the
//! embedded default) and ClickHouse (feature `clickhouse`).

#[cfg(feature = "clickhouse")]
pub mod clickhouse;
#[cfg(feature = "datafusion")]
pub mod datafusion;
mod query;
mod rollup;

use async_trait::async_trait;
use mailpipe_schemas::Event;

pub use query::{
    Answer, CampaignSummary, DayTotals, Overview, OverviewQuery, Query, QueryError, Rates, SentMessage, Totals,
};
pub use rollup::Rollup;

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

#[async_trait]
pub trait EventStore: Send + Sync {
    /// Adds the events whose `event_id` is not stored yet and returns how many were new. They
    /// are queryable when this returns, durable after the next `flush`.
    async fn insert(&self, events: &[Event]) -> Result<usize, StoreError>;

    /// Makes every event inserted so far durable.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Answers a question about one tenant's data; no query can reach another tenant's rows.
    async fn query(&self, tenant: &str, query: Query) -> Result<Answer, StoreError>;

    /// Events stored, over every tenant (for operators, progress bars and tests).
    async fn count(&self) -> Result<u64, StoreError>;

    async fn health(&self) -> Result<(), StoreError>;
}
