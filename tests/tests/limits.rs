//! Slow, idle and unauthenticated clients against the real binary: header and idle timeouts,
//! the connection cap, the shutdown deadline, bodies refused before they are read, the budget
//! of bodies in flight, and memory after large requests.

use mailpipe_tests::{spawn_serve_with, terminate, tool, wait_for_ok};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
    kib / 1024.0
}

fn addr(base: &str) -> String {
    base.strip_prefix("http://").unwrap().to_string()
}

/// Waits up to `within` for the server to close `stream` (EOF or reset); how long it took.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(within.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// The status code of the answer on `stream`, if one comes within `within`.
async fn status_within(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(within, stream.read(&mut buf)).await.ok()?.ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.split(' ').nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed_and_open_connections_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    tool(dir.path(), &["tenants", "create", "a"]);
    let key = tool(dir.path(), &["keys", "create", "--tenant", "a", "--scope", "events:write"]).trim().to_string();
    let env = [
        ("MAILPIPE__HTTP__HEADER_READ_TIMEOUT_MS", "1000".to_string()),
        ("MAILPIPE__HTTP__IDLE_TIMEOUT_MS", "2000".to_string()),
        ("MAILPIPE__HTTP__MAX_CONNECTIONS", "64".to_string()),
    ];
    let (mut server, base) = spawn_serve_with(dir.path(), &env).await;
    let pid = server.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = fds(pid);

    // 100 clients trickling a header a byte at a time, 100 that connect and say nothing.
    let mut clients = Vec::new();
    for i in 0..200 {
        let addr = addr(&base);
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 0 {
                stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
                let started = Instant::now();
                let mut buf = [0u8; 64];
                while started.elapsed() < Duration::from_secs(20) {
                    if stream.write_all(b"X").await.is_err() {
                        return Some(started.elapsed());
                    }
                    if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
                        return Some(started.elapsed());
                    }
                }
                None
            } else {
                closed_within(&mut stream, Duration::from_secs(20)).await
            }
        }));
    }
    // The server never holds more than its cap, whatever waits in the backlog.
    let mut most = 0;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_secs(3) {
        most = most.max(fds(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most <= before + 64 + 4, "{most} descriptors open with a cap of 64 connections (before: {before})");
    for (i, client) in clients.into_iter().enumerate() {
        let closed = client.await.unwrap();
        assert!(closed.is_some(), "client {i} ({}) was never closed", if i % 2 == 0 { "trickling" } else { "idle" });
    }
    // Once they are gone, the server answers as usual and holds what it held before.
    wait_for_ok(&format!("{base}/healthz"), Duration::from_secs(5)).await;
    let settled = Instant::now();
    while fds(pid) > before + 2 && settled.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fds(pid) <= before + 2, "descriptors left open: {} (before: {before})", fds(pid));

    // A body that stalls after its headers: closed after the idle timeout, not before.
    let mut stalled = TcpStream::connect(addr(&base)).await.unwrap();
    let head = format!("POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{{\"type\"");
    stalled.write_all(head.as_bytes()).await.unwrap();
    let after = closed_within(&mut stalled, Duration::from_secs(10)).await.expect("a stalled body was never closed");
    assert!(after >= Duration::from_millis(1500), "closed after {after:?}, before the idle timeout (2 s)");
    assert!(terminate(&mut server).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_within_the_grace_while_slow_clients_hold_connections() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("MAILPIPE__HTTP__HEADER_READ_TIMEOUT_MS", "60000".to_string()),
        ("MAILPIPE__HTTP__SHUTDOWN_GRACE_MS", "1000".to_string()),
    ];
    let (mut server, base) = spawn_serve_with(dir.path(), &env).await;
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(addr(&base)).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = std::process::Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if asked.elapsed() > Duration::from_secs(10) {
            server.kill().unwrap();
            panic!("still running 10 s after SIGTERM, with a shutdown grace of 1 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    println!("stopped {:?} after SIGTERM with 5 slow clients (grace 1 s)", asked.elapsed());
    drop(slow);
}

/// Writes `head` then up to `body_len` bytes, as fast as the server takes them; then reads the
/// answer's status.
async fn post_big(addr: String, head: String, body_len: usize) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(head.as_bytes()).await.ok()?;
    let chunk = vec![b'['; 64 << 10];
    let mut sent = 0;
    while sent < body_len {
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    status_within(&mut stream, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_refused_before_they_are_read_and_memory_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    tool(dir.path(), &["tenants", "create", "a"]);
    let key = tool(dir.path(), &["keys", "create", "--tenant", "a", "--scope", "events:write"]).trim().to_string();
    let env = [("MAILPIPE__HTTP__MAX_INFLIGHT_BODY_BYTES", (24 << 20).to_string())];
    let (mut server, base) = spawn_serve_with(dir.path(), &env).await;
    let pid = server.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_mib(pid);

    // 60 unauthenticated 10 MiB bodies at once, and 20 to a forged unsubscribe link.
    let ten_mib = 10 << 20;
    let mut posts = Vec::new();
    for i in 0..80 {
        let path = if i < 60 { "/v1/events".to_string() } else { "/u/forged-token".to_string() };
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {ten_mib}\r\n\r\n");
        posts.push(tokio::spawn(post_big(addr(&base), head, ten_mib)));
    }
    let mut peak = baseline;
    while !posts.iter().all(|p| p.is_finished()) {
        peak = peak.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, post) in posts.into_iter().enumerate() {
        let status = post.await.unwrap();
        assert_eq!(status, Some(if i < 60 { 401 } else { 404 }), "request {i}");
    }
    println!("resident memory: {baseline:.0} MiB before 80 unauthenticated 10 MiB bodies, {peak:.0} MiB at most during");
    assert!(peak - baseline < 64.0, "resident memory rose from {baseline:.0} to {peak:.0} MiB for bodies it never needed to read");

    // Keyed bodies take their length from the budget (24 MiB) before a byte is read: two
    // 10 MiB bodies in flight leave no room for a third, which is told to retry.
    let keyed = |len: usize| {
        format!("POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n[")
    };
    let mut holding = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr(&base)).await.unwrap();
        stream.write_all(keyed(ten_mib).as_bytes()).await.unwrap();
        holding.push(stream);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut third = TcpStream::connect(addr(&base)).await.unwrap();
    third.write_all(keyed(ten_mib).as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut answer)).await.expect("no answer").unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 503") && answer.contains("retry-after: 1"), "{answer}");
    // A small body still fits beside them.
    let small = reqwest::Client::new().post(format!("{base}/v1/events")).bearer_auth(&key).body("[]").header("content-type", "application/json").send().await.unwrap();
    assert_ne!(small.status(), 503);
    drop(holding);

    // Large keyed bodies read in full (refused as bad JSON): memory returns once they are done.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_mib(pid);
    for _ in 0..4 {
        let rounds: Vec<_> = (0..2).map(|_| tokio::spawn(post_big(addr(&base), keyed(ten_mib).trim_end_matches('[').to_string(), ten_mib))).collect();
        for r in rounds {
            assert_eq!(r.await.unwrap(), Some(400));
        }
    }
    let mut after = rss_mib(pid);
    let done = after;
    let settled = Instant::now();
    while after - before > 32.0 && settled.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = rss_mib(pid);
    }
    println!("resident memory: {before:.0} MiB before eight 10 MiB bodies, {done:.0} MiB when they were done, {after:.0} MiB {:?} after", settled.elapsed());
    assert!(after - before <= 32.0, "resident memory stayed at {after:.0} MiB after the bodies were done (before: {before:.0})");
    assert!(terminate(&mut server).success());
}
