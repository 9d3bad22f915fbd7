//! The dashboard in a real browser (Debian's chromium, driven by playwright-core) shows the
//! numbers the API returns.

use chrono::{Duration, Utc};
use mailpipe_tests::Server;
use serde_json::json;
use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_numbers_the_api_returns() {
    let s = Server::start().await;
    let write = s.key("a", "events:write");
    let now = Utc::now();
    let mut events = Vec::new();
    for i in 0..120 {
        let at = (now - Duration::days(i % 20) - Duration::minutes(5)).to_rfc3339();
        let (campaign, recipient) = (format!("spring-{}", i % 2), format!("r{i}@gmail.com"));
        events.push(json!({"type": "sent", "campaign": campaign, "message_id": format!("<{i}@x>"), "recipient": recipient, "timestamp": at}));
        if i % 3 != 0 {
            events.push(json!({"type": "delivered", "campaign": campaign, "message_id": format!("<{i}@x>"), "recipient": recipient, "timestamp": at}));
        }
        if i % 10 == 0 {
            events.push(json!({"type": "conversion", "campaign": campaign, "message_id": format!("<{i}@x>"), "recipient": recipient, "timestamp": at, "revenue": 12.25}));
        }
    }
    // Two hard bounces, and a complaint below, for the suppression counts and list.
    for (i, recipient) in ["gone1@example.com", "gone2@example.com"].into_iter().enumerate() {
        events.push(json!({"type": "bounced", "bounce_class": "hard", "status": "5.1.1", "campaign": "spring-0", "message_id": format!("<b{i}@x>"), "recipient": recipient}));
    }
    let res = reqwest::Client::new().post(format!("{}/v1/events", s.base)).bearer_auth(&write).json(&events).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let arf = "From: fbl@fbl.example.com\r\nTo: fbl@mail.a.example\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"F\"\r\n\r\n--F\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n\r\n--F\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: angry@yahoo.com\r\n\r\n--F\r\nContent-Type: message/rfc822\r\n\r\nFrom: news@mail.a.example\r\nTo: angry@yahoo.com\r\nMessage-ID: <0@x>\r\n\r\nBuy\r\n\r\n--F--\r\n";
    let res = reqwest::Client::new().post(format!("{}/v1/inbound", s.base)).bearer_auth(s.key("a", "inbound:write")).body(arf).send().await.unwrap();
    assert_eq!(res.status(), 202);
    s.settle().await;

    let read = s.key("a", "stats:read,suppressions:read");
    let summary: serde_json::Value = reqwest::Client::new().get(format!("{}/v1/suppressions/summary", s.base)).bearer_auth(&read).send().await.unwrap().json().await.unwrap();
    assert_eq!((summary["by_reason"]["hard_bounce"].as_u64(), summary["by_reason"]["complaint"].as_u64()), (Some(2), Some(1)), "{summary}");
    let api = |days: i64, campaign: Option<String>| {
        let (base, read) = (s.base.clone(), read.clone());
        async move {
            let today = Utc::now().date_naive();
            let mut url = format!("{base}/v1/stats/overview?tz=UTC&from={}&to={today}", today - Duration::days(days - 1));
            if let Some(c) = campaign {
                url.push_str(&format!("&campaign={c}"));
            }
            let body: serde_json::Value = reqwest::Client::new().get(url).bearer_auth(read).send().await.unwrap().json().await.unwrap();
            body["totals"].clone()
        }
    };

    let script = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("browser/dashboard.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("{}/#key={read}", s.base))
        .current_dir(script.parent().unwrap())
        .output()
        .await
        .expect("node is installed (see .ci/run)");
    assert!(out.status.success(), "browser run failed: {}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["errors"], json!([]), "page errors");

    let number = |text: &serde_json::Value| text.as_str().unwrap().replace(',', "").parse::<f64>().unwrap();
    let check = |shown: &serde_json::Value, totals: &serde_json::Value, label: &str| {
        for metric in ["sent", "delivered", "conversions", "unique_opens", "hard_bounces"] {
            assert_eq!(number(&shown[metric]), totals[metric].as_f64().unwrap(), "{label}: {metric}");
        }
        assert_eq!(number(&shown["revenue_micros"]), totals["revenue_micros"].as_f64().unwrap() / 1e6, "{label}: revenue");
    };
    let last30 = api(30, None).await;
    assert_eq!(last30["sent"], 120, "fixture not loaded");
    check(&seen["last30"], &last30, "30 days");
    let last7 = api(7, None).await;
    assert!(last7["sent"].as_u64().unwrap() < 120);
    check(&seen["last7"], &last7, "7 days");
    let campaign = seen["campaign"]["name"].as_str().unwrap().to_string();
    check(&seen["campaign"]["kpis"], &api(7, Some(campaign)).await, "one campaign, 7 days");
    assert_eq!(seen["rows"], 7);
    assert_eq!(seen["bars"], 7);

    // The suppression counts are the API's, the list page lists the complaint with its history.
    assert_eq!(number(&seen["suppression_counts"]["total"]), summary["total"].as_f64().unwrap());
    assert_eq!(number(&seen["suppression_counts"]["hard_bounce"]), 2.0);
    assert_eq!(seen["complaints_listed"], json!(["angry@yahoo.com"]));
    assert!(seen["detail_state"].as_str().unwrap().contains("suppressed: complaint"), "{}", seen["detail_state"]);
    let history = seen["history"][0].as_str().unwrap();
    assert!(history.contains("suppressed") && history.contains("feedback abuse"), "{history}");
}
