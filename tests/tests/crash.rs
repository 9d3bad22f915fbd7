//! kill -9 the real binary: every acknowledged event is stored, exactly once.

use mailpipe_tests::{spawn_serve, tool, totals};
use serde_json::json;

fn batch(from: usize, n: usize) -> serde_json::Value {
    json!((from..from + n)
        .map(|i| json!({"type": "sent", "campaign": "crash", "message_id": format!("<{i}@crash>"), "recipient": format!("r{i}@gmail.com")}))
        .collect::<Vec<_>>())
}

async fn post(client: &reqwest::Client, base: &str, key: &str, body: &serde_json::Value) -> Option<u64> {
    let res = client.post(format!("{base}/v1/events")).bearer_auth(key).json(body).send().await.ok()?;
    if res.status() != 202 {
        return None;
    }
    res.json::<serde_json::Value>().await.ok()?["accepted"].as_u64()
}

async fn wait_for_sent(base: &str, key: &str, at_least: u64) -> u64 {
    let mut sent = 0;
    for _ in 0..200 {
        sent = totals(base, key).await["sent"].as_u64().unwrap();
        if sent >= at_least {
            // Stay a moment longer: a double count would show up now.
            tokio::time::sleep(std::time::Duration::from_millis(700)).await;
            return totals(base, key).await["sent"].as_u64().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_n_acknowledged_events_loses_none_and_counts_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    tool(dir.path(), &["tenants", "create", "t"]);
    let write = tool(dir.path(), &["keys", "create", "--tenant", "t", "--scope", "write"]).trim().to_string();
    let read = tool(dir.path(), &["keys", "create", "--tenant", "t", "--scope", "read"]).trim().to_string();
    let client = reqwest::Client::new();

    // Round 1: N acknowledged, then kill -9 at once, before the writer has flushed it all.
    let (mut child, base) = spawn_serve(dir.path(), 300).await;
    let mut acked = 0;
    for b in 0..20 {
        acked += post(&client, &base, &write, &batch(b * 250, 250)).await.expect("accepted");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (mut child, base) = spawn_serve(dir.path(), 300).await;
    assert_eq!(wait_for_sent(&base, &read, acked).await, acked, "after kill -9, restart");

    // Round 2: the same batches again (a sending node retrying): still N.
    for b in 0..20 {
        post(&client, &base, &write, &batch(b * 250, 250)).await.expect("accepted");
    }
    assert_eq!(wait_for_sent(&base, &read, acked).await, acked, "after redelivery");

    // Round 3: kill -9 while requests are in flight: everything acknowledged is there, and
    // nothing beyond what was attempted.
    let senders: Vec<_> = (0..4)
        .map(|w| {
            let (client, base, write) = (client.clone(), base.clone(), write.clone());
            tokio::spawn(async move {
                let mut ok = 0;
                for b in 0..50 {
                    match post(&client, &base, &write, &batch(100_000 + (w * 50 + b) * 100, 100)).await {
                        Some(n) => ok += n,
                        None => break,
                    }
                }
                ok
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut acked_in_flight = 0;
    for s in senders {
        acked_in_flight += s.await.unwrap();
    }
    assert!(acked_in_flight > 0, "nothing was acknowledged before the kill; the test proves nothing");

    let (mut child, base) = spawn_serve(dir.path(), 300).await;
    let sent = wait_for_sent(&base, &read, acked + acked_in_flight).await;
    assert!(sent >= acked + acked_in_flight, "lost acknowledged events: {sent} < {}", acked + acked_in_flight);
    assert!(sent <= acked + 4 * 50 * 100, "more events than were ever sent: {sent}");
    assert_eq!(sent % 100, 0, "a request was half-written: {sent}");
    child.kill().unwrap();
    child.wait().unwrap();
}
