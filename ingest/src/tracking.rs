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
use std::sync::Arc;
use uuid::Uuid;

/// A transparent 1x1 GIF: 43 bytes.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

const NOT_FOUND_PAGE: &str = "<!doctype html><meta charset=utf-8><title>Link not found</title>\
    <p>This link is not valid. It may have been mistyped or altered.</p>";

fn hit_event(claims: Claims, event_type: EventType, headers: &HeaderMap) -> Event {
    let now = Utc::now();
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(512).collect());
    let ip = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|s| s.trim().chars().take(64).collect());
    Event {
        campaign: claims.campaign,
        variant: claims.variant,
        message_id: claims.message_id,
        recipient: claims.recipient,
        link: (event_type == EventType::Click).then_some(claims.link),
        user_agent: header(header::USER_AGENT),
        ip,
        ..Event::new(Uuid::now_v7(), &claims.tenant, event_type, now)
    }
}

/// Counters of tracking hits by source, registered once rather than looked up per hit.
pub(crate) struct HitCounters {
    received: [metrics::Counter; 3],
    failed: [metrics::Counter; 3],
}

const SOURCES: [&str; 3] = ["open", "click", "unsubscribe"];

impl HitCounters {
    pub(crate) fn new() -> Self {
        HitCounters {
            received: SOURCES.map(|s| metrics::counter!("mailpipe_ingest_events_received_total", "source" => s)),
            failed: SOURCES.map(|s| metrics::counter!("mailpipe_ingest_publish_failures_total", "source" => s)),
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
            tracing::error!(error = %e, source = SOURCES[source], "publishing tracking hit failed");
            state.hits.failed[source].increment(1);
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
    pixel(&state, &token(request.uri().path(), "/o/"), request.headers()).await
}

fn gif() -> Response {
    no_store(([(header::CONTENT_TYPE, "image/gif")], &PIXEL_GIF[..]).into_response())
}

/// The open pixel: always the GIF, whatever the token; only a valid token's hit is recorded.
pub(crate) async fn pixel(state: &IngestState, token: &str, headers: &HeaderMap) -> Response {
    match state.registry.verify(token, Kind::Open) {
        Ok(claims) => {
            record(state, hit_event(claims, EventType::Open, headers)).await;
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
    let Ok(location) = HeaderValue::from_str(&claims.link) else { return not_found() };
    if !(claims.link.starts_with("https://") || claims.link.starts_with("http://")) {
        return not_found();
    }
    if request.method() != Method::HEAD {
        record(&state, hit_event(claims, EventType::Click, request.headers())).await;
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
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, UNSUBSCRIBE_BODY_MAX).await else {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body", format!("a one-click body is at most {UNSUBSCRIBE_BODY_MAX} bytes")).into_response();
    };
    let body = String::from_utf8_lossy(&body);
    let one_click = body.split('&').any(|p| p.trim() == "List-Unsubscribe=One-Click")
        || (body.contains("name=\"List-Unsubscribe\"") && body.contains("One-Click"));
    if !one_click {
        return ApiError::bad_request("body", "expected the body List-Unsubscribe=One-Click (RFC 8058)").into_response();
    }
    if !record(&state, hit_event(claims, EventType::Unsubscribe, &parts.headers)).await {
        return ApiError::unavailable("please try again in a minute").into_response();
    }
    no_store(Html("<!doctype html><meta charset=utf-8><title>Unsubscribed</title><p>You are unsubscribed.</p>").into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pixel_is_a_43_byte_gif() {
        assert_eq!(super::PIXEL_GIF.len(), 43);
        assert_eq!(&super::PIXEL_GIF[..6], b"GIF89a");
        assert_eq!(super::PIXEL_GIF[42], 0x3b);
    }
}
