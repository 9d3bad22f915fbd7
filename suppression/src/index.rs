//! The in-memory index that answers checks: per address of a tenant, a 12-byte key (a hash of
//! both) and a 20-byte slot with what an answer needs (reason, stream, since, expiry) and the
//! offset of the address's latest record on the suppressions topic (for its history). No
//! string is kept per entry. An address with more than one suppression in force keeps them in
//! a side table. A snapshot saves the index with the offset it covers.

use crate::address::Key;
use crate::entry::{Entry, Reason};
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use tokio::sync::watch;

/// The key is a hash already: its first eight bytes are the table's hash.
#[derive(Clone, Copy, Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
}

impl BuildHasher for KeyHasher {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// One suppression in force, as the index keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Active {
    /// Seconds since the Unix epoch.
    pub since: u32,
    /// Seconds since the Unix epoch; 0: never.
    pub expires: u32,
    /// [`Reason::code`].
    pub reason: u8,
    /// 0: every stream; else the stream's number in [`Index`]'s table, plus one.
    pub stream: u8,
}

/// An entry in the index. Fields of four bytes at most, so a key and its slot take 32 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Slot {
    /// Offset of the latest record, in two halves.
    offset: [u32; 2],
    /// The suppression in force (when only one is), as in [`Active`].
    since: u32,
    expires: u32,
    reason: u8,
    stream: u8,
    /// More than one suppression in force: they are in `several`.
    several: bool,
}

impl Slot {
    fn offset(&self) -> u64 {
        (self.offset[1] as u64) << 32 | self.offset[0] as u64
    }

    fn first(&self) -> Active {
        Active { since: self.since, expires: self.expires, reason: self.reason, stream: self.stream }
    }
}

/// What a check answers for a suppressed address.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub reason: Reason,
    pub stream: Option<String>,
    pub since: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

const NONE: Active = Active { since: 0, expires: 0, reason: 0, stream: 0 };
const MAX_STREAMS: usize = 254;

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Slot, KeyHasher>,
    several: HashMap<Key, Vec<Active>, KeyHasher>,
    streams: Vec<String>,
    /// Per tenant, the suppressions in force by reason (index: code - 1).
    counts: HashMap<String, [u64; 5]>,
    /// The offset after the last record applied.
    next: u64,
    dirty: bool,
}

pub struct Index {
    inner: RwLock<Inner>,
    /// The offset after the last record applied, for those who wait for a change.
    next_tx: watch::Sender<u64>,
    /// Whether the index has caught up with the topic once (after start-up).
    ready: watch::Sender<bool>,
}

fn secs(t: DateTime<Utc>) -> u32 {
    t.timestamp().clamp(0, u32::MAX as i64) as u32
}

fn time(secs: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(secs as i64, 0).unwrap_or_default()
}

impl Default for Index {
    fn default() -> Self {
        Index { inner: RwLock::new(Inner::default()), next_tx: watch::channel(0).0, ready: watch::channel(false).0 }
    }
}

impl Inner {
    fn stream_id(&mut self, stream: Option<&str>) -> u8 {
        let Some(s) = stream else { return 0 };
        if let Some(i) = self.streams.iter().position(|known| known == s) {
            return i as u8 + 1;
        }
        if self.streams.len() >= MAX_STREAMS {
            tracing::warn!(stream = s, "more than 254 suppression streams: this one is treated as every stream");
            return 0;
        }
        self.streams.push(s.to_string());
        self.streams.len() as u8
    }

    fn actives(&self, key: &Key, slot: &Slot) -> Vec<Active> {
        if slot.several {
            self.several.get(key).cloned().unwrap_or_default()
        } else if slot.reason != 0 {
            vec![slot.first()]
        } else {
            Vec::new()
        }
    }

    fn count(&mut self, tenant: &str, actives: &[Active], delta: i64) {
        if actives.is_empty() {
            return;
        }
        let counts = self.counts.entry(tenant.to_string()).or_default();
        for a in actives {
            if let Some(c) = counts.get_mut(a.reason as usize - 1) {
                *c = c.saturating_add_signed(delta);
            }
        }
    }
}

impl Index {
    /// Applies the record of `entry` at `offset`, unless the index holds a later record of the
    /// same address. Both the writer that appended the record and the follower of the topic
    /// apply it (the second time changes nothing); the follower also says where the next
    /// record starts (`next`), which is how far the index has read the topic.
    pub fn apply(&self, key: Key, entry: &Entry, offset: u64, next: Option<u64>) {
        let mut inner = self.inner.write();
        if let Some(next) = next {
            inner.next = inner.next.max(next);
        }
        let reached = inner.next;
        let current = inner.map.get(&key).copied();
        if current.is_some_and(|s| s.offset() >= offset) {
            drop(inner);
            self.next_tx.send_if_modified(|n| std::mem::replace(n, reached) != reached);
            return;
        }
        if let Some(old) = current {
            let before = inner.actives(&key, &old);
            inner.count(&entry.tenant, &before, -1);
        }
        let mut actives: Vec<Active> = Vec::with_capacity(entry.active.len());
        for c in &entry.active {
            let stream = inner.stream_id(c.stream.as_deref());
            actives.push(Active { reason: c.reason.code(), stream, since: secs(c.at), expires: c.expires_at.map_or(0, |e| secs(e).max(1)) });
        }
        inner.count(&entry.tenant, &actives, 1);
        let first = actives.first().copied().unwrap_or(NONE);
        let slot = Slot { offset: [offset as u32, (offset >> 32) as u32], since: first.since, expires: first.expires, reason: first.reason, stream: first.stream, several: actives.len() > 1 };
        if slot.several {
            inner.several.insert(key, actives);
        } else {
            inner.several.remove(&key);
        }
        inner.map.insert(key, slot);
        inner.dirty = true;
        drop(inner);
        self.next_tx.send_if_modified(|n| std::mem::replace(n, reached) != reached);
    }

    /// The suppression that applies to mail on `stream` (any stream when `None`) at `now`.
    pub fn check(&self, key: &Key, stream: Option<&str>, now: DateTime<Utc>) -> Option<Hit> {
        let inner = self.inner.read();
        let slot = inner.map.get(key)?;
        let now = secs(now);
        let applies = |a: &Active| {
            a.reason != 0
                && (a.expires == 0 || a.expires > now)
                && (a.stream == 0 || stream.is_none() || inner.streams.get(a.stream as usize - 1).map(String::as_str) == stream)
        };
        let best = if slot.several {
            inner.several.get(key)?.iter().filter(|a| applies(a)).min_by_key(|a| (Reason::from_code(a.reason).map_or(9, Reason::rank), a.since)).copied()
        } else {
            Some(slot.first()).filter(applies)
        }?;
        Some(Hit {
            reason: Reason::from_code(best.reason)?,
            stream: (best.stream != 0).then(|| inner.streams.get(best.stream as usize - 1).cloned()).flatten(),
            since: time(best.since),
            expires_at: (best.expires != 0).then(|| time(best.expires)),
        })
    }

    /// Offset of the latest record of `key`.
    pub fn offset(&self, key: &Key) -> Option<u64> {
        self.inner.read().map.get(key).map(Slot::offset)
    }

    /// The offsets of the records whose suppressions have ended by `now` (for the expiry scan).
    pub fn due(&self, now: DateTime<Utc>) -> Vec<(Key, u64)> {
        let now = secs(now);
        let inner = self.inner.read();
        inner
            .map
            .iter()
            .filter(|(key, slot)| inner.actives(key, slot).iter().any(|a| a.expires != 0 && a.expires <= now))
            .map(|(key, slot)| (*key, slot.offset()))
            .collect()
    }

    /// The suppressions in force of `tenant`, by reason.
    pub fn counts(&self, tenant: &str) -> [u64; 5] {
        self.inner.read().counts.get(tenant).copied().unwrap_or_default()
    }

    /// Addresses in the index (suppressed, or with soft bounces being counted).
    pub fn len(&self) -> usize {
        self.inner.read().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The offset after the last record applied.
    pub fn next(&self) -> u64 {
        self.inner.read().next
    }

    /// Changes whenever a record is applied.
    pub fn watch_next(&self) -> watch::Receiver<u64> {
        self.next_tx.subscribe()
    }

    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the index has caught up with the topic after start-up.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
}

const MAGIC: &[u8; 8] = b"MPSUPIX1";

/// A writer that checksums what it writes.
struct Summed<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct SummedRead<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> SummedRead<R> {
    fn exact<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        self.crc.update(&b);
        Ok(b)
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.exact()?))
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(u64::from_le_bytes(self.exact()?))
    }
    fn string(&mut self) -> std::io::Result<String> {
        let len = u16::from_le_bytes(self.exact()?) as usize;
        let mut b = vec![0u8; len];
        self.inner.read_exact(&mut b)?;
        self.crc.update(&b);
        String::from_utf8(b).map_err(|_| bad("a name that is not UTF-8"))
    }
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("suppression snapshot: {what}"))
}

fn put_active(w: &mut impl Write, a: &Active) -> std::io::Result<()> {
    w.write_all(&[a.reason, a.stream])?;
    w.write_all(&a.since.to_le_bytes())?;
    w.write_all(&a.expires.to_le_bytes())
}

fn get_active<R: Read>(r: &mut SummedRead<R>) -> std::io::Result<Active> {
    let [reason, stream] = r.exact()?;
    let (since, expires) = (r.u32()?, r.u32()?);
    Ok(Active { since, expires, reason, stream })
}

impl Index {
    /// Saves the index to `path` (through a temporary file, synced, then renamed), if it
    /// changed since the last save. Checks keep being answered meanwhile; records wait.
    pub fn save(&self, path: &Path) -> std::io::Result<bool> {
        let mut inner = self.inner.write();
        if !inner.dirty {
            return Ok(false);
        }
        let tmp = path.with_extension("tmp");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(&tmp)?;
        let mut w = Summed { inner: BufWriter::with_capacity(1 << 20, file), crc: crc32fast::Hasher::new() };
        w.write_all(MAGIC)?;
        w.write_all(&inner.next.to_le_bytes())?;
        w.write_all(&(inner.streams.len() as u32).to_le_bytes())?;
        for s in &inner.streams {
            w.write_all(&(s.len() as u16).to_le_bytes())?;
            w.write_all(s.as_bytes())?;
        }
        w.write_all(&(inner.counts.len() as u32).to_le_bytes())?;
        for (tenant, counts) in &inner.counts {
            w.write_all(&(tenant.len() as u16).to_le_bytes())?;
            w.write_all(tenant.as_bytes())?;
            for c in counts {
                w.write_all(&c.to_le_bytes())?;
            }
        }
        w.write_all(&(inner.map.len() as u64).to_le_bytes())?;
        for (key, slot) in &inner.map {
            w.write_all(&key.0)?;
            w.write_all(&slot.offset[0].to_le_bytes())?;
            w.write_all(&slot.offset[1].to_le_bytes())?;
            put_active(&mut w, &slot.first())?;
            w.write_all(&[slot.several as u8])?;
        }
        w.write_all(&(inner.several.len() as u64).to_le_bytes())?;
        for (key, actives) in &inner.several {
            w.write_all(&key.0)?;
            w.write_all(&[actives.len().min(255) as u8])?;
            for a in actives.iter().take(255) {
                put_active(&mut w, a)?;
            }
        }
        let crc = w.crc.clone().finalize();
        let mut file = w.inner.into_inner().map_err(|e| e.into_error())?;
        file.write_all(&crc.to_le_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        inner.dirty = false;
        Ok(true)
    }

    /// Loads the snapshot at `path`; `None` when there is none. A damaged snapshot is an error
    /// (the caller then starts from the topic's beginning).
    pub fn load(path: &Path) -> std::io::Result<Option<Index>> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut r = SummedRead { inner: BufReader::with_capacity(1 << 20, file), crc: crc32fast::Hasher::new() };
        if &r.exact::<8>()? != MAGIC {
            return Err(bad("not a snapshot of this version"));
        }
        let mut inner = Inner { next: r.u64()?, ..Inner::default() };
        for _ in 0..r.u32()? {
            inner.streams.push(r.string()?);
        }
        for _ in 0..r.u32()? {
            let tenant = r.string()?;
            let mut counts = [0u64; 5];
            for c in &mut counts {
                *c = r.u64()?;
            }
            inner.counts.insert(tenant, counts);
        }
        let n = r.u64()?;
        inner.map.reserve(n.min(1 << 32) as usize);
        for _ in 0..n {
            let key = Key(r.exact()?);
            let offset = [r.u32()?, r.u32()?];
            let a = get_active(&mut r)?;
            let [several] = r.exact()?;
            inner.map.insert(key, Slot { offset, since: a.since, expires: a.expires, reason: a.reason, stream: a.stream, several: several != 0 });
        }
        for _ in 0..r.u64()? {
            let key = Key(r.exact()?);
            let [count] = r.exact()?;
            let mut actives = Vec::with_capacity(count as usize);
            for _ in 0..count {
                actives.push(get_active(&mut r)?);
            }
            inner.several.insert(key, actives);
        }
        let expected = r.crc.clone().finalize();
        let mut stored = [0u8; 4];
        r.inner.read_exact(&mut stored)?;
        if u32::from_le_bytes(stored) != expected {
            return Err(bad("checksum mismatch"));
        }
        let next = inner.next;
        Ok(Some(Index { inner: RwLock::new(inner), next_tx: watch::channel(next).0, ready: watch::channel(false).0 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;
    use crate::entry::{Action, Change, Provenance};

    fn entry(tenant: &str, address: &str, active: &[(Reason, Option<&str>, i64, Option<i64>)]) -> Entry {
        let mut e = Entry::new(tenant, address);
        for (i, (reason, stream, since, expires)) in active.iter().enumerate() {
            e.active.push(Change {
                id: uuid::Uuid::from_u128(i as u128),
                action: Action::Suppressed,
                reason: *reason,
                stream: stream.map(str::to_string),
                at: DateTime::from_timestamp(*since, 0).unwrap(),
                expires_at: expires.map(|x| DateTime::from_timestamp(x, 0).unwrap()),
                doubtful: false,
                provenance: Provenance::default(),
            });
        }
        e
    }

    fn key(t: &str, a: &str) -> Key {
        Address::parse(a).unwrap().key(t)
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn checks_answer_by_stream_expiry_and_rank_and_counts_follow_changes() {
        let index = Index::default();
        let now = DateTime::from_timestamp(NOW, 0).unwrap();
        index.apply(key("t", "a@x.com"), &entry("t", "a@x.com", &[(Reason::Unsubscribe, Some("marketing"), NOW - 10, None)]), 0, Some(10));
        index.apply(key("t", "b@x.com"), &entry("t", "b@x.com", &[(Reason::SoftBounceLimit, None, NOW - 10, Some(NOW - 1))]), 10, Some(20));
        index.apply(key("t", "c@x.com"), &entry("t", "c@x.com", &[(Reason::Unsubscribe, Some("marketing"), NOW - 10, None), (Reason::Complaint, None, NOW - 5, None)]), 20, Some(30));
        let a = key("t", "a@x.com");
        assert_eq!(index.check(&a, Some("marketing"), now).unwrap().stream.as_deref(), Some("marketing"));
        assert!(index.check(&a, Some("transactional"), now).is_none());
        assert_eq!(index.check(&a, None, now).unwrap().reason, Reason::Unsubscribe);
        assert!(index.check(&key("t", "b@x.com"), None, now).is_none(), "expired");
        assert_eq!(index.check(&key("t", "c@x.com"), Some("marketing"), now).unwrap().reason, Reason::Complaint);
        assert!(index.check(&key("u", "a@x.com"), None, now).is_none(), "another tenant's list");
        assert_eq!(index.counts("t"), [0, 1, 2, 1, 0]);
        assert_eq!(index.due(now), vec![(key("t", "b@x.com"), 10)]);
        // A later record replaces; an older one (read again by the follower) does not.
        index.apply(a, &entry("t", "a@x.com", &[]), 30, Some(40));
        index.apply(a, &entry("t", "a@x.com", &[(Reason::Unsubscribe, None, NOW, None)]), 0, Some(10));
        assert!(index.check(&a, None, now).is_none());
        assert_eq!(index.counts("t"), [0, 1, 1, 1, 0]);
        assert_eq!(index.next(), 40);
    }

    #[test]
    fn a_snapshot_loads_back_the_same_answers_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.snapshot");
        let index = Index::default();
        let now = DateTime::from_timestamp(NOW, 0).unwrap();
        for i in 0..1000i64 {
            let a = format!("u{i}@x.com");
            let reasons: &[(Reason, Option<&str>, i64, Option<i64>)] =
                if i % 3 == 0 { &[(Reason::HardBounce, None, NOW - i, None), (Reason::Unsubscribe, Some("news"), NOW, None)] } else { &[(Reason::Manual, None, NOW - i, Some(NOW + i))] };
            index.apply(key("t", &a), &entry("t", &a, reasons), i as u64 * 10, Some(i as u64 * 10 + 10));
        }
        assert!(index.save(&path).unwrap());
        assert!(!index.save(&path).unwrap(), "unchanged: not saved again");
        let back = Index::load(&path).unwrap().unwrap();
        assert_eq!(back.len(), 1000);
        assert_eq!(back.next(), 10_000);
        assert_eq!(back.counts("t"), index.counts("t"));
        for i in 0..1000 {
            let k = key("t", &format!("u{i}@x.com"));
            assert_eq!(back.check(&k, Some("news"), now), index.check(&k, Some("news"), now));
            assert_eq!(back.offset(&k), Some(i * 10));
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Index::load(&path).is_err());
        assert!(Index::load(&dir.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn a_key_and_its_slot_take_32_bytes() {
        assert_eq!(std::mem::size_of::<(Key, Slot)>(), 32);
    }
}
