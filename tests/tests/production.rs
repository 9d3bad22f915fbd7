//! The production backends against real servers: a Kafka-protocol broker (tansu) and
//! ClickHouse (Debian's 18.16), both started by the test. The bus keeps order per key and
//! resumes from committed offsets; poison messages go to the dead-letter topic without
//! blocking; killing one of two `mailpipe process` instances mid-stream, and restarting
//! ClickHouse mid-stream, leave every acknowledged event stored exactly once.

use chrono::Utc;
use mailpipe_bus::{commit_points, EventBus, KafkaBusConfig, KafkaEventBus, Message, DEAD_LETTER_TOPIC, EVENTS_TOPIC};
use mailpipe_schemas::{Event, EventType};
use mailpipe_store::clickhouse::{ClickHouseEventStore, ClickHouseStoreConfig};
use mailpipe_tests::roles::{role_env, spawn_process, spawn_role, write_config};
use mailpipe_tests::servers::{free_port, ClickHouse, Kafka};
use mailpipe_tests::{binary, terminate, tool, wait_for_ok};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn bus_config(kafka: &Kafka, prefix: &str, partitions: i32) -> KafkaBusConfig {
    KafkaBusConfig { topic_prefix: prefix.into(), partitions, ..KafkaBusConfig::new(kafka.brokers()) }
}

fn ch_config(ch: &ClickHouse, database: &str) -> ClickHouseStoreConfig {
    ClickHouseStoreConfig { url: ch.url(), database: database.into(), user: "default".into(), password: String::new() }
}

/// `n` distinct sends of tenant `acme`, to 50 recipients.
fn sends(n: usize, campaign: &str) -> Vec<Event> {
    let now = Utc::now();
    (0..n)
        .map(|i| Event {
            campaign: campaign.into(),
            message_id: format!("<{i}.{campaign}@mailpipe.test>"),
            recipient: format!("r{}@example.com", i % 50),
            ..Event::new(Uuid::new_v4(), "acme", EventType::Sent, now)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_keeps_order_per_key_and_resumes_from_the_committed_offsets() {
    let kafka = Kafka::start();
    let mut config = bus_config(&kafka, "order.", 4);
    // A member that left without a word is noticed after this long.
    config.client.insert("session.timeout.ms".into(), "6000".into());
    config.client.insert("heartbeat.interval.ms".into(), "500".into());
    let bus = KafkaEventBus::connect(config).await.unwrap();
    bus.health().await.unwrap();
    let batch = |range: std::ops::Range<usize>| -> Vec<Message> {
        range.map(|i| Message { key: format!("k{}", i % 7).into_bytes(), payload: format!("{}:{i}", i % 7).into_bytes() }).collect()
    };
    let index = |r: &mailpipe_bus::Record| -> usize { String::from_utf8_lossy(&r.payload).split(':').nth(1).unwrap().parse().unwrap() };
    async fn read(sub: &mut Box<dyn mailpipe_bus::Subscription>, n: usize) -> Vec<mailpipe_bus::Record> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < n && Instant::now() < deadline {
            got.extend(sub.poll(1000, Duration::from_millis(500)).await.unwrap());
        }
        // Nothing more arrives.
        got.extend(sub.poll(1000, Duration::from_millis(1500)).await.unwrap());
        got
    }

    bus.publish(EVENTS_TOPIC, batch(0..300)).await.unwrap();
    let mut sub = bus.subscribe(EVENTS_TOPIC, "g").await.unwrap();
    let got = read(&mut sub, 300).await;
    assert_eq!(got.len(), 300, "every published message is read once");
    // One key's messages come in the order they were published.
    let mut per_key: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
    for r in &got {
        per_key.entry(r.key.clone()).or_default().push(index(r));
    }
    for (key, seq) in &per_key {
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "{:?} out of order", String::from_utf8_lossy(key));
    }
    assert!(got.iter().map(|r| r.position.partition).collect::<std::collections::HashSet<_>>().len() > 1, "keys spread over partitions");

    // Everything read is committed; a new member of the group reads exactly what came after.
    // (Committed at a batch boundary: tansu, unlike Kafka, skips the rest of a record batch
    // when a fetch starts in its middle.)
    sub.commit(&commit_points(&got)).await.unwrap();
    drop(sub);
    bus.publish(EVENTS_TOPIC, batch(300..600)).await.unwrap();
    let mut sub = bus.subscribe(EVENTS_TOPIC, "g").await.unwrap();
    let again = read(&mut sub, 300).await;
    let mut indexes: Vec<usize> = again.iter().map(index).collect();
    indexes.sort();
    assert_eq!(indexes, (300..600).collect::<Vec<_>>(), "resumes after the committed offsets of each partition");

    // A new group starts from the beginning.
    let mut other = bus.subscribe(EVENTS_TOPIC, "h").await.unwrap();
    assert_eq!(read(&mut other, 600).await.len(), 600);
}

/// Waits until the store's count stops moving at `expected` (or the time is up) and returns
/// (rows, distinct ids).
async fn settle(store: &ClickHouseEventStore, expected: u64, timeout: Duration) -> (u64, u64) {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = store.counts().await.unwrap_or((0, 0));
        if counts.0 >= expected || Instant::now() > deadline {
            // Anything beyond `expected` would show up now.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            return store.counts().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_processors_mid_stream_loses_and_doubles_nothing() {
    let kafka = Kafka::start();
    let ch = ClickHouse::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "kill.");
    ClickHouseEventStore::migrate(&ch_config(&ch, "kill")).await.unwrap();
    let store = ClickHouseEventStore::new(&ch_config(&ch, "kill"));
    let bus = KafkaEventBus::connect(bus_config(&kafka, "kill.", 4)).await.unwrap();

    let mut first = spawn_process(&kafka, &ch, "kill", dir.path(), &config);
    let mut second = spawn_process(&kafka, &ch, "kill", dir.path(), &config);
    let mut replacement = None;
    let events = sends(30_000, "kill");
    let mut acknowledged = 0;
    for (i, batch) in events.chunks(1_000).enumerate() {
        mailpipe_ingest::publish(&bus, batch).await.unwrap();
        acknowledged += batch.len();
        if i == 10 {
            // Mid-stream: the first instance dies without a word; its supervisor starts a
            // new one a little later.
            first.kill().unwrap();
            first.wait().unwrap();
        }
        if i == 15 {
            // (After the dead member's session has expired: tansu, unlike Kafka, does not
            // rebalance by itself when it expires one; a member joining does.)
            tokio::time::sleep(Duration::from_secs(8)).await;
            replacement = Some(spawn_process(&kafka, &ch, "kill", dir.path(), &config));
        }
        if i % 5 == 0 {
            // A sending node resubmits a batch it already sent.
            mailpipe_ingest::publish(&bus, batch).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let (rows, distinct) = settle(&store, acknowledged as u64, Duration::from_secs(120)).await;
    for child in [Some(&mut second), replacement.as_mut()].into_iter().flatten() {
        let status = terminate(child);
        assert!(status.success(), "a processor stops cleanly on SIGTERM: {status}");
    }
    assert_eq!(distinct, acknowledged as u64, "every acknowledged event is stored");
    assert_eq!(rows, distinct, "and none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_clickhouse_mid_stream_loses_and_doubles_nothing_and_poison_does_not_block() {
    let kafka = Kafka::start();
    let mut ch = ClickHouse::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "restart.");
    ClickHouseEventStore::migrate(&ch_config(&ch, "restart")).await.unwrap();
    let bus = KafkaEventBus::connect(bus_config(&kafka, "restart.", 4)).await.unwrap();
    let mut process = spawn_process(&kafka, &ch, "restart", dir.path(), &config);

    let events = sends(20_000, "restart");
    let mut acknowledged = 0;
    let mut dead = bus.subscribe(DEAD_LETTER_TOPIC, "test").await.unwrap();
    for (i, batch) in events.chunks(500).enumerate() {
        if i == 3 {
            // A poison message on one key: dead-lettered, and the events behind it on the
            // same partition still get through.
            let poison = Message { key: batch[0].bus_key(), payload: b"{\"v\":1,\"event\":{\"not\":\"an event\"}}".to_vec() };
            bus.publish(EVENTS_TOPIC, vec![poison]).await.unwrap();
        }
        mailpipe_ingest::publish(&bus, batch).await.unwrap();
        acknowledged += batch.len();
        if i == 12 {
            // An operator restarts ClickHouse while events keep coming.
            ch.restart(Duration::from_secs(2));
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let store = ClickHouseEventStore::new(&ch_config(&ch, "restart"));
    let (rows, distinct) = settle(&store, acknowledged as u64, Duration::from_secs(120)).await;
    assert!(terminate(&mut process).success());
    assert_eq!(distinct, acknowledged as u64, "every acknowledged event is stored");
    assert_eq!(rows, distinct, "and none twice");

    let mut letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while letters.is_empty() && Instant::now() < deadline {
        letters = dead.poll(10, Duration::from_millis(500)).await.unwrap();
    }
    assert_eq!(letters.len(), 1, "the poison message is in the dead-letter topic");
    let letter: serde_json::Value = serde_json::from_slice(&letters[0].payload).unwrap();
    assert!(letter["reason"].as_str().unwrap().contains("undecodable"), "{letter}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_process_and_query_roles_work_together_on_kafka_and_clickhouse() {
    let kafka = Kafka::start();
    let ch = ClickHouse::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "roles.");
    let registry = |args: &[&str]| tool(dir.path(), args).trim().to_string();
    registry(&["tenants", "create", "acme"]);
    registry(&["tenants", "create", "globex"]);
    let write = registry(&["keys", "create", "--tenant", "acme", "--scope", "write"]);
    let read = registry(&["keys", "create", "--tenant", "acme", "--scope", "read"]);
    let read_globex = registry(&["keys", "create", "--tenant", "globex", "--scope", "read"]);

    // `mailpipe migrate` applies the schema once.
    let migrate = |expect: &str| {
        let mut cmd = Command::new(binary());
        cmd.arg("migrate");
        role_env(&mut cmd, &kafka, &ch, "roles", dir.path(), &config, free_port());
        let out = cmd.stdout(Stdio::piped()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains(expect), "{text}");
    };
    migrate("applied migrations [1, 2, 3, 4]");
    migrate("up to date");

    let (mut ingest, edge) = spawn_role("ingest", &kafka, &ch, "roles", dir.path(), &config).await;
    let (mut process, _) = spawn_role("process", &kafka, &ch, "roles", dir.path(), &config).await;
    let (mut query, api) = spawn_role("query", &kafka, &ch, "roles", dir.path(), &config).await;

    let client = reqwest::Client::new();
    let body: Vec<serde_json::Value> = (0..200)
        .map(|i| serde_json::json!({"type": if i % 4 == 0 { "delivered" } else { "sent" }, "campaign": "spring", "message_id": format!("<{i}@x>"), "recipient": format!("r{i}@gmail.com")}))
        .collect();
    for _ in 0..2 {
        // Sent twice: the second time changes nothing.
        let res = client.post(format!("{edge}/v1/events")).bearer_auth(&write).json(&body).send().await.unwrap();
        assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    }
    let today = Utc::now().date_naive();
    let url = format!("{api}/v1/stats/overview?from={}&to={}", today.pred_opt().unwrap(), today.succ_opt().unwrap());
    let mut totals = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        totals = client.get(&url).bearer_auth(&read).send().await.unwrap().json::<serde_json::Value>().await.unwrap()["totals"].clone();
        if totals["sent"] == 150 && totals["delivered"] == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!((totals["sent"].as_u64(), totals["delivered"].as_u64()), (Some(150), Some(50)), "{totals}");
    let other = client.get(&url).bearer_auth(&read_globex).send().await.unwrap().json::<serde_json::Value>().await.unwrap();
    assert_eq!(other["totals"]["sent"], 0, "another tenant's key sees none of it: {other}");
    let campaigns = client.get(format!("{api}/v1/campaigns")).bearer_auth(&read).send().await.unwrap().text().await.unwrap();
    assert!(campaigns.contains("spring"), "{campaigns}");
    let metrics = client.get(format!("{edge}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("mailpipe_"), "{metrics}");

    for child in [&mut ingest, &mut process, &mut query] {
        assert!(terminate(child).success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressions_on_kafka_appear_by_themselves_and_survive_kill_9_of_every_role() {
    let kafka = Kafka::start();
    let ch = ClickHouse::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "supp.");
    let registry = |args: &[&str]| tool(dir.path(), args).trim().to_string();
    registry(&["tenants", "create", "acme"]);
    registry(&["tenants", "create", "globex"]);
    let write = registry(&["keys", "create", "--tenant", "acme", "--scope", "events:write,inbound:write", "--tier", "enterprise"]);
    let read = registry(&["keys", "create", "--tenant", "acme", "--scope", "suppressions:read,suppressions:write", "--tier", "enterprise"]);
    let read_globex = registry(&["keys", "create", "--tenant", "globex", "--scope", "suppressions:read", "--tier", "enterprise"]);
    let (mut ingest, edge) = spawn_role("ingest", &kafka, &ch, "supp", dir.path(), &config).await;
    let (mut process, _) = spawn_role("process", &kafka, &ch, "supp", dir.path(), &config).await;
    let (mut query, api) = spawn_role("query", &kafka, &ch, "supp", dir.path(), &config).await;
    let client = reqwest::Client::new();
    let check = |api: String, key: String, address: &'static str| {
        let client = client.clone();
        async move {
            let answer: serde_json::Value = client.post(format!("{api}/v1/suppressions/check")).bearer_auth(key).json(&serde_json::json!({"recipients": [address]})).send().await.unwrap().json().await.unwrap();
            answer["suppressed"][0]["reason"].as_str().map(str::to_string)
        }
    };

    let bounce = serde_json::json!([{"type": "bounced", "campaign": "spring", "message_id": "<k1@x>", "recipient": "Gone@Example.com", "bounce_class": "hard", "status": "5.1.1"}]);
    let res = client.post(format!("{edge}/v1/events")).bearer_auth(&write).json(&bounce).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let acked = Instant::now();
    while check(api.clone(), read.clone(), "gone@example.com").await.is_none() {
        assert!(acked.elapsed() < Duration::from_secs(10), "not suppressed after 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The freshness figure (target p99 < 1 s) is the benchmark's; a test only says it comes.
    println!("kafka: 202 -> suppressed in {:?}", acked.elapsed());
    assert_eq!(check(api.clone(), read_globex.clone(), "gone@example.com").await, None, "another tenant's list");
    let res = client.put(format!("{api}/v1/suppressions/vip@example.com")).bearer_auth(&read).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    while check(api.clone(), read.clone(), "vip@example.com").await.is_none() {
        assert!(Instant::now() < deadline, "manual suppression not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let feed = |api: String| {
        let (client, read) = (client.clone(), read.clone());
        async move {
            let page: serde_json::Value = client.get(format!("{api}/v1/suppressions/changes")).bearer_auth(read).send().await.unwrap().json().await.unwrap();
            page["changes"].as_array().unwrap().iter().map(|c| (c["address"].as_str().unwrap().to_string(), c["action"].as_str().unwrap().to_string())).collect::<Vec<_>>()
        }
    };
    let before = feed(api.clone()).await;
    assert_eq!(before, [("gone@example.com".to_string(), "suppressed".to_string()), ("vip@example.com".into(), "suppressed".into())]);

    // kill -9 every role; start them again: the list is rebuilt from the topic and snapshots.
    for child in [&mut ingest, &mut process, &mut query] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let (mut process, _) = spawn_role("process", &kafka, &ch, "supp", dir.path(), &config).await;
    let (mut query, api) = spawn_role("query", &kafka, &ch, "supp", dir.path(), &config).await;
    assert_eq!(check(api.clone(), read.clone(), "gone@example.com").await.as_deref(), Some("hard_bounce"));
    assert_eq!(check(api.clone(), read.clone(), "vip@example.com").await.as_deref(), Some("manual"));
    assert_eq!(feed(api.clone()).await, before, "the feed after a restart: the same changes, once each");
    for child in [&mut process, &mut query] {
        assert!(terminate(child).success());
    }
}

/// A broker that stops answering (SIGSTOP) and a ClickHouse that goes away: the edge answers 503
/// within `http.publish_timeout_ms` instead of hanging, every role's `/readyz` says what is
/// wrong, the query role answers 503 in JSON, and once each is back everything acknowledged or
/// retried is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_broker_and_a_store_outage_answer_503_in_bounded_time_and_lose_and_double_nothing() {
    let kafka = Kafka::start();
    let mut ch = ClickHouse::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "stall.");
    let registry = |args: &[&str]| tool(dir.path(), args).trim().to_string();
    registry(&["tenants", "create", "acme"]);
    let write = registry(&["keys", "create", "--tenant", "acme", "--scope", "write"]);
    let read = registry(&["keys", "create", "--tenant", "acme", "--scope", "read"]);
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap() + "[http]\npublish_timeout_ms = 2000\n").unwrap();
    ClickHouseEventStore::migrate(&ch_config(&ch, "stall")).await.unwrap();
    let (mut ingest, edge) = spawn_role("ingest", &kafka, &ch, "stall", dir.path(), &config).await;
    let (mut process, _) = spawn_role("process", &kafka, &ch, "stall", dir.path(), &config).await;
    let (mut query, api) = spawn_role("query", &kafka, &ch, "stall", dir.path(), &config).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let batch = |from: usize| -> Vec<serde_json::Value> {
        (from..from + 50).map(|i| serde_json::json!({"type": "sent", "campaign": "stall", "message_id": format!("<{i}@x>"), "recipient": format!("r{i}@gmail.com")})).collect()
    };
    let post = |body: Vec<serde_json::Value>| {
        let req = client.post(format!("{edge}/v1/events")).bearer_auth(&write).json(&body);
        async move {
            let started = Instant::now();
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.headers().get("retry-after").is_some(), started.elapsed())
        }
    };
    assert_eq!(post(batch(0)).await.0, 202);

    kafka.pause();
    let (status, retry_after, took) = post(batch(50)).await;
    assert_eq!((status, retry_after), (503, true), "a stalled broker is unavailable, retry");
    // Bounded, not hung: librdkafka alone would wait its 30 s message timeout.
    assert!(took < Duration::from_secs(10), "answered after {took:?}, bound 2 s");
    let ready = client.get(format!("{edge}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "the edge is not ready while the broker stalls");
    kafka.resume();
    // Back to acknowledging: the same batch, retried as a sending node would.
    let healed = Instant::now();
    let mut answered = 0;
    while healed.elapsed() < Duration::from_secs(30) {
        answered = post(batch(50)).await.0;
        if answered == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answered, 202, "acknowledging again after the broker came back");
    eprintln!("stalled broker: 503 after {took:?}; acknowledging again {:?} after it resumed", healed.elapsed());

    // The store goes away: the query role says so and answers 503 in JSON, then recovers.
    let store = ClickHouseEventStore::new(&ch_config(&ch, "stall"));
    assert_eq!(settle(&store, 100, Duration::from_secs(60)).await, (100, 100), "each event once, the timed-out write and its retry included");
    ch.stop();
    let url = format!("{api}/v1/stats/overview");
    let res = client.get(&url).bearer_auth(&read).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("content-type").is_some_and(|v| v.to_str().unwrap().starts_with("application/json")));
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["errors"][0]["reason"].as_str().is_some_and(|r| r.contains("retry")), "{body}");
    let ready: serde_json::Value = client.get(format!("{api}/readyz")).send().await.unwrap().json().await.unwrap();
    assert!(ready["errors"][0]["reason"].as_str().is_some_and(|r| r.contains("not ready")), "{ready}");
    ch.start_again();
    wait_for_ok(&format!("{api}/readyz"), Duration::from_secs(60)).await;
    let totals = client.get(&url).bearer_auth(&read).send().await.unwrap().json::<serde_json::Value>().await.unwrap();
    assert_eq!(totals["totals"]["sent"], 100, "{totals}");

    for child in [&mut ingest, &mut process, &mut query] {
        assert!(terminate(child).success());
    }
}
