//! Tracking hits from recipients' mail clients: the open pixel, the click redirect and
//! one-click unsubscribe (RFC 8058). A forged or altered token never redirects; a pixel is
//! always served; a GET never unsubscribes (link scanners prefetch URLs).

use crate::IngestState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;
use mailpipe_http::ApiError;
use mailpipe_schemas::{Event, EventType};
use mailpipe_tokens::{Claims, Kind};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use uuid::Uuid;

/// The client of a request, as [`client_ip`] finds it.
pub(crate) fn client(state: &IngestState, request: &Request) -> Option<IpAddr> {
    let peer = request.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    client_ip(peer, request.headers(), &state.trusted_proxies)
}

/// A transparent 1x1 GIF: 43 bytes.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

const NOT_FOUND_PAGE: &str = "<!doctype html><meta charset=utf-8><title>Link not found</title>\
    <p>This link is not valid. It may have been mistyped or altered.</p>";

/// The client's address: the connection's peer, unless the peer is a trusted proxy
/// (`http.trusted_proxies`); then the nearest hop of `Forwarded` (RFC 7239), or else of
/// `X-Forwarded-For`, that is not a trusted proxy, read from the right (hops further left were
/// written by whoever sent the request, and prove nothing). A hop that is not an IP address
/// ends the walk: the last trusted hop before it is taken.
pub(crate) fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer?;
    if !is_trusted(&client) {
        return Some(client);
    }
    let forwarded: Vec<&str> = headers.get_all(header::FORWARDED).iter().filter_map(|v| v.to_str().ok()).collect();
    let hops: Vec<&str> = if !forwarded.is_empty() {
        forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                element
                    .split(';')
                    .find_map(|pair| pair.trim().split_once('=').filter(|(k, _)| k.eq_ignore_ascii_case("for")).map(|(_, v)| v))
                    .unwrap_or("")
            })
            .collect()
    } else {
        headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect()
    };
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Some(client)
}

/// One hop of a forwarding header: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `"[2001:db8::1]:4711"`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(v6) = hop.strip_prefix('[') {
        return v6.split(']').next()?.parse().ok();
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

fn hit_event(claims: Claims, event_type: EventType, headers: &HeaderMap, ip: Option<IpAddr>) -> Event {
    let now = Utc::now();
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(512).collect());
    let stream = (event_type == EventType::Unsubscribe && !claims.link.is_empty()).then(|| claims.link.clone());
    Event {
        stream,
        campaign: claims.campaign,
        variant: claims.variant,
        message_id: claims.message_id,
        recipient: claims.recipient,
        link: (event_type == EventType::Click).then_some(claims.link),
        user_agent: header(header::USER_AGENT),
        ip: ip.map(|ip| ip.to_string()),
        ..Event::new(Uuid::now_v7(), &claims.tenant, event_type, now)
    }
}

/// Counters of tracking hits by source, registered once rather than looked up per hit.
pub(crate) struct HitCounters {
    received: [metrics::Counter; 3],
}

const SOURCES: [&str; 3] = ["open", "click", "unsubscribe"];

impl HitCounters {
    pub(crate) fn new() -> Self {
        HitCounters {
            received: SOURCES.map(|s| metrics::counter!("mailpipe_ingest_events_received_total", "source" => s)),
        }
    }
}

async fn record(state: &IngestState, event: Event) -> bool {
    let source = match event.event_type {
        EventType::Click => 1,
        EventType::Unsubscribe => 2,
        _ => 0,
    };
    match state.durable(crate::publish(state.bus.as_ref(), std::slice::from_ref(&event))).await {
        Ok(()) => {
            state.hits.received[source].increment(1);
            true
        }
        Err(e) => {
            // The recipient still gets the pixel or the redirect; the hit is counted as dropped.
            metrics::counter!("mailpipe_ingest_hits_dropped_total", "source" => SOURCES[source], "reason" => crate::failure_reason(&e)).increment(1);
            state.publish_failed(crate::Publisher::Hits, &e);
            false
        }
    }
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, max-age=0"));
    response
}

fn not_found() -> Response {
    no_store((StatusCode::NOT_FOUND, Html(NOT_FOUND_PAGE)).into_response())
}

/// The token of a tracking path (`/o/<token>`), percent-decoded (a proxy may have escaped a
/// character); escapes that are not UTF-8, or more segments, just make a token that is not
/// valid.
pub(crate) fn token<'a>(path: &'a str, prefix: &str) -> std::borrow::Cow<'a, str> {
    let raw = path.strip_prefix(prefix).unwrap_or("");
    percent_encoding::percent_decode_str(raw).decode_utf8().unwrap_or(std::borrow::Cow::Borrowed(raw))
}

/// The open pixel
///
/// Always the 43-byte GIF, whatever the token (a mail client must never show a broken
/// image); only a valid token's hit is recorded, and a `HEAD` (scanners) records nothing.
#[utoipa::path(
    get,
    path = "/o/{token}",
    tag = "tracking",
    params(("token" = String, Path, description = "A signed open token (`mailpipe url open`).", example = "AQJrMQFhY21l...")),
    responses((status = 200, description = "A transparent 1x1 GIF.", content_type = "image/gif", body = Vec<u8>)),
)]
pub(crate) async fn open(State(state): State<Arc<IngestState>>, request: Request) -> Response {
    if request.method() == Method::HEAD {
        return gif();
    }
    let ip = client(&state, &request);
    pixel(&state, &token(request.uri().path(), "/o/"), request.headers(), ip).await
}

fn gif() -> Response {
    no_store(([(header::CONTENT_TYPE, "image/gif")], &PIXEL_GIF[..]).into_response())
}

/// The open pixel: always the GIF, whatever the token; only a valid token's hit is recorded.
pub(crate) async fn pixel(state: &IngestState, token: &str, headers: &HeaderMap, ip: Option<IpAddr>) -> Response {
    match state.registry.verify(token, Kind::Open) {
        Ok(claims) => {
            record(state, hit_event(claims, EventType::Open, headers, ip)).await;
        }
        Err(_) => metrics::counter!("mailpipe_ingest_invalid_tokens_total", "kind" => "open").increment(1),
    }
    gif()
}

/// A tracked link
///
/// Redirects to the link's destination and records the click; a forged or altered token
/// never redirects. The recipient gets their page even if the bus is down.
#[utoipa::path(
    get,
    path = "/c/{token}",
    tag = "tracking",
    params(("token" = String, Path, description = "A signed click token (`mailpipe url click`).", example = "AQJrMQFhY21l...")),
    responses(
        (status = 302, description = "To the link's destination.", headers(("Location" = String, description = "The destination."))),
        (status = 404, description = "Not a valid link (a page for the recipient).", content_type = "text/html", body = String),
    ),
)]
pub(crate) async fn click(State(state): State<Arc<IngestState>>, request: Request) -> Response {
    let Ok(claims) = state.registry.verify(&token(request.uri().path(), "/c/"), Kind::Click) else {
        metrics::counter!("mailpipe_ingest_invalid_tokens_total", "kind" => "click").increment(1);
        return not_found();
    };
    // (A verified token's link is an http(s) URL without control characters or spaces.)
    let Ok(location) = HeaderValue::from_str(&claims.link) else { return not_found() };
    if request.method() != Method::HEAD {
        let ip = client(&state, &request);
        record(&state, hit_event(claims, EventType::Click, request.headers(), ip)).await;
    }
    no_store((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
}

/// The unsubscribe page
///
/// A page with one button; a GET never unsubscribes (link scanners prefetch URLs).
#[utoipa::path(
    get,
    path = "/u/{token}",
    tag = "tracking",
    params(("token" = String, Path, description = "A signed unsubscribe token (`mailpipe url unsubscribe`).", example = "AQJrMQFhY21l...")),
    responses(
        (status = 200, description = "The page with the unsubscribe button.", content_type = "text/html", body = String),
        (status = 404, description = "Not a valid link.", content_type = "text/html", body = String),
    ),
)]
pub(crate) async fn unsubscribe_page(State(state): State<Arc<IngestState>>, request: Request) -> Response {
    let token = token(request.uri().path(), "/u/");
    if state.registry.verify(&token, Kind::Unsubscribe).is_err() {
        return not_found();
    }
    let page = format!(
        "<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>\
         <title>Unsubscribe</title><h1>Unsubscribe</h1><p>Stop receiving these emails?</p>\
         <form method=post action='/u/{token}'><input type=hidden name=List-Unsubscribe value=One-Click>\
         <button type=submit>Unsubscribe</button></form>"
    );
    no_store(Html(page).into_response())
}

/// Largest one-click body: the form says `List-Unsubscribe=One-Click`, a few dozen bytes.
pub const UNSUBSCRIBE_BODY_MAX: usize = 4096;

/// The one-click form of RFC 8058.
#[allow(dead_code)]
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct OneClick {
    #[serde(rename = "List-Unsubscribe")]
    #[schema(pattern = "^One-Click$", example = "One-Click")]
    list_unsubscribe: String,
}

/// One-click unsubscribe (RFC 8058)
///
/// What a mail client posts when the recipient presses its unsubscribe button. The body must
/// say `List-Unsubscribe=One-Click`; no cookie, no key, no redirect.
#[utoipa::path(
    post,
    path = "/u/{token}",
    tag = "tracking",
    params(("token" = String, Path, description = "A signed unsubscribe token.", example = "AQJrMQFhY21l...")),
    request_body(content(
        (OneClick = "application/x-www-form-urlencoded", example = json!({"List-Unsubscribe": "One-Click"})),
        (OneClick = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "Unsubscribed (a page for the recipient).", content_type = "text/html", body = String),
        (status = 404, description = "Not a valid link.", content_type = "text/html", body = String),
        (status = 503, description = "The bus cannot take writes; the mail client should retry.", body = mailpipe_http::ErrorBody),
    ),
)]
pub(crate) async fn unsubscribe(State(state): State<Arc<IngestState>>, request: Request) -> Response {
    let Ok(claims) = state.registry.verify(&token(request.uri().path(), "/u/"), Kind::Unsubscribe) else {
        metrics::counter!("mailpipe_ingest_invalid_tokens_total", "kind" => "unsubscribe").increment(1);
        return not_found();
    };
    let ip = client(&state, &request);
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, UNSUBSCRIBE_BODY_MAX).await else {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body", format!("a one-click body is at most {UNSUBSCRIBE_BODY_MAX} bytes")).into_response();
    };
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    match one_click(content_type, &body) {
        Err(OneClickError::ContentType) => {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type",
                "expected application/x-www-form-urlencoded or multipart/form-data (RFC 8058)",
            )
            .into_response()
        }
        Err(OneClickError::Body) => {
            return ApiError::bad_request("body", "expected the form field List-Unsubscribe=One-Click (RFC 8058)").into_response()
        }
        Ok(()) => {}
    }
    if !record(&state, hit_event(claims, EventType::Unsubscribe, &parts.headers, ip)).await {
        return ApiError::unavailable("please try again in a minute").into_response();
    }
    no_store(Html("<!doctype html><meta charset=utf-8><title>Unsubscribed</title><p>You are unsubscribed.</p>").into_response())
}

enum OneClickError {
    ContentType,
    Body,
}

/// Whether a body is the one-click form of RFC 8058: the field `List-Unsubscribe` with the
/// value `One-Click`, URL-encoded or as a part of `multipart/form-data`.
fn one_click(content_type: &str, body: &[u8]) -> Result<(), OneClickError> {
    let mut params = content_type.split(';').map(str::trim);
    let media = params.next().unwrap_or("").to_ascii_lowercase();
    let found = match media.as_str() {
        "application/x-www-form-urlencoded" => {
            form_urlencoded::parse(body).any(|(name, value)| name == "List-Unsubscribe" && value == "One-Click")
        }
        "multipart/form-data" => {
            let boundary = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
                .map(|(_, v)| v.trim_matches('"'))
                .filter(|b| !b.is_empty())
                .ok_or(OneClickError::Body)?;
            let body = String::from_utf8_lossy(body);
            body.split(&format!("--{boundary}")).any(|part| {
                let Some((head, value)) = part.split_once("\r\n\r\n").or_else(|| part.split_once("\n\n")) else { return false };
                let named = head.lines().any(|line| {
                    let line = line.to_ascii_lowercase();
                    line.starts_with("content-disposition:")
                        && line.contains("form-data")
                        && line.split(';').any(|p| p.trim() == "name=\"list-unsubscribe\"")
                });
                named && value.trim_end_matches(['\r', '\n']) == "One-Click"
            })
        }
        _ => return Err(OneClickError::ContentType),
    };
    if found {
        Ok(())
    } else {
        Err(OneClickError::Body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_one_click_form_unsubscribes() {
        let form = "application/x-www-form-urlencoded";
        assert!(one_click(form, b"List-Unsubscribe=One-Click").is_ok());
        assert!(one_click("Application/X-WWW-Form-Urlencoded; charset=utf-8", b"a=1&List-Unsubscribe=One-Click").is_ok());
        assert!(one_click(form, b"List-Unsubscribe=One-Click-Not").is_err());
        assert!(one_click(form, b"x=List-Unsubscribe=One-Click").is_err());
        let multipart = "multipart/form-data; boundary=XyZ";
        let part = "--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
        assert!(one_click(multipart, part.as_bytes()).is_ok());
        let other = "--XyZ\r\nContent-Disposition: form-data; name=\"comment\"\r\n\r\nname=\"List-Unsubscribe\" One-Click\r\n--XyZ--\r\n";
        assert!(one_click(multipart, other.as_bytes()).is_err(), "a part that only mentions the words");
        assert!(matches!(one_click("text/plain", b"name=\"List-Unsubscribe\" One-Click"), Err(OneClickError::ContentType)));
        assert!(matches!(one_click("", b"List-Unsubscribe=One-Click"), Err(OneClickError::ContentType)));
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_forwarded_it() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let nets = |list: &[&str]| list.iter().map(|n| n.parse::<ipnet::IpNet>().unwrap()).collect::<Vec<_>>();
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let xff = headers(&[("x-forwarded-for", "198.51.100.9, 203.0.113.7")]);
        // Nobody trusted: the header is ignored.
        assert_eq!(client_ip(Some(ip("10.0.0.2")), &xff, &[]), Some(ip("10.0.0.2")));
        // Not from a trusted proxy: ignored too.
        assert_eq!(client_ip(Some(ip("192.0.2.50")), &xff, &nets(&["10.0.0.0/8"])), Some(ip("192.0.2.50")));
        // From a trusted proxy: its nearest untrusted hop (the leftmost one is the client's claim).
        assert_eq!(client_ip(Some(ip("10.0.0.2")), &xff, &nets(&["10.0.0.0/8"])), Some(ip("203.0.113.7")));
        // Two proxies of ours in a row.
        let chain = headers(&[("x-forwarded-for", "203.0.113.7, 10.1.2.3")]);
        assert_eq!(client_ip(Some(ip("10.0.0.2")), &chain, &nets(&["10.0.0.0/8"])), Some(ip("203.0.113.7")));
        // Several header lines are one list.
        let lines = headers(&[("x-forwarded-for", "198.51.100.9"), ("x-forwarded-for", "203.0.113.8")]);
        assert_eq!(client_ip(Some(ip("10.0.0.2")), &lines, &nets(&["10.0.0.0/8"])), Some(ip("203.0.113.8")));
        // Garbage stops the walk at the last trusted hop; it is never recorded.
        let junk = headers(&[("x-forwarded-for", "203.0.113.7, <script>")]);
        assert_eq!(client_ip(Some(ip("10.0.0.2")), &junk, &nets(&["10.0.0.0/8"])), Some(ip("10.0.0.2")));
        // RFC 7239, with ports, quotes and IPv6, preferred to X-Forwarded-For.
        let fwd = headers(&[
            ("forwarded", "for=198.51.100.9;proto=https, for=\"[2001:db8::7]:4711\";by=10.0.0.2"),
            ("x-forwarded-for", "192.0.2.99"),
        ]);
        assert_eq!(client_ip(Some(ip("10.0.0.2")), &fwd, &nets(&["10.0.0.0/8"])), Some(ip("2001:db8::7")));
        let fwd4 = headers(&[("forwarded", "for=203.0.113.7:1234")]);
        assert_eq!(client_ip(Some(ip("::1")), &fwd4, &nets(&["::1/128"])), Some(ip("203.0.113.7")));
        // No peer known (not served from a socket): nothing recorded.
        assert_eq!(client_ip(None, &xff, &nets(&["10.0.0.0/8"])), None);
    }

    #[test]
    fn the_pixel_is_a_43_byte_gif() {
        assert_eq!(super::PIXEL_GIF.len(), 43);
        assert_eq!(&super::PIXEL_GIF[..6], b"GIF89a");
        assert_eq!(super::PIXEL_GIF[42], 0x3b);
    }
}
