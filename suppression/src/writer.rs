//! The suppression writer: turns hard bounces, complaints, unsubscribes and soft bounces (the
//! events topic) and manual changes (the requests topic) into suppression records, exactly
//! once: records are appended, applied to the index, and only then are the offsets of what
//! caused them committed. A redelivery after a crash finds its change already in the entry's
//! history and writes nothing. Every 30 seconds it writes the expiry of what has ended.
//!
//! An unsubscribe that names no stream (from an unsubscribe URL made without one) takes
//! the stream of its message's send, looked up in the event store. A message whose send is not
//! stored suppresses every stream, the safe side; so does one that arrives while the store does
//! not answer (within `JOIN_TIMEOUT`; then no lookup for `JOIN_PAUSE`): a store outage must not
//! hold up the hard bounces and complaints behind it.

use crate::address::{Address, Key};
use crate::entry::{Entry, Request, RECORD_VERSION};
use crate::index::Index;
use crate::list::Records;
use chrono::Utc;
use mailpipe_bus::{commit, commit_points, retry, BusError, Drain, EventBus, Message, Record, EVENTS_TOPIC, SUPPRESSIONS_TOPIC, SUPPRESSION_REQUESTS_TOPIC};
use mailpipe_config::SuppressionConfig;
use mailpipe_schemas::{Envelope, Event, EventType, SCHEMA_VERSION};
use mailpipe_store::EventStore;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const GROUP: &str = "suppression-writer";
const EXPIRY_EVERY: Duration = Duration::from_secs(30);
const BATCH: usize = 2000;
const JOIN_TIMEOUT: Duration = Duration::from_secs(2);
const JOIN_PAUSE: Duration = Duration::from_secs(10);

pub struct Writer {
    pub bus: Arc<dyn EventBus>,
    pub index: Arc<Index>,
    pub records: Arc<Records>,
    pub config: SuppressionConfig,
    /// Where an unsubscribe without a stream finds its send's.
    pub store: Arc<dyn EventStore>,
}

/// The store lookups of unsubscribes without a stream: paused after a failure.
struct Joins {
    paused_until: Option<Instant>,
    failures: mailpipe_bus::Throttle,
}

/// Changes of one batch: the records to append in order, and the latest entry of each address.
#[derive(Default)]
struct Batch {
    out: Vec<(Key, Entry)>,
    latest: HashMap<Key, Entry>,
}

impl Writer {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), BusError> {
        let mut events = self.bus.subscribe(EVENTS_TOPIC, GROUP).await?;
        let mut requests = self.bus.subscribe(SUPPRESSION_REQUESTS_TOPIC, GROUP).await?;
        tokio::select! {
            _ = self.index.wait_ready() => {}
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        }
        let mut last_expiry = Instant::now() - EXPIRY_EVERY;
        let mut joins = Joins { paused_until: None, failures: mailpipe_bus::Throttle::every(Duration::from_secs(10)) };
        let mut drain = Drain::default();
        loop {
            let stopping = *shutdown.borrow();
            let wait = if stopping { Duration::from_millis(20) } else { Duration::from_millis(25) };
            let evs = tokio::select! {
                r = events.poll(BATCH, wait) => r?,
                _ = shutdown.changed(), if !stopping => continue,
            };
            let reqs = requests.poll(BATCH, Duration::ZERO).await?;
            let idle = evs.is_empty() && reqs.is_empty();
            if drain.drained(stopping, idle, events.lag() + requests.lag()) {
                return Ok(());
            }
            if idle && stopping {
                continue;
            }
            let mut batch = Batch::default();
            for record in &evs {
                self.event(record, &mut batch, &mut joins).await?;
            }
            for record in &reqs {
                self.request(record, &mut batch).await?;
            }
            if last_expiry.elapsed() >= EXPIRY_EVERY && !stopping {
                self.expiries(&mut batch).await?;
                last_expiry = Instant::now();
            }
            self.write(batch).await?;
            for (sub, records) in [(&mut events, &evs), (&mut requests, &reqs)] {
                if !records.is_empty() {
                    commit(sub.as_mut(), &commit_points(records.iter())).await?;
                }
            }
        }
    }

    /// The entry of `key` as the batch left it, or as its latest record says.
    async fn entry(&self, key: Key, tenant: &str, address: &Address, batch: &Batch) -> Result<Entry, BusError> {
        if let Some(e) = batch.latest.get(&key) {
            return Ok(e.clone());
        }
        match self.index.offset(&key) {
            Some(offset) => retry("reading a suppression record", || self.records.at(offset)).await,
            None => Ok(Entry::new(tenant, address.as_str())),
        }
    }

    async fn event(&self, record: &Record, batch: &mut Batch, joins: &mut Joins) -> Result<(), BusError> {
        // Undecodable events are the store writer's to dead-letter; here they change nothing.
        let Ok(envelope) = serde_json::from_slice::<Envelope>(&record.payload) else { return Ok(()) };
        let event = envelope.event;
        if envelope.v != SCHEMA_VERSION || !matches!(event.event_type, EventType::Bounced | EventType::Complaint | EventType::Unsubscribe | EventType::Delivered) {
            return Ok(());
        }
        let Ok(address) = Address::parse(&event.recipient) else {
            metrics::counter!("mailpipe_suppression_events_skipped_total", "reason" => "bad_address").increment(1);
            return Ok(());
        };
        let key = address.key(&event.tenant);
        // A delivery matters only to an address with soft bounces being counted.
        if event.event_type == EventType::Delivered && self.index.offset(&key).is_none() && !batch.latest.contains_key(&key) {
            return Ok(());
        }
        let entry = self.entry(key, &event.tenant, &address, batch).await?;
        let event = self.with_stream(event, joins).await;
        if let Some(changed) = entry.on_event(&event, self.config.policy(&event.tenant)) {
            batch.latest.insert(key, changed.clone());
            batch.out.push((key, changed));
        }
        Ok(())
    }

    /// An unsubscribe without a stream, with its send's stream where the send has one.
    async fn with_stream(&self, event: Event, joins: &mut Joins) -> Event {
        if event.event_type != EventType::Unsubscribe || event.stream.is_some() || event.message_id.is_empty() {
            return event;
        }
        let outcome = |o: &'static str| metrics::counter!("mailpipe_suppression_unsubscribe_joins_total", "outcome" => o).increment(1);
        if joins.paused_until.is_some_and(|t| Instant::now() < t) {
            outcome("store_unavailable");
            return event;
        }
        let failure = match tokio::time::timeout(JOIN_TIMEOUT, self.store.message(&event.tenant, &event.message_id)).await {
            Ok(Ok(send)) => {
                joins.paused_until = None;
                let stream = send.and_then(|s| s.stream);
                outcome(if stream.is_some() { "stream" } else { "every_stream" });
                return Event { stream, ..event };
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {JOIN_TIMEOUT:?}"),
        };
        joins.paused_until = Some(Instant::now() + JOIN_PAUSE);
        outcome("store_unavailable");
        if let Some(n) = joins.failures.log() {
            tracing::warn!(error = %failure, failures = n, "the event store did not answer: unsubscribes without a stream suppress every stream for now");
        }
        event
    }

    async fn request(&self, record: &Record, batch: &mut Batch) -> Result<(), BusError> {
        let request: Request = match serde_json::from_slice(&record.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, offset = record.position.offset, "undecodable suppression request skipped");
                return Ok(());
            }
        };
        let Ok(address) = Address::parse(&request.address) else { return Ok(()) };
        let key = address.key(&request.tenant);
        let entry = self.entry(key, &request.tenant, &address, batch).await?;
        if let Some(changed) = entry.on_request(&request) {
            batch.latest.insert(key, changed.clone());
            batch.out.push((key, changed));
        }
        Ok(())
    }

    async fn expiries(&self, batch: &mut Batch) -> Result<(), BusError> {
        let now = Utc::now();
        for (key, offset) in self.index.due(now) {
            let mut entry = match batch.latest.get(&key) {
                Some(e) => e.clone(),
                None => retry("reading a suppression record", || self.records.at(offset)).await?,
            };
            while let Some(changed) = entry.clone().expire(now) {
                entry = changed.clone();
                batch.out.push((key, changed));
            }
            batch.latest.insert(key, entry);
        }
        Ok(())
    }

    async fn write(&self, batch: Batch) -> Result<(), BusError> {
        if batch.out.is_empty() {
            return Ok(());
        }
        let messages: Vec<Message> = batch
            .out
            .iter()
            .map(|(_, e)| {
                debug_assert_eq!(e.v, RECORD_VERSION);
                let mut key = e.tenant.as_bytes().to_vec();
                key.push(0);
                key.extend_from_slice(e.address.as_bytes());
                Message { key, payload: serde_json::to_vec(e).unwrap_or_default() }
            })
            .collect();
        let positions = retry("appending suppression records", || self.bus.append(SUPPRESSIONS_TOPIC, messages.clone())).await?;
        for ((key, entry), position) in batch.out.iter().zip(&positions) {
            // Answered at once; the follower reads the record later and moves the index's
            // position past it (only it knows where the next record starts).
            self.index.apply(*key, entry, position.offset, None);
            if let Some(change) = &entry.made {
                metrics::counter!("mailpipe_suppression_changes_total", "action" => format!("{:?}", change.action).to_lowercase(), "reason" => change.reason.as_str()).increment(1);
            }
        }
        Ok(())
    }
}
