//! The edge's guarantees, end to end through bus, processor and store, in one process.

use mailpipe_tests::{totals, Server};
use mailpipe_tokens::Kind;
use serde_json::json;

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test]
async fn forged_or_altered_click_tokens_never_redirect() {
    let s = Server::start().await;
    let good = s.token(Kind::Click, "a", "m1", "https://shop.example/x");
    let res = client().get(format!("{}/c/{good}", s.base)).send().await.unwrap();
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://shop.example/x");

    // Flip one character anywhere in the token: never a redirect.
    let mut chars: Vec<char> = good.chars().collect();
    for i in (0..chars.len()).step_by(3) {
        let original = chars[i];
        chars[i] = if original == 'A' { 'B' } else { 'A' };
        let altered: String = chars.iter().collect();
        let res = client().get(format!("{}/c/{altered}", s.base)).send().await.unwrap();
        assert_eq!(res.status(), 404, "altered at {i}");
        assert!(res.headers().get("location").is_none());
        chars[i] = original;
    }
    // A token minted with a key that is not the tenant's.
    let forged = mailpipe_tokens::mint(
        &mailpipe_tokens::Claims {
            kind: Kind::Click,
            key_id: "k1".into(),
            tenant: "a".into(),
            campaign: "c1".into(),
            variant: String::new(),
            message_id: "m1".into(),
            recipient: "x@gmail.com".into(),
            link: "https://evil.example/".into(),
        },
        b"guessed key",
    )
    .unwrap();
    let res = client().get(format!("{}/c/{forged}", s.base)).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.text().await.unwrap().contains("not valid"));
    // An open token is not a click token.
    let open = s.token(Kind::Open, "a", "m1", "");
    assert_eq!(client().get(format!("{}/c/{open}", s.base)).send().await.unwrap().status(), 404);

    s.settle().await;
    let t = totals(&s.base, &s.key("a", "stats:read")).await;
    assert_eq!((t["clicks"].as_u64(), t["unique_clicks"].as_u64()), (Some(1), Some(1)));
}

#[tokio::test]
async fn the_pixel_is_always_served_and_only_valid_hits_count() {
    let s = Server::start().await;
    let good = s.token(Kind::Open, "a", "m1", "");
    // Every /o/ path is answered before routing, its token percent-decoded: an escaped valid
    // token counts like the plain one; an empty token still gets the GIF.
    let escaped = format!("%{:02X}{}", good.as_bytes()[0], &good[1..]);
    for token in [good.as_str(), good.as_str(), escaped.as_str(), "garbage", "", "AQAA", "AQ%41A"] {
        let res = client().get(format!("{}/o/{token}", s.base)).send().await.unwrap();
        assert_eq!(res.status(), 200, "token {token:?}");
        assert_eq!(res.headers()["content-type"], "image/gif");
        let body = res.bytes().await.unwrap();
        assert_eq!(body.len(), 43);
        assert_eq!(&body[..6], b"GIF89a");
    }
    s.settle().await;
    let t = totals(&s.base, &s.key("a", "stats:read")).await;
    assert_eq!((t["opens"].as_u64(), t["unique_opens"].as_u64()), (Some(3), Some(1)));
}

#[tokio::test]
async fn get_never_unsubscribes_and_one_click_post_does() {
    let s = Server::start().await;
    let token = s.token(Kind::Unsubscribe, "a", "m1", "");
    let url = format!("{}/u/{token}", s.base);
    let page = client().get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("List-Unsubscribe"));
    // A POST without the RFC 8058 body is refused.
    assert_eq!(client().post(&url).header("content-type", "application/x-www-form-urlencoded").send().await.unwrap().status(), 400);
    // Nor one that only mentions the words, in a type RFC 8058 does not use.
    let plain = client().post(&url).header("content-type", "text/plain").body("name=\"List-Unsubscribe\" One-Click").send().await.unwrap();
    assert_eq!(plain.status(), 415);
    s.settle().await;
    let key = s.key("a", "stats:read");
    assert_eq!(totals(&s.base, &key).await["unsubscribes"], 0);

    let res = client()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("location").is_none() && res.headers().get("set-cookie").is_none());
    s.settle().await;
    assert_eq!(totals(&s.base, &key).await["unsubscribes"], 1);
    // A forged unsubscribe token does nothing.
    assert_eq!(client().post(format!("{url}x")).body("List-Unsubscribe=One-Click").send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn bad_events_get_400_with_reasons_and_nothing_of_the_request_is_written() {
    let s = Server::start().await;
    let write = s.key("a", "events:write");
    let body = json!([
        {"type": "sent", "campaign": "c1", "message_id": "<1@x>", "recipient": "ok@gmail.com"},
        {"type": "sent", "campaign": "c1", "message_id": "<2@x>", "recipient": "not-an-address"},
        {"type": "bounced", "campaign": "c1", "message_id": "<3@x>", "recipient": "b@gmail.com"}
    ]);
    let res = client().post(format!("{}/v1/events", s.base)).bearer_auth(&write).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 400);
    let errors = res.json::<serde_json::Value>().await.unwrap()["errors"].clone();
    assert_eq!(errors[0]["index"], 1);
    assert_eq!(errors[0]["field"], "recipient");
    assert_eq!(errors[1]["index"], 2);
    assert_eq!(errors[1]["field"], "bounce_class");
    assert!(errors[0]["reason"].as_str().unwrap().contains("email address"));
    s.settle().await;
    assert_eq!(totals(&s.base, &s.key("a", "stats:read")).await["sent"], 0, "part of a rejected request was written");
}

#[tokio::test]
async fn a_resubmitted_batch_is_counted_once() {
    let s = Server::start().await;
    let write = s.key("a", "events:write");
    let body: Vec<serde_json::Value> = (0..50)
        .map(|i| json!({"type": "delivered", "campaign": "c1", "message_id": format!("<{i}@x>"), "recipient": format!("r{i}@yahoo.com")}))
        .collect();
    for _ in 0..3 {
        let res = client().post(format!("{}/v1/events", s.base)).bearer_auth(&write).json(&body).send().await.unwrap();
        assert_eq!(res.status(), 202);
        assert_eq!(res.json::<serde_json::Value>().await.unwrap()["accepted"], 50);
    }
    s.settle().await;
    assert_eq!(totals(&s.base, &s.key("a", "stats:read")).await["delivered"], 50);
}

#[tokio::test]
async fn a_tenant_never_sees_or_writes_another_tenants_data() {
    let s = Server::start().await;
    let write_a = s.key("a", "events:write");
    let events = json!([
        {"type": "sent", "campaign": "secret-a", "message_id": "<1@a>", "recipient": "x@gmail.com"},
        {"type": "conversion", "campaign": "secret-a", "message_id": "<1@a>", "recipient": "x@gmail.com", "revenue": 99.5}
    ]);
    let res = client().post(format!("{}/v1/events", s.base)).bearer_auth(&write_a).json(&events).send().await.unwrap();
    assert_eq!(res.status(), 202);
    s.settle().await;

    let (read_a, read_b) = (s.key("a", "stats:read"), s.key("b", "stats:read"));
    let a = totals(&s.base, &read_a).await;
    assert_eq!((a["sent"].as_u64(), a["revenue_micros"].as_i64()), (Some(1), Some(99_500_000)));
    let b = totals(&s.base, &read_b).await;
    assert_eq!((b["sent"].as_u64(), b["conversions"].as_u64()), (Some(0), Some(0)));
    // Naming a's campaign does not help b.
    let url = format!("{}/v1/stats/overview?campaign=secret-a", s.base);
    let b_campaign: serde_json::Value = client().get(&url).bearer_auth(&read_b).send().await.unwrap().json().await.unwrap();
    assert_eq!(b_campaign["totals"]["sent"], 0);
    let campaigns: serde_json::Value = client().get(format!("{}/v1/campaigns", s.base)).bearer_auth(&read_b).send().await.unwrap().json().await.unwrap();
    assert_eq!(campaigns["campaigns"], json!([]));

    // Scopes and missing keys.
    let res = client().post(format!("{}/v1/events", s.base)).bearer_auth(&read_a).json(&events).send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(client().get(format!("{}/v1/stats/overview", s.base)).send().await.unwrap().status(), 401);
    let res = client().get(format!("{}/v1/stats/overview", s.base)).bearer_auth("mp_0000_forged").send().await.unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let s = Server::start().await;
    let pixel = s.token(Kind::Open, "a", "m1", "");
    client().get(format!("{}/o/{pixel}", s.base)).send().await.unwrap();
    s.settle().await;
    assert_eq!(client().get(format!("{}/healthz", s.base)).send().await.unwrap().status(), 200);
    assert_eq!(client().get(format!("{}/readyz", s.base)).send().await.unwrap().status(), 200);
    // The store's directory gone: not ready, in the JSON error body, naming why; back: ready.
    let (store, away) = (s.dir.path().join("store"), s.dir.path().join("store-away"));
    std::fs::rename(&store, &away).unwrap();
    let res = client().get(format!("{}/readyz", s.base)).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let reason = res.json::<serde_json::Value>().await.unwrap()["errors"][0]["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("not ready: ") && reason.contains("store"), "{reason}");
    std::fs::rename(&away, &store).unwrap();
    assert_eq!(client().get(format!("{}/readyz", s.base)).send().await.unwrap().status(), 200);
    let metrics = client().get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap();
    for name in [
        "mailpipe_ingest_events_received_total",
        "mailpipe_bus_messages_published_total",
        "mailpipe_processor_events_processed_total",
        "mailpipe_store_end_to_end_lag_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn graceful_shutdown_stores_everything_acknowledged() {
    let mut s = Server::start().await;
    let write = s.key("a", "events:write");
    let body: Vec<serde_json::Value> = (0..500)
        .map(|i| json!({"type": "sent", "campaign": "c1", "message_id": format!("<{i}@x>"), "recipient": format!("r{i}@gmail.com")}))
        .collect();
    let res = client().post(format!("{}/v1/events", s.base)).bearer_auth(&write).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 202);
    // Stop at once: the writer must drain the bus and flush before returning.
    s.running.take().unwrap().shutdown().await.unwrap();
    let store = mailpipe_store::datafusion::DataFusionEventStore::open(
        mailpipe_store::datafusion::DataFusionStoreConfig::new(s.dir.path().join("store")),
    )
    .await
    .unwrap();
    assert_eq!(store.event_count(), 500);
}

#[tokio::test]
async fn head_requests_of_scanners_record_nothing() {
    let s = Server::start().await;
    let open = s.token(Kind::Open, "a", "m1", "");
    let click = s.token(Kind::Click, "a", "m1", "https://shop.example/x");
    for _ in 0..3 {
        let res = client().head(format!("{}/o/{open}", s.base)).send().await.unwrap();
        assert_eq!((res.status().as_u16(), res.headers()["content-type"].to_str().unwrap()), (200, "image/gif"));
        let res = client().head(format!("{}/c/{click}", s.base)).send().await.unwrap();
        assert_eq!(res.status(), 302);
    }
    client().get(format!("{}/c/{click}", s.base)).send().await.unwrap();
    s.settle().await;
    let t = totals(&s.base, &s.key("a", "stats:read")).await;
    assert_eq!((t["opens"].as_u64(), t["clicks"].as_u64()), (Some(0), Some(1)), "a HEAD was counted");
}

#[tokio::test]
async fn the_recorded_client_is_the_peer_unless_a_trusted_proxy_says_otherwise() {
    use mailpipe_bus::EVENTS_TOPIC;
    use std::time::Duration;
    async fn recorded_ips(s: &Server) -> Vec<Option<String>> {
        let mut sub = s.running().app.bus.subscribe(EVENTS_TOPIC, "probe").await.unwrap();
        let records = sub.poll(100, Duration::from_secs(2)).await.unwrap();
        records.iter().map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["event"]["ip"].as_str().map(str::to_string)).collect()
    }
    let hit = |s: &Server, forwarded: &'static str| {
        let open = s.token(Kind::Open, "a", "m1", "");
        let url = format!("{}/o/{open}", s.base);
        async move { client().get(url).header("x-forwarded-for", forwarded).send().await.unwrap().status() }
    };
    // Nobody trusted (the default): the socket's peer, whatever the header claims.
    let s = Server::start().await;
    assert_eq!(hit(&s, "203.0.113.7").await, 200);
    assert_eq!(recorded_ips(&s).await, [Some("127.0.0.1".to_string())]);
    // Loopback is the proxy: the address it forwarded, checked to be an IP address.
    let s = Server::start_with(|c| c.http.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    assert_eq!(hit(&s, "198.51.100.1, 203.0.113.7").await, 200);
    assert_eq!(hit(&s, "'; DROP TABLE events; --").await, 200);
    assert_eq!(recorded_ips(&s).await, [Some("203.0.113.7".to_string()), Some("127.0.0.1".to_string())]);
}

#[tokio::test]
async fn operations_endpoints_can_have_a_listener_of_their_own() {
    let s = Server::start_with(|c| c.http.ops_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let ops = format!("http://{}", s.running().ops_addr.expect("an operations listener"));
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(client().get(format!("{ops}{path}")).send().await.unwrap().status(), 200, "{path} on the ops listener");
        assert_eq!(client().get(format!("{}{path}", s.base)).send().await.unwrap().status(), 404, "{path} on the public listener");
    }
    // The API, its document and the pixel stay on the public listener.
    assert_eq!(client().get(format!("{}/v1/openapi.json", s.base)).send().await.unwrap().status(), 200);
    let pixel = client().get(format!("{}/o/x", s.base)).send().await.unwrap();
    assert_eq!(pixel.headers()["content-type"], "image/gif");
    assert_eq!(client().get(format!("{ops}/v1/campaigns")).send().await.unwrap().status(), 404);
}
