//! API keys through the real binary: `keys create` run 20 times at once loses none, `keys list`
//! shows them without secrets, and `keys revoke` is refused by a running server within seconds;
//! links of a signing key revoked with `tenants revoke-key` stop working the same way.

use mailpipe_tests::{binary, spawn_serve, tool};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_lose_nothing_and_a_revoked_key_stops_working() {
    let dir = tempfile::tempdir().unwrap();
    tool(dir.path(), &["tenants", "create", "a"]);
    let (mut server, base) = spawn_serve(dir.path(), 100).await;

    let children: Vec<_> = (0..20)
        .map(|i| {
            Command::new(binary())
                .args(["keys", "create", "--tenant", "a", "--scope", "stats:read", "--name", &format!("k{i}")])
                .env("MAILPIPE__DATA_DIR", dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut keys = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        keys.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
    }
    let listed = tool(dir.path(), &["keys", "list", "--tenant", "a", "--json"]);
    assert_eq!(listed.lines().count(), 20, "{listed}");
    for key in &keys {
        assert!(!listed.contains(&key[key.len() - 20..]), "a secret in keys list");
    }
    let client = reqwest::Client::new();
    let status = |key: String| {
        let (client, url) = (client.clone(), format!("{base}/v1/campaigns"));
        async move { client.get(url).bearer_auth(key).send().await.unwrap().status().as_u16() }
    };
    for key in &keys {
        assert_eq!(status(key.clone()).await, 200, "a printed key does not authenticate");
    }

    // Revoked while the server runs: refused within seconds, the other keys unaffected.
    let id = keys[0].strip_prefix("mp_live_").unwrap().split('_').next().unwrap().to_string();
    tool(dir.path(), &["keys", "revoke", &id]);
    let revoked_at = Instant::now();
    while status(keys[0].clone()).await == 200 {
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "a revoked key still works after 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(keys[0].clone()).await, 401);
    assert_eq!(status(keys[1].clone()).await, 200);
    assert_eq!(tool(dir.path(), &["keys", "list", "--json"]).lines().count(), 19);

    // The scopes of older releases are shorthands; bad scopes and tiers are clear errors.
    let legacy = tool(dir.path(), &["keys", "create", "--tenant", "a", "--scope", "read"]);
    assert_eq!(status(legacy.trim().to_string()).await, 200);
    let bad = Command::new(binary()).args(["keys", "create", "--tenant", "a", "--scope", "stats:write"]).env("MAILPIPE__DATA_DIR", dir.path()).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("stats:read"), "{}", String::from_utf8_lossy(&bad.stderr));
    server.kill().unwrap();
    server.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_signing_key_stops_its_links_on_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    tool(dir.path(), &["tenants", "create", "a"]);
    let (mut server, base) = spawn_serve(dir.path(), 100).await;
    let url = |link: &str| -> std::process::Output {
        Command::new(binary())
            .args(["url", "click", "--tenant", "a", "--campaign", "c", "--message-id", "<m1@a>", "--recipient", "r@gmail.com", "--link", link])
            .env("MAILPIPE__DATA_DIR", dir.path())
            .env("MAILPIPE__HTTP__PUBLIC_URL", &base)
            .output()
            .unwrap()
    };
    let minted = url("https://shop.example/x");
    assert!(minted.status.success());
    let old = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let status = |link: String| {
        let client = client.clone();
        async move { client.get(link).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(old.clone()).await, 302);

    // Leaked: revoked while the server runs. Its links stop within seconds; new ones work.
    let said = tool(dir.path(), &["tenants", "revoke-key", "a", "k1"]);
    assert!(said.contains("k2 signs"), "{said}");
    let revoked_at = Instant::now();
    while status(old.clone()).await == 302 {
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "a link of a revoked key still redirects after 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(old).await, 404);
    let new = String::from_utf8(url("https://shop.example/x").stdout).unwrap().trim().to_string();
    assert_eq!(status(new).await, 302);

    // A link with CR/LF or spaces is refused when minted, not turned into a broken URL.
    let bad = url("https://shop.example/x\r\nSet-Cookie: a=1");
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("control character"), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(!url("https://shop.example/a b").status.success());
    server.kill().unwrap();
    server.wait().unwrap();
}
