//! `POST /v1/inbound`: a raw RFC 5322 message (a bounce, a complaint, a reply) as the body,
//! acknowledged once it is durable on the bus; the classifier reads it from there.

use crate::IngestState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use mailpipe_bus::{Message, INBOUND_TOPIC};
use mailpipe_http::{ApiError, Body, Key};
use mailpipe_schemas::{derived_id, InboundEnvelope, INBOUND_MAX_BYTES, SCHEMA_VERSION};

// A message the route accepts always fits the bus with its envelope.
const _: () = assert!(INBOUND_MAX_BYTES + 4096 <= mailpipe_bus::MAX_MESSAGE_BYTES);
use serde::Serialize;
use std::sync::Arc;

/// The answer once the message is durable.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"inbound_id": "7f0c8a52-41d4-5d7a-9b1e-2a4c00000001"}))]
pub struct InboundAccepted {
    /// Derived from the tenant and the bytes: the same message delivered twice counts once.
    pub inbound_id: uuid::Uuid,
}

/// A raw RFC 5322 message, with something besides white space in it.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, min_length = 1, pattern = "[^\\t\\n\\f\\r ]", example = "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@mail.example.com\r\nSubject: Undelivered Mail\r\n\r\n...")]
pub struct RawMessage(String);

/// Hand over a raw inbound message (bounce, complaint, reply)
///
/// The RFC 5322 message as it arrived, as the body (`mailpipe inbound` does this for an
/// MTA's pipe transport), up to 16 MiB (larger: 413). Answered once it is durable; the
/// classifier reads it from the bus.
#[utoipa::path(
    post,
    path = "/v1/inbound",
    tag = "inbound",
    request_body(
        description = "The raw message.",
        content((RawMessage = "message/rfc822"), (RawMessage = "text/plain")),
    ),
    responses(
        (status = 202, description = "The message is durable on the bus.", body = InboundAccepted),
        (status = 503, description = "The bus cannot take writes; retry.", body = mailpipe_http::ErrorBody),
    ),
    security(("api_key" = ["inbound:write"])),
)]
pub(crate) async fn post_inbound(
    State(state): State<Arc<IngestState>>,
    Key(principal): Key,
    Body(body): Body,
) -> Result<(StatusCode, Json<InboundAccepted>), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("body", "expected a raw RFC 5322 message"));
    }
    // The id comes from the tenant and the bytes, so an MTA that delivers the same message
    // twice (a pipe that timed out after we took it) does not count it twice.
    let envelope = InboundEnvelope {
        v: SCHEMA_VERSION,
        inbound_id: derived_id(&[principal.tenant.as_bytes(), &body]),
        tenant: principal.tenant,
        received_at: chrono::Utc::now(),
    };
    let message = Message { key: envelope.inbound_id.as_bytes().to_vec(), payload: envelope.encode(&body) };
    state.durable(state.bus.publish(INBOUND_TOPIC, vec![message])).await.map_err(|e| {
        state.publish_failed(crate::Publisher::Inbound, &e);
        ApiError::unavailable("the event bus cannot take writes right now; retry")
    })?;
    metrics::counter!("mailpipe_ingest_inbound_messages_total").increment(1);
    Ok((StatusCode::ACCEPTED, Json(InboundAccepted { inbound_id: envelope.inbound_id })))
}
