//! The HTTP edge: sending nodes report outcomes (`POST /v1/events`), recipients' mail
//! clients hit tracking URLs (`/o`, `/c`, `/u`). Every accepted event gets a stable id and is
//! published to the bus; a 2xx is answered only once the bus says it is durable.

mod events;
mod inbound;
mod tracking;

use axum::routing::{get, post};
use axum::Router;
use mailpipe_bus::{BusError, EventBus, Message, EVENTS_TOPIC};
use mailpipe_schemas::{Envelope, Event};
use mailpipe_tenants::Registry;
use std::sync::Arc;

pub use events::{parse_events, MAX_FIELD_LEN};

pub struct IngestState {
    pub bus: Arc<dyn EventBus>,
    pub registry: Arc<Registry>,
    pub max_events_per_request: usize,
    pub max_body_bytes: usize,
}

pub fn router(state: Arc<IngestState>) -> Router {
    let body_limit = axum::extract::DefaultBodyLimit::max(state.max_body_bytes);
    Router::new()
        .route("/v1/events", post(events::post_events))
        .route("/v1/inbound", post(inbound::post_inbound))
        .route("/o/{token}", get(tracking::open))
        .route("/c/{token}", get(tracking::click))
        .route("/u/{token}", get(tracking::unsubscribe_page).post(tracking::unsubscribe))
        .layer(body_limit)
        .with_state(state)
}

/// Publishes events to the raw topic, keyed by tenant + recipient so one recipient's events
/// stay in order on a partitioned bus. Returns once they are durable.
pub async fn publish(bus: &dyn EventBus, events: &[Event]) -> Result<(), BusError> {
    let messages = events.iter().map(|e| Message { key: e.bus_key(), payload: Envelope::encode(e) }).collect();
    bus.publish(EVENTS_TOPIC, messages).await
}
