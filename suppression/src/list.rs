//! Reading the suppressions topic: [`Records`] reads the record at an offset (an address's
//! history) or a run of records (the changes feed, the list), and the [`Follower`] keeps an
//! [`Index`] up to date with the topic, from a snapshot on start-up, saving one now and then.

use crate::address::Address;
use crate::entry::Entry;
use crate::index::Index;
use mailpipe_bus::{BusError, EventBus, Position, Subscription, SUPPRESSIONS_TOPIC};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

/// Readers shared by the requests of one process.
const READERS: usize = 4;
/// How long a read waits for a record the index says is there (Kafka fetches after a seek).
const READ_WAIT: Duration = Duration::from_secs(5);

pub struct Records {
    readers: Vec<Mutex<Box<dyn Subscription>>>,
    turn: AtomicUsize,
}

/// A record read back, with where it is and where the next one starts.
pub struct Read {
    pub offset: u64,
    pub next: u64,
    pub entry: Entry,
}

fn decode(payload: &[u8]) -> Result<Entry, BusError> {
    serde_json::from_slice(payload).map_err(|e| BusError::Invalid(format!("undecodable suppression record: {e}")))
}

impl Records {
    pub async fn open(bus: &dyn EventBus) -> Result<Records, BusError> {
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(Mutex::new(bus.reader(SUPPRESSIONS_TOPIC).await?));
        }
        Ok(Records { readers, turn: AtomicUsize::new(0) })
    }

    async fn reader(&self) -> tokio::sync::MutexGuard<'_, Box<dyn Subscription>> {
        for r in &self.readers {
            if let Ok(free) = r.try_lock() {
                return free;
            }
        }
        self.readers[self.turn.fetch_add(1, Ordering::Relaxed) % self.readers.len()].lock().await
    }

    /// The record at `offset`.
    pub async fn at(&self, offset: u64) -> Result<Entry, BusError> {
        let mut reader = self.reader().await;
        reader.seek(Position { partition: 0, offset })?;
        let deadline = Instant::now() + READ_WAIT;
        loop {
            let got = reader.poll(1, Duration::from_millis(200)).await?;
            if let Some(r) = got.into_iter().next() {
                if r.position.offset != offset {
                    return Err(BusError::Invalid(format!("no suppression record at offset {offset}")));
                }
                return decode(&r.payload);
            }
            if Instant::now() > deadline {
                return Err(BusError::Unavailable(format!("the suppression record at offset {offset} could not be read in time")));
            }
        }
    }

    /// The records from `from` up to at most `end` (an offset the index has reached), at most
    /// `max` of them.
    pub async fn scan(&self, from: u64, end: u64, max: usize) -> Result<Vec<Read>, BusError> {
        if from >= end {
            return Ok(Vec::new());
        }
        let mut reader = self.reader().await;
        reader.seek(Position { partition: 0, offset: from })?;
        let mut out = Vec::new();
        let deadline = Instant::now() + READ_WAIT;
        while out.len() < max {
            let got = reader.poll(max - out.len(), Duration::from_millis(200)).await?;
            if got.is_empty() && Instant::now() > deadline {
                return Err(BusError::Unavailable("suppression records could not be read in time".into()));
            }
            let mut done = false;
            for r in got {
                if r.position.offset >= end {
                    done = true;
                    break;
                }
                let last = r.next.offset >= end;
                out.push(Read { offset: r.position.offset, next: r.next.offset, entry: decode(&r.payload)? });
                if last {
                    done = true;
                    break;
                }
            }
            if done {
                break;
            }
        }
        Ok(out)
    }
}

/// Keeps an index up to date with the suppressions topic.
pub struct Follower {
    pub index: Arc<Index>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Follower {
    /// Loads the snapshot at `snapshot` (if any), then follows the topic from the offset it
    /// covers; the index is ready once it has caught up. Saves a snapshot every `interval`
    /// when the index changed, and on stop.
    pub async fn start(bus: Arc<dyn EventBus>, snapshot: PathBuf, interval: Duration) -> Result<Follower, BusError> {
        let started = Instant::now();
        let index = match tokio::task::spawn_blocking({
            let path = snapshot.clone();
            move || Index::load(&path)
        })
        .await
        .map_err(|_| BusError::Closed)?
        {
            Ok(Some(index)) => {
                tracing::info!(entries = index.len(), offset = index.next(), ms = started.elapsed().as_millis() as u64, "suppression snapshot loaded");
                index
            }
            Ok(None) => Index::default(),
            Err(e) => {
                tracing::warn!(error = %e, path = %snapshot.display(), "suppression snapshot unreadable; reading the whole topic");
                Index::default()
            }
        };
        let index = Arc::new(index);
        let mut reader = bus.reader(SUPPRESSIONS_TOPIC).await?;
        if index.next() > 0 {
            reader.seek(Position { partition: 0, offset: index.next() })?;
        }
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(follow(reader, index.clone(), snapshot, interval, stop_rx, started));
        Ok(Follower { index, stop, task })
    }

    /// Stops following and saves the snapshot.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

async fn follow(mut reader: Box<dyn Subscription>, index: Arc<Index>, snapshot: PathBuf, interval: Duration, mut stop: watch::Receiver<bool>, started: Instant) {
    let mut last_save = Instant::now();
    let mut read = 0u64;
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            break;
        }
        // Caught up with the topic as it was at start (at once when nothing is left to read).
        if !index.is_ready() && reader.lag() == 0 {
            index.set_ready();
            tracing::info!(entries = index.len(), records_read = read, ms = started.elapsed().as_millis() as u64, "suppression index ready");
        }
        let records = tokio::select! {
            r = reader.poll(4096, Duration::from_millis(200)) => r,
            _ = stop.changed() => continue,
        };
        match records {
            Ok(records) => {
                failures = 0;
                for r in records {
                    read += 1;
                    match decode(&r.payload) {
                        Ok(entry) => match Address::parse(&entry.address) {
                            Ok(a) => index.apply(a.key(&entry.tenant), &entry, r.position.offset, Some(r.next.offset)),
                            Err(_) => tracing::warn!(offset = r.position.offset, "suppression record with a bad address skipped"),
                        },
                        Err(e) => tracing::warn!(offset = r.position.offset, error = %e, "suppression record skipped"),
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures % 50 == 0 {
                    tracing::warn!(error = %e, "reading the suppressions topic failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if last_save.elapsed() >= interval {
            save(&index, &snapshot).await;
            last_save = Instant::now();
        }
    }
    save(&index, &snapshot).await;
}

async fn save(index: &Arc<Index>, path: &std::path::Path) {
    let (index, path) = (index.clone(), path.to_path_buf());
    let started = Instant::now();
    match tokio::task::spawn_blocking(move || index.save(&path).map(|saved| (saved, index.len()))).await {
        Ok(Ok((true, entries))) => tracing::debug!(entries, ms = started.elapsed().as_millis() as u64, "suppression snapshot saved"),
        Ok(Ok((false, _))) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "saving the suppression snapshot failed"),
        Err(_) => {}
    }
}
