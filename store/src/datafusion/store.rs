use super::convert::{apply_batch, to_batch};
use super::files::{self, DataFile};
use super::DataFusionStoreConfig;
use crate::aggregate::sql::{self, Bind, Dialect, Family, PartialRow, RawEvents, Sql};
use crate::aggregate::{Accumulator, MESSAGE_KEY_REGEX};
use super::rollup::{Disk, Rollup, RowRef};
use crate::{Aggregate, AggregateAnswer, EventStore, SentMessage, StoreError, UNMATCHED_CAMPAIGN};
use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::{col, lit, ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use mailpipe_schemas::{arrow_schema, Event};
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
    files: Arc<Files>,
    flushing: tokio::sync::Mutex<()>,
    next_seq: AtomicU64,
    /// The last flush whose rollup changes are durable: later files are replayed at start,
    /// so they are not compacted yet.
    committed: Arc<AtomicU64>,
    /// Held by the one compaction that runs (beside the flushes) at a time.
    compaction: Arc<tokio::sync::Mutex<()>>,
}

/// The block cache of the rollup's on-disk state.
const STATE_CACHE_BYTES: u64 = 64 << 20;

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(engine)?
}

impl DataFusionEventStore {
    /// Opens the store in `config.dir`: loads the rollup's counts and replays the data files
    /// written after its last commit (an interrupted flush), committing what they add.
    pub async fn open(config: DataFusionStoreConfig) -> Result<Self, StoreError> {
        let root = config.dir.join("events");
        let state = config.dir.join("state");
        let (files, rollup, committed) = {
            let root = root.clone();
            blocking(move || {
                let started = std::time::Instant::now();
                let (mut rollup, committed) = Rollup::open(Disk::open(&state, STATE_CACHE_BYTES)?)?;
                let files = files::open_files(&root)?;
                let replay: Vec<&DataFile> = files.iter().filter(|f| f.last > committed).collect();
                for f in &replay {
                    for batch in files::read(&f.path)? {
                        apply_batch(&mut rollup, &batch)?;
                    }
                }
                let committed = replay.iter().map(|f| f.last).max().unwrap_or(committed);
                if !replay.is_empty() {
                    let commit = rollup.take(committed);
                    rollup.disk().expect("opened with a disk").commit(&commit)?;
                    rollup.committed();
                }
                tracing::info!(replayed_files = replay.len(), seconds = started.elapsed().as_secs_f64(), "rollup loaded");
                Ok((files, rollup, committed))
            })
            .await?
        };
        let next_seq = files.iter().map(|f| f.last).max().unwrap_or(0).max(committed) + 1;
        tracing::info!(dir = %root.display(), files = files.len(), events = rollup.events(), "event store opened");
        Ok(DataFusionEventStore {
            config,
            root,
            rollup: RwLock::new(rollup),
            tail: Mutex::new(Vec::new()),
            files: Arc::new(tokio::sync::RwLock::new(files)),
            flushing: tokio::sync::Mutex::new(()),
            next_seq: AtomicU64::new(next_seq),
            committed: Arc::new(AtomicU64::new(committed)),
            compaction: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Number of distinct events stored (flushed or in the tail).
    pub fn event_count(&self) -> usize {
        self.rollup.read().events() as usize
    }

    pub async fn file_count(&self) -> usize {
        self.files.read().await.len()
    }

    /// The answer computed by DataFusion from raw rows alone (no rollup): the reference the
    /// rollup is checked and benchmarked against.
    pub async fn scan(&self, tenant: &str, q: &Aggregate) -> Result<AggregateAnswer, StoreError> {
        q.validate()?;
        let queries = [
            (Family::Counts, sql::raw_counts(&DIALECT, q, tenant)),
            (Family::Firsts, sql::raw_firsts(&DIALECT, q, tenant)),
            (Family::Distinct, sql::raw_distinct(&DIALECT, q, tenant)),
        ];
        Ok(self.run(tenant, q, queries.into_iter()).await?.answer(q))
    }

    /// Runs shared SQL queries over the tenant's stored files and tail (as the view `e`, inbound
    /// events joined to their send), folding their rows.
    async fn run(&self, tenant: &str, q: &Aggregate, queries: impl Iterator<Item = (Family, Option<Sql>)>) -> Result<Accumulator, StoreError> {
        let mut acc = Accumulator::default();
        let queries: Vec<(Family, Sql)> = queries.filter_map(|(f, s)| s.map(|s| (f, s))).collect();
        if queries.is_empty() {
            return Ok(acc);
        }
        let files = self.files.read().await;
        let ctx = SessionContext::new_with_config(
            SessionConfig::new().set_bool("datafusion.execution.parquet.schema_force_view_types", false),
        );
        let tail: Vec<Event> = self.tail.lock().clone();
        let tail_batch = to_batch(&tail.iter().collect::<Vec<_>>())?;
        let tail = ctx.read_batch(tail_batch).map_err(engine)?;
        let events = if files.is_empty() {
            tail
        } else {
            let paths: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
            let schema = arrow_schema();
            let stored = ctx.read_parquet(paths, ParquetReadOptions::default().schema(&schema)).await.map_err(engine)?;
            stored.union(tail).map_err(engine)?
        };
        ctx.register_table("raw", events.filter(col("tenant").eq(lit(tenant))).map_err(engine)?.into_view()).map_err(engine)?;
        let resolved = ctx.sql(&resolved_events_sql()).await.map_err(engine)?;
        ctx.register_table(DIALECT.events_table(), resolved.into_view()).map_err(engine)?;
        for (family, query) in queries {
            let params: Vec<ScalarValue> = query
                .binds
                .iter()
                .map(|b| match b {
                    Bind::Str(s) => ScalarValue::from(s.as_str()),
                    Bind::Ms(ms) => ScalarValue::TimestampMillisecond(Some(*ms), Some("UTC".into())),
                })
                .collect();
            let df = ctx.sql(&query.text).await.map_err(|e| engine(format!("{e}\n{}", query.text)))?;
            let batches = df.with_param_values(params).map_err(engine)?.collect().await.map_err(engine)?;
            for b in &batches {
                for row in partial_rows(b)? {
                    sql::fold(&mut acc, q, family, row);
                }
            }
        }
        Ok(acc)
    }

    /// Makes a taken commit durable; until then lookups read it from memory, and a failed
    /// commit is retried by the next flush.
    async fn commit(&self, commit: std::sync::Arc<super::rollup::Commit>) -> Result<(), StoreError> {
        if self.rollup.read().disk().is_none() {
            self.reopen_state().await?;
        }
        let disk = self.rollup.read().disk().cloned().ok_or_else(|| engine("rollup has no disk"))?;
        let seq = commit.seq();
        if let Err(e) = blocking(move || disk.commit(&commit)).await {
            // fjall refuses every write after one failed (a full disk poisons its journal):
            // reopen it, which recovers the journal, so the retried commit can succeed.
            static FAILURES: std::sync::OnceLock<mailpipe_bus::Throttle> = std::sync::OnceLock::new();
            if let Some(failures) = FAILURES.get_or_init(|| mailpipe_bus::Throttle::every(std::time::Duration::from_secs(10))).log() {
                tracing::warn!(error = %e, failures, "committing the rollup failed; reopening its state ({failures} since the last line like this)");
            }
            if let Err(again) = self.reopen_state().await {
                tracing::warn!(error = %again, "reopening the rollup's state failed; the next flush tries again");
            }
            return Err(e);
        }
        self.rollup.write().committed();
        self.committed.store(seq, Ordering::SeqCst);
        Ok(())
    }

    /// Closes the rollup's state and opens it again; until it is open, lookups fail and are
    /// retried (nothing is answered from memory alone).
    async fn reopen_state(&self) -> Result<(), StoreError> {
        let old = self.rollup.write().lose_disk();
        let state = self.config.dir.join("state");
        let disk = blocking(move || {
            drop(old);
            // The database's lock is released once its background work has let go of it.
            let mut attempt = 0;
            loop {
                match Disk::open(&state, STATE_CACHE_BYTES) {
                    Ok(d) => return Ok(d),
                    Err(e) if attempt >= 50 => return Err(e),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
                }
                attempt += 1;
            }
        })
        .await?;
        self.rollup.write().regain_disk(disk);
        tracing::info!("the rollup's state is open again");
        Ok(())
    }

    /// Starts a compaction unless one is running. It runs beside the flushes, which only add
    /// files, so a large merge never holds up a flush (and with it the store's lag); a failed
    /// one is tried again after the next flush.
    fn compact_in_background(&self) {
        let Ok(one_at_a_time) = self.compaction.clone().try_lock_owned() else { return };
        let (root, files, committed, after) = (self.root.clone(), self.files.clone(), self.committed.clone(), self.config.compact_after_files);
        tokio::spawn(async move {
            let _one_at_a_time = one_at_a_time;
            if let Err(e) = compact_all(&root, &files, &committed, after).await {
                static FAILURES: std::sync::OnceLock<mailpipe_bus::Throttle> = std::sync::OnceLock::new();
                if let Some(failures) = FAILURES.get_or_init(|| mailpipe_bus::Throttle::every(std::time::Duration::from_secs(10))).log() {
                    tracing::warn!(error = %e, failures, "compaction failed; the next flush tries again ({failures} since the last line like this)");
                }
            }
        });
    }

    /// Waits for the compaction running beside the flushes, then merges whatever is still due.
    pub async fn compacted(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.compaction.lock().await;
        compact_all(&self.root, &self.files, &self.committed, self.config.compact_after_files).await
    }
}

type Files = tokio::sync::RwLock<Vec<DataFile>>;

/// Compacts until no day is crowded, taking in the files committed meanwhile.
async fn compact_all(root: &std::path::Path, files: &Files, committed: &AtomicU64, after: usize) -> Result<(), StoreError> {
    while compact(root, files, committed.load(Ordering::SeqCst), after).await? > 0 {}
    Ok(())
}

/// Merges the newest small files of each crowded day (`to_merge`) among those committed up to
/// flush `committed`, swapping each merge in under the write half of `files`; returns how many
/// merges it made.
async fn compact(root: &std::path::Path, files: &Files, committed: u64, after: usize) -> Result<usize, StoreError> {
    let crowded: Vec<Vec<DataFile>> = {
        let files = files.read().await;
        let mut by_day: BTreeMap<&str, Vec<DataFile>> = BTreeMap::new();
        for f in files.iter().filter(|f| f.last <= committed) {
            by_day.entry(&f.day).or_default().push(f.clone());
        }
        by_day.into_values().map(|mut fs| {
            fs.sort_by_key(|f| (f.first, f.last));
            to_merge(&fs, after)
        }).filter(|run| run.len() > 1).collect()
    };
    let merges = crowded.len();
    for inputs in crowded {
        let (root, merging) = (root.to_path_buf(), inputs.clone());
        let merged = blocking(move || files::compact(&root, &merging)).await?;
        let mut files = files.write().await;
        files.retain(|f| !inputs.contains(f));
        files.push(merged);
        files.sort_by_key(|f| (f.first, f.last));
        for f in &inputs {
            std::fs::remove_file(&f.path).map_err(files::io(&f.path))?;
        }
        metrics::counter!("mailpipe_store_compactions_total").increment(1);
    }
    Ok(merges)
}

/// Past this size a data file is left as it is: one compaction reads its inputs into memory,
/// which stays bounded.
const COMPACT_MAX_BYTES: u64 = 64 << 20;

/// Which of a day's committed files (in sequence order) one compaction merges, once more than
/// `after` of them are under `COMPACT_MAX_BYTES`: the newest, then each older one while it is
/// no bigger than those taken so far together. Sizes then halve from old to new, like a binary
/// counter, so a row is rewritten about log2(day / flush) times (merging the whole day each
/// time rewrote it at every compaction: the pause grew with the day, and with it the lag).
fn to_merge(day: &[DataFile], after: usize) -> Vec<DataFile> {
    if day.len() <= after {
        return Vec::new();
    }
    let sizes: Vec<u64> = day.iter().map(|f| std::fs::metadata(&f.path).map_or(0, |m| m.len())).collect();
    let n = newest_to_merge(&sizes, after, COMPACT_MAX_BYTES);
    day[day.len() - n..].to_vec()
}

/// How many of the newest files (`sizes` in sequence order) `to_merge` takes; 0 or 1: none.
fn newest_to_merge(sizes: &[u64], after: usize, max: u64) -> usize {
    let small = sizes.iter().rev().take_while(|n| **n < max).count();
    if small <= after {
        return 0;
    }
    let mut total = 0;
    let mut run = 0;
    for &n in sizes.iter().rev().take(small) {
        if run > 0 && (n > total || total + n > max) {
            break;
        }
        total += n;
        run += 1;
    }
    run
}

#[cfg(test)]
mod compaction {
    use super::newest_to_merge;

    /// Flushes of one unit each, compacted as the store does: what is rewritten in all, the
    /// largest single compaction, and how many files are left.
    fn simulate(flushes: u64, after: usize, max: u64) -> (u64, u64, usize) {
        let (mut files, mut rewritten, mut largest) = (Vec::<u64>::new(), 0, 0);
        for _ in 0..flushes {
            files.push(1);
            loop {
                let n = newest_to_merge(&files, after, max);
                if n < 2 {
                    break;
                }
                let merged: u64 = files.drain(files.len() - n..).sum();
                (rewritten, largest) = (rewritten + merged, largest.max(merged));
                files.push(merged);
            }
        }
        (rewritten, largest, files.len())
    }

    #[test]
    fn a_row_is_rewritten_about_log_times_and_no_compaction_grows_with_the_day() {
        let flushes = 100_000;
        let (rewritten, largest, left) = simulate(flushes, 16, 4096);
        // Merging the whole day at every compaction rewrote ~flushes^2 / 32 units (3e8 here).
        assert!(rewritten <= flushes * 13, "{rewritten} units rewritten for {flushes} flushed");
        assert!(largest <= 4096, "a compaction of {largest} units");
        // The frozen files (at the cap) plus at most 16 small ones.
        assert!(left as u64 <= flushes / 2048 + 16 + 1, "{left} files left");
    }
}

/// The rows of a shared query's result (b, d0, d1, d2, t, bc, n, rev, fms, lms).
fn partial_rows(batch: &RecordBatch) -> Result<Vec<PartialRow>, StoreError> {
    if batch.num_columns() != 10 {
        return Err(engine("unexpected result shape"));
    }
    let column = |i: usize, to: &DataType| cast(batch.column(i), to).map_err(engine);
    let ints: Vec<_> = [0, 6, 7, 8, 9].iter().map(|&i| column(i, &DataType::Int64)).collect::<Result<_, _>>()?;
    let strs: Vec<_> = [1, 2, 3, 4, 5].iter().map(|&i| column(i, &DataType::Utf8)).collect::<Result<_, _>>()?;
    let int = |c: usize, row: usize| {
        let a = ints[c].as_primitive::<Int64Type>();
        if a.is_null(row) { 0 } else { a.value(row) }
    };
    let text = |c: usize, row: usize| {
        let a = strs[c].as_string::<i32>();
        if a.is_null(row) { String::new() } else { a.value(row).to_string() }
    };
    Ok((0..batch.num_rows())
        .map(|r| PartialRow {
            bucket: int(0, r),
            d0: text(0, r),
            d1: text(1, r),
            d2: text(2, r),
            event_type: text(3, r),
            bounce_class: text(4, r),
            n: int(1, r),
            revenue_micros: int(2, r),
            first_ms: int(3, r),
            last_ms: int(4, r),
        })
        .collect())
}

/// The tenant's rows (`raw`) with the campaign and variant of events filed under
/// `(unmatched)` taken from their message's latest send, where one is stored.
fn resolved_events_sql() -> String {
    let key = |column: &str| format!("regexp_replace({column}, '{MESSAGE_KEY_REGEX}', '', 'g')");
    format!(
        "SELECT r.tenant, r.type, r.occurred_at, r.message_id, r.recipient, r.bounce_class, r.revenue_micros, \
           CASE WHEN s.sc IS NULL THEN r.campaign ELSE s.sc END AS campaign, \
           CASE WHEN s.sc IS NULL THEN r.variant ELSE s.sv END AS variant \
         FROM raw AS r LEFT JOIN ( \
           SELECT {sent_key} AS sk, last_value(campaign ORDER BY occurred_at) AS sc, last_value(variant ORDER BY occurred_at) AS sv \
           FROM raw WHERE type = 'sent' GROUP BY {sent_key}) AS s \
         ON r.campaign = '{UNMATCHED_CAMPAIGN}' AND r.type <> 'sent' AND {event_key} = s.sk",
        sent_key = key("message_id"),
        event_key = key("r.message_id"),
    )
}

/// DataFusion's SQL over the registered view `e` of the tenant's rows.
struct DataFusionDialect;
const DIALECT: DataFusionDialect = DataFusionDialect;

impl Dialect for DataFusionDialect {
    fn placeholder(&self, n: usize) -> String {
        format!("${n}")
    }
    fn int_div(&self, a: String, b: i64) -> String {
        format!("({a} / {b})")
    }
    fn int64(&self, e: &str) -> String {
        format!("CAST({e} AS BIGINT)")
    }
}

impl RawEvents for DataFusionDialect {
    fn count_distinct(&self, e: &str) -> String {
        format!("count(DISTINCT {e})")
    }
    fn events_table(&self) -> &str {
        "e"
    }
    fn ms(&self) -> &str {
        "CAST(occurred_at AS BIGINT)"
    }
    fn bounce_class(&self) -> &str {
        "coalesce(bounce_class, '')"
    }
    fn message_key(&self) -> String {
        format!("regexp_replace(message_id, '{MESSAGE_KEY_REGEX}', '', 'g')")
    }
    fn first_by_time(&self, column: &str) -> String {
        format!("first_value({column} ORDER BY occurred_at)")
    }
    fn time_at_least(&self, sql: &mut Sql, ms: i64) -> String {
        format!("occurred_at >= {}", sql.bind(self, Bind::Ms(ms)))
    }
    fn time_before(&self, sql: &mut Sql, ms: i64) -> String {
        format!("occurred_at < {}", sql.bind(self, Bind::Ms(ms)))
    }
}

#[async_trait]
impl EventStore for DataFusionEventStore {
    async fn insert(&self, events: &[Event]) -> Result<usize, StoreError> {
        let now = chrono::Utc::now();
        if self.rollup.read().disk().is_none() {
            self.reopen_state().await?;
        }
        // The rows join the tail under the rollup's lock, so a flush takes the rows and the
        // counts they made together.
        let mut rollup = self.rollup.write();
        let mut fresh = Vec::new();
        for e in events {
            if rollup.apply(RowRef::of(e))? {
                fresh.push(e.clone());
            }
        }
        let lag = metrics::histogram!("mailpipe_store_end_to_end_lag_seconds");
        for e in &fresh {
            lag.record((now - e.received_at).num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
        let n = fresh.len();
        self.tail.lock().extend(fresh);
        Ok(n)
    }

    /// Writes the tail as one file per day, then commits the rollup's changes with the
    /// file's sequence number.
    async fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        let leftover = self.rollup.read().committing();
        if let Some(commit) = leftover {
            self.commit(commit).await?;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let (pending, commit) = {
            let mut rollup = self.rollup.write();
            let pending = std::mem::take(&mut *self.tail.lock());
            if pending.is_empty() {
                return Ok(());
            }
            (pending, rollup.take(seq))
        };
        let root = self.root.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut by_day: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
            for e in &pending {
                by_day.entry(e.occurred_at.format("%Y-%m-%d").to_string()).or_default().push(e);
            }
            let mut written = Vec::new();
            for (day, events) in &by_day {
                match to_batch(events).and_then(|b| files::write(&root, day, seq, seq, &[b])) {
                    Ok(f) => written.push(f),
                    Err(e) => {
                        // None of this flush's files may stay: their rows go back to the tail.
                        for f in &written {
                            let _ = std::fs::remove_file(&f.path);
                        }
                        return (pending, Err(e));
                    }
                }
            }
            (pending, Ok(written))
        })
        .await
        .map_err(engine)?;
        match written {
            (written, Ok(new_files)) => {
                metrics::counter!("mailpipe_store_rows_written_total").increment(written.len() as u64);
                self.files.write().await.extend(new_files);
            }
            (pending, Err(e)) => {
                // Keep the rows and their counts for the next flush; nothing was acknowledged.
                let mut rollup = self.rollup.write();
                rollup.restore();
                let mut tail = self.tail.lock();
                let newer = std::mem::replace(&mut *tail, pending);
                tail.extend(newer);
                return Err(e);
            }
        }
        self.commit(commit).await?;
        self.compact_in_background();
        Ok(())
    }

    /// From the rollup; distinct recipients (which no pre-aggregate can sum) by DataFusion
    /// over the raw rows.
    async fn aggregate(&self, tenant: &str, q: &Aggregate) -> Result<AggregateAnswer, StoreError> {
        q.validate()?;
        let mut acc = self.rollup.read().aggregate(tenant, q);
        if let Some(distinct) = sql::raw_distinct(&DIALECT, q, tenant) {
            acc.merge(self.run(tenant, q, [(Family::Distinct, Some(distinct))].into_iter()).await?);
        }
        Ok(acc.answer(q))
    }

    async fn message(&self, tenant: &str, message_id: &str) -> Result<Option<SentMessage>, StoreError> {
        self.rollup.read().sent_message(tenant, message_id)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.event_count() as u64)
    }

    async fn health(&self) -> Result<(), StoreError> {
        std::fs::metadata(&self.root).map(|_| ()).map_err(files::io(&self.root))
    }
}
