//! The HTTP edge: sending nodes report outcomes (`POST /v1/events`), recipients' mail
//! clients hit tracking URLs (`/o`, `/c`, `/u`). Every accepted event gets a stable id and is
//! published to the bus; a 2xx is answered only once the bus says it is durable.

mod events;
mod inbound;
mod tracking;

use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::routing::{get, post};
use axum::Router;
use futures::future::{BoxFuture, Either};
use mailpipe_bus::{BusError, EventBus, Message, EVENTS_TOPIC};
use mailpipe_schemas::{Envelope, Event};
use mailpipe_tenants::Registry;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use events::{parse_events, MAX_FIELD_LEN};

pub struct IngestState {
    pub bus: Arc<dyn EventBus>,
    pub registry: Arc<Registry>,
    pub max_events_per_request: usize,
    pub max_body_bytes: usize,
    hits: tracking::HitCounters,
}

impl IngestState {
    /// Metric handles are taken here, once: install the metrics recorder before.
    pub fn new(bus: Arc<dyn EventBus>, registry: Arc<Registry>, max_events_per_request: usize, max_body_bytes: usize) -> Self {
        IngestState { bus, registry, max_events_per_request, max_body_bytes, hits: tracking::HitCounters::new() }
    }
}

/// The edge's HTTP service: the ingest routes and `others` (ops endpoints, or the query API when
/// every role runs in one process). `GET /o/{token}` is answered before routing: it is the
/// hottest path (every open of every mail) and needs none of the router's work.
pub fn edge(state: Arc<IngestState>, others: Router) -> Edge {
    Edge { router: router(state.clone()).merge(others), state }
}

#[derive(Clone)]
pub struct Edge {
    state: Arc<IngestState>,
    router: Router,
}

impl tower_service::Service<Request> for Edge {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // Only plain tokens (base64url, as minted) take the short way; anything else (percent
        // escapes, more path segments) goes through the router like every other request.
        if request.method() == Method::GET && is_plain_pixel_path(request.uri().path()) {
            let state = self.state.clone();
            return Either::Left(Box::pin(async move {
                let token = &request.uri().path()["/o/".len()..];
                Ok(tracking::pixel(&state, token, request.headers()).await)
            }));
        }
        Either::Right(self.router.call(request))
    }
}

/// Whether `path` is `/o/{token}` with the token written as minted (base64url, no escapes).
fn is_plain_pixel_path(path: &str) -> bool {
    path.strip_prefix("/o/")
        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='))
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
