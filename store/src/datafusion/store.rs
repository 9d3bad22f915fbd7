use super::convert::{apply_batch, to_batch};
use super::files::{self, DataFile};
use super::DataFusionStoreConfig;
use crate::query::{Answer, Query, Totals};
use crate::rollup::{Rollup, RowRef};
use crate::{EventStore, OverviewQuery, StoreError};
use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use mailpipe_schemas::{arrow_schema, Event, EventType};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct DataFusionEventStore {
    config: DataFusionStoreConfig,
    root: PathBuf,
    rollup: RwLock<Rollup>,
    tail: Mutex<Vec<Event>>,
    /// The data files; readers hold the read half while they scan, compaction takes the
    /// write half to swap files.
    files: tokio::sync::RwLock<Vec<DataFile>>,
    flushing: tokio::sync::Mutex<()>,
    next_seq: AtomicU64,
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(engine)?
}

impl DataFusionEventStore {
    /// Opens the store in `config.dir`, rebuilding the rollup from every stored row.
    pub async fn open(config: DataFusionStoreConfig) -> Result<Self, StoreError> {
        let root = config.dir.join("events");
        let (files, rollup) = {
            let root = root.clone();
            blocking(move || {
                let files = files::open_files(&root)?;
                let mut rollup = Rollup::default();
                for f in &files {
                    for batch in files::read(&f.path)? {
                        apply_batch(&mut rollup, &batch)?;
                    }
                }
                Ok((files, rollup))
            })
            .await?
        };
        let next_seq = files.iter().map(|f| f.last + 1).max().unwrap_or(1);
        tracing::info!(dir = %root.display(), files = files.len(), events = rollup.events(), "event store opened");
        Ok(DataFusionEventStore {
            config,
            root,
            rollup: RwLock::new(rollup),
            tail: Mutex::new(Vec::new()),
            files: tokio::sync::RwLock::new(files),
            flushing: tokio::sync::Mutex::new(()),
            next_seq: AtomicU64::new(next_seq),
        })
    }

    /// Number of distinct events stored (flushed or in the tail).
    pub fn event_count(&self) -> usize {
        self.rollup.read().events()
    }

    pub async fn file_count(&self) -> usize {
        self.files.read().await.len()
    }

    /// The overview totals computed by scanning raw rows with DataFusion SQL instead of the
    /// rollup: the reference the rollup is checked and benchmarked against.
    pub async fn scan_totals(&self, tenant: &str, q: &OverviewQuery) -> Result<Totals, StoreError> {
        q.validate()?;
        let (_, bounds) = q.day_boundaries();
        let (from, to) = (bounds[0], bounds[bounds.len() - 1]);
        let files = self.files.read().await;
        let ctx = SessionContext::new_with_config(
            SessionConfig::new().set_bool("datafusion.execution.parquet.schema_force_view_types", false),
        );
        let tail: Vec<Event> = self.tail.lock().clone();
        let tail_batch = to_batch(&tail.iter().collect::<Vec<_>>())?;
        ctx.register_table("tail", Arc::new(MemTable::try_new(arrow_schema(), vec![vec![tail_batch]]).map_err(engine)?))
            .map_err(engine)?;
        let source = if files.is_empty() {
            "tail".to_string()
        } else {
            let paths: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
            let schema = arrow_schema();
            let stored = ctx
                .read_parquet(paths, ParquetReadOptions::default().schema(&schema))
                .await
                .map_err(engine)?;
            ctx.register_table("stored", stored.into_view()).map_err(engine)?;
            "(SELECT * FROM stored UNION ALL SELECT * FROM tail)".to_string()
        };
        let campaign = if q.campaign.is_some() { "AND campaign = $4" } else { "" };
        let counts_sql = format!(
            "SELECT type, bounce_class, count(*) AS n, sum(revenue_micros) AS revenue FROM {source} AS e \
             WHERE tenant = $1 AND occurred_at >= $2 AND occurred_at < $3 {campaign} GROUP BY type, bounce_class"
        );
        let firsts_sql = format!(
            "SELECT type, NULL AS bounce_class, count(*) AS n, CAST(0 AS BIGINT) AS revenue FROM ( \
               SELECT type, message_id, min(occurred_at) AS first_at FROM {source} AS e \
               WHERE tenant = $1 AND type IN ('open', 'click', 'unsubscribe', 'complaint') {campaign} \
               GROUP BY type, message_id) AS f \
             WHERE first_at >= $2 AND first_at < $3 GROUP BY type"
        );
        let ts = |ms| ScalarValue::TimestampMillisecond(Some(ms), Some("UTC".into()));
        let mut params = vec![ScalarValue::from(tenant), ts(from), ts(to)];
        if let Some(c) = &q.campaign {
            params.push(ScalarValue::from(c.as_str()));
        }
        let mut totals = Totals::default();
        for (sql, firsts) in [(counts_sql, false), (firsts_sql, true)] {
            let batches = ctx
                .sql(&sql)
                .await
                .and_then(|df| df.with_param_values(params.clone()))
                .map_err(engine)?
                .collect()
                .await
                .map_err(engine)?;
            for b in &batches {
                add_counts(&mut totals, b, firsts)?;
            }
        }
        Ok(totals)
    }

    async fn compact_if_needed(&self) -> Result<(), StoreError> {
        let crowded: Vec<Vec<DataFile>> = {
            let files = self.files.read().await;
            let mut by_day: BTreeMap<&str, Vec<DataFile>> = BTreeMap::new();
            for f in files.iter() {
                by_day.entry(&f.day).or_default().push(f.clone());
            }
            by_day.into_values().filter(|fs| fs.len() > self.config.compact_after_files).collect()
        };
        for inputs in crowded {
            let root = self.root.clone();
            let merging = inputs.clone();
            let merged = blocking(move || files::compact(&root, &merging)).await?;
            let mut files = self.files.write().await;
            files.retain(|f| !inputs.contains(f));
            files.push(merged);
            files.sort_by_key(|f| (f.first, f.last));
            for f in &inputs {
                std::fs::remove_file(&f.path).map_err(files::io(&f.path))?;
            }
            metrics::counter!("mailpipe_store_compactions_total").increment(1);
        }
        Ok(())
    }
}

/// Adds one result batch of `scan_totals` (type, bounce_class, n, revenue) to `totals`.
fn add_counts(totals: &mut Totals, batch: &RecordBatch, firsts: bool) -> Result<(), StoreError> {
    let bad = || engine("unexpected result shape");
    let kind = batch.column(0).as_string_opt::<i32>().ok_or_else(bad)?;
    let bounce = batch.column(1);
    let bounce = bounce.as_string_opt::<i32>();
    let n = batch.column(2).as_primitive_opt::<Int64Type>().ok_or_else(bad)?;
    let revenue = batch.column(3).as_primitive_opt::<Int64Type>().ok_or_else(bad)?;
    for i in 0..batch.num_rows() {
        let count = n.value(i) as u64;
        let hard = bounce.is_some_and(|b| !b.is_null(i) && b.value(i) == "hard");
        let t = &mut *totals;
        match (EventType::parse(kind.value(i)).ok_or_else(bad)?, firsts) {
            (EventType::Sent, _) => t.sent += count,
            (EventType::Delivered, _) => t.delivered += count,
            (EventType::Deferred, _) => t.deferred += count,
            (EventType::Bounced, _) if hard => t.hard_bounces += count,
            (EventType::Bounced, _) => t.soft_bounces += count,
            (EventType::Open, false) => t.opens += count,
            (EventType::Open, true) => t.unique_opens += count,
            (EventType::Click, false) => t.clicks += count,
            (EventType::Click, true) => t.unique_clicks += count,
            (EventType::Unsubscribe, true) => t.unsubscribes += count,
            (EventType::Complaint, true) => t.complaints += count,
            (EventType::Unsubscribe | EventType::Complaint, false) => {}
            (EventType::Reply, _) => t.replies += count,
            (EventType::AutoReply, _) => t.auto_replies += count,
            (EventType::Conversion, _) => {
                t.conversions += count;
                t.revenue_micros += if revenue.is_null(i) { 0 } else { revenue.value(i) };
            }
        }
    }
    Ok(())
}

#[async_trait]
impl EventStore for DataFusionEventStore {
    async fn insert(&self, events: &[Event]) -> Result<usize, StoreError> {
        let now = chrono::Utc::now();
        let fresh: Vec<Event> = {
            let mut rollup = self.rollup.write();
            events.iter().filter(|e| rollup.apply(RowRef::of(e))).cloned().collect()
        };
        let lag = metrics::histogram!("mailpipe_store_end_to_end_lag_seconds");
        for e in &fresh {
            lag.record((now - e.received_at).num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
        let n = fresh.len();
        self.tail.lock().extend(fresh);
        Ok(n)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        let pending = std::mem::take(&mut *self.tail.lock());
        if pending.is_empty() {
            return Ok(());
        }
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let root = self.root.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut by_day: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
            for e in &pending {
                by_day.entry(e.occurred_at.format("%Y-%m-%d").to_string()).or_default().push(e);
            }
            let result = by_day
                .iter()
                .map(|(day, events)| files::write(&root, day, seq, seq, &[to_batch(events)?]))
                .collect::<Result<Vec<_>, _>>();
            (pending, result)
        })
        .await
        .map_err(engine)?;
        match written {
            (written, Ok(new_files)) => {
                metrics::counter!("mailpipe_store_rows_written_total").increment(written.len() as u64);
                self.files.write().await.extend(new_files);
            }
            (pending, Err(e)) => {
                // Keep the rows for the next flush; nothing was acknowledged for them.
                let mut tail = self.tail.lock();
                let newer = std::mem::replace(&mut *tail, pending);
                tail.extend(newer);
                return Err(e);
            }
        }
        self.compact_if_needed().await
    }

    async fn query(&self, tenant: &str, query: Query) -> Result<Answer, StoreError> {
        match query {
            Query::Overview(q) => {
                q.validate()?;
                Ok(Answer::Overview(self.rollup.read().overview(tenant, &q)))
            }
            Query::Campaigns => Ok(Answer::Campaigns(self.rollup.read().campaigns(tenant))),
            Query::Message { message_id } => Ok(Answer::Message(self.rollup.read().sent_message(tenant, &message_id))),
        }
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.event_count() as u64)
    }

    async fn health(&self) -> Result<(), StoreError> {
        std::fs::metadata(&self.root).map(|_| ()).map_err(files::io(&self.root))
    }
}
