//! The pre-aggregation every embedded query is answered from. In memory: counts per tenant,
//! campaign, variant and 15-minute bucket (fine enough for any time zone's day boundaries),
//! bounded by the tenants' dimensions and time, not by the number of events. On disk (a
//! fjall LSM tree beside the Parquet files): what is per event or per message, that is the
//! ids of stored events (for idempotent inserts), each message's latest send (to join inbound
//! mail to it) and first open / click / unsubscribe / complaint (for exact unique counts).
//! Changes since the last flush stay in a pending layer; a flush commits them with the flush's
//! sequence number, atomically, so a restart loads the counts and replays only the Parquet
//! files written after the last commit.

use crate::aggregate::{first_index, message_key, Accumulator, Aggregate, Cell, Dimension};
use crate::{SentMessage, StoreError, UNMATCHED_CAMPAIGN};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use mailpipe_schemas::{BounceClass, Event, EventType};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

pub(crate) const BUCKET_MS: i64 = 15 * 60 * 1000;

/// The fields of an event the rollup reads, borrowed so a rebuild from Arrow columns does
/// not allocate per row.
#[derive(Clone, Copy, Debug)]
pub struct RowRef<'a> {
    pub event_id: u128,
    pub tenant: &'a str,
    pub event_type: EventType,
    pub occurred_ms: i64,
    pub campaign: &'a str,
    pub variant: &'a str,
    pub message_id: &'a str,
    pub bounce_class: Option<BounceClass>,
    pub revenue_micros: i64,
    /// The mail stream of a send.
    pub stream: Option<&'a str>,
}

impl<'a> RowRef<'a> {
    pub fn of(e: &'a Event) -> Self {
        RowRef {
            event_id: e.event_id.as_u128(),
            tenant: &e.tenant,
            event_type: e.event_type,
            occurred_ms: e.occurred_at.timestamp_millis(),
            campaign: &e.campaign,
            variant: &e.variant,
            message_id: &e.message_id,
            bounce_class: e.bounce_class,
            revenue_micros: e.revenue_micros.unwrap_or(0),
            stream: e.stream.as_deref(),
        }
    }
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(format!("rollup state: {e}"))
}

/// The on-disk half: one keyspace per kind of entry.
#[derive(Clone)]
pub struct Disk {
    db: Database,
    /// Event id (16 bytes) -> nothing.
    ids: Keyspace,
    /// `message_state_key` -> `MessageState::encode`.
    messages: Keyspace,
    /// `cell_key` -> `encode_cell`: the in-memory counts, loaded at start.
    cells: Keyspace,
    /// `seq`, `events`, and `dims/<tenant>` (campaign and variant names, by id).
    meta: Keyspace,
}

const SEQ: &[u8] = b"seq";
const EVENTS: &[u8] = b"events";
const DIMS: &[u8] = b"dims/";
const JOURNAL_BYTES: u64 = 64 << 20;

impl Disk {
    /// Opens (or creates) the state in `dir`, with at most `cache_bytes` of cached blocks.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Disk, StoreError> {
        // A small journal bounds what a restart replays (8 MiB memtables halved ingest, measured).
        let db = Database::builder(dir).cache_size(cache_bytes).max_journaling_size(JOURNAL_BYTES).open().map_err(engine)?;
        let keyspace = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).map_err(engine);
        Ok(Disk { ids: keyspace("ids")?, messages: keyspace("messages")?, cells: keyspace("cells")?, meta: keyspace("meta")?, db })
    }

    /// Writes a taken layer and its sequence number in one atomic, synced batch.
    pub fn commit(&self, c: &Commit) -> Result<(), StoreError> {
        let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
        for id in &c.layer.ids {
            b.insert(&self.ids, id.to_be_bytes(), []);
        }
        for (key, state) in &c.layer.messages {
            b.insert(&self.messages, key.as_slice(), state.encode());
        }
        for (key, value) in &c.cells {
            match value {
                Some(v) => b.insert(&self.cells, key.as_slice(), v.as_slice()),
                None => b.remove(&self.cells, key.as_slice()),
            }
        }
        for (tenant, dims) in &c.dims {
            b.insert(&self.meta, [DIMS, tenant.as_bytes()].concat(), dims.as_slice());
        }
        b.insert(&self.meta, SEQ, c.seq.to_be_bytes());
        b.insert(&self.meta, EVENTS, c.events.to_be_bytes());
        b.commit().map_err(engine)?;
        self.db.persist(PersistMode::SyncAll).map_err(engine)
    }

    fn meta_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        let v = self.meta.get(key).map_err(engine)?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(&*v).ok()).map_or(0, u64::from_be_bytes))
    }
}

#[derive(Default)]
pub struct Rollup {
    disk: Option<Disk>,
    /// The disk was given up to be reopened (after a failed write poisoned it): lookups fail
    /// (and are retried) until it is back, rather than answer from memory alone.
    lost: bool,
    tenants: HashMap<String, TenantRollup>,
    /// Ids and message states changed since the last `take`.
    pending: Layer,
    /// Taken by a flush and not yet durable on disk: still read before the disk.
    committing: Option<Arc<Commit>>,
    /// Events counted (committed or not).
    events: u64,
}

#[derive(Clone, Default)]
struct Layer {
    ids: HashSet<u128>,
    messages: HashMap<Vec<u8>, MessageState>,
}

/// What one flush makes durable: the layer, the counts it changed (`None`: removed), the
/// tenants whose names changed, and the flush's sequence number.
pub struct Commit {
    layer: Layer,
    cells: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    dims: Vec<(String, Vec<u8>)>,
    dirty: Vec<(String, CellId)>,
    events: u64,
    seq: u64,
}

impl Commit {
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

type CellId = (u32, i64, u32);

#[derive(Default)]
struct TenantRollup {
    campaign_ids: HashMap<String, u32>,
    campaigns: Vec<CampaignCells>,
    /// Cells changed since the last `take` (campaign, bucket, variant).
    dirty: HashSet<CellId>,
    dims_dirty: bool,
}

/// What the rollup knows of one message.
#[derive(Clone, Debug, Default, PartialEq)]
struct MessageState {
    /// The latest send (by time).
    send: Option<Send>,
    /// The first event of each of `FIRST_KINDS`: where it was counted.
    firsts: [Option<First>; 4],
    /// Events filed under `(unmatched)`: counted in the campaign of the message's send
    /// (under `(unmatched)` while none is known) and moved when a send arrives.
    orphans: Vec<Orphan>,
}

#[derive(Clone, Debug, PartialEq)]
struct Send {
    campaign: u32,
    variant: u32,
    at_ms: i64,
    /// Its mail stream (an unsubscribe from the message suppresses that stream only).
    stream: Option<Box<str>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Orphan {
    at_ms: i64,
    kind: EventType,
    hard: bool,
    revenue_micros: i64,
    /// Where it is counted now.
    campaign: u32,
    variant: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct First {
    at_ms: i64,
    campaign: u32,
    variant: u32,
}

struct CampaignCells {
    name: String,
    variant_ids: HashMap<String, u32>,
    variants: Vec<String>,
    cells: BTreeMap<(i64, u32), Cell>,
    /// For cells of `(unmatched)`: the times of the orphans counted there (time -> how many),
    /// whose span is the cell's once an orphan leaves.
    orphan_times: HashMap<(i64, u32), BTreeMap<i64, u32>>,
}

fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + tenant.len() + 48);
    k.extend_from_slice(&(tenant.len() as u16).to_be_bytes());
    k.extend_from_slice(tenant.as_bytes());
    k
}

fn message_state_key(tenant: &str, message_id: &str) -> Vec<u8> {
    let mut k = tenant_prefix(tenant);
    k.extend_from_slice(message_key(message_id).as_bytes());
    k
}

/// Tenant, campaign, bucket (sign bit flipped, so keys sort by time) and variant.
fn cell_key(tenant: &str, (campaign, bucket, variant): CellId) -> Vec<u8> {
    let mut k = tenant_prefix(tenant);
    k.extend_from_slice(&campaign.to_be_bytes());
    k.extend_from_slice(&((bucket as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&variant.to_be_bytes());
    k
}

fn parse_cell_key(k: &[u8]) -> Option<(&str, CellId)> {
    let len = u16::from_be_bytes(k.get(..2)?.try_into().ok()?) as usize;
    let tenant = std::str::from_utf8(k.get(2..2 + len)?).ok()?;
    let rest = k.get(2 + len..)?;
    let campaign = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let bucket = (u64::from_be_bytes(rest.get(4..12)?.try_into().ok()?) ^ (1 << 63)) as i64;
    let variant = u32::from_be_bytes(rest.get(12..16)?.try_into().ok()?);
    Some((tenant, (campaign, bucket, variant)))
}

/// A little-endian writer and reader for the fixed layouts below.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let (head, rest) = self.0.split_at_checked(N).ok_or_else(|| engine("truncated entry"))?;
        self.0 = rest;
        Ok(head.try_into().expect("split at N"))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Result<i64, StoreError> {
        self.take::<8>().map(i64::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        self.take::<1>().map(|[b]| b)
    }
}

fn encode_cell(cell: &Cell, orphan_times: Option<&BTreeMap<i64, u32>>) -> Vec<u8> {
    let mut v = Vec::with_capacity(160);
    for n in cell.counts.iter().chain([&cell.hard_bounces]).chain(&cell.firsts) {
        v.extend_from_slice(&n.to_le_bytes());
    }
    for n in [cell.revenue_micros, cell.first_ms, cell.last_ms] {
        v.extend_from_slice(&n.to_le_bytes());
    }
    for (at, n) in orphan_times.into_iter().flatten() {
        v.extend_from_slice(&at.to_le_bytes());
        v.extend_from_slice(&n.to_le_bytes());
    }
    v
}

fn decode_cell(v: &[u8]) -> Result<(Cell, BTreeMap<i64, u32>), StoreError> {
    let mut b = Bytes(v);
    let mut cell = Cell::default();
    for n in cell.counts.iter_mut() {
        *n = b.u64()?;
    }
    cell.hard_bounces = b.u64()?;
    for n in cell.firsts.iter_mut() {
        *n = b.u64()?;
    }
    (cell.revenue_micros, cell.first_ms, cell.last_ms) = (b.i64()?, b.i64()?, b.i64()?);
    let mut times = BTreeMap::new();
    while !b.0.is_empty() {
        times.insert(b.i64()?, b.u32()?);
    }
    Ok((cell, times))
}

impl MessageState {
    /// A flags byte (bit 0: a send; bits 1-4: a first of each kind; bit 5: the send has a
    /// stream), the send, the firsts, the stream (a length byte and its bytes), then the
    /// orphans.
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + 16 * 5 + 26 * self.orphans.len());
        let stream = self.send.as_ref().and_then(|s| s.stream.as_deref());
        let flags = u8::from(self.send.is_some()) | self.firsts.iter().enumerate().fold(0, |f, (i, x)| f | (u8::from(x.is_some()) << (i + 1))) | (u8::from(stream.is_some()) << 5);
        v.push(flags);
        let place = |v: &mut Vec<u8>, at: i64, campaign: u32, variant: u32| {
            v.extend_from_slice(&at.to_le_bytes());
            v.extend_from_slice(&campaign.to_le_bytes());
            v.extend_from_slice(&variant.to_le_bytes());
        };
        if let Some(s) = &self.send {
            place(&mut v, s.at_ms, s.campaign, s.variant);
        }
        for f in self.firsts.iter().flatten() {
            place(&mut v, f.at_ms, f.campaign, f.variant);
        }
        if let Some(stream) = stream {
            // Streams are at most 64 bytes (ingest refuses longer ones).
            let stream = &stream.as_bytes()[..stream.len().min(255)];
            v.push(stream.len() as u8);
            v.extend_from_slice(stream);
        }
        for o in &self.orphans {
            place(&mut v, o.at_ms, o.campaign, o.variant);
            v.push(o.kind as u8);
            v.push(u8::from(o.hard));
            v.extend_from_slice(&o.revenue_micros.to_le_bytes());
        }
        v
    }

    fn decode(v: &[u8]) -> Result<MessageState, StoreError> {
        let mut b = Bytes(v);
        let flags = b.u8()?;
        let mut s = MessageState::default();
        if flags & 1 != 0 {
            s.send = Some(Send { at_ms: b.i64()?, campaign: b.u32()?, variant: b.u32()?, stream: None });
        }
        for (i, f) in s.firsts.iter_mut().enumerate() {
            if flags & (1 << (i + 1)) != 0 {
                *f = Some(First { at_ms: b.i64()?, campaign: b.u32()?, variant: b.u32()? });
            }
        }
        if flags & (1 << 5) != 0 {
            let len = b.u8()? as usize;
            let (stream, rest) = b.0.split_at_checked(len).ok_or_else(|| engine("truncated entry"))?;
            b.0 = rest;
            let stream = std::str::from_utf8(stream).map_err(engine)?;
            s.send.as_mut().ok_or_else(|| engine("a stream without a send"))?.stream = Some(stream.into());
        }
        while !b.0.is_empty() {
            let (at_ms, campaign, variant) = (b.i64()?, b.u32()?, b.u32()?);
            let kind = *EventType::ALL.get(b.u8()? as usize).ok_or_else(|| engine("unknown event type"))?;
            s.orphans.push(Orphan { at_ms, campaign, variant, kind, hard: b.u8()? != 0, revenue_micros: b.i64()? });
        }
        Ok(s)
    }
}

impl Rollup {
    /// The rollup kept in `disk`, and the sequence number of its last commit: the Parquet
    /// files written after it are to be replayed.
    pub fn open(disk: Disk) -> Result<(Rollup, u64), StoreError> {
        let mut r = Rollup { events: disk.meta_u64(EVENTS)?, ..Rollup::default() };
        for kv in disk.meta.prefix(DIMS) {
            let (k, v) = kv.into_inner().map_err(engine)?;
            let tenant = std::str::from_utf8(&k[DIMS.len()..]).map_err(engine)?;
            let names: Vec<(String, Vec<String>)> = serde_json::from_slice(&v).map_err(engine)?;
            let t = r.tenants.entry(tenant.to_string()).or_default();
            for (campaign, variants) in names {
                let c = t.campaign_id(&campaign);
                for v in variants {
                    t.variant_id(c, &v);
                }
            }
            t.dims_dirty = false;
        }
        for kv in disk.cells.iter() {
            let (k, v) = kv.into_inner().map_err(engine)?;
            let (tenant, (campaign, bucket, variant)) = parse_cell_key(&k).ok_or_else(|| engine("bad cell key"))?;
            let (cell, times) = decode_cell(&v)?;
            let c = r.tenants.get_mut(tenant).and_then(|t| t.campaigns.get_mut(campaign as usize)).ok_or_else(|| engine("cell of an unknown campaign"))?;
            c.cells.insert((bucket, variant), cell);
            if !times.is_empty() {
                c.orphan_times.insert((bucket, variant), times);
            }
        }
        let seq = disk.meta_u64(SEQ)?;
        r.disk = Some(disk);
        Ok((r, seq))
    }

    pub fn disk(&self) -> Option<&Disk> {
        self.disk.as_ref()
    }

    /// Gives the disk up, to be reopened; see [`Rollup::regain_disk`].
    pub fn lose_disk(&mut self) -> Option<Disk> {
        self.lost = true;
        self.disk.take()
    }

    pub fn regain_disk(&mut self, disk: Disk) {
        self.disk = Some(disk);
        self.lost = false;
    }

    fn lost(&self) -> StoreError {
        engine("the rollup's state on disk is being reopened; retry")
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    fn seen(&self, id: u128) -> Result<bool, StoreError> {
        if self.pending.ids.contains(&id) || self.committing.as_ref().is_some_and(|c| c.layer.ids.contains(&id)) {
            return Ok(true);
        }
        match &self.disk {
            Some(d) => d.ids.contains_key(id.to_be_bytes()).map_err(engine),
            None if self.lost => Err(self.lost()),
            None => Ok(false),
        }
    }

    fn message_state(&self, key: &[u8]) -> Result<Option<MessageState>, StoreError> {
        if let Some(s) = self.pending.messages.get(key) {
            return Ok(Some(s.clone()));
        }
        if let Some(s) = self.committing.as_ref().and_then(|c| c.layer.messages.get(key)) {
            return Ok(Some(s.clone()));
        }
        match &self.disk {
            Some(d) => d.messages.get(key).map_err(engine)?.map(|v| MessageState::decode(&v)).transpose(),
            None if self.lost => Err(self.lost()),
            None => Ok(None),
        }
    }

    /// Counts one event; false (and nothing counted) if its id was counted before.
    pub fn apply(&mut self, row: RowRef<'_>) -> Result<bool, StoreError> {
        if self.seen(row.event_id)? {
            return Ok(false);
        }
        let key = message_state_key(row.tenant, row.message_id);
        let orphan = row.campaign == UNMATCHED_CAMPAIGN && row.event_type != EventType::Sent;
        let first = first_index(row.event_type);
        let mut state = match first.is_some() || orphan || row.event_type == EventType::Sent {
            true => Some(self.message_state(&key)?.unwrap_or_default()),
            false => None,
        };
        let before = state.clone();
        self.pending.ids.insert(row.event_id);
        self.events += 1;
        let tenant = match self.tenants.get_mut(row.tenant) {
            Some(t) => t,
            None => self.tenants.entry(row.tenant.to_string()).or_default(),
        };
        let mut campaign = tenant.campaign_id(row.campaign);
        let mut variant = tenant.variant_id(campaign, row.variant);
        let (at, hard) = (row.occurred_ms, row.bounce_class == Some(BounceClass::Hard));
        if let (true, Some(s)) = (orphan, state.as_mut()) {
            if let Some(send) = &s.send {
                (campaign, variant) = (send.campaign, send.variant);
            }
            s.orphans.push(Orphan { at_ms: at, kind: row.event_type, hard, revenue_micros: row.revenue_micros, campaign, variant });
            tenant.note_orphan(campaign, variant, at, true);
        }
        tenant.cell(campaign, at.div_euclid(BUCKET_MS), variant).add_events(row.event_type, hard, 1, row.revenue_micros, at, at);
        if let (Some(kind), Some(s)) = (first, state.as_mut()) {
            tenant.count_first(s, at, kind, campaign, variant);
        }
        if let (EventType::Sent, Some(s)) = (row.event_type, state.as_mut()) {
            if s.send.as_ref().is_none_or(|old| at >= old.at_ms) {
                s.send = Some(Send { campaign, variant, at_ms: at, stream: row.stream.map(Into::into) });
                tenant.relocate_orphans(s);
            }
        }
        if let Some(s) = state.filter(|s| Some(s) != before.as_ref()) {
            self.pending.messages.insert(key, s);
        }
        Ok(true)
    }

    /// Moves what changed since the last take into a commit, which lookups read until
    /// `committed` (or `restore`, if it could not be made durable).
    pub fn take(&mut self, seq: u64) -> Arc<Commit> {
        let layer = std::mem::take(&mut self.pending);
        let (mut cells, mut dims, mut dirty) = (Vec::new(), Vec::new(), Vec::new());
        for (name, t) in &mut self.tenants {
            if std::mem::take(&mut t.dims_dirty) {
                let names: Vec<(&str, &[String])> = t.campaigns.iter().map(|c| (c.name.as_str(), c.variants.as_slice())).collect();
                dims.push((name.clone(), serde_json::to_vec(&names).expect("names serialize")));
            }
            for id @ (campaign, bucket, variant) in t.dirty.drain() {
                let c = &t.campaigns[campaign as usize];
                let value = c.cells.get(&(bucket, variant)).map(|cell| encode_cell(cell, c.orphan_times.get(&(bucket, variant))));
                cells.push((cell_key(name, id), value));
                dirty.push((name.clone(), id));
            }
        }
        let commit = Arc::new(Commit { layer, cells, dims, dirty, events: self.events, seq });
        self.committing = Some(commit.clone());
        commit
    }

    /// The commit being made durable, if a previous flush could not finish it.
    pub fn committing(&self) -> Option<Arc<Commit>> {
        self.committing.clone()
    }

    pub fn committed(&mut self) {
        self.committing = None;
    }

    /// Puts a commit whose rows could not be written back into the pending layer.
    pub fn restore(&mut self) {
        let Some(c) = self.committing.take() else { return };
        self.pending.ids.extend(&c.layer.ids);
        for (k, s) in &c.layer.messages {
            self.pending.messages.entry(k.clone()).or_insert_with(|| s.clone());
        }
        for (tenant, id) in &c.dirty {
            if let Some(t) = self.tenants.get_mut(tenant) {
                t.dirty.insert(*id);
            }
        }
        for (tenant, _) in &c.dims {
            if let Some(t) = self.tenants.get_mut(tenant) {
                t.dims_dirty = true;
            }
        }
    }

    /// Sums the cells a question selects, each 15-minute bucket into the bucket of the
    /// question's grain (time zone offsets are whole quarter hours, so a 15-minute bucket
    /// never straddles two days or hours). The first of a message counts in the campaign and
    /// variant of that first event, so filters apply to firsts as they do to any event.
    pub fn aggregate(&self, tenant: &str, q: &Aggregate) -> Accumulator {
        let mut acc = Accumulator::default();
        let Some(t) = self.tenants.get(tenant) else { return acc };
        let (lo, hi) = match &q.frame {
            Some(f) => (f.lo_ms.div_euclid(BUCKET_MS), f.hi_ms.div_euclid(BUCKET_MS)),
            None => (i64::MIN, i64::MAX),
        };
        let selected = t.campaigns.iter().filter(|c| q.filters.campaign.as_ref().is_none_or(|name| *name == c.name));
        for c in selected {
            let variant_ok: Vec<bool> = c.variants.iter().map(|v| q.filters.variant.as_ref().is_none_or(|want| want == v)).collect();
            // Consecutive cells of one 15-minute bucket and group add into one entry.
            let mut last: Option<((i64, u32), Option<i64>)> = None;
            let mut pending: Option<(i64, u32, Cell)> = None;
            for (&(bucket, variant), cell) in c.cells.range((lo, 0)..(hi, 0)) {
                if !variant_ok[variant as usize] {
                    continue;
                }
                let grain_bucket = match last {
                    Some(((b, _), g)) if b == bucket => g,
                    _ => q.bucket_of(bucket * BUCKET_MS),
                };
                last = Some(((bucket, variant), grain_bucket));
                let Some(g) = grain_bucket else { continue };
                let group_variant = if q.group_by.contains(&Dimension::Variant) { variant } else { 0 };
                if let Some((pg, pv, sum)) = pending.as_mut() {
                    if *pg == g && *pv == group_variant {
                        sum.add(cell);
                        continue;
                    }
                }
                if let Some((pg, pv, sum)) = pending.take() {
                    acc.cell(pg, group(q, c, pv)).add(&sum);
                }
                pending = Some((g, group_variant, *cell));
            }
            if let Some((pg, pv, sum)) = pending {
                acc.cell(pg, group(q, c, pv)).add(&sum);
            }
        }
        acc
    }

    pub fn sent_message(&self, tenant: &str, message_id: &str) -> Result<Option<SentMessage>, StoreError> {
        let Some(t) = self.tenants.get(tenant) else { return Ok(None) };
        let Some(send) = self.message_state(&message_state_key(tenant, message_id))?.and_then(|s| s.send) else { return Ok(None) };
        let c = &t.campaigns[send.campaign as usize];
        Ok(Some(SentMessage { campaign: c.name.clone(), variant: c.variants[send.variant as usize].clone(), stream: send.stream.map(String::from) }))
    }
}

/// The values of the question's group-by dimensions for cells of campaign `c`, variant `v`.
fn group(q: &Aggregate, c: &CampaignCells, v: u32) -> Vec<String> {
    q.group_by
        .iter()
        .map(|d| match d {
            Dimension::Campaign => c.name.clone(),
            Dimension::Variant => c.variants[v as usize].clone(),
        })
        .collect()
}

impl TenantRollup {
    fn campaign_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.campaign_ids.get(name) {
            return id;
        }
        let id = self.campaigns.len() as u32;
        self.campaign_ids.insert(name.to_string(), id);
        self.campaigns.push(CampaignCells { name: name.to_string(), variant_ids: HashMap::new(), variants: Vec::new(), cells: BTreeMap::new(), orphan_times: HashMap::new() });
        self.dims_dirty = true;
        id
    }

    fn variant_id(&mut self, campaign: u32, name: &str) -> u32 {
        let c = &mut self.campaigns[campaign as usize];
        let known = c.variants.len();
        let id = c.variant_id(name);
        self.dims_dirty |= c.variants.len() != known;
        id
    }

    /// The cell, created if need be, marked changed.
    fn cell(&mut self, campaign: u32, bucket: i64, variant: u32) -> &mut Cell {
        self.dirty.insert((campaign, bucket, variant));
        self.campaigns[campaign as usize].cells.entry((bucket, variant)).or_default()
    }

    /// Records (or, with `add` false, forgets) an orphan's time in its cell of `(unmatched)`.
    fn note_orphan(&mut self, campaign: u32, variant: u32, at_ms: i64, add: bool) {
        if self.campaign_ids.get(UNMATCHED_CAMPAIGN) != Some(&campaign) {
            return;
        }
        let times = self.campaigns[campaign as usize].orphan_times.entry((at_ms.div_euclid(BUCKET_MS), variant)).or_default();
        let n = times.entry(at_ms).or_default();
        if add {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                times.remove(&at_ms);
            }
        }
    }

    /// Counts the message once for this kind, in the bucket of its earliest such event: a
    /// late-arriving earlier event moves the count rather than adding one.
    fn count_first(&mut self, s: &mut MessageState, at_ms: i64, kind: usize, campaign: u32, variant: u32) {
        let here = First { at_ms, campaign, variant };
        let previous = match &mut s.firsts[kind] {
            None => {
                s.firsts[kind] = Some(here);
                None
            }
            Some(f) if at_ms < f.at_ms => Some(std::mem::replace(f, here)),
            Some(_) => return,
        };
        if let Some(old) = previous {
            let id = (old.campaign, old.at_ms.div_euclid(BUCKET_MS), old.variant);
            if let Some(cell) = self.campaigns[id.0 as usize].cells.get_mut(&(id.1, id.2)) {
                cell.firsts[kind] -= 1;
                self.dirty.insert(id);
            }
        }
        self.cell(campaign, at_ms.div_euclid(BUCKET_MS), variant).firsts[kind] += 1;
    }

    /// Moves the message's orphans (and its first of a kind, where that is an orphan) to the
    /// campaign and variant of its send.
    fn relocate_orphans(&mut self, s: &mut MessageState) {
        let Some(send) = s.send.clone() else { return };
        let unmatched = self.campaign_ids.get(UNMATCHED_CAMPAIGN).copied();
        let mut emptied = Vec::new();
        for o in s.orphans.iter_mut().filter(|o| (o.campaign, o.variant) != (send.campaign, send.variant)) {
            let bucket = o.at_ms.div_euclid(BUCKET_MS);
            let first = first_index(o.kind).filter(|&k| s.firsts[k].is_some_and(|f| f.at_ms == o.at_ms && (f.campaign, f.variant) == (o.campaign, o.variant)));
            if let Some(cell) = self.campaigns[o.campaign as usize].cells.get_mut(&(bucket, o.variant)) {
                cell.remove_event(o.kind, o.hard, o.revenue_micros);
                if let Some(k) = first {
                    cell.firsts[k] -= 1;
                }
                self.dirty.insert((o.campaign, bucket, o.variant));
                emptied.push((o.campaign, bucket, o.variant));
            }
            self.note_orphan(o.campaign, o.variant, o.at_ms, false);
            let cell = self.cell(send.campaign, bucket, send.variant);
            cell.add_events(o.kind, o.hard, 1, o.revenue_micros, o.at_ms, o.at_ms);
            if let Some(k) = first {
                cell.firsts[k] += 1;
                s.firsts[k] = Some(First { at_ms: o.at_ms, campaign: send.campaign, variant: send.variant });
            }
            self.note_orphan(send.campaign, send.variant, o.at_ms, true);
            (o.campaign, o.variant) = (send.campaign, send.variant);
        }
        // A cell of `(unmatched)` holds only orphans: its time span is theirs, or it is gone.
        for (campaign, bucket, variant) in emptied {
            let c = &mut self.campaigns[campaign as usize];
            let Some(cell) = c.cells.get_mut(&(bucket, variant)) else { continue };
            if cell.is_empty() {
                c.cells.remove(&(bucket, variant));
                c.orphan_times.remove(&(bucket, variant));
            } else if Some(campaign) == unmatched {
                let times = c.orphan_times.get(&(bucket, variant));
                let lo = times.and_then(|t| t.keys().next().copied()).unwrap_or(i64::MAX);
                let hi = times.and_then(|t| t.keys().next_back().copied()).unwrap_or(i64::MIN);
                (cell.first_ms, cell.last_ms) = (lo, hi);
            }
        }
    }
}

impl CampaignCells {
    fn variant_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.variant_ids.get(name) {
            return id;
        }
        let id = self.variants.len() as u32;
        self.variant_ids.insert(name.to_string(), id);
        self.variants.push(name.to_string());
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateAnswer, Filters, Frame, Grain, Measure};
    use chrono::NaiveDate;

    fn row(id: u128, t: EventType, at: &str, campaign: &'static str, msg: &'static str) -> (u128, EventType, i64, &'static str, &'static str) {
        (id, t, chrono::DateTime::parse_from_rfc3339(at).unwrap().timestamp_millis(), campaign, msg)
    }

    fn apply(r: &mut Rollup, tenant: &str, (id, t, ms, campaign, msg): (u128, EventType, i64, &str, &str)) -> bool {
        r.apply(RowRef {
            event_id: id,
            tenant,
            event_type: t,
            occurred_ms: ms,
            campaign,
            variant: "",
            message_id: msg,
            bounce_class: (t == EventType::Bounced).then_some(BounceClass::Hard),
            revenue_micros: if t == EventType::Conversion { 2_500_000 } else { 0 },
            // Each test send goes out on a stream named as its campaign.
            stream: (t == EventType::Sent).then_some(campaign),
        })
        .unwrap()
    }

    const MEASURES: [Measure; 6] = [
        Measure::Count(EventType::Sent),
        Measure::Count(EventType::Open),
        Measure::FirstPerMessage(EventType::Open),
        Measure::Count(EventType::Conversion),
        Measure::RevenueMicros,
        Measure::Bounces(BounceClass::Hard),
    ];

    /// Per day of the range: the values of `MEASURES`.
    fn daily(r: &Rollup, tenant: &str, from: u32, to: u32, tz: chrono_tz::Tz, campaign: Option<&str>) -> Vec<Vec<i64>> {
        let d = |n| NaiveDate::from_ymd_opt(2026, 5, n).unwrap();
        let frame = Frame::new(d(from), d(to), tz, Grain::Day);
        let q = Aggregate { frame: Some(frame.clone()), filters: Filters { campaign: campaign.map(String::from), variant: None }, group_by: vec![], measures: MEASURES.to_vec() };
        let a: AggregateAnswer = r.aggregate(tenant, &q).answer(&q);
        frame
            .days()
            .into_iter()
            .map(|day| a.rows.iter().find(|row| row.bucket == Frame::day_bucket(day)).map_or(vec![0; MEASURES.len()], |row| row.values.clone()))
            .collect()
    }

    fn column(days: &[Vec<i64>], m: usize) -> Vec<i64> {
        days.iter().map(|d| d[m]).collect()
    }

    #[test]
    fn unique_counts_follow_the_earliest_event_even_when_it_arrives_late() {
        let mut r = Rollup::default();
        apply(&mut r, "t", row(1, EventType::Open, "2026-05-02T10:00:00Z", "c", "m1"));
        apply(&mut r, "t", row(2, EventType::Open, "2026-05-03T10:00:00Z", "c", "m1"));
        // The earliest open of m1 arrives last: the unique open moves to 1 May.
        apply(&mut r, "t", row(3, EventType::Open, "2026-05-01T10:00:00Z", "c", "<m1>"));
        apply(&mut r, "t", row(4, EventType::Open, "2026-05-02T11:00:00Z", "c", "m2"));
        let days = daily(&r, "t", 1, 3, chrono_tz::UTC, None);
        assert_eq!(column(&days, 1), vec![1, 2, 1]);
        assert_eq!(column(&days, 2), vec![1, 1, 0]);
    }

    #[test]
    fn a_repeated_event_id_counts_once() {
        let mut r = Rollup::default();
        assert!(apply(&mut r, "t", row(1, EventType::Sent, "2026-05-01T10:00:00Z", "c", "m1")));
        assert!(!apply(&mut r, "t", row(1, EventType::Sent, "2026-05-01T10:00:00Z", "c", "m1")));
        assert_eq!(column(&daily(&r, "t", 1, 1, chrono_tz::UTC, None), 0), vec![1]);
    }

    #[test]
    fn days_are_cut_in_the_requested_time_zone() {
        let mut r = Rollup::default();
        // 23:30 UTC on 1 May is already 2 May in Tokyo and still 1 May in New York.
        apply(&mut r, "t", row(1, EventType::Sent, "2026-05-01T23:30:00Z", "c", "m1"));
        assert_eq!(column(&daily(&r, "t", 1, 2, chrono_tz::Asia::Tokyo, None), 0), vec![0, 1]);
        assert_eq!(column(&daily(&r, "t", 1, 2, chrono_tz::America::New_York, None), 0), vec![1, 0]);
        // Kathmandu is UTC+5:45: 18:14 UTC is 23:59 local, 18:15 UTC is next day.
        apply(&mut r, "t", row(2, EventType::Sent, "2026-05-01T18:14:00Z", "c", "m2"));
        apply(&mut r, "t", row(3, EventType::Sent, "2026-05-01T18:15:00Z", "c", "m3"));
        assert_eq!(column(&daily(&r, "t", 1, 2, chrono_tz::Asia::Kathmandu, None), 0), vec![1, 2]);
    }

    #[test]
    fn inbound_mail_stored_before_its_send_joins_it_when_the_send_arrives() {
        let mut r = Rollup::default();
        let complaint = |id, msg| RowRef { event_type: EventType::Complaint, campaign: UNMATCHED_CAMPAIGN, ..orphan(id, msg) };
        r.apply(orphan(1, "<m1>")).unwrap();
        r.apply(complaint(2, "m2")).unwrap();
        let unmatched = daily_of(&r, Some(UNMATCHED_CAMPAIGN));
        assert_eq!((unmatched[0][5], unmatched[0][6]), (1, 1), "filed under (unmatched) while no send is known");
        apply(&mut r, "t", row(3, EventType::Sent, "2026-05-01T09:00:00Z", "c", "m1"));
        apply(&mut r, "t", row(4, EventType::Sent, "2026-05-01T09:00:00Z", "c", "<m2>"));
        assert_eq!((daily_of(&r, Some("c"))[0][5], daily_of(&r, Some("c"))[0][6]), (1, 1));
        assert_eq!(daily_of(&r, Some(UNMATCHED_CAMPAIGN)), vec![vec![0; 7]]);
        // Once joined, later inbound mail goes straight to the send's campaign.
        r.apply(orphan(5, "m1")).unwrap();
        assert_eq!(daily_of(&r, Some("c"))[0][5], 2);
        assert_eq!(r.sent_message("t", "m1").unwrap().map(|m| m.campaign), Some("c".to_string()));
    }

    fn orphan(id: u128, msg: &'static str) -> RowRef<'static> {
        RowRef {
            event_id: id,
            tenant: "t",
            event_type: EventType::Bounced,
            occurred_ms: chrono::DateTime::parse_from_rfc3339("2026-05-01T10:00:00Z").unwrap().timestamp_millis(),
            campaign: UNMATCHED_CAMPAIGN,
            variant: "",
            message_id: msg,
            bounce_class: Some(BounceClass::Hard),
            revenue_micros: 0,
            stream: None,
        }
    }

    /// 1 May in UTC: sent, bounces (hard), complaints (per message), events first-to-last span.
    fn daily_of(r: &Rollup, campaign: Option<&str>) -> Vec<Vec<i64>> {
        let d = NaiveDate::from_ymd_opt(2026, 5, 1).unwrap();
        let measures = vec![
            Measure::Count(EventType::Sent),
            Measure::Count(EventType::Open),
            Measure::Count(EventType::Click),
            Measure::Count(EventType::Reply),
            Measure::Count(EventType::Conversion),
            Measure::Bounces(BounceClass::Hard),
            Measure::FirstPerMessage(EventType::Complaint),
        ];
        let q = Aggregate { frame: Some(Frame::new(d, d, chrono_tz::UTC, Grain::Day)), filters: Filters { campaign: campaign.map(String::from), variant: None }, group_by: vec![], measures };
        let a = r.aggregate("t", &q).answer(&q);
        vec![a.rows.first().map_or(vec![0; 7], |row| row.values.clone())]
    }

    #[test]
    fn tenants_and_campaigns_are_kept_apart() {
        let mut r = Rollup::default();
        apply(&mut r, "a", row(1, EventType::Sent, "2026-05-01T10:00:00Z", "c1", "m1"));
        apply(&mut r, "a", row(2, EventType::Conversion, "2026-05-01T10:00:00Z", "c2", "m2"));
        apply(&mut r, "b", row(3, EventType::Sent, "2026-05-01T10:00:00Z", "c1", "m1"));
        apply(&mut r, "b", row(4, EventType::Bounced, "2026-05-01T10:00:00Z", "c1", "m1"));
        assert_eq!(daily(&r, "a", 1, 1, chrono_tz::UTC, None), vec![vec![1, 0, 0, 1, 2_500_000, 0]]);
        assert_eq!(daily(&r, "a", 1, 1, chrono_tz::UTC, Some("c1")), vec![vec![1, 0, 0, 0, 0, 0]]);
        assert_eq!(daily(&r, "b", 1, 1, chrono_tz::UTC, None), vec![vec![1, 0, 0, 0, 0, 1]]);
        assert_eq!(daily(&r, "nobody", 1, 1, chrono_tz::UTC, None), vec![vec![0; 6]]);
        assert_eq!(r.sent_message("a", "m1").unwrap().map(|m| m.campaign), Some("c1".to_string()));
        assert_eq!(r.sent_message("a", "<m1>").unwrap().map(|m| m.campaign), Some("c1".to_string()));
        assert_eq!(r.sent_message("a", "m2").unwrap(), None, "only sends are joined");
        assert_eq!(r.sent_message("nobody", "m1").unwrap(), None);
    }

    /// Commits what `r` holds and opens it again from disk alone.
    fn reopened(mut r: Rollup, dir: &Path, seq: u64) -> Rollup {
        let commit = r.take(seq);
        r.disk().unwrap().commit(&commit).unwrap();
        r.committed();
        drop(r);
        let (r, committed) = Rollup::open(Disk::open(dir, 1 << 20).unwrap()).unwrap();
        assert_eq!(committed, seq);
        r
    }

    #[test]
    fn what_is_per_event_or_per_message_survives_a_restart_from_disk_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, committed) = Rollup::open(Disk::open(dir.path(), 1 << 20).unwrap()).unwrap();
        assert_eq!(committed, 0);
        apply(&mut r, "t", row(1, EventType::Sent, "2026-05-01T09:00:00Z", "c", "m1"));
        apply(&mut r, "t", row(2, EventType::Open, "2026-05-02T10:00:00Z", "c", "m1"));
        r.apply(orphan(3, "m2")).unwrap();
        let before = daily(&r, "t", 1, 3, chrono_tz::UTC, None);
        let mut r = reopened(r, dir.path(), 7);
        assert_eq!(r.events(), 3);
        assert_eq!(daily(&r, "t", 1, 3, chrono_tz::UTC, None), before, "counts load from disk");
        assert_eq!(daily_of(&r, Some(UNMATCHED_CAMPAIGN))[0][5], 1);
        // A resubmitted id is known from disk; the first open of m1 is known too, so a later
        // open is not unique and an earlier one moves the unique open.
        assert!(!apply(&mut r, "t", row(2, EventType::Open, "2026-05-02T10:00:00Z", "c", "m1")));
        apply(&mut r, "t", row(4, EventType::Open, "2026-05-03T10:00:00Z", "c", "m1"));
        apply(&mut r, "t", row(5, EventType::Open, "2026-05-01T10:00:00Z", "c", "m1"));
        assert_eq!(column(&daily(&r, "t", 1, 3, chrono_tz::UTC, None), 2), vec![1, 0, 0]);
        // The orphan stored before the restart joins a send that arrives after it, once a
        // pending change is committed and the rollup opened again.
        apply(&mut r, "t", row(6, EventType::Sent, "2026-05-01T08:00:00Z", "c", "<m2>"));
        let r = reopened(r, dir.path(), 8);
        assert_eq!(daily_of(&r, Some("c"))[0][5], 1);
        assert_eq!(daily_of(&r, Some(UNMATCHED_CAMPAIGN)), vec![vec![0; 7]]);
        assert_eq!(column(&daily(&r, "t", 1, 3, chrono_tz::UTC, None), 1), vec![1, 1, 1]);
        let m1 = r.sent_message("t", "m1").unwrap().unwrap();
        assert_eq!((m1.campaign.as_str(), m1.stream.as_deref()), ("c", Some("c")), "the send's stream is kept on disk");
        assert_eq!(r.events(), 6);
    }

    #[test]
    fn a_restored_commit_is_committed_by_the_next_take() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, _) = Rollup::open(Disk::open(dir.path(), 1 << 20).unwrap()).unwrap();
        apply(&mut r, "t", row(1, EventType::Sent, "2026-05-01T09:00:00Z", "c", "m1"));
        r.take(1);
        // The flush's rows could not be written: the changes go back to pending.
        r.restore();
        assert!(!apply(&mut r, "t", row(1, EventType::Sent, "2026-05-01T09:00:00Z", "c", "m1")));
        apply(&mut r, "t", row(2, EventType::Click, "2026-05-01T10:00:00Z", "c", "m1"));
        let r = reopened(r, dir.path(), 2);
        assert_eq!(daily_of(&r, Some("c"))[0][..3], [1, 0, 1]);
        assert_eq!(r.sent_message("t", "m1").unwrap().map(|m| m.campaign), Some("c".to_string()));
    }

    #[test]
    fn entries_decode_as_they_were_encoded() {
        let s = MessageState {
            send: Some(Send { campaign: 3, variant: 1, at_ms: -5, stream: Some("marketing".into()) }),
            firsts: [None, Some(First { at_ms: 9, campaign: 2, variant: 0 }), None, Some(First { at_ms: 1 << 40, campaign: 0, variant: 7 })],
            orphans: vec![Orphan { at_ms: 4, kind: EventType::Complaint, hard: false, revenue_micros: 0, campaign: 1, variant: 2 }, Orphan { at_ms: 5, kind: EventType::Bounced, hard: true, revenue_micros: -3, campaign: 0, variant: 0 }],
        };
        assert_eq!(MessageState::decode(&s.encode()).unwrap(), s);
        let unstreamed = MessageState { send: Some(Send { stream: None, ..s.send.clone().unwrap() }), ..s.clone() };
        assert_eq!(MessageState::decode(&unstreamed.encode()).unwrap(), unstreamed);
        let mut cell = Cell::default();
        cell.add_events(EventType::Bounced, true, 2, 7, -100, 200);
        cell.firsts[2] = 4;
        let times = BTreeMap::from([(-100, 1), (200, 1)]);
        assert_eq!(decode_cell(&encode_cell(&cell, Some(&times))).unwrap(), (cell, times));
        for bucket in [i64::MIN, -1, 0, 1, i64::MAX] {
            assert_eq!(parse_cell_key(&cell_key("tenant", (5, bucket, 6))), Some(("tenant", (5, bucket, 6))));
        }
        assert!(cell_key("t", (0, -1, 0)) < cell_key("t", (0, 0, 0)), "keys sort by time");
        assert!(MessageState::decode(&[1, 2]).is_err(), "a truncated entry is an error, not a panic");
    }
}
