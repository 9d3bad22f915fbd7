//! The API platform's promises, on a whole mailpipe in one process: every documented route
//! refuses other tenants and keys without its scope, keys are rate limited per key, any input
//! gets a JSON 4xx (never a 5xx, never plain text), and the document cannot drift.

use mailpipe_tenants::{NewKey, Scope, Tier};
use mailpipe_tests::Server;
use mailpipe_tokens::Kind;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// A valid request body for each documented operation that takes one: a new route with a
/// body must add its sample here.
fn sample_body(method: &str, path: &str) -> Option<Vec<u8>> {
    match (method, path) {
        ("POST", "/v1/events") => {
            Some(br#"[{"type":"sent","campaign":"probe","message_id":"<p@x>","recipient":"p@gmail.com"}]"#.to_vec())
        }
        ("POST", "/v1/inbound") => Some(b"From: a@b.example\r\nTo: c@d.example\r\nSubject: hi\r\n\r\nhello\r\n".to_vec()),
        ("POST", "/v1/suppressions/check") => Some(br#"{"recipients":["p@gmail.com","not an address"],"stream":"marketing"}"#.to_vec()),
        ("POST", "/v1/suppressions/import") => Some(br#"{"entries":[{"address":"p@gmail.com","reason":"hard_bounce"}]}"#.to_vec()),
        ("PUT", "/v1/suppressions/{address}") => Some(br#"{"note":"probe"}"#.to_vec()),
        _ => None,
    }
}

fn keyed_operations() -> Vec<(String, String, Scope)> {
    let doc = serde_json::to_value(mailpipe::api::openapi()).unwrap();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let scopes: Vec<&str> = op["security"].as_array().into_iter().flatten().filter_map(|r| r["api_key"].as_array()).flatten().filter_map(Value::as_str).collect();
            if path.starts_with("/v1/") && path != "/v1/openapi.json" {
                assert_eq!(scopes.len(), 1, "{method} {path} must declare exactly one scope");
            }
            if let [scope] = scopes.as_slice() {
                out.push((method.to_uppercase(), path.clone(), Scope::parse(scope).unwrap()));
            }
        }
    }
    assert!(out.len() >= 4, "{out:?}");
    out
}

async fn call(s: &Server, method: &str, path: &str, key: &str) -> (u16, String) {
    // Path parameters get a sample value: a new one must add its own here.
    let url = format!("{}{}", s.base, path.replace("{address}", "p@gmail.com"));
    assert!(!url.contains('{'), "add a sample value for the parameters of {path}");
    let body = || sample_body(method, path).unwrap_or_else(|| panic!("add a sample body for {method} {path}"));
    let request = match method {
        "GET" => client().get(url),
        "DELETE" => client().delete(url),
        "POST" => client().post(url).body(body()),
        "PUT" => client().put(url).body(body()),
        other => panic!("add {other} to this test"),
    };
    let res = request.bearer_auth(key).send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn every_route_refuses_other_tenants_and_keys_without_its_scope() {
    let s = Server::start().await;
    let write = s.key("a", "events:write");
    let secret = json!([{"type": "sent", "campaign": "secret-of-a", "message_id": "<1@a>", "recipient": "x@gmail.com"}]);
    assert_eq!(client().post(format!("{}/v1/events", s.base)).bearer_auth(&write).json(&secret).send().await.unwrap().status(), 202);
    s.settle().await;
    s.running().app.registry.create_tenant("c").unwrap();
    let (_, a_sees) = call(&s, "GET", "/v1/campaigns", &s.key("a", "stats:read")).await;
    assert!(a_sees.contains("secret-of-a"), "{a_sees}");

    for (method, path, needed) in keyed_operations() {
        // The right scope, or admin, of tenant a passes the guard.
        for scopes in [needed.as_str(), "admin"] {
            let (status, body) = call(&s, &method, &path, &s.key("a", scopes)).await;
            assert!(status < 400, "{method} {path} with {scopes}: {status} {body}");
        }
        // Every other scope is refused.
        for other in Scope::ALL.into_iter().filter(|&o| o != needed && o != Scope::Admin) {
            let (status, body) = call(&s, &method, &path, &s.key("a", other.as_str())).await;
            assert_eq!(status, 403, "{method} {path} with {other}: {body}");
            assert!(serde_json::from_str::<Value>(&body).unwrap()["errors"][0]["reason"].as_str().unwrap().contains(needed.as_str()));
        }
        // Another tenant, with the scope or admin, never sees a's data (reads by c, which
        // holds nothing; writes by b, into b).
        let other = if method == "GET" { "c" } else { "b" };
        for scopes in [needed.as_str(), "admin"] {
            let (status, body) = call(&s, &method, &path, &s.key(other, scopes)).await;
            assert!(status < 400, "{method} {path} for {other}: {status} {body}");
            assert!(!body.contains("secret-of-a") && !body.contains("\"sent\":1,"), "{method} {path} showed a's data to {other}: {body}");
        }
        // No key, a mistyped key, a revoked key.
        let (status, _) = call(&s, &method, &path, "").await;
        assert_eq!(status, 401, "{method} {path} without a key");
        let key = s.key("a", needed.as_str());
        let last = if key.ends_with('x') { 'y' } else { 'x' };
        let typo = format!("{}{last}", &key[..key.len() - 1]);
        assert_eq!(call(&s, &method, &path, &typo).await.0, 401, "{method} {path} with a mistyped key");
    }
}

#[tokio::test]
async fn a_route_that_declares_no_scope_is_refused_even_to_admin() {
    let dir = tempfile::tempdir().unwrap();
    let registry = std::sync::Arc::new(mailpipe_tenants::Registry::open(dir.path().join("registry.json")).unwrap());
    registry.create_tenant("a").unwrap();
    let admin = registry.create_api_key(NewKey::new("a", &[Scope::Admin])).unwrap();
    let undeclared = axum::Router::new().route("/v1/undocumented", axum::routing::get(|| async { "the data" }));
    let guard = mailpipe::api::guard(&mailpipe_config::Config::default(), registry);
    let app = mailpipe::api::guarded(undeclared, guard);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let res = client().get(format!("http://{addr}/v1/undocumented")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["errors"][0]["reason"], "this route declares no scope");
}

#[tokio::test]
async fn a_fresh_starter_key_makes_a_minutes_allowance_at_once_then_one_a_second() {
    let s = Server::start().await;
    let starter = |name: &str| {
        let mut new = NewKey::new("a", &[Scope::StatsRead]);
        new.name = name.into();
        new.tier = Tier::Starter;
        s.key_with(new)
    };
    let (key, other) = (starter("first"), starter("second"));
    let url = format!("{}/v1/campaigns", s.base);
    let statuses = futures_join(60, || client().get(&url).bearer_auth(&key).send()).await;
    assert!(statuses.iter().all(|r| r.0 == 200), "{:?}", statuses.iter().map(|r| r.0).collect::<Vec<_>>());
    let mut remaining: Vec<u64> = statuses.iter().map(|r| r.1).collect();
    remaining.sort();
    assert_eq!(remaining[0], 0, "the 60th request leaves nothing");
    assert_eq!(remaining[59], 59, "the first leaves 59");

    let limited = client().get(&url).bearer_auth(&key).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    let header = |name: &str| limited.headers()[name].to_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(header("retry-after"), 1, "starter refills one request a second");
    assert_eq!((header("ratelimit-limit"), header("ratelimit-remaining")), (60, 0));
    assert!((59..=61).contains(&header("ratelimit-reset")), "{}", header("ratelimit-reset"));
    assert_eq!(limited.json::<Value>().await.unwrap()["errors"][0]["field"], "authorization");

    // Another key of the same tenant is not affected; the first gets one more a second later.
    let res = client().get(&url).bearer_auth(&other).send().await.unwrap();
    assert_eq!((res.status().as_u16(), res.headers()["ratelimit-remaining"].to_str().unwrap()), (200, "59"));
    tokio::time::sleep(std::time::Duration::from_millis(1050)).await;
    assert_eq!(client().get(&url).bearer_auth(&key).send().await.unwrap().status(), 200);
    assert_eq!(client().get(&url).bearer_auth(&key).send().await.unwrap().status(), 429);

    // Tracking routes and operations are never limited by key.
    let pixel = s.token(Kind::Open, "a", "m1", "");
    for _ in 0..100 {
        assert_eq!(client().get(format!("{}/o/{pixel}", s.base)).send().await.unwrap().status(), 200);
    }
    let metrics = client().get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("mailpipe_http_rate_limited_total{tier=\"starter\"}")), "{metrics}");
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("mailpipe_http_requests_total") && l.contains("route=\"/v1/campaigns\"") && l.contains("status=\"429\"") && l.contains("tier=\"starter\""))
        .unwrap_or_else(|| panic!("no request count by route, status and tier: {metrics}"));
    assert!(counted.ends_with(" 2"), "{counted}");
}

/// Runs `n` requests at once: (status, RateLimit-Remaining) of each.
async fn futures_join<F, Fut>(n: usize, request: F) -> Vec<(u16, u64)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let all = (0..n).map(|_| request());
    let mut out = Vec::new();
    for res in futures::future::join_all(all).await {
        let res = res.unwrap();
        let remaining = res.headers().get("ratelimit-remaining").map_or(u64::MAX, |v| v.to_str().unwrap().parse().unwrap());
        out.push((res.status().as_u16(), remaining));
    }
    out
}

#[tokio::test]
async fn anything_sent_gets_a_json_4xx_or_the_pixel() {
    let s = Server::start().await;
    let write = s.key("a", "events:write");
    let read = s.key("a", "stats:read");
    let json_error = |status: u16, expected: u16, body: &str, what: &str| {
        assert_eq!(status, expected, "{what}: {body}");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: not JSON: {body:?}"));
        assert!(v["errors"][0]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{what}: {body}");
    };
    let send = |r: reqwest::RequestBuilder| async move {
        let res = r.send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    };
    let base = &s.base;

    // The pixel is the GIF whatever follows /o/.
    for path in ["/o/%ff%fe", "/o/", "/o/a/b/c", "/o/..%2f..%2fetc", "/o/AAAA"] {
        let res = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["content-type"], "image/gif", "{path}");
        assert_eq!(res.bytes().await.unwrap().len(), 43, "{path}");
    }
    // Bodies over the limit: 413 in JSON; without a key, 401 before the body is read.
    let huge = vec![b'['; 11 << 20];
    let (st, body) = send(client().post(format!("{base}/v1/events")).bearer_auth(&write).body(huge.clone())).await;
    json_error(st, 413, &body, "11 MB body");
    let (st, body) = send(client().post(format!("{base}/v1/events")).body(huge)).await;
    json_error(st, 401, &body, "11 MB body without a key");
    let u = s.token(Kind::Unsubscribe, "a", "m1", "");
    let (st, body) = send(client().post(format!("{base}/u/{u}")).body(vec![b'x'; 10_000])).await;
    json_error(st, 413, &body, "a 10 kB one-click body");
    let (st, body) = send(client().post(format!("{base}/u/{u}")).header("content-type", "text/plain").body("please List-Unsubscribe me, One-Click")).await;
    json_error(st, 415, &body, "a one-click body of another type");
    let form = "application/x-www-form-urlencoded";
    let (st, body) = send(client().post(format!("{base}/u/{u}")).header("content-type", form).body("note=List-Unsubscribe%3DOne-Click")).await;
    json_error(st, 400, &body, "a one-click form that only mentions the words");
    // Invalid UTF-8, deep JSON, wrong types, a date of 1900.
    for (body, what) in [
        (vec![0xff, 0xfe, b'['], "invalid UTF-8"),
        (format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(), "deep JSON"),
        (br#"[{"type":1,"campaign":[],"message_id":{},"recipient":true}]"#.to_vec(), "wrong types"),
        (br#"[{"type":"sent","campaign":"c","message_id":"m","recipient":"a@b.com","timestamp":"1900-01-01T00:00:00Z"}]"#.to_vec(), "1900"),
    ] {
        let (st, text) = send(client().post(format!("{base}/v1/events")).bearer_auth(&write).body(body)).await;
        json_error(st, 400, &text, what);
    }
    // Wrong methods, unknown paths, bad and duplicate parameters.
    let (st, body) = send(client().delete(format!("{base}/v1/events")).bearer_auth(&write)).await;
    json_error(st, 405, &body, "DELETE /v1/events");
    let (st, body) = send(client().put(format!("{base}/o/abc"))).await;
    json_error(st, 405, &body, "PUT /o/abc");
    let (st, body) = send(client().get(format!("{base}/v1/nothing-here")).bearer_auth(&read)).await;
    json_error(st, 404, &body, "unknown route");
    for query in ["from=yesterday", "tz=Mars/Olympus", "from=2026-01-01&from=2026-02-01", "colour=red", "from=%ff"] {
        let (st, body) = send(client().get(format!("{base}/v1/stats/overview?{query}")).bearer_auth(&read)).await;
        json_error(st, 400, &body, query);
    }
    let (st, body) = send(client().get(format!("{base}/v1/stats/overview")).header("authorization", "Basic abc")).await;
    json_error(st, 401, &body, "Basic auth");
}

#[test]
fn the_checked_in_document_is_the_generated_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/http/openapi.json");
    let generated = mailpipe::api::openapi_json();
    if std::env::var_os("MAILPIPE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "schemas/http/openapi.json differs from the API the code serves: review the change and rerun this test with MAILPIPE_BLESS=1"
    );
}

#[test]
fn every_operation_is_documented_in_full() {
    let doc = serde_json::to_value(mailpipe::api::openapi()).unwrap();
    assert_eq!(doc["openapi"].as_str().unwrap().get(..3), Some("3.1"));
    assert_eq!(doc["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
    let components = &doc["components"];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let what = format!("{method} {path}");
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{what}: no summary");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.keys().any(|k| k.starts_with('2') || k.starts_with('3')), "{what}: no success answer");
            if op.get("security").is_some() {
                for status in ["401", "403", "429"] {
                    assert!(responses.contains_key(status), "{what}: no {status}");
                }
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415"] {
                    assert!(responses.contains_key(status), "{what}: no {status}");
                }
            }
            // Error answers carry the one error body.
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let response = resolve(components, response);
                    if let Some(json) = response["content"].get("application/json") {
                        assert_eq!(json["schema"]["$ref"], "#/components/schemas/ErrorBody", "{what} {status}");
                    }
                }
            }
            // At least one example, in the operation or a schema it names.
            let text = op.to_string();
            let named: Vec<&str> = text.split("#/components/schemas/").skip(1).filter_map(|s| s.split('"').next()).collect();
            let has_example = text.contains("\"example") || named.iter().any(|n| components["schemas"][n].to_string().contains("\"example"));
            assert!(has_example, "{what}: no example");
        }
    }
}

fn resolve<'a>(components: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/responses/")) {
        Some(name) => &components["responses"][name],
        None => v,
    }
}

#[tokio::test]
async fn the_document_and_its_pages_are_served_from_the_binary() {
    let s = Server::start().await;
    let served = client().get(format!("{}/v1/openapi.json", s.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(served, mailpipe::api::openapi_json());
    let page = client().get(format!("{}/docs/", s.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("swagger-ui"), "{page}");
    // Every asset the page loads comes from this server.
    let init = client().get(format!("{}/docs/swagger-initializer.js", s.base)).send().await.unwrap().text().await.unwrap();
    assert!(init.contains("/v1/openapi.json"), "{init}");
    for text in [&page, &init] {
        assert!(!text.contains("https://") && !text.contains("http://"), "an asset from elsewhere: {text}");
    }
    for asset in ["swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"] {
        let res = client().get(format!("{}/docs/{asset}", s.base)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{asset}");
        assert!(res.bytes().await.unwrap().len() > 1000, "{asset}");
    }
}
