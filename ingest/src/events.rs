//! `POST /v1/events`: outcomes reported by sending nodes, as a JSON array or NDJSON. The
//! whole request is validated first; one bad event rejects the request with every problem
//! listed, so nothing of it is half-written.

use crate::IngestState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use mailpipe_http::{ApiError, Body, FieldError, Key};
use mailpipe_schemas::{BounceClass, Event, EventType};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use uuid::Uuid;

/// Longest free-text field (diagnostics, message ids), as in a tracking token.
pub const MAX_FIELD_LEN: usize = mailpipe_tokens::MAX_FIELD_LEN;
const FIELDS: [&str; 13] = [
    "type", "event_id", "campaign", "variant", "message_id", "recipient", "timestamp", "bounce_class", "status",
    "reason", "revenue", "currency", "stream",
];

/// One reported event, as `POST /v1/events` takes it. Only what the schema says: the parser
/// below reads the same fields (`FIELDS`, checked by a test) and gives each problem its field.
#[allow(dead_code)]
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"type": "bounced", "campaign": "spring-sale", "message_id": "<0193a1@mail.example.com>", "recipient": "ana@example.com", "timestamp": "2026-11-21T10:00:00Z", "bounce_class": "hard", "status": "5.1.1", "reason": "550 5.1.1 user unknown"}))]
pub struct EventInput {
    /// What happened.
    #[serde(rename = "type")]
    kind: ReportedType,
    /// Optional; without it the id is derived from tenant, type, message_id, recipient and
    /// timestamp, so a retried identical event is stored once.
    event_id: Option<uuid::Uuid>,
    #[schema(min_length = 1, max_length = 200)]
    campaign: String,
    /// A/B variant.
    #[schema(min_length = 1, max_length = 64)]
    variant: Option<String>,
    /// The Message-ID of the mail (angle brackets optional).
    #[schema(min_length = 1, max_length = 1000)]
    message_id: String,
    #[schema(min_length = 3, max_length = 320, format = Email)]
    recipient: String,
    /// RFC 3339; default: when received. From 2000-01-01 to an hour in the future.
    timestamp: Option<DateTime<Utc>>,
    /// Required for, and only for, `bounced`.
    bounce_class: Option<BounceClassInput>,
    /// Enhanced status code (RFC 3463), such as 5.1.1.
    #[schema(pattern = "^[245]\\.[0-9]{1,3}\\.[0-9]{1,3}$")]
    status: Option<String>,
    /// Diagnostic text.
    #[schema(min_length = 1, max_length = 1000)]
    reason: Option<String>,
    /// Required for, and only for, `conversion`; stored exactly, in millionths.
    #[schema(minimum = 0, exclusive_maximum = 1e12)]
    revenue: Option<f64>,
    /// ISO 4217, only for `conversion`.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
    /// Only for `sent`: the mail stream of the message (`marketing`, `transactional`, ...);
    /// an unsubscribe from it suppresses that stream only (its unsubscribe URL carries it).
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9_-]+$")]
    stream: Option<String>,
}

#[allow(dead_code)]
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum ReportedType {
    Sent,
    Delivered,
    Deferred,
    Bounced,
    Conversion,
}

#[allow(dead_code)]
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum BounceClassInput {
    Hard,
    Soft,
}

/// The answer once every event of the request is durable.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"accepted": 1, "event_ids": ["0193a1c2-7d4e-7000-8000-3c1f00000001"]}))]
pub struct Accepted {
    pub accepted: usize,
    pub event_ids: Vec<uuid::Uuid>,
}

/// Report send outcomes and conversions
///
/// A JSON array of events, or the same objects one per line (NDJSON). The whole request is
/// validated first: one bad event rejects it with every problem listed, and nothing of it is
/// written. Answered once every event is durable.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    request_body(
        description = "At most `http.max_events_per_request` events (default 10,000).",
        content(
            (Vec<EventInput> = "application/json"),
            (EventInput = "application/x-ndjson"),
        ),
    ),
    responses(
        (status = 202, description = "Every event is durable on the bus.", body = Accepted),
        (status = 503, description = "The bus cannot take writes; retry.", body = mailpipe_http::ErrorBody),
    ),
    security(("api_key" = ["events:write"])),
)]
pub(crate) async fn post_events(
    State(state): State<Arc<IngestState>>,
    Key(principal): Key,
    Body(body): Body,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let events = parse_events(&body, &principal.tenant, Utc::now(), state.max_events_per_request).map_err(|errors| {
        metrics::counter!("mailpipe_ingest_requests_rejected_total").increment(1);
        ApiError { status: StatusCode::BAD_REQUEST, errors }
    })?;
    state.durable(crate::publish(state.bus.as_ref(), &events)).await.map_err(|e| {
        state.publish_failed(crate::Publisher::Events, &e);
        ApiError::unavailable("the event bus cannot take writes right now; retry")
    })?;
    metrics::counter!("mailpipe_ingest_events_received_total", "source" => "api").increment(events.len() as u64);
    let event_ids = events.iter().map(|e| e.event_id).collect();
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted: events.len(), event_ids })))
}

/// Parses and validates a request body into events of `tenant`, or lists every problem.
pub fn parse_events(body: &[u8], tenant: &str, now: DateTime<Utc>, max: usize) -> Result<Vec<Event>, Vec<FieldError>> {
    let body_error = |reason: String| vec![FieldError { index: None, field: "body".into(), reason }];
    let text = std::str::from_utf8(body).map_err(|_| body_error("body is not UTF-8".into()))?;
    let items: Vec<Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text).map_err(|e| body_error(format!("not a JSON array: {e}")))?
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| body_error(format!("line {}: not JSON: {e}", i + 1))))
            .collect::<Result<_, _>>()?
    };
    if items.is_empty() {
        return Err(body_error("no events".into()));
    }
    if items.len() > max {
        return Err(body_error(format!("{} events in one request; at most {max} are allowed", items.len())));
    }
    let mut errors = Vec::new();
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        match parse_one(item, tenant, now) {
            Ok(e) => events.push(e),
            Err((field, reason)) => errors.push(FieldError { index: Some(index), field, reason }),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}

type Problem = (String, String);

fn problem(field: &str, reason: impl Into<String>) -> Problem {
    (field.to_string(), reason.into())
}

fn parse_one(item: &Value, tenant: &str, now: DateTime<Utc>) -> Result<Event, Problem> {
    let obj = item.as_object().ok_or_else(|| problem("", "an event must be a JSON object"))?;
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(problem(unknown, format!("unknown field; known fields are {}", FIELDS.join(", "))));
    }
    let type_name = required_str(obj, "type", 32)?;
    let event_type = EventType::parse(type_name)
        .filter(|t| t.reported_by_senders())
        .ok_or_else(|| problem("type", "must be one of sent, delivered, deferred, bounced, conversion"))?;
    let campaign = required_str(obj, "campaign", 200)?.to_string();
    if campaign == mailpipe_schemas::UNMATCHED_CAMPAIGN {
        return Err(problem("campaign", "`(unmatched)` is reserved for inbound mail whose send is not known"));
    }
    let variant = optional_str(obj, "variant", 64)?.unwrap_or_default().to_string();
    let message_id = required_str(obj, "message_id", MAX_FIELD_LEN)?.to_string();
    let recipient = required_str(obj, "recipient", 320)?.to_string();
    if !is_address(&recipient) {
        return Err(problem("recipient", "must be an email address (local@domain)"));
    }
    let stated_time = optional_str(obj, "timestamp", 64)?;
    let occurred_at = match stated_time {
        None => now,
        Some(s) => {
            let t = DateTime::parse_from_rfc3339(s)
                .map_err(|_| problem("timestamp", "must be an RFC 3339 time, e.g. 2026-11-21T10:00:00Z"))?
                .with_timezone(&Utc);
            if t > now + Duration::hours(1) {
                return Err(problem("timestamp", "is more than an hour in the future"));
            }
            if t < earliest_timestamp() {
                return Err(problem("timestamp", "is before 2000-01-01"));
            }
            t
        }
    };
    let bounce_class = match optional_str(obj, "bounce_class", 8)? {
        None if event_type == EventType::Bounced => return Err(problem("bounce_class", "is required for bounced events (hard or soft)")),
        None => None,
        Some(_) if event_type != EventType::Bounced => return Err(problem("bounce_class", "is only for bounced events")),
        Some("hard") => Some(BounceClass::Hard),
        Some("soft") => Some(BounceClass::Soft),
        Some(_) => return Err(problem("bounce_class", "must be hard or soft")),
    };
    let status = optional_str(obj, "status", 16)?.map(str::to_string);
    if let Some(s) = &status {
        if !is_enhanced_status(s) {
            return Err(problem("status", "must be an enhanced status code (RFC 3463) such as 5.1.1"));
        }
    }
    let reason = optional_str(obj, "reason", MAX_FIELD_LEN)?.map(str::to_string);
    let revenue_micros = match (obj.get("revenue"), event_type) {
        (None, EventType::Conversion) => return Err(problem("revenue", "is required for conversion events")),
        (None, _) => None,
        (Some(_), t) if t != EventType::Conversion => return Err(problem("revenue", "is only for conversion events")),
        (Some(v), _) => {
            let amount = v.as_f64().filter(|a| a.is_finite() && *a >= 0.0 && *a < 1e12);
            let amount = amount.ok_or_else(|| problem("revenue", "must be a number from 0 up to 10^12"))?;
            Some((amount * 1e6).round() as i64)
        }
    };
    let currency = optional_str(obj, "currency", 3)?.map(str::to_string);
    if currency.as_deref().is_some_and(|c| c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(problem("currency", "must be an ISO 4217 code such as USD"));
    }
    if currency.is_some() && event_type != EventType::Conversion {
        return Err(problem("currency", "is only for conversion events"));
    }
    let stream = optional_str(obj, "stream", 64)?.map(str::to_string);
    if stream.as_deref().is_some_and(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')) {
        return Err(problem("stream", "must be lowercase letters, digits, _ and - (marketing, transactional)"));
    }
    if stream.is_some() && event_type != EventType::Sent {
        return Err(problem("stream", "is only for sent events"));
    }
    let event_id = match optional_str(obj, "event_id", 64)? {
        Some(s) => Uuid::parse_str(s).map_err(|_| problem("event_id", "must be a UUID"))?,
        None => derived_id(tenant, type_name, &message_id, &recipient, stated_time),
    };
    Ok(Event {
        event_id,
        tenant: tenant.to_string(),
        event_type,
        occurred_at,
        received_at: now,
        campaign,
        variant,
        message_id,
        recipient,
        link: None,
        bounce_class,
        status,
        reason,
        revenue_micros,
        currency,
        user_agent: None,
        ip: None,
        stream,
    })
}

/// The earliest time an event may state: older ones are typing errors (a year 1900), not
/// history.
fn earliest_timestamp() -> DateTime<Utc> {
    DateTime::from_timestamp(946_684_800, 0).unwrap_or_default()
}

/// An id for an event sent without one, from what identifies it, so a sending node that
/// retries the same request does not count it twice.
fn derived_id(tenant: &str, kind: &str, message_id: &str, recipient: &str, timestamp: Option<&str>) -> Uuid {
    let parts = [tenant, kind, message_id, recipient, timestamp.unwrap_or("")];
    mailpipe_schemas::derived_id(&parts.map(str::as_bytes))
}

fn required_str<'a>(obj: &'a Map<String, Value>, field: &str, max: usize) -> Result<&'a str, Problem> {
    optional_str(obj, field, max)?.ok_or_else(|| problem(field, "is required"))
}

fn optional_str<'a>(obj: &'a Map<String, Value>, field: &str, max: usize) -> Result<Option<&'a str>, Problem> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(problem(field, "must not be empty")),
        Some(Value::String(s)) if s.len() > max => Err(problem(field, format!("is longer than {max} bytes"))),
        Some(Value::String(s)) if s.chars().any(char::is_control) => Err(problem(field, "must not contain control characters")),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(problem(field, "must be a string")),
    }
}

fn is_address(s: &str) -> bool {
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.') && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

fn is_enhanced_status(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..].iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn arrays_and_ndjson_parse_to_the_same_events() {
        let a = r#"[{"type":"sent","campaign":"c","message_id":"<1@x>","recipient":"a@b.com"},
                    {"type":"conversion","campaign":"c","message_id":"<1@x>","recipient":"a@b.com","revenue":12.5}]"#;
        let n = "{\"type\":\"sent\",\"campaign\":\"c\",\"message_id\":\"<1@x>\",\"recipient\":\"a@b.com\"}\n\n{\"type\":\"conversion\",\"campaign\":\"c\",\"message_id\":\"<1@x>\",\"recipient\":\"a@b.com\",\"revenue\":12.5}\n";
        let from_array = parse_events(a.as_bytes(), "t", now(), 100).unwrap();
        let from_lines = parse_events(n.as_bytes(), "t", now(), 100).unwrap();
        assert_eq!(from_array, from_lines);
        assert_eq!(from_array[1].revenue_micros, Some(12_500_000));
        assert_eq!(from_array[0].tenant, "t");
    }

    #[test]
    fn every_bad_event_is_reported_with_index_field_and_reason() {
        let body = r#"[{"type":"sent","campaign":"c","message_id":"m","recipient":"a@b.com"},
                       {"type":"opened","campaign":"c","message_id":"m","recipient":"a@b.com"},
                       {"type":"bounced","campaign":"c","message_id":"m","recipient":"a@b.com"},
                       {"type":"sent","campaign":"c","message_id":"m","recipient":"nobody"},
                       {"type":"sent","campaign":"c","message_id":"m","recipient":"a@b.com","colour":"red"},
                       {"type":"delivered","campaign":"c","message_id":"m","recipient":"a@b.com","timestamp":"yesterday"},
                       {"type":"bounced","bounce_class":"hard","status":"5.1","campaign":"c","message_id":"m","recipient":"a@b.com"},
                       {"type":"conversion","campaign":"c","message_id":"m","recipient":"a@b.com","revenue":-1},
                       "not an object",
                       {"type":"sent","campaign":"(unmatched)","message_id":"m","recipient":"a@b.com"}]"#;
        let errors = parse_events(body.as_bytes(), "t", now(), 100).unwrap_err();
        let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.index.unwrap(), e.field.as_str())).collect();
        assert_eq!(
            got,
            vec![(1, "type"), (2, "bounce_class"), (3, "recipient"), (4, "colour"), (5, "timestamp"), (6, "status"), (7, "revenue"), (8, ""), (9, "campaign")]
        );
        assert!(errors.iter().all(|e| !e.reason.is_empty()));
    }

    #[test]
    fn bodies_that_are_not_events_are_refused() {
        for body in ["", "[]", "{", "[1,", "\u{0}"] {
            let errors = parse_events(body.as_bytes(), "t", now(), 100).unwrap_err();
            assert_eq!(errors[0].field, "body", "{body:?}");
        }
        let many = format!("[{}]", vec![r#"{"type":"sent","campaign":"c","message_id":"m","recipient":"a@b.com"}"#; 3].join(","));
        assert_eq!(parse_events(many.as_bytes(), "t", now(), 2).unwrap_err()[0].field, "body");
    }

    #[test]
    fn ids_are_stable_for_retries_and_distinct_otherwise() {
        let body = r#"[{"type":"sent","campaign":"c","message_id":"m1","recipient":"a@b.com","timestamp":"2026-11-21T10:00:00Z"},
                       {"type":"sent","campaign":"c","message_id":"m2","recipient":"a@b.com","timestamp":"2026-11-21T10:00:00Z"},
                       {"type":"sent","campaign":"c","message_id":"m1","recipient":"a@b.com","event_id":"0190c7a0-0000-7000-8000-000000000001"}]"#;
        let first = parse_events(body.as_bytes(), "t", now(), 100).unwrap();
        let retry = parse_events(body.as_bytes(), "t", now() + Duration::seconds(30), 100).unwrap();
        let ids = |v: &[Event]| v.iter().map(|e| e.event_id).collect::<Vec<_>>();
        assert_eq!(ids(&first), ids(&retry));
        assert_ne!(first[0].event_id, first[1].event_id);
        assert_eq!(first[2].event_id.to_string(), "0190c7a0-0000-7000-8000-000000000001");
        // Another tenant reporting the same message gets another id.
        assert_ne!(parse_events(body.as_bytes(), "u", now(), 100).unwrap()[0].event_id, first[0].event_id);
    }

    #[test]
    fn the_documented_event_has_exactly_the_fields_the_parser_reads() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(EventInput::schema()).unwrap();
        let mut fields: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        let mut known = FIELDS.to_vec();
        fields.sort();
        known.sort();
        assert_eq!(fields, known);
        let types = serde_json::to_value(ReportedType::schema()).unwrap();
        let types: Vec<&str> = types["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let reported: Vec<&str> = EventType::ALL.iter().filter(|t| t.reported_by_senders()).map(|t| t.as_str()).collect();
        assert_eq!(types, reported);
    }

    #[test]
    fn timestamps_before_2000_are_refused() {
        let body = r#"{"type":"sent","campaign":"c","message_id":"m","recipient":"a@b.com","timestamp":"1900-01-01T00:00:00Z"}"#;
        let errors = parse_events(body.as_bytes(), "t", now(), 100).unwrap_err();
        assert_eq!(errors[0].field, "timestamp");
        let body = body.replace("1900", "2000");
        assert!(parse_events(body.as_bytes(), "t", now(), 100).is_ok());
    }
}
