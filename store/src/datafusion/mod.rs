//! The embedded store: Parquet files partitioned by day (`events/day=YYYY-MM-DD/`), written
//! at each flush and compacted when a day gathers many small files; an in-memory tail of
//! rows not yet flushed; a rollup that answers the typed queries without scanning; and
//! DataFusion SQL over files + tail for questions answered from raw rows.

mod config;
mod convert;
mod files;
mod rollup;
mod store;
#[cfg(test)]
mod tests;

pub use config::DataFusionStoreConfig;
pub use store::DataFusionEventStore;
