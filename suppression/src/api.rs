//! The suppression API: checks before a send, one address with its history, manual changes,
//! the changes feed for sending nodes that mirror the list, the list itself, imports and the
//! counts. Every answer is of the key's tenant only; checks come from memory.

use crate::address::Address;
use crate::entry::{Change, Op, Provenance, Reason, Request, RECORD_VERSION};
use crate::index::Index;
use crate::list::{Read, Records};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use mailpipe_bus::{BusError, EventBus, Message, SUPPRESSION_REQUESTS_TOPIC};
use mailpipe_http::{ApiError, FieldError, JsonBody, Key, Url};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// Most addresses in one check or import.
pub const MAX_BATCH: usize = 1000;
/// Most records one page of the feed or the list reads: a page can hold fewer entries than
/// its limit (other tenants' records are skipped); follow `next_cursor`.
const SCAN_MAX: usize = 20_000;
const SCANS_PER_CALL: usize = 5;
const MAX_WAIT_SECS: u64 = 30;
const MAX_NOTE: usize = 1000;

#[derive(Clone)]
pub struct SuppressionState {
    pub index: Arc<Index>,
    pub records: Arc<Records>,
    pub bus: Arc<dyn EventBus>,
}

/// The routes with their documentation.
pub fn api() -> OpenApiRouter<SuppressionState> {
    OpenApiRouter::new()
        .routes(routes!(check))
        .routes(routes!(changes))
        .routes(routes!(summary))
        .routes(routes!(import))
        .routes(routes!(list))
        .routes(routes!(get_one, put_one, delete_one))
}

pub fn router(state: SuppressionState) -> axum::Router {
    api().with_state(state).split_for_parts().0
}

fn ready(state: &SuppressionState) -> Result<(), ApiError> {
    if state.index.is_ready() {
        Ok(())
    } else {
        Err(ApiError::unavailable("the suppression index is still loading; retry"))
    }
}

fn bus_error(e: BusError) -> ApiError {
    match e {
        BusError::Invalid(reason) => ApiError::bad_request("cursor", format!("not a cursor of this list ({reason})")),
        e => ApiError::unavailable(format!("suppression records: {e}")),
    }
}

fn address(raw: &str, field: &str) -> Result<Address, ApiError> {
    Address::parse(raw).map_err(|why| ApiError::bad_request(field, format!("{why}: {raw:?}")))
}

fn stream_ok(stream: &Option<String>) -> Result<(), ApiError> {
    match stream {
        Some(s) if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') => {
            Err(ApiError::bad_request("stream", "must be 1 to 64 lowercase letters, digits, _ and - (marketing, transactional)"))
        }
        _ => Ok(()),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"recipients": ["ana@gmail.com", "Bob@Example.com"], "stream": "marketing"}))]
pub struct CheckRequest {
    /// 1 to 1,000 addresses, as the sending node spells them.
    #[schema(min_items = 1, max_items = 1000)]
    pub recipients: Vec<String>,
    /// The stream of the mail about to be sent; without it, a suppression of any stream counts.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub stream: Option<String>,
}

#[derive(Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Suppressed {
    /// As the request spelled it.
    pub recipient: String,
    pub reason: Reason,
    pub since: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The stream it is suppressed for; absent: every stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

#[derive(Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Invalid {
    /// Position in `recipients`.
    pub index: usize,
    pub recipient: String,
    pub reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"checked": 2, "suppressed": [{"recipient": "ana@gmail.com", "reason": "hard_bounce", "since": "2026-11-28T09:12:00Z"}], "invalid": []}))]
pub struct CheckAnswer {
    pub checked: usize,
    /// Only the suppressed addresses, in request order.
    pub suppressed: Vec<Suppressed>,
    /// Addresses that are not addresses, each with why; the others are checked all the same.
    pub invalid: Vec<Invalid>,
}

/// Check addresses before a send
///
/// Which of 1 to 1,000 addresses may not be mailed (on `stream`, if given), answered from
/// memory. A malformed address is listed in `invalid` and does not fail the batch.
#[utoipa::path(
    post,
    path = "/v1/suppressions/check",
    tag = "suppressions",
    request_body = CheckRequest,
    responses(
        (status = 200, description = "The suppressed ones, in request order.", body = CheckAnswer),
        (status = 503, description = "The index is still loading after a start; retry.", body = mailpipe_http::ErrorBody),
    ),
    security(("api_key" = ["suppressions:read"])),
)]
async fn check(State(state): State<SuppressionState>, Key(key): Key, JsonBody(request): JsonBody<CheckRequest>) -> Result<Json<CheckAnswer>, ApiError> {
    if request.recipients.is_empty() || request.recipients.len() > MAX_BATCH {
        return Err(ApiError::bad_request("recipients", format!("must list 1 to {MAX_BATCH} addresses")));
    }
    stream_ok(&request.stream)?;
    ready(&state)?;
    let now = Utc::now();
    let mut answer = CheckAnswer { checked: request.recipients.len(), suppressed: Vec::new(), invalid: Vec::new() };
    for (index, recipient) in request.recipients.into_iter().enumerate() {
        match Address::parse(&recipient) {
            Ok(a) => {
                if let Some(hit) = state.index.check(&a.key(&key.tenant), request.stream.as_deref(), now) {
                    answer.suppressed.push(Suppressed { recipient, reason: hit.reason, since: hit.since, expires_at: hit.expires_at, stream: hit.stream });
                }
            }
            Err(why) => answer.invalid.push(Invalid { index, recipient, reason: why.to_string() }),
        }
    }
    metrics::counter!("mailpipe_suppression_checked_total").increment(answer.checked as u64);
    Ok(Json(answer))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OneParams {
    /// Answer for mail on this stream (default: any stream).
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub stream: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"address": "ana@gmail.com", "suppressed": true, "reason": "hard_bounce", "since": "2026-11-28T09:12:00Z", "active": [], "history": []}))]
pub struct EntryAnswer {
    /// Normalised.
    pub address: String,
    pub suppressed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The suppressions in force, with their provenance.
    pub active: Vec<Change>,
    /// Every time it was suppressed, released or expired (the latest 100), oldest first.
    pub history: Vec<Change>,
}

/// The entry of a tenant's address, if the index has one (a hash collision with another
/// tenant's address is told apart by the record itself).
async fn read_entry(state: &SuppressionState, tenant: &str, address: &Address) -> Result<Option<crate::Entry>, ApiError> {
    let Some(offset) = state.index.offset(&address.key(tenant)) else { return Ok(None) };
    let entry = state.records.at(offset).await.map_err(|e| ApiError::unavailable(format!("suppression records: {e}")))?;
    Ok((entry.tenant == tenant && entry.address == address.as_str()).then_some(entry))
}

/// One address, with its history
///
/// Whether the address is suppressed (as a check answers), the suppressions in force and
/// every change with its provenance: the bounce, complaint or unsubscribe that caused it, or
/// who suppressed or released it by hand. An address never suppressed answers
/// `suppressed: false` with an empty history.
#[utoipa::path(
    get,
    path = "/v1/suppressions/{address}",
    tag = "suppressions",
    params(("address" = String, Path, description = "The address, in any spelling (case, brackets, Unicode or punycode domain).", example = "ana@gmail.com"), OneParams),
    responses((status = 200, description = "The address.", body = EntryAnswer), (status = 503, description = "The index is still loading; retry.", body = mailpipe_http::ErrorBody)),
    security(("api_key" = ["suppressions:read"])),
)]
async fn get_one(State(state): State<SuppressionState>, Key(key): Key, Path(raw): Path<String>, Url(params): Url<OneParams>) -> Result<Json<EntryAnswer>, ApiError> {
    let a = address(&raw, "address")?;
    stream_ok(&params.stream)?;
    ready(&state)?;
    let now = Utc::now();
    let hit = state.index.check(&a.key(&key.tenant), params.stream.as_deref(), now);
    let entry = read_entry(&state, &key.tenant, &a).await?;
    let (active, history) = entry.map_or((Vec::new(), Vec::new()), |e| {
        let active = e.active.into_iter().filter(|c| c.expires_at.is_none_or(|x| x > now)).collect();
        (active, e.history)
    });
    Ok(Json(EntryAnswer {
        address: a.to_string(),
        suppressed: hit.is_some(),
        reason: hit.as_ref().map(|h| h.reason),
        since: hit.as_ref().map(|h| h.since),
        expires_at: hit.as_ref().and_then(|h| h.expires_at),
        stream: hit.and_then(|h| h.stream),
        active,
        history,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"note": "asked to be removed by phone", "stream": "marketing"}))]
pub struct PutRequest {
    /// Why, for the history.
    #[schema(max_length = 1000)]
    pub note: Option<String>,
    /// When it ends; absent: for good.
    pub expires_at: Option<DateTime<Utc>>,
    /// Only this stream; absent: every stream.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub stream: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = SuppressionAccepted, example = json!({"address": "ana@gmail.com", "request_id": "0193a1f0-0000-7000-8000-000000000001"}))]
pub struct Accepted {
    /// Normalised.
    pub address: String,
    /// The change's request; the change shows in the address's history within a second.
    pub request_id: Uuid,
}

fn note_ok(note: &Option<String>) -> Result<(), ApiError> {
    match note {
        Some(n) if n.len() > MAX_NOTE || n.chars().any(char::is_control) => Err(ApiError::bad_request("note", "must be at most 1000 bytes, without control characters")),
        _ => Ok(()),
    }
}

async fn send(state: &SuppressionState, requests: Vec<Request>) -> Result<(), ApiError> {
    let messages = requests
        .iter()
        .map(|r| {
            let mut key = r.tenant.as_bytes().to_vec();
            key.push(0);
            key.extend_from_slice(r.address.as_bytes());
            Message { key, payload: serde_json::to_vec(r).unwrap_or_default() }
        })
        .collect();
    state.bus.publish(SUPPRESSION_REQUESTS_TOPIC, messages).await.map_err(|e| ApiError::unavailable(format!("the bus cannot take the request ({e}); retry")))
}

fn request(key: &mailpipe_tenants::Principal, address: &Address, source: &str, note: Option<String>, op: Op) -> Request {
    Request { v: RECORD_VERSION, id: Uuid::now_v7(), tenant: key.tenant.clone(), address: address.to_string(), at: Utc::now(), by: key.key_id.clone(), source: source.into(), note, op }
}

/// Suppress an address by hand
///
/// Reason `manual`, with an optional note, stream and expiry (the body may be empty). The
/// change is durable when this answers; it shows in checks within a second.
#[utoipa::path(
    put,
    path = "/v1/suppressions/{address}",
    tag = "suppressions",
    params(("address" = String, Path, description = "The address.", example = "ana@gmail.com")),
    request_body(content = Option<PutRequest>, description = "Optional: the body may be empty."),
    responses((status = 202, description = "Durable; applied within a second.", body = Accepted), (status = 503, description = "The bus cannot take writes; retry.", body = mailpipe_http::ErrorBody)),
    security(("api_key" = ["suppressions:write"])),
)]
async fn put_one(State(state): State<SuppressionState>, Key(key): Key, Path(raw): Path<String>, mailpipe_http::Body(body): mailpipe_http::Body) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let a = address(&raw, "address")?;
    let put: PutRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PutRequest::default()
    } else {
        serde_json::from_slice::<Option<PutRequest>>(&body).map_err(|e| ApiError::bad_request("body", format!("invalid JSON body: {e}")))?.unwrap_or_default()
    };
    note_ok(&put.note)?;
    stream_ok(&put.stream)?;
    let r = request(&key, &a, "api", put.note, Op::Suppress { reason: Reason::Manual, stream: put.stream, expires_at: put.expires_at });
    let id = r.id;
    send(&state, vec![r]).await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { address: a.to_string(), request_id: id })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Why, for the history.
    #[param(max_length = 1000)]
    pub note: Option<String>,
}

/// Release an address
///
/// Ends every suppression of the address, recorded with the key that asked and the note. A
/// later hard bounce or complaint suppresses it again.
#[utoipa::path(
    delete,
    path = "/v1/suppressions/{address}",
    tag = "suppressions",
    params(("address" = String, Path, description = "The address.", example = "ana@gmail.com"), DeleteParams),
    responses((status = 202, description = "Durable; applied within a second.", body = Accepted), (status = 503, description = "The bus cannot take writes; retry.", body = mailpipe_http::ErrorBody)),
    security(("api_key" = ["suppressions:write"])),
)]
async fn delete_one(State(state): State<SuppressionState>, Key(key): Key, Path(raw): Path<String>, Url(params): Url<DeleteParams>) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let a = address(&raw, "address")?;
    note_ok(&params.note)?;
    let r = request(&key, &a, "api", params.note, Op::Release);
    let id = r.id;
    send(&state, vec![r]).await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { address: a.to_string(), request_id: id })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ChangesParams {
    /// Where the last page ended (`next_cursor`); absent: the beginning.
    #[param(pattern = "^([0-9]{1,20}-[0-9a-f]{8})?$")]
    pub cursor: Option<String>,
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Wait up to this long for a change when there is none (`30s` or `30`, at most 30 s).
    #[param(pattern = "^([0-9]{1,2}s?)?$", example = "30s")]
    pub wait: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeedChange {
    /// Resume after this change.
    pub cursor: String,
    pub address: String,
    #[serde(flatten)]
    pub change: Change,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"changes": [{"cursor": "1832-5e1f09a2", "address": "ana@gmail.com", "id": "0193a1f0-0000-7000-8000-000000000001", "action": "suppressed", "reason": "hard_bounce", "at": "2026-11-28T09:12:00Z", "provenance": {"source": "event", "status": "5.1.1"}}], "next_cursor": "1832-5e1f09a2"}))]
pub struct ChangesAnswer {
    /// In the order they were made.
    pub changes: Vec<FeedChange>,
    /// Where to resume: pass it as `cursor`.
    pub next_cursor: String,
}

/// A cursor as the API gives it: a position in the suppressions topic and a check of it for
/// the tenant, so that only positions this API gave (record boundaries) are ever read from.
fn cursor_of(offset: u64, tenant: &str) -> String {
    let mut bytes = offset.to_le_bytes().to_vec();
    bytes.extend_from_slice(tenant.as_bytes());
    format!("{offset}-{:08x}", twox_hash::XxHash3_128::oneshot(&bytes) as u32)
}

fn cursor(raw: &Option<String>, tenant: &str) -> Result<u64, ApiError> {
    let bad = || ApiError::bad_request("cursor", "must be a cursor this API gave (next_cursor)");
    match raw.as_deref() {
        None | Some("") => Ok(0),
        Some(c) => {
            let offset: u64 = c.split('-').next().and_then(|o| o.parse().ok()).ok_or_else(bad)?;
            if cursor_of(offset, tenant) == c { Ok(offset) } else { Err(bad()) }
        }
    }
}

fn limit(raw: Option<usize>) -> Result<usize, ApiError> {
    match raw {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request("limit", "must be from 1 to 1000")),
    }
}

/// The changes feed
///
/// Additions, releases and expiries of the tenant's list after `cursor`, in order, with the
/// cursor to resume from: a sending node that keeps its own copy applies them and passes
/// `next_cursor` back, and so mirrors the list with no gaps and no duplicates across restarts
/// of either side. With `wait`, an empty answer waits up to that long for a change.
#[utoipa::path(
    get,
    path = "/v1/suppressions/changes",
    tag = "suppressions",
    params(ChangesParams),
    responses((status = 200, description = "The changes after the cursor.", body = ChangesAnswer), (status = 503, description = "The index is still loading; retry.", body = mailpipe_http::ErrorBody)),
    security(("api_key" = ["suppressions:read"])),
)]
async fn changes(State(state): State<SuppressionState>, Key(key): Key, Url(params): Url<ChangesParams>) -> Result<Json<ChangesAnswer>, ApiError> {
    let mut from = cursor(&params.cursor, &key.tenant)?;
    let limit = limit(params.limit)?;
    let wait = match params.wait.as_deref() {
        None | Some("") => 0,
        Some(w) => w.strip_suffix('s').unwrap_or(w).parse::<u64>().ok().filter(|s| *s <= MAX_WAIT_SECS).ok_or_else(|| ApiError::bad_request("wait", "must be 0 to 30 seconds (30s)"))?,
    };
    ready(&state)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut next = state.index.watch_next();
    let mut out = Vec::new();
    // Other tenants' records are skipped; a call reads at most SCANS_PER_CALL runs of them
    // and then answers with the cursor moved on (and maybe no change).
    let mut scans = 0;
    loop {
        let end = state.index.next();
        let reads = state.records.scan(from, end, SCAN_MAX).await.map_err(bus_error)?;
        let more = reads.len() == SCAN_MAX;
        scans += 1;
        for Read { next: after, entry, .. } in reads {
            from = after;
            if entry.tenant != key.tenant {
                continue;
            }
            if let Some(change) = entry.made {
                out.push(FeedChange { cursor: cursor_of(after, &key.tenant), address: entry.address, change });
                if out.len() == limit {
                    break;
                }
            }
        }
        if !out.is_empty() || scans >= SCANS_PER_CALL {
            break;
        }
        if more {
            continue;
        }
        // Nothing yet: wait for the index to move past `from`, or the deadline.
        match tokio::time::timeout_at(deadline, next.wait_for(|n| *n > from)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    Ok(Json(ChangesAnswer { changes: out, next_cursor: cursor_of(from, &key.tenant) }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this reason.
    pub reason: Option<Reason>,
    /// Only suppressions that apply to this stream.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub stream: Option<String>,
    /// Only those in force since this time (RFC 3339) or later.
    pub since: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^([0-9]{1,20}-[0-9a-f]{8})?$")]
    pub cursor: Option<String>,
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Listed {
    pub address: String,
    pub reason: Reason,
    pub since: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    pub provenance: Provenance,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"entries": [{"address": "ana@gmail.com", "reason": "complaint", "since": "2026-11-28T09:12:00Z", "provenance": {"source": "event", "feedback_type": "abuse", "campaign": "spring-sale"}}], "next_cursor": null}))]
pub struct ListAnswer {
    /// The suppressions in force, in the order they were recorded.
    pub entries: Vec<Listed>,
    /// The next page; null at the end. A page may hold fewer than `limit` entries before the end.
    pub next_cursor: Option<String>,
}

/// The suppression list
///
/// The suppressions in force of the tenant, filtered by reason, stream and time, a page at a
/// time.
#[utoipa::path(
    get,
    path = "/v1/suppressions",
    tag = "suppressions",
    params(ListParams),
    responses((status = 200, description = "A page of the list.", body = ListAnswer), (status = 503, description = "The index is still loading; retry.", body = mailpipe_http::ErrorBody)),
    security(("api_key" = ["suppressions:read"])),
)]
async fn list(State(state): State<SuppressionState>, Key(key): Key, Url(params): Url<ListParams>) -> Result<Json<ListAnswer>, ApiError> {
    let mut from = cursor(&params.cursor, &key.tenant)?;
    let limit = limit(params.limit)?;
    stream_ok(&params.stream)?;
    ready(&state)?;
    let end = state.index.next();
    let reads = state.records.scan(from, end, SCAN_MAX).await.map_err(bus_error)?;
    let now = Utc::now();
    let mut entries = Vec::new();
    for Read { offset, next, entry } in reads {
        from = next;
        if entry.tenant != key.tenant {
            continue;
        }
        let Ok(a) = Address::parse(&entry.address) else { continue };
        // Only an address's latest record tells what is in force.
        if state.index.offset(&a.key(&key.tenant)) != Some(offset) {
            continue;
        }
        let matching = entry.active.into_iter().filter(|c| {
            c.expires_at.is_none_or(|x| x > now)
                && params.reason.is_none_or(|r| r == c.reason)
                && (params.stream.is_none() || c.stream.is_none() || c.stream == params.stream)
                && params.since.is_none_or(|s| c.at >= s)
        });
        for c in matching {
            entries.push(Listed { address: entry.address.clone(), reason: c.reason, since: c.at, expires_at: c.expires_at, stream: c.stream, provenance: c.provenance });
        }
        if entries.len() >= limit {
            break;
        }
    }
    Ok(Json(ListAnswer { entries, next_cursor: (from < end).then(|| cursor_of(from, &key.tenant)) }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"tenant": "acme", "total": 1204, "by_reason": {"hard_bounce": 812, "complaint": 31, "unsubscribe": 340, "soft_bounce_limit": 12, "manual": 9}}))]
pub struct Summary {
    pub tenant: String,
    /// Suppressions in force (an address suppressed for two reasons counts twice).
    pub total: u64,
    /// Every reason, 0 included.
    pub by_reason: BTreeMap<String, u64>,
}

/// Suppression counts
///
/// The tenant's suppressions in force by reason, for the overview dashboard.
#[utoipa::path(
    get,
    path = "/v1/suppressions/summary",
    tag = "suppressions",
    responses((status = 200, description = "The counts.", body = Summary), (status = 503, description = "The index is still loading; retry.", body = mailpipe_http::ErrorBody)),
    security(("api_key" = ["stats:read"])),
)]
async fn summary(State(state): State<SuppressionState>, Key(key): Key) -> Result<Json<Summary>, ApiError> {
    ready(&state)?;
    let counts = state.index.counts(&key.tenant);
    let by_reason: BTreeMap<String, u64> = Reason::ALL.iter().map(|r| (r.as_str().to_string(), counts[r.code() as usize - 1])).collect();
    Ok(Json(Summary { tenant: key.tenant, total: counts.iter().sum(), by_reason }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportEntry {
    pub address: String,
    /// Default `manual`.
    pub reason: Option<Reason>,
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub stream: Option<String>,
    #[schema(max_length = 1000)]
    pub note: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"entries": [{"address": "ana@gmail.com", "reason": "hard_bounce", "note": "from SES"}, {"address": "bob@example.com", "reason": "unsubscribe", "stream": "marketing"}]}))]
pub struct ImportRequest {
    /// 1 to 1,000 entries.
    #[schema(min_items = 1, max_items = 1000)]
    pub entries: Vec<ImportEntry>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"accepted": 1, "refused": [{"index": 1, "field": "address", "reason": "must be an email address (local@domain): \"bob\""}]}))]
pub struct ImportAnswer {
    /// Entries made durable; applied within a second.
    pub accepted: usize,
    /// Entries refused, each with why; the others are taken all the same.
    pub refused: Vec<FieldError>,
}

/// Import suppressions
///
/// Up to 1,000 addresses at once, each with an optional reason (default `manual`), stream,
/// note and expiry, as exported by another platform (`mailpipe suppressions import` reads
/// their CSV files). Entries that are not valid are refused one by one.
#[utoipa::path(
    post,
    path = "/v1/suppressions/import",
    tag = "suppressions",
    request_body = ImportRequest,
    responses((status = 202, description = "The accepted entries are durable.", body = ImportAnswer), (status = 503, description = "The bus cannot take writes; retry.", body = mailpipe_http::ErrorBody)),
    security(("api_key" = ["suppressions:write"])),
)]
async fn import(State(state): State<SuppressionState>, Key(key): Key, JsonBody(body): JsonBody<ImportRequest>) -> Result<(StatusCode, Json<ImportAnswer>), ApiError> {
    if body.entries.is_empty() || body.entries.len() > MAX_BATCH {
        return Err(ApiError::bad_request("entries", format!("must list 1 to {MAX_BATCH} entries")));
    }
    let mut requests = Vec::new();
    let mut refused = Vec::new();
    for (index, e) in body.entries.into_iter().enumerate() {
        let checked = address(&e.address, "address").and_then(|a| note_ok(&e.note).and(stream_ok(&e.stream)).map(|_| a));
        match checked {
            Ok(a) => requests.push(request(&key, &a, "import", e.note, Op::Suppress { reason: e.reason.unwrap_or(Reason::Manual), stream: e.stream, expires_at: e.expires_at })),
            Err(err) => refused.extend(err.errors.into_iter().map(|f| FieldError { index: Some(index), ..f })),
        }
    }
    let accepted = requests.len();
    if accepted > 0 {
        send(&state, requests).await?;
    }
    Ok((StatusCode::ACCEPTED, Json(ImportAnswer { accepted, refused })))
}
