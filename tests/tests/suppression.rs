//! The suppression service end to end, on the real binary: hard bounces (reported and from a
//! DSN), complaints (ARF) and one-click unsubscribes suppress their address within a second of
//! their 202, survive kill -9, stay within their tenant; the changes feed returns every change
//! once across a restart; manual changes, imports and exports.

use mailpipe_tests::{binary, spawn_serve, tool, wait_for_ok};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DSN: &str = "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@mail.a.example\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could not be delivered.\r\n\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown in local recipient table\r\n\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: news@mail.a.example\r\nTo: gone@example.net\r\nSubject: Spring sale\r\nMessage-ID: <spring-1@mail.a.example>\r\n\r\n--B--\r\n";

const ARF: &str = "From: feedback@fbl.example.com\r\nTo: fbl@mail.a.example\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"F\"\r\n\r\n--F\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n--F\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: angry@yahoo.com\r\nSource-IP: 192.0.2.1\r\n\r\n--F\r\nContent-Type: message/rfc822\r\n\r\nFrom: news@mail.a.example\r\nTo: angry@yahoo.com\r\nSubject: Spring sale\r\nMessage-ID: <spring-2@mail.a.example>\r\n\r\nBuy now\r\n\r\n--F--\r\n";

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn check(&self, key: &str, recipients: &[&str], stream: Option<&str>) -> Value {
        let mut body = json!({ "recipients": recipients });
        if let Some(s) = stream {
            body["stream"] = s.into();
        }
        let r = self.client.post(format!("{}/v1/suppressions/check", self.base)).bearer_auth(key).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// The reasons `recipients` are suppressed for, in the order answered.
    async fn suppressed(&self, key: &str, recipients: &[&str], stream: Option<&str>) -> Vec<(String, String)> {
        let answer = self.check(key, recipients, stream).await;
        answer["suppressed"].as_array().unwrap().iter().map(|s| (s["recipient"].as_str().unwrap().to_string(), s["reason"].as_str().unwrap().to_string())).collect()
    }

    /// Waits until `address` is suppressed; how long that took.
    async fn until_suppressed(&self, key: &str, address: &str, stream: Option<&str>) -> Duration {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if !self.suppressed(key, &[address], stream).await.is_empty() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{address} was not suppressed within 10 s");
    }

    async fn get(&self, key: &str, path: &str) -> Value {
        let r = self.client.get(format!("{}{path}", self.base)).bearer_auth(key).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    async fn post(&self, key: &str, path: &str, body: reqwest::Body, content_type: &str) -> u16 {
        let r = self.client.post(format!("{}{path}", self.base)).bearer_auth(key).header("content-type", content_type).body(body).send().await.unwrap();
        r.status().as_u16()
    }

    /// A one-click unsubscribe from a URL made without a stream.
    async fn one_click(&self, d: &std::path::Path, message_id: &str, recipient: &str) {
        let url = tool(d, &["url", "unsubscribe", "--tenant", "a", "--campaign", "welcome", "--message-id", message_id, "--recipient", recipient]);
        let path = &url.trim()[url.find("/u/").unwrap()..];
        let r = self.client.post(format!("{}{path}", self.base)).header("content-type", "application/x-www-form-urlencoded").body("List-Unsubscribe=One-Click").send().await.unwrap();
        assert!(r.status().is_success(), "one-click: {}", r.status());
    }

    async fn events(&self, key: &str, events: Value) {
        let r = self.client.post(format!("{}/v1/events", self.base)).bearer_auth(key).json(&events).send().await.unwrap();
        assert_eq!(r.status(), 202, "{events}: {}", r.text().await.unwrap_or_default());
    }

    /// Every change of the feed from `cursor`, following `next_cursor` to the end.
    async fn feed(&self, key: &str, mut cursor: String) -> (Vec<Value>, String) {
        let mut all = Vec::new();
        loop {
            let page = self.get(key, &format!("/v1/suppressions/changes?cursor={cursor}&limit=3")).await;
            let changes = page["changes"].as_array().unwrap().clone();
            cursor = page["next_cursor"].as_str().unwrap().to_string();
            if changes.is_empty() {
                return (all, cursor);
            }
            all.extend(changes);
        }
    }
}

fn bounce(n: u32, recipient: &str, class: &str, status: &str) -> Value {
    json!({"type": "bounced", "campaign": "spring", "message_id": format!("<b{n}@mail.a.example>"), "recipient": recipient, "bounce_class": class, "status": status, "reason": format!("{status} test"), "timestamp": chrono::Utc::now().to_rfc3339()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressions_appear_within_a_second_survive_kill_9_stay_per_tenant_and_feed_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool(d, &["tenants", "create", "a"]);
    tool(d, &["tenants", "create", "b"]);
    let write = tool(d, &["keys", "create", "--tenant", "a", "--scope", "events:write,inbound:write", "--tier", "enterprise"]).trim().to_string();
    let key_a = tool(d, &["keys", "create", "--tenant", "a", "--scope", "suppressions:read,suppressions:write,stats:read", "--tier", "enterprise"]).trim().to_string();
    let key_b = tool(d, &["keys", "create", "--tenant", "b", "--scope", "suppressions:read,suppressions:write", "--tier", "enterprise"]).trim().to_string();
    let (mut child, base) = spawn_serve(d, 200).await;
    wait_for_ok(&format!("{base}/readyz"), Duration::from_secs(15)).await;
    let api = Api { client: reqwest::Client::new(), base: base.clone() };

    // A hard bounce reported by a sending node.
    api.events(&write, json!([bounce(1, "Hard@X.com", "hard", "5.1.1")])).await;
    let reported = api.until_suppressed(&key_a, "hard@x.com", None).await;
    // A DSN and an ARF report posted raw.
    assert_eq!(api.post(&write, "/v1/inbound", DSN.into(), "message/rfc822").await, 202);
    let dsn = api.until_suppressed(&key_a, "gone@example.net", None).await;
    assert_eq!(api.post(&write, "/v1/inbound", ARF.into(), "message/rfc822").await, 202);
    let arf = api.until_suppressed(&key_a, "angry@yahoo.com", None).await;
    // A one-click unsubscribe from a message sent on the marketing stream.
    let url = tool(d, &["url", "unsubscribe", "--tenant", "a", "--campaign", "spring", "--message-id", "<u1@mail.a.example>", "--recipient", "unsub@x.com", "--stream", "marketing"]);
    let path = &url.trim()[url.find("/u/").unwrap()..];
    let r = api.client.post(format!("{base}{path}")).header("content-type", "application/x-www-form-urlencoded").body("List-Unsubscribe=One-Click").send().await.unwrap();
    assert!(r.status().is_success(), "one-click: {}", r.status());
    let one_click = api.until_suppressed(&key_a, "unsub@x.com", Some("marketing")).await;
    println!("202 -> suppressed: reported hard bounce {reported:?}, DSN {dsn:?}, ARF {arf:?}, one-click {one_click:?}");
    for (what, took) in [("reported hard bounce", reported), ("DSN", dsn), ("ARF", arf), ("one-click", one_click)] {
        assert!(took < Duration::from_secs(1), "{what} took {took:?}");
    }
    assert!(api.suppressed(&key_a, &["unsub@x.com"], Some("transactional")).await.is_empty(), "an unsubscribe from marketing leaves transactional mail");

    // An unsubscribe that names no stream (from a URL made without one) takes the stream of its
    // message's send, once the send is stored.
    let now = chrono::Utc::now().to_rfc3339();
    api.events(&write, json!([{"type": "sent", "campaign": "welcome", "message_id": "<w1@mail.a.example>", "recipient": "new@x.com", "stream": "transactional", "timestamp": now}])).await;
    let today = chrono::Utc::now().date_naive();
    let started = Instant::now();
    while api.get(&key_a, &format!("/v1/stats/overview?from={today}&to={today}&campaign=welcome")).await["totals"]["sent"] != 1 {
        assert!(started.elapsed() < Duration::from_secs(10), "the send was not stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.one_click(d, "<w1@mail.a.example>", "New@x.com").await;
    api.until_suppressed(&key_a, "new@x.com", Some("transactional")).await;
    assert!(api.suppressed(&key_a, &["new@x.com"], Some("marketing")).await.is_empty(), "the reported unsubscribe took its send's stream");
    // A message whose send is not stored: every stream (the safe side).
    api.one_click(d, "<never-sent@mail.a.example>", "ghost@x.com").await;
    api.until_suppressed(&key_a, "ghost@x.com", Some("marketing")).await;
    assert_eq!(api.suppressed(&key_a, &["ghost@x.com"], Some("transactional")).await.len(), 1);

    // Provenance: the diagnostic of the DSN, the feedback type of the ARF report.
    let gone = api.get(&key_a, "/v1/suppressions/gone@example.net").await;
    let p = &gone["history"][0]["provenance"];
    assert_eq!((gone["reason"].as_str(), p["status"].as_str(), p["source"].as_str()), (Some("hard_bounce"), Some("5.1.1"), Some("event")));
    assert!(p["diagnostic"].as_str().is_some() && p["event_id"].as_str().is_some(), "{gone}");
    let angry = api.get(&key_a, "/v1/suppressions/%3CANGRY@Yahoo.com%3E").await;
    assert_eq!(angry["history"][0]["provenance"]["feedback_type"].as_str(), Some("abuse"), "{angry}");

    // Soft bounces: under the policy (5 in 14 days) nothing; at it, a temporary suppression.
    api.events(&write, json!((0..4).map(|i| bounce(100 + i, "soft@x.com", "soft", "4.2.2")).collect::<Vec<_>>())).await;
    api.events(&write, json!([bounce(1, "Hard@X.com", "hard", "5.1.1")])).await; // a redelivery
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(api.suppressed(&key_a, &["soft@x.com"], None).await.is_empty(), "4 soft bounces are under the policy");
    api.events(&write, json!([bounce(104, "soft@x.com", "soft", "4.2.2")])).await;
    api.until_suppressed(&key_a, "soft@x.com", None).await;
    let soft = api.check(&key_a, &["soft@x.com"], None).await;
    assert_eq!(soft["suppressed"][0]["reason"].as_str(), Some("soft_bounce_limit"));
    assert!(soft["suppressed"][0]["expires_at"].as_str().is_some(), "{soft}");
    assert_eq!(api.get(&key_a, "/v1/suppressions/hard@x.com").await["history"].as_array().unwrap().len(), 1, "a redelivered bounce adds no history");

    // A batch: request order, the request's spelling, a malformed address answered alone.
    let answer = api.check(&key_a, &["  <HARD@X.COM>", "ok@x.com", "not an address", "angry@yahoo.com"], None).await;
    assert_eq!(answer["checked"], 4);
    let got: Vec<&str> = answer["suppressed"].as_array().unwrap().iter().map(|s| s["recipient"].as_str().unwrap()).collect();
    assert_eq!(got, ["  <HARD@X.COM>", "angry@yahoo.com"]);
    assert_eq!(answer["invalid"][0]["index"], 2);

    // Tenant b sees nothing of a's list and cannot change it.
    assert!(api.suppressed(&key_b, &["hard@x.com", "gone@example.net", "angry@yahoo.com", "unsub@x.com"], None).await.is_empty());
    let b_view = api.get(&key_b, "/v1/suppressions/hard@x.com").await;
    assert_eq!((b_view["suppressed"].as_bool(), b_view["history"].as_array().map(Vec::len)), (Some(false), Some(0)));
    let r = api.client.delete(format!("{base}/v1/suppressions/hard@x.com")).bearer_auth(&key_b).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(api.get(&key_b, "/v1/suppressions/changes").await["changes"].as_array().unwrap().len(), 0);
    let r = api.client.get(format!("{base}/v1/suppressions/summary")).bearer_auth(&key_b).send().await.unwrap();
    assert_eq!(r.status(), 403, "b's key has no stats:read");

    // The feed, all of it; then kill -9 and restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, cursor) = api.feed(&key_a, String::new()).await;
    assert_eq!(before.len(), 7, "{before:?}");
    assert!(!api.suppressed(&key_a, &["hard@x.com"], None).await.is_empty(), "b's release did not touch a's list");
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, base) = spawn_serve(d, 200).await;
    wait_for_ok(&format!("{base}/readyz"), Duration::from_secs(15)).await;
    let api = Api { client: reqwest::Client::new(), base: base.clone() };
    let all = ["hard@x.com", "gone@example.net", "angry@yahoo.com", "soft@x.com"];
    assert_eq!(api.suppressed(&key_a, &all, None).await.len(), 4, "after kill -9");
    assert_eq!(api.suppressed(&key_a, &["unsub@x.com"], Some("marketing")).await.len(), 1);
    let (after, end) = api.feed(&key_a, String::new()).await;
    assert_eq!(after, before, "the feed read again after a restart: the same changes, once each");
    assert_eq!(end, cursor);

    // A long poll waits for the next change: a release, recorded with who and why.
    let waiting = {
        let (client, base, key, cursor) = (api.client.clone(), base.clone(), key_a.clone(), cursor.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let page: Value = client.get(format!("{base}/v1/suppressions/changes?cursor={cursor}&wait=20s")).bearer_auth(key).send().await.unwrap().json().await.unwrap();
            (page, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = api.client.delete(format!("{base}/v1/suppressions/Hard@x.com?note=asked%20by%20phone")).bearer_auth(&key_a).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let (page, waited) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(5), "the long poll answered after {waited:?}");
    assert_eq!(page["changes"][0]["action"].as_str(), Some("released"), "{page}");
    assert_eq!(page["changes"][0]["provenance"]["note"].as_str(), Some("asked by phone"));
    assert!(api.suppressed(&key_a, &["hard@x.com"], None).await.is_empty());
    // A new hard bounce suppresses it again.
    api.events(&write, json!([bounce(2, "hard@x.com", "hard", "5.1.1")])).await;
    api.until_suppressed(&key_a, "hard@x.com", None).await;
    let history: Vec<String> = api.get(&key_a, "/v1/suppressions/hard@x.com").await["history"].as_array().unwrap().iter().map(|c| c["action"].as_str().unwrap().to_string()).collect();
    assert_eq!(history, ["suppressed", "released", "suppressed"]);

    // Manual, and the list by reason; the summary counts by reason.
    let r = api.client.put(format!("{base}/v1/suppressions/vip@x.com")).bearer_auth(&key_a).json(&json!({"note": "legal hold"})).send().await.unwrap();
    assert_eq!(r.status(), 202);
    api.until_suppressed(&key_a, "vip@x.com", None).await;
    let manual = api.get(&key_a, "/v1/suppressions?reason=manual").await;
    assert_eq!(manual["entries"][0]["address"].as_str(), Some("vip@x.com"), "{manual}");
    assert_eq!(manual["entries"][0]["provenance"]["note"].as_str(), Some("legal hold"));
    let summary = api.get(&key_a, "/v1/suppressions/summary").await;
    assert_eq!(summary["by_reason"], json!({"complaint": 1, "hard_bounce": 2, "manual": 1, "soft_bounce_limit": 1, "unsubscribe": 3}), "{summary}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_imports_other_platforms_csv_reports_refused_lines_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool(d, &["tenants", "create", "a"]);
    let key = tool(d, &["keys", "create", "--tenant", "a", "--scope", "suppressions:read", "--tier", "enterprise"]).trim().to_string();
    let (mut child, base) = spawn_serve(d, 200).await;
    wait_for_ok(&format!("{base}/readyz"), Duration::from_secs(15)).await;
    let ses = d.join("ses.csv");
    std::fs::write(&ses, "EmailAddress,Reason,LastUpdateTime\nbounced@x.com,BOUNCE,2026-11-01T10:00:00Z\nSpam@X.com,COMPLAINT,2026-11-02T10:00:00Z\nnot-an-address,BOUNCE,2026-11-03T10:00:00Z\nother@x.com,,2026-11-03T10:00:00Z\n").unwrap();
    let out = std::process::Command::new(binary()).args(["suppressions", "import", "--tenant", "a", "--url", &base]).arg(&ses).env("MAILPIPE__DATA_DIR", d).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "one line refused: {stderr}");
    assert!(stderr.contains("line 4") && stderr.contains("3 addresses imported"), "{stderr}");
    let api = Api { client: reqwest::Client::new(), base: base.clone() };
    api.until_suppressed(&key, "other@x.com", None).await;
    assert_eq!(
        api.suppressed(&key, &["bounced@x.com", "spam@x.com", "other@x.com"], None).await,
        [("bounced@x.com".to_string(), "hard_bounce".to_string()), ("spam@x.com".into(), "complaint".into()), ("other@x.com".into(), "manual".into())]
    );
    let keys_after = tool(d, &["keys", "list", "--tenant", "a", "--json"]);
    assert_eq!(keys_after.lines().count(), 1, "the key made for the run is revoked: {keys_after}");
    let csv = d.join("out.csv");
    let out = std::process::Command::new(binary()).args(["suppressions", "export", "--tenant", "a", "--url", &base, "--output"]).arg(&csv).env("MAILPIPE__DATA_DIR", d).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<String> = text.lines().skip(1).map(|l| l.split(',').take(2).collect::<Vec<_>>().join(",")).collect();
    lines.sort();
    assert_eq!(lines, ["bounced@x.com,hard_bounce", "other@x.com,manual", "spam@x.com,complaint"], "{text}");
    // Exported, then imported into another tenant: the same list.
    tool(d, &["tenants", "create", "c"]);
    let key_c = tool(d, &["keys", "create", "--tenant", "c", "--scope", "suppressions:read", "--tier", "enterprise"]).trim().to_string();
    let out = std::process::Command::new(binary()).args(["suppressions", "import", "--tenant", "c", "--url", &base]).arg(&csv).env("MAILPIPE__DATA_DIR", d).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    api.until_suppressed(&key_c, "other@x.com", None).await;
    assert_eq!(api.suppressed(&key_c, &["bounced@x.com", "spam@x.com", "other@x.com"], None).await.len(), 3);
    child.kill().unwrap();
    child.wait().unwrap();
}
