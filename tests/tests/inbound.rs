//! Inbound mail end to end: bounces, complaints and replies posted raw (or piped through
//! `mailpipe inbound`) become events joined to the send they answer.

use mailpipe_tests::{binary, Server};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};

const DSN: &str = "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@mail.a.example\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could not be delivered.\r\n\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown in local recipient table\r\n\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: news@mail.a.example\r\nTo: gone@example.net\r\nSubject: Spring sale\r\nMessage-ID: <spring-1@mail.a.example>\r\n\r\n--B--\r\n";

const ARF: &str = "From: feedback@fbl.example.com\r\nTo: fbl@mail.a.example\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"F\"\r\n\r\n--F\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n--F\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: angry@yahoo.com\r\nSource-IP: 192.0.2.1\r\n\r\n--F\r\nContent-Type: message/rfc822\r\n\r\nFrom: news@mail.a.example\r\nTo: angry@yahoo.com\r\nSubject: Spring sale\r\nMessage-ID: <spring-2@mail.a.example>\r\n\r\nBuy now\r\n\r\n--F--\r\n";

const REPLY: &str = "From: Ana <ana@gmail.com>\r\nTo: news@mail.a.example\r\nSubject: Re: Spring sale\r\nIn-Reply-To: <spring-3@mail.a.example>\r\nReferences: <spring-3@mail.a.example>\r\nMessage-ID: <r1@gmail.com>\r\n\r\nThanks, I am interested. Can we talk on Monday?\r\n";

async fn overview(s: &Server, campaign: &str) -> serde_json::Value {
    let url = format!("{}/v1/stats/overview?campaign={campaign}", s.base);
    let body: serde_json::Value =
        reqwest::Client::new().get(url).bearer_auth(s.key("a", "stats:read")).send().await.unwrap().json().await.unwrap();
    body["totals"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_complaints_and_replies_join_their_send() {
    let s = Server::start().await;
    let write = s.key("a", "events:write,inbound:write");
    let client = reqwest::Client::new();
    let sends: Vec<_> = [("1", "gone@example.net"), ("2", "angry@yahoo.com"), ("3", "ana@gmail.com")]
        .iter()
        .map(|(n, r)| json!({"type": "sent", "campaign": "spring", "message_id": format!("<spring-{n}@mail.a.example>"), "recipient": r}))
        .collect();
    let res = client.post(format!("{}/v1/events", s.base)).bearer_auth(&write).json(&sends).send().await.unwrap();
    assert_eq!(res.status(), 202);
    s.settle().await;

    for raw in [DSN, ARF, REPLY, DSN] {
        let res = client.post(format!("{}/v1/inbound", s.base)).bearer_auth(&write).body(raw).send().await.unwrap();
        assert_eq!(res.status(), 202);
    }
    s.settle().await;
    let t = overview(&s, "spring").await;
    // The DSN was delivered twice (an MTA retry): it still counts once.
    assert_eq!((t["sent"].as_u64(), t["hard_bounces"].as_u64(), t["soft_bounces"].as_u64()), (Some(3), Some(1), Some(0)));
    assert_eq!((t["complaints"].as_u64(), t["replies"].as_u64()), (Some(1), Some(1)));
    // Another tenant's key cannot post into tenant a, and reads nothing of it.
    let res = client.post(format!("{}/v1/inbound", s.base)).bearer_auth(s.key("b", "stats:read")).body(DSN).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let empty = client.post(format!("{}/v1/inbound", s.base)).bearer_auth(&write).body("  ").send().await.unwrap();
    assert_eq!(empty.status(), 400);
}

fn pipe(base: &str, key: &str, raw: &str) -> i32 {
    let mut child = Command::new(binary())
        .args(["inbound", "--url", base])
        .env("MAILPIPE_API_KEY", key)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(raw.as_bytes()).unwrap();
    child.wait().unwrap().code().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailpipe_inbound_reads_stdin_and_exits_like_an_mta_expects() {
    let s = Server::start().await;
    let write = s.key("a", "events:write,inbound:write");
    let (base, w) = (s.base.clone(), write.clone());
    assert_eq!(tokio::task::spawn_blocking(move || pipe(&base, &w, REPLY)).await.unwrap(), 0);
    let base = s.base.clone();
    assert_eq!(tokio::task::spawn_blocking(move || pipe(&base, "mp_bad_key", REPLY)).await.unwrap(), 77);
    let closed = format!("http://127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    assert_eq!(tokio::task::spawn_blocking(move || pipe(&closed, &write, REPLY)).await.unwrap(), 75);
    s.settle().await;
    // No send is known for this reply: it is kept under the unmatched campaign.
    assert_eq!(overview(&s, "(unmatched)").await["replies"], 1);
}

/// A DSN that comes before its send is reported (a fast synchronous bounce, a sending node
/// that reports late) is kept under `(unmatched)` and joins its send's campaign once the send
/// arrives, without being posted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mib_dsn_goes_through_mailpipe_inbound_and_a_message_over_16_mib_is_refused_for_good() {
    let s = Server::start().await;
    let write = s.key("a", "events:write,inbound:write");
    // The DSN with the returned message in full: 10 MiB of attachment after the headers.
    let attachment = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkwYWJjZGVmZ2hpams=\r\n".repeat((10 << 20) / 62);
    let big = DSN.replace("--B--\r\n", &format!("--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{attachment}--B--\r\n"));
    assert!(big.len() > 10 << 20);
    let (base, w) = (s.base.clone(), write.clone());
    assert_eq!(tokio::task::spawn_blocking(move || pipe(&base, &w, &big)).await.unwrap(), 0, "accepted");
    // Over 16 MiB: 413, exit 65 (EX_DATAERR), so the MTA bounces it instead of retrying forever.
    let huge = format!("{DSN}{}", "x".repeat(mailpipe_schemas::INBOUND_MAX_BYTES));
    let (base, w) = (s.base.clone(), write.clone());
    assert_eq!(tokio::task::spawn_blocking(move || pipe(&base, &w, &huge)).await.unwrap(), 65, "refused for good");
    // The route itself answers 413 above the limit.
    let over = vec![b'x'; mailpipe_schemas::INBOUND_MAX_BYTES + 1];
    let res = reqwest::Client::new().post(format!("{}/v1/inbound", s.base)).bearer_auth(&write).body(over).send().await.unwrap();
    assert_eq!(res.status(), 413);
    s.settle().await;
    assert_eq!(overview(&s, "(unmatched)").await["hard_bounces"], 1, "the big DSN was classified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_that_arrives_before_its_send_joins_it_later() {
    let s = Server::start().await;
    let write = s.key("a", "events:write,inbound:write");
    let client = reqwest::Client::new();
    let res = client.post(format!("{}/v1/inbound", s.base)).bearer_auth(&write).body(DSN).send().await.unwrap();
    assert_eq!(res.status(), 202);
    s.settle().await;
    assert_eq!(overview(&s, "(unmatched)").await["hard_bounces"], 1);
    assert_eq!(overview(&s, "spring").await["hard_bounces"], 0);
    let send = json!([{"type": "sent", "campaign": "spring", "variant": "B", "message_id": "spring-1@mail.a.example", "recipient": "gone@example.net"}]);
    let res = client.post(format!("{}/v1/events", s.base)).bearer_auth(&write).json(&send).send().await.unwrap();
    assert_eq!(res.status(), 202);
    s.settle().await;
    let t = overview(&s, "spring").await;
    assert_eq!((t["sent"].as_u64(), t["hard_bounces"].as_u64(), t["bounce_rate"].as_f64()), (Some(1), Some(1), None));
    assert_eq!(overview(&s, "(unmatched)").await["hard_bounces"], 0);
}

/// A bounce classified while the store is down waits for the store instead of being filed
/// under `(unmatched)` for good (its event id is derived, so a guess would stay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_delays_the_join_instead_of_losing_it() {
    use mailpipe_bus::{EmbeddedBusConfig, EmbeddedEventBus, EventBus, Message, EVENTS_TOPIC, INBOUND_TOPIC};
    use mailpipe_schemas::{Envelope, Event, EventType, InboundEnvelope, SCHEMA_VERSION};
    use mailpipe_store::clickhouse::{ClickHouseEventStore, ClickHouseStoreConfig};
    use mailpipe_store::EventStore;
    use std::sync::Arc;
    use std::time::Duration;

    let mut ch = mailpipe_tests::servers::ClickHouse::start();
    let cfg = ClickHouseStoreConfig { url: ch.url(), database: "outage".into(), user: "default".into(), password: String::new() };
    ClickHouseEventStore::migrate(&cfg).await.unwrap();
    let store = Arc::new(ClickHouseEventStore::new(&cfg));
    let sent = Event { campaign: "spring".into(), message_id: "<spring-1@mail.a.example>".into(), recipient: "gone@example.net".into(), ..Event::new(uuid::Uuid::new_v4(), "a", EventType::Sent, chrono::Utc::now()) };
    store.insert(&[sent]).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path())).unwrap());
    let envelope = InboundEnvelope { v: SCHEMA_VERSION, inbound_id: uuid::Uuid::new_v4(), tenant: "a".into(), received_at: chrono::Utc::now() };
    bus.publish(INBOUND_TOPIC, vec![Message { key: b"a".to_vec(), payload: envelope.encode(DSN.as_bytes()) }]).await.unwrap();

    tokio::task::block_in_place(|| ch.stop());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let runner = mailpipe_processors::InboundRunner { bus: bus.clone(), store: store.clone(), group: "inbound-classifier".into() };
    let running = tokio::spawn(runner.run(stop_rx));
    let mut events = bus.subscribe(EVENTS_TOPIC, "check").await.unwrap();
    assert!(events.poll(10, Duration::from_secs(3)).await.unwrap().is_empty(), "nothing is published while the join cannot be made");
    tokio::task::block_in_place(|| ch.start_again());

    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.is_empty() && std::time::Instant::now() < deadline {
        got = events.poll(10, Duration::from_millis(500)).await.unwrap();
    }
    let bounce: Envelope = serde_json::from_slice(&got.first().expect("the bounce once the store is back").payload).unwrap();
    assert_eq!((bounce.event.event_type, bounce.event.campaign.as_str()), (EventType::Bounced, "spring"));
    stop.send_replace(true);
    running.await.unwrap().unwrap();
}
