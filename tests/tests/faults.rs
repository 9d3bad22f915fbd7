//! Faults on the real binary: a full disk under the data directory (a small tmpfs, mounted by
//! the test; `tests/run.sh` runs as root).

use mailpipe_tests::{binary, fill, tool, totals, wait_for_ok, Tmpfs};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_what_it_cannot_store_fails_readiness_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let _mounted = Tmpfs::mount(dir.path(), "48m");
    let data = dir.path().join("data");
    tool(&data, &["tenants", "create", "a"]);
    let write = tool(&data, &["keys", "create", "--tenant", "a", "--scope", "events:write"]).trim().to_string();
    let read = tool(&data, &["keys", "create", "--tenant", "a", "--scope", "stats:read"]).trim().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path = std::env::temp_dir().join(format!("mailpipe-full-disk-{port}.log"));
    let mut server = Command::new(binary())
        .arg("serve")
        .env("MAILPIPE__DATA_DIR", &data)
        .env("MAILPIPE__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("MAILPIPE__HTTP__PUBLIC_URL", &base)
        .env("MAILPIPE__PROCESSOR__FLUSH_INTERVAL_MS", "100")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_for_ok(&format!("{base}/readyz"), Duration::from_secs(15)).await;
    let open = tool(&data, &["url", "open", "--tenant", "a", "--campaign", "c", "--message-id", "<m1@a>", "--recipient", "r@gmail.com"]);
    let open = format!("{base}/o/{}", open.trim().rsplit("/o/").next().unwrap());
    let client = reqwest::Client::new();
    let post_event = |n: usize| {
        let body = serde_json::json!([{"type": "sent", "campaign": "c", "message_id": format!("<s{n}@a>"), "recipient": "r@gmail.com"}]);
        client.post(format!("{base}/v1/events")).bearer_auth(&write).json(&body).send()
    };
    assert_eq!(post_event(0).await.unwrap().status(), 202);

    // The disk fills up. Hits go on until the log's room written ahead runs out.
    let filler = fill(dir.path());
    let lines_before = std::fs::read_to_string(&log_path).unwrap().lines().count();
    let mut hits = 0;
    let dropped = loop {
        for _ in 0..200 {
            let res = client.get(&open).send().await.unwrap();
            assert_eq!((res.status().as_u16(), res.bytes().await.unwrap().len()), (200, 43), "the pixel is always served");
            hits += 1;
        }
        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let dropped = metric(&metrics, "mailpipe_ingest_hits_dropped_total{reason=\"disk_full\",source=\"open\"}")
            + metric(&metrics, "mailpipe_ingest_hits_dropped_total{source=\"open\",reason=\"disk_full\"}");
        if dropped >= 1000.0 || hits >= 40_000 {
            break dropped;
        }
    };
    assert!(dropped >= 1000.0, "{hits} hits on a full disk and {dropped} counted as dropped");
    // What is reported is refused, not lost: 503, to be retried.
    let res = post_event(1).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    // Readiness tells the truth, with the reason.
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("cannot be written"), "{why}");
    // No flood of log lines onto the full disk: thousands of failures, a few lines.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let failure_lines = log.lines().skip(lines_before).filter(|l| l.contains("ERROR") || l.contains("WARN")).count();
    assert!(failure_lines <= 20, "{failure_lines} warning and error lines for {dropped} dropped hits:\n{log}");

    // Space comes back: ready again by itself, and what is sent is stored.
    std::fs::remove_file(filler).unwrap();
    let freed = Instant::now();
    wait_for_ok(&format!("{base}/readyz"), Duration::from_secs(10)).await;
    println!("ready {:?} after the disk was freed; {hits} hits sent while full, {dropped} dropped", freed.elapsed());
    assert_eq!(post_event(1).await.unwrap().status(), 202, "the same event, retried");
    // Every hit and event acknowledged is stored, once: rows written = hits recorded + 2 sends.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (recorded, stored) = loop {
        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let recorded = metric(&metrics, "mailpipe_ingest_events_received_total{source=\"open\"}");
        let stored = metric(&metrics, "mailpipe_store_rows_written_total");
        if stored == recorded + 2.0 || Instant::now() > deadline {
            break (recorded, stored);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stored, recorded + 2.0, "{recorded} hits and 2 sends acknowledged, {stored} rows stored");
    assert_eq!(totals(&base, &read).await["sent"].as_u64(), Some(2));
    server.kill().unwrap();
    server.wait().unwrap();
}
