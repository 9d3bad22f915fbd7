//! `POST /v1/inbound`: a raw RFC 5322 message (a bounce, a complaint, a reply) as the body,
//! acknowledged once it is durable on the bus; the classifier reads it from there.

use crate::IngestState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use mailpipe_bus::{Message, INBOUND_TOPIC};
use mailpipe_http::{authorize, ApiError};
use mailpipe_schemas::{derived_id, InboundEnvelope, SCHEMA_VERSION};
use mailpipe_tenants::Scope;
use std::sync::Arc;

pub(crate) async fn post_inbound(
    State(state): State<Arc<IngestState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let principal = authorize(&headers, &state.registry, Scope::Write)?;
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
        tracing::error!(error = %e, "publishing inbound mail failed");
        ApiError::unavailable("the event bus cannot take writes right now; retry")
    })?;
    metrics::counter!("mailpipe_ingest_inbound_messages_total").increment(1);
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "inbound_id": envelope.inbound_id }))))
}
