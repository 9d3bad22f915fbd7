//! The Kafka backend, through librdkafka: an idempotent producer with `acks=all` (publish
//! returns once the brokers have every message), consumer groups whose offsets are committed
//! only when the runner says the downstream write is durable, topics created when missing.
//!
//! A rebalance needs nothing special here: a partition's uncommitted records are read again by
//! its next owner, and the store recognises what it already holds.

use crate::{BusError, EventBus, Message, Position, Record, Subscription};
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the brokers are and how topics are made. `client` goes to librdkafka as it is
/// (SASL, TLS and any tuning).
#[derive(Clone, Debug)]
pub struct KafkaBusConfig {
    pub brokers: String,
    pub topic_prefix: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub retention_ms: i64,
    pub client: BTreeMap<String, String>,
}

impl KafkaBusConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaBusConfig {
            brokers: brokers.into(),
            topic_prefix: "mailpipe.".into(),
            partitions: 12,
            replication_factor: 1,
            retention_ms: 7 * 24 * 3_600_000,
            client: BTreeMap::new(),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.client {
            c.set(k, v);
        }
        c
    }

    fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }
}

pub struct KafkaEventBus {
    config: KafkaBusConfig,
    /// Replaced (the number counts them) when it has failed for good (see `live_producer`).
    producer: parking_lot::RwLock<(u64, FutureProducer)>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn unavailable(what: &str) -> impl Fn(KafkaError) -> BusError + '_ {
    move |e| BusError::Unavailable(format!("kafka {what}: {e}"))
}

impl KafkaEventBus {
    /// Connects, and creates mailpipe's topics when they are missing.
    pub async fn connect(config: KafkaBusConfig) -> Result<KafkaEventBus, BusError> {
        let producer = parking_lot::RwLock::new((0, producer(&config)?));
        let bus = KafkaEventBus { config, producer };
        let partitions = bus.config.partitions;
        bus.create_topics(&[
            (crate::EVENTS_TOPIC, partitions, false),
            (crate::INBOUND_TOPIC, partitions, false),
            (crate::DEAD_LETTER_TOPIC, partitions, false),
            (crate::SUPPRESSION_REQUESTS_TOPIC, partitions, false),
            // One partition, so a record's offset orders every change; compacted, so the
            // topic keeps the latest state of each address for ever.
            (crate::SUPPRESSIONS_TOPIC, 1, true),
        ])
        .await?;
        Ok(bus)
    }

    /// The producer, after replacing it if librdkafka has declared it failed for good: an
    /// idempotent producer whose messages timed out during a long broker outage can be fenced
    /// (`ProducerFenced`, a fatal error), and a fatal producer fails every publish after it. The
    /// publish that met it is refused (and retried by its sender); the next one goes through a
    /// new producer, whose id the broker does not confuse with the old one's.
    fn live_producer(&self) -> Result<(u64, FutureProducer), BusError> {
        let (generation, current) = self.producer.read().clone();
        match current.client().fatal_error() {
            None => Ok((generation, current)),
            Some((code, reason)) => self.replace_producer(generation, &format!("{code}: {reason}")),
        }
    }

    /// Replaces producer `generation` unless another caller already has.
    fn replace_producer(&self, generation: u64, why: &str) -> Result<(u64, FutureProducer), BusError> {
        let mut slot = self.producer.write();
        if slot.0 == generation {
            tracing::error!(error = why, "the kafka producer failed for good; replacing it");
            metrics::counter!("mailpipe_bus_producers_replaced_total").increment(1);
            *slot = (generation + 1, producer(&self.config)?);
        }
        Ok(slot.clone())
    }

    /// Creates the topics that are missing: (name, partitions, compacted).
    async fn create_topics(&self, wanted: &[(&str, i32, bool)]) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = self
            .config
            .client_config()
            .create()
            .map_err(|e| BusError::Invalid(format!("kafka admin configuration: {e}")))?;
        let names: Vec<String> = wanted.iter().map(|(n, _, _)| self.config.topic(n)).collect();
        let retention = self.config.retention_ms.to_string();
        let max_message = crate::MAX_MESSAGE_BYTES.to_string();
        let topics: Vec<NewTopic> = names
            .iter()
            .zip(wanted)
            .map(|(n, &(_, partitions, compacted))| {
                let topic = NewTopic::new(n, partitions, TopicReplication::Fixed(self.config.replication_factor)).set("max.message.bytes", &max_message);
                if compacted {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic.set("retention.ms", &retention)
                }
            })
            .collect();
        let results = admin
            .create_topics(&topics, &AdminOptions::new().operation_timeout(Some(TIMEOUT)))
            .await
            .map_err(unavailable("creating topics"))?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "kafka topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(BusError::Unavailable(format!("kafka: creating topic {name}: {code}"))),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl EventBus for KafkaEventBus {
    async fn append(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Position>, BusError> {
        let topic = self.config.topic(topic);
        let (generation, producer) = self.live_producer()?;
        let failed = |e: KafkaError| {
            if fenced(&e) {
                let _ = self.replace_producer(generation, &e.to_string());
            }
            unavailable("publish")(e)
        };
        // Everything is queued first (librdkafka batches it), then every delivery awaited.
        let mut deliveries = Vec::with_capacity(messages.len());
        for m in &messages {
            loop {
                match producer.send_result(FutureRecord::to(&topic).key(&m.key).payload(&m.payload)) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(failed(e)),
                }
            }
        }
        let mut positions = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(d)) => positions.push(Position { partition: d.partition as u32, offset: d.offset as u64 }),
                Ok(Err((e, _))) => return Err(failed(e)),
                Err(_) => return Err(BusError::Closed),
            }
        }
        Ok(positions)
    }

    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Subscription>, BusError> {
        let lag = Arc::new(AtomicU64::new(0));
        let member = Member { config: self.config.client_config(), group: group.to_string(), topic: self.config.topic(topic), lag: lag.clone(), revoked: Default::default() };
        let consumer = Arc::new(member.join()?);
        Ok(Box::new(KafkaSubscription { consumer, topic: member.topic.clone(), lag, member: Some(member), reader: None }))
    }

    async fn reader(&self, topic: &str) -> Result<Box<dyn Subscription>, BusError> {
        let context = GroupContext { lag: Arc::new(AtomicU64::new(0)), group: format!("reader-{topic}"), revoked: Default::default() };
        let lag = context.lag.clone();
        // A group id librdkafka wants even for assigned partitions; nothing is ever committed.
        let consumer: StreamConsumer<GroupContext> = self
            .config
            .client_config()
            .set("group.id", format!("mailpipe-reader-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .create_with_context(context)
            .map_err(|e| BusError::Invalid(format!("kafka consumer configuration: {e}")))?;
        let topic = self.config.topic(topic);
        let consumer = Arc::new(consumer);
        let (c, name) = (consumer.clone(), topic.clone());
        // The partitions, and where each ends now: the reader's lag counts towards that end.
        let ends = tokio::task::spawn_blocking(move || -> Result<BTreeMap<i32, i64>, KafkaError> {
            let metadata = c.fetch_metadata(Some(&name), TIMEOUT)?;
            let mut ends = BTreeMap::new();
            for p in metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())) {
                ends.insert(p, c.fetch_watermarks(&name, p, TIMEOUT)?.1);
            }
            Ok(ends)
        })
        .await
        .map_err(|_| BusError::Closed)?
        .map_err(unavailable("metadata"))?;
        let mut tpl = TopicPartitionList::new();
        for p in ends.keys() {
            tpl.add_partition_offset(&topic, *p, Offset::Beginning).map_err(unavailable("assign"))?;
        }
        consumer.assign(&tpl).map_err(unavailable("assign"))?;
        Ok(Box::new(KafkaSubscription { consumer, topic, lag, member: None, reader: Some(Reader { ends, read: BTreeMap::new() }) }))
    }

    async fn health(&self) -> Result<(), BusError> {
        let (_, producer) = self.live_producer()?;
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, Duration::from_secs(2)).map(|_| ()))
            .await
            .map_err(|_| BusError::Closed)?
            .map_err(unavailable("metadata"))
    }
}

/// An error after which an idempotent producer never publishes again (librdkafka keeps
/// answering it): the broker has fenced its producer id or lost its sequence.
fn fenced(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(ProducerFenced | InvalidProducerEpoch | OutOfOrderSequenceNumber | UnknownProducerId | InvalidProducerIdMapping | Fatal)
    )
}

/// mailpipe's producer: idempotent, `acks=all`.
fn producer(config: &KafkaBusConfig) -> Result<FutureProducer, BusError> {
    config
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .set("message.max.bytes", crate::MAX_MESSAGE_BYTES.to_string())
        .create()
        .map_err(|e| BusError::Invalid(format!("kafka producer configuration: {e}")))
}

/// A consumer group member's making: a new one joins with a new member id.
struct Member {
    config: ClientConfig,
    group: String,
    topic: String,
    lag: Arc<AtomicU64>,
    revoked: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
}

impl Member {
    fn join(&self) -> Result<StreamConsumer<GroupContext>, BusError> {
        let context = GroupContext { lag: self.lag.clone(), group: self.group.clone(), revoked: self.revoked.clone() };
        let consumer: StreamConsumer<GroupContext> = self
            .config
            .clone()
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "1000")
            .create_with_context(context)
            .map_err(|e| BusError::Invalid(format!("kafka consumer configuration: {e}")))?;
        consumer.subscribe(&[&self.topic]).map_err(unavailable("subscribe"))?;
        Ok(consumer)
    }
}

/// Logs rebalances and keeps the group's lag from librdkafka's statistics.
struct GroupContext {
    lag: Arc<AtomicU64>,
    group: String,
    /// Since when the member has had its partitions revoked with no assignment since (not even
    /// an empty one): a join the coordinator has not answered.
    revoked: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
}

impl ClientContext for GroupContext {
    fn stats(&self, stats: Statistics) {
        let lag: i64 = stats
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag > 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.lag.store(lag.max(0) as u64, Ordering::Relaxed);
        metrics::gauge!("mailpipe_bus_consumer_lag", "group" => self.group.clone()).set(lag as f64);
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                *self.revoked.lock() = None;
                tracing::info!(group = %self.group, partitions = tpl.count(), "kafka partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                self.revoked.lock().get_or_insert_with(std::time::Instant::now);
                tracing::info!(group = %self.group, partitions = tpl.count(), "kafka partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(group = %self.group, error = %e, "kafka rebalance error"),
        }
    }
}

pub struct KafkaSubscription {
    consumer: Arc<StreamConsumer<GroupContext>>,
    topic: String,
    lag: Arc<AtomicU64>,
    /// How to make the group's consumer again (none for a reader).
    member: Option<Member>,
    /// Assigned every partition, in no group: nothing to commit.
    reader: Option<Reader>,
}

/// What a reader of no group knows of its lag: where each partition ended when it was made,
/// and the offset after the last record it read of each.
struct Reader {
    ends: BTreeMap<i32, i64>,
    read: BTreeMap<i32, i64>,
}

fn record(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let partition = m.partition() as u32;
    let offset = m.offset() as u64;
    Record {
        position: Position { partition, offset },
        next: Position { partition, offset: offset + 1 },
        key: m.key().unwrap_or_default().to_vec(),
        payload: m.payload().unwrap_or_default().to_vec(),
    }
}

/// How long a member may wait for an assignment after its partitions were revoked before it
/// leaves and joins its group again.
const JOIN_LIMIT: Duration = Duration::from_secs(30);

impl KafkaSubscription {
    /// A member whose session timed out (a broker that stalled longer than
    /// `session.timeout.ms`) has its partitions revoked and joins again; if the coordinator never
    /// answers that join (tansu 0.6 does not, even to the same member subscribing again),
    /// nothing is read again until a restart. After `JOIN_LIMIT` without an assignment the
    /// consumer is replaced by a new one, which joins as a new member.
    fn rejoin_if_stuck(&mut self) -> Result<(), BusError> {
        let Some(member) = &self.member else { return Ok(()) };
        if !member.revoked.lock().is_some_and(|t| t.elapsed() > JOIN_LIMIT) {
            return Ok(());
        }
        tracing::warn!(topic = %self.topic, waited_s = JOIN_LIMIT.as_secs(), "no partitions assigned since they were revoked; joining the group again as a new member");
        metrics::counter!("mailpipe_bus_group_rejoins_total").increment(1);
        *member.revoked.lock() = Some(std::time::Instant::now());
        let fresh = Arc::new(member.join()?);
        let old = std::mem::replace(&mut self.consumer, fresh);
        // Closing the old member waits for its coordinator: not on this task.
        std::thread::spawn(move || drop(old));
        Ok(())
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        self.rejoin_if_stuck()?;
        let mut out = Vec::new();
        let mut wait = wait;
        while out.len() < max {
            // After the first record only what is already fetched is taken (a zero timeout
            // still polls the queue once).
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(m)) => {
                    if let Some(reader) = &mut self.reader {
                        reader.read.insert(m.partition(), m.offset() + 1);
                    }
                    out.push(record(&m))
                }
                Ok(Err(e)) => {
                    // librdkafka reconnects by itself; the error is news, not a stop.
                    tracing::warn!(topic = %self.topic, error = %e, "kafka consumer error");
                    if out.is_empty() {
                        tokio::time::sleep(Duration::from_millis(100).min(wait)).await;
                    }
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        Ok(out)
    }

    async fn commit(&mut self, upto: &[Position]) -> Result<(), BusError> {
        if self.reader.is_some() {
            return Err(BusError::Invalid("a reader of no group has nothing to commit".into()));
        }
        let mut tpl = TopicPartitionList::new();
        for p in upto {
            tpl.add_partition_offset(&self.topic, p.partition as i32, Offset::Offset(p.offset as i64))
                .map_err(unavailable("commit"))?;
        }
        let consumer = self.consumer.clone();
        let result = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|_| BusError::Closed)?;
        match result {
            Ok(()) => Ok(()),
            // The partitions moved to another member: it reads them again from the last
            // commit, and the store recognises what is already written.
            Err(KafkaError::ConsumerCommit(
                code @ (RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::NoOffset),
            )) => {
                tracing::info!(topic = %self.topic, %code, "kafka commit skipped: partitions were reassigned");
                Ok(())
            }
            Err(e) => Err(unavailable("commit")(e)),
        }
    }

    fn seek(&mut self, to: Position) -> Result<(), BusError> {
        if let Some(reader) = &mut self.reader {
            // Assigned, not subscribed: moving is assigning again at the new offset (a seek
            // right after an assignment can fail while the fetcher starts).
            reader.read.insert(to.partition as i32, to.offset as i64);
            let mut tpl = TopicPartitionList::new();
            for p in reader.ends.keys() {
                let at = reader.read.get(p).map_or(Offset::Beginning, |o| Offset::Offset(*o));
                tpl.add_partition_offset(&self.topic, *p, at).map_err(unavailable("seek"))?;
            }
            return self.consumer.assign(&tpl).map_err(unavailable("seek"));
        }
        self.consumer
            .seek(&self.topic, to.partition as i32, Offset::Offset(to.offset as i64), TIMEOUT)
            .map_err(unavailable("seek"))
    }

    /// A reader of no group: how far it is behind where the topic ended when it was made.
    fn lag(&self) -> u64 {
        match &self.reader {
            Some(r) => r.ends.iter().map(|(p, end)| (end - r.read.get(p).copied().unwrap_or(0)).max(0) as u64).sum(),
            None => self.lag.load(Ordering::Relaxed),
        }
    }
}
