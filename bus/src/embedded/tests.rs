use super::*;
use crate::{EventBus, Message, Position};
use std::time::Duration;

/// The first segment file of the `events` topic.
fn first_segment(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("events").join(format!("{:020}.log", 0))
}

/// The segment files of `topic`, oldest first.
fn segments(dir: &std::path::Path, topic: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join(topic)).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

fn msg(i: usize) -> Message {
    Message { key: format!("k{i}").into_bytes(), payload: format!("payload-{i}").into_bytes() }
}

async fn drain(sub: &mut Box<dyn crate::Subscription>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let batch = sub.poll(1000, Duration::from_millis(50)).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch.into_iter().map(|r| String::from_utf8(r.payload).unwrap()));
    }
}

#[tokio::test]
async fn published_messages_are_read_back_in_order_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
        bus.publish("events", (0..500).map(msg).collect()).await.unwrap();
    }
    let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
    let mut sub = bus.subscribe("events", "g").await.unwrap();
    let got = drain(&mut sub).await;
    assert_eq!(got, (0..500).map(|i| format!("payload-{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn committed_offsets_survive_reopen_and_uncommitted_records_are_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
        bus.publish("events", (0..10).map(msg).collect()).await.unwrap();
        let mut sub = bus.subscribe("events", "g").await.unwrap();
        let batch = sub.poll(4, Duration::from_millis(50)).await.unwrap();
        assert_eq!(batch.len(), 4);
        sub.commit(&[batch[3].next]).await.unwrap();
        // Read further without committing: lost on restart, so redelivered.
        assert_eq!(sub.poll(3, Duration::from_millis(50)).await.unwrap().len(), 3);
    }
    let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
    let mut sub = bus.subscribe("events", "g").await.unwrap();
    let got = drain(&mut sub).await;
    assert_eq!(got, (4..10).map(|i| format!("payload-{i}")).collect::<Vec<_>>());
    // Another group starts from the beginning.
    let mut other = bus.subscribe("events", "h").await.unwrap();
    assert_eq!(drain(&mut other).await.len(), 10);
}

#[tokio::test]
async fn a_torn_tail_is_cut_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
        bus.publish("events", (0..3).map(msg).collect()).await.unwrap();
    }
    // A crash in the middle of a write leaves half a record.
    let path = first_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 0, 0, b'x']);
    std::fs::write(&path, &bytes).unwrap();
    let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), whole as u64);
    bus.publish("events", vec![msg(3)]).await.unwrap();
    let mut sub = bus.subscribe("events", "g").await.unwrap();
    assert_eq!(drain(&mut sub).await.len(), 4);
}

#[tokio::test]
async fn concurrent_publishers_all_land_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = std::sync::Arc::new(EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap());
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    bus.publish("events", vec![msg(t * 1000 + i)]).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut sub = bus.subscribe("events", "g").await.unwrap();
    let mut got = drain(&mut sub).await;
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 32 * 50);
    assert_eq!(sub.lag(), 0);
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_bus_and_bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
    assert!(EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).is_err());
    assert!(_bus.publish("../x", vec![msg(0)]).await.is_err());
    let big = Message { key: vec![], payload: vec![0; crate::MAX_MESSAGE_BYTES + 1] };
    assert!(_bus.publish("events", vec![big]).await.is_err());
    let largest = Message { key: vec![], payload: vec![0; crate::MAX_MESSAGE_BYTES] };
    _bus.publish("inbound", vec![largest]).await.unwrap();
}

#[tokio::test]
async fn seek_replays_from_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
    bus.publish("events", (0..5).map(msg).collect()).await.unwrap();
    let mut sub = bus.subscribe("events", "g").await.unwrap();
    let first = sub.poll(10, Duration::from_millis(50)).await.unwrap();
    sub.seek(first[2].position).unwrap();
    assert_eq!(drain(&mut sub).await, vec!["payload-2", "payload-3", "payload-4"]);
    assert!(sub.seek(Position { partition: 0, offset: 1 << 40 }).is_err());
}

#[tokio::test]
async fn whole_records_of_an_unfinished_group_commit_are_cut_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = first_segment(dir.path());
    let first_commit;
    {
        let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
        bus.publish("events", (0..3).map(msg).collect()).await.unwrap();
    }
    first_commit = std::fs::metadata(&path).unwrap().len();
    {
        let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
        bus.publish("events", (3..6).map(msg).collect()).await.unwrap();
    }
    // Keep the second commit's records but not its closing mark: a write cut short by kill -9.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), first_commit);
    let mut sub = bus.subscribe("events", "g").await.unwrap();
    assert_eq!(drain(&mut sub).await, vec!["payload-0", "payload-1", "payload-2"]);
}

#[tokio::test]
async fn the_zeros_written_ahead_of_the_end_are_not_records_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
    bus.publish("events", (0..3).map(msg).collect()).await.unwrap();
    // The file as a kill -9 leaves it: the records, then the zeros written ahead of them.
    let bytes = std::fs::read(first_segment(dir.path())).unwrap();
    assert!(bytes.len() > 1 << 20 && bytes[bytes.len() - 4096..].iter().all(|&b| b == 0));
    std::fs::create_dir_all(crashed.path().join("events")).unwrap();
    std::fs::write(first_segment(crashed.path()), &bytes).unwrap();
    drop(bus);
    let whole = std::fs::metadata(first_segment(dir.path())).unwrap().len();
    assert!(whole < 4096 && bytes[..whole as usize] == std::fs::read(first_segment(dir.path())).unwrap()[..]);

    let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(crashed.path())).unwrap();
    assert_eq!(std::fs::metadata(first_segment(crashed.path())).unwrap().len(), whole);
    bus.publish("events", vec![msg(3)]).await.unwrap();
    let mut sub = bus.subscribe("events", "g").await.unwrap();
    assert_eq!(drain(&mut sub).await, vec!["payload-0", "payload-1", "payload-2", "payload-3"]);
}

#[tokio::test]
async fn append_says_where_each_message_is_and_a_reader_reads_from_there_with_no_group() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap();
    bus.publish("events", (0..3).map(msg).collect()).await.unwrap();
    let (a, b) = tokio::join!(bus.append("events", (3..6).map(msg).collect()), bus.append("events", (6..8).map(msg).collect()));
    let positions: Vec<Position> = a.unwrap().into_iter().chain(b.unwrap()).collect();
    assert_eq!(positions.len(), 5);
    let mut reader = bus.reader("events").await.unwrap();
    for p in &positions {
        reader.seek(*p).unwrap();
        assert_eq!(reader.poll(1, Duration::from_millis(50)).await.unwrap()[0].position, *p);
    }
    // Each position is a different record, and all of them are the appended ones.
    let mut seen = std::collections::BTreeSet::new();
    for p in &positions {
        reader.seek(*p).unwrap();
        seen.insert(String::from_utf8(reader.poll(1, Duration::from_millis(50)).await.unwrap()[0].payload.clone()).unwrap());
    }
    assert_eq!(seen, (3..8).map(|i| format!("payload-{i}")).collect());
    reader.seek(Position { partition: 0, offset: 0 }).unwrap();
    assert_eq!(drain(&mut reader).await.len(), 8);
    assert!(reader.commit(&positions).await.is_err(), "a reader has no group to commit for");
    assert!(!dir.path().join("events.groups").read_dir().unwrap().any(|_| true), "a reader leaves no group behind");
}

/// A bus with small segments, and retention as given.
fn small_segments(dir: &std::path::Path, retention: Option<Duration>) -> EmbeddedEventBus {
    EmbeddedEventBus::open(EmbeddedBusConfig { segment_bytes: 4096, retention, ..EmbeddedBusConfig::new(dir) }).unwrap()
}

#[tokio::test]
async fn the_log_rolls_into_segments_and_reads_across_them_in_order_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut positions = Vec::new();
    {
        let bus = small_segments(dir.path(), None);
        for chunk in (0..3000).collect::<Vec<_>>().chunks(30) {
            positions.extend(bus.append("events", chunk.iter().map(|&i| msg(i)).collect()).await.unwrap());
        }
    }
    let files = segments(dir.path(), "events");
    assert!(files.len() > 10, "{} segments", files.len());
    // Each segment is named by the offset of its first record and holds whole commits.
    for f in &files[1..] {
        let base: u64 = f.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert!(positions.iter().any(|p| p.offset == base), "segment {} starts at no record", f.display());
    }
    let bus = small_segments(dir.path(), None);
    let mut sub = bus.subscribe("events", "g").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 1500 {
        got.extend(sub.poll(100, Duration::from_millis(50)).await.unwrap());
    }
    assert_eq!(got.iter().map(|r| r.position).collect::<Vec<_>>(), positions[..got.len()]);
    sub.commit(&[got.last().unwrap().next]).await.unwrap();
    let seen = got.len();
    drop((sub, bus));
    let bus = small_segments(dir.path(), None);
    let mut sub = bus.subscribe("events", "g").await.unwrap();
    let rest = drain(&mut sub).await;
    assert_eq!(rest, (seen..3000).map(|i| format!("payload-{i}")).collect::<Vec<_>>(), "the rest, once, across segments");
    // A reader seeks into any segment.
    let mut reader = bus.reader("events").await.unwrap();
    for p in positions.iter().step_by(97) {
        reader.seek(*p).unwrap();
        assert_eq!(reader.poll(1, Duration::from_millis(50)).await.unwrap()[0].position, *p);
    }
}

#[tokio::test]
async fn retention_deletes_the_segments_every_group_has_read_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let bus = small_segments(dir.path(), Some(Duration::ZERO));
    bus.publish("events", (0..10).map(msg).collect()).await.unwrap();
    let (mut ahead, mut behind) = (bus.subscribe("events", "ahead").await.unwrap(), bus.subscribe("events", "behind").await.unwrap());
    for chunk in (10..3000).collect::<Vec<_>>().chunks(30) {
        bus.publish("events", chunk.iter().map(|&i| msg(i)).collect()).await.unwrap();
    }
    let before = segments(dir.path(), "events").len();
    assert!(before > 10, "{before} segments");
    // `ahead` reads and commits everything, `behind` the first 1000 records.
    let all = drain_records(&mut ahead).await;
    ahead.commit(&[all.last().unwrap().next]).await.unwrap();
    let mut first = Vec::new();
    while first.len() < 1000 {
        first.extend(behind.poll(1000 - first.len(), Duration::from_millis(50)).await.unwrap());
    }
    behind.commit(&[first.last().unwrap().next]).await.unwrap();
    // The next roll looks for what can go.
    bus.publish("events", (3000..3100).map(msg).collect()).await.unwrap();
    let floor = first.last().unwrap().next.offset;
    let started = std::time::Instant::now();
    while segments(dir.path(), "events").iter().any(|f| next_base(dir.path(), f).is_some_and(|n| n <= floor)) {
        assert!(started.elapsed() < Duration::from_secs(10), "segments read by every group were not deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = segments(dir.path(), "events");
    assert!(left.len() < before && left.len() > 3, "{} of {before} segments left", left.len());
    // Nothing `behind` has not read went: it reads on, every record once.
    let rest = drain(&mut behind).await;
    assert_eq!(rest, (1000..3100).map(|i| format!("payload-{i}")).collect::<Vec<_>>());
    // A group new since starts at the oldest segment left.
    let mut late = bus.subscribe("events", "late").await.unwrap();
    let late_first = late.poll(1, Duration::from_millis(50)).await.unwrap();
    let oldest: u64 = left[0].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    assert_eq!(late_first[0].position.offset, oldest);
    // The suppressions topic is the list itself: kept whole, whatever the retention.
    for chunk in (0..1000).collect::<Vec<_>>().chunks(30) {
        bus.publish(crate::SUPPRESSIONS_TOPIC, chunk.iter().map(|&i| msg(i)).collect()).await.unwrap();
    }
    let mut list = bus.reader(crate::SUPPRESSIONS_TOPIC).await.unwrap();
    assert_eq!(drain(&mut list).await.len(), 1000);
}

#[tokio::test]
async fn segments_younger_than_the_retention_stay_and_a_log_from_before_segments_is_read_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = small_segments(dir.path(), Some(Duration::from_secs(3600)));
        let mut sub = bus.subscribe("events", "g").await.unwrap();
        for chunk in (0..1000).collect::<Vec<_>>().chunks(30) {
            bus.publish("events", chunk.iter().map(|&i| msg(i)).collect()).await.unwrap();
        }
        let all = drain_records(&mut sub).await;
        sub.commit(&[all.last().unwrap().next]).await.unwrap();
        bus.publish("events", (1000..1100).map(msg).collect()).await.unwrap();
    }
    let files = segments(dir.path(), "events");
    assert_eq!(files[0], first_segment(dir.path()), "read by every group, but not an hour old");

    // One file per topic, as the release before segments wrote it, with a group's offset.
    let old = tempfile::tempdir().unwrap();
    let written = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(written.path())).unwrap();
        bus.publish("events", (0..20).map(msg).collect()).await.unwrap();
        let mut sub = bus.subscribe("events", "g").await.unwrap();
        let first = sub.poll(5, Duration::from_millis(50)).await.unwrap();
        sub.commit(&[first[4].next]).await.unwrap();
    }
    std::fs::copy(first_segment(written.path()), old.path().join("events.log")).unwrap();
    std::fs::create_dir_all(old.path().join("events.groups")).unwrap();
    std::fs::copy(written.path().join("events.groups/g"), old.path().join("events.groups/g")).unwrap();
    let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(old.path())).unwrap();
    assert!(!old.path().join("events.log").exists() && first_segment(old.path()).exists(), "the old log became the first segment");
    let mut sub = bus.subscribe("events", "g").await.unwrap();
    assert_eq!(drain(&mut sub).await, (5..20).map(|i| format!("payload-{i}")).collect::<Vec<_>>(), "the group reads on from its offset");
}

async fn drain_records(sub: &mut Box<dyn crate::Subscription>) -> Vec<crate::Record> {
    let mut out = Vec::new();
    loop {
        let batch = sub.poll(1000, Duration::from_millis(50)).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// The base of the segment after `file`, if there is one.
fn next_base(dir: &std::path::Path, file: &std::path::Path) -> Option<u64> {
    let files = segments(dir, "events");
    let i = files.iter().position(|f| f == file)?;
    files.get(i + 1).map(|f| f.file_stem().unwrap().to_str().unwrap().parse().unwrap())
}
