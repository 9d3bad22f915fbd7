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
use axum::Router;
use utoipa_axum::{router::{OpenApiRouter, UtoipaMethodRouterExt}, routes};
use futures::future::{BoxFuture, Either};
use mailpipe_bus::{BusError, EventBus, Message, EVENTS_TOPIC};
use mailpipe_schemas::{Envelope, Event};
use mailpipe_tenants::Registry;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub use events::{parse_events, MAX_FIELD_LEN};
pub use tracking::UNSUBSCRIBE_BODY_MAX;

pub struct IngestState {
    pub bus: Arc<dyn EventBus>,
    pub registry: Arc<Registry>,
    pub max_events_per_request: usize,
    pub max_body_bytes: usize,
    /// `http.trusted_proxies`: whose forwarding headers name the client of a tracking hit.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `http.publish_timeout_ms`: the longest a request waits for the bus to make it durable.
    pub publish_timeout: Duration,
    hits: tracking::HitCounters,
    waiting: Waiting,
    /// While publishing fails, one log line per interval for each kind of request.
    failures: [mailpipe_bus::Throttle; 3],
}

/// The kinds of request whose publishing failures are logged apart.
#[derive(Clone, Copy)]
pub(crate) enum Publisher {
    Hits = 0,
    Events = 1,
    Inbound = 2,
}

impl Publisher {
    fn what(self) -> &'static str {
        ["tracking hits", "reported events", "inbound mail"][self as usize]
    }
}

/// How often a publishing failure that keeps happening is logged (with a count).
const LOG_FAILURES_EVERY: Duration = Duration::from_secs(10);

/// What made a publish fail, as the `reason` label of the failure metrics.
pub(crate) fn failure_reason(e: &BusError) -> &'static str {
    match e {
        BusError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => "disk_full",
        BusError::Io { .. } => "io",
        BusError::Unavailable(_) => "bus_unavailable",
        BusError::Closed => "closed",
        BusError::Invalid(_) => "invalid",
    }
}

impl IngestState {
    /// Metric handles are taken here, once: install the metrics recorder before.
    pub fn new(bus: Arc<dyn EventBus>, registry: Arc<Registry>, max_events_per_request: usize, max_body_bytes: usize) -> Self {
        let hits = tracking::HitCounters::new();
        let failures = std::array::from_fn(|_| mailpipe_bus::Throttle::every(LOG_FAILURES_EVERY));
        IngestState { bus, registry, max_events_per_request, max_body_bytes, trusted_proxies: Vec::new(), publish_timeout: Duration::from_secs(5), hits, waiting: Waiting::default(), failures }
    }

    /// Counts a failed publish and logs it, at most once per interval for each kind.
    pub(crate) fn publish_failed(&self, kind: Publisher, e: &BusError) {
        let (reason, what) = (failure_reason(e), kind.what());
        metrics::counter!("mailpipe_ingest_publish_failures_total", "kind" => what, "reason" => reason).increment(1);
        if let Some(failures) = self.failures[kind as usize].log() {
            tracing::error!(error = %e, reason, failures, "publishing {what} failed ({failures} since the last line like this)");
        }
    }

    /// Runs `publish` (a write the bus answers once durable) counted among the requests waiting
    /// for the bus, which is what [`busy_poll`] watches, for at most `publish_timeout`: a bus
    /// that does not answer by then is unavailable (the write may still land; a retry of the
    /// same event keeps its id and is stored once).
    async fn durable<T>(&self, publish: impl Future<Output = Result<T, BusError>>) -> Result<T, BusError> {
        let n = self.waiting.count.fetch_add(1, Ordering::Relaxed) + 1;
        // (Not while polling: the permit would start it again right after it stops.)
        if n == BUSY_POLL_FROM && !self.waiting.polling.load(Ordering::Relaxed) {
            self.waiting.heavy.notify_one();
        }
        let _done = WaitingGuard(&self.waiting.count);
        match tokio::time::timeout(self.publish_timeout, publish).await {
            Ok(result) => result,
            Err(_) => Err(BusError::Unavailable(format!("the bus did not confirm the write within {} ms", self.publish_timeout.as_millis()))),
        }
    }
}

/// Requests waiting for the bus to make their events durable.
#[derive(Default)]
struct Waiting {
    count: AtomicUsize,
    /// Told when `count` reaches [`BUSY_POLL_FROM`].
    heavy: Notify,
    /// Whether [`busy_poll`] is polling.
    polling: AtomicBool,
}

/// Takes a request off the waiting count when it is answered, or dropped (its client left).
struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Requests waiting for the bus at once from which the edge busy-polls: from about 10,000 hits a
/// second, with commits of a few hundred microseconds.
const BUSY_POLL_FROM: usize = 8;
/// Busy-polling stops once fewer than half of [`BUSY_POLL_FROM`] requests have waited for this
/// long.
const BUSY_POLL_LINGER: Duration = Duration::from_millis(1);

/// Keeps the runtime thread it runs on polling, rather than sleeping, while many requests wait
/// for the bus; run it beside the edge's server (it never returns).
///
/// Under load a request's answer waits for a group commit (an fdatasync, or a broker's acks),
/// and the HTTP worker often has nothing else to do for a moment. Sleeping then costs far more
/// than the moment: the thread must be woken by the bus's writer when the commit lands, and on
/// a virtual machine waking a halted CPU takes tens of microseconds, on every commit. Polling
/// keeps the worker awake, so acknowledged requests are answered and new requests read at once,
/// and the writer hands completions over without a system call. It uses the CPU the worker
/// would otherwise leave idle, and only while the load is heavy: below [`BUSY_POLL_FROM`]
/// waiting requests the worker sleeps as usual.
async fn busy_poll(state: Arc<IngestState>) {
    let gauge = metrics::gauge!("mailpipe_ingest_busy_polling");
    loop {
        state.waiting.heavy.notified().await;
        state.waiting.polling.store(true, Ordering::Relaxed);
        gauge.set(1.0);
        let mut light_since: Option<Instant> = None;
        loop {
            tokio::task::yield_now().await;
            if state.waiting.count.load(Ordering::Relaxed) >= BUSY_POLL_FROM / 2 {
                light_since = None;
            } else if light_since.get_or_insert_with(Instant::now).elapsed() >= BUSY_POLL_LINGER {
                break;
            }
        }
        state.waiting.polling.store(false, Ordering::Relaxed);
        gauge.set(0.0);
    }
}

/// The edge's HTTP service: `routes` (the ingest routes of [`router`] with the ops endpoints,
/// or the query API too when every role runs in one process), with `GET /o/{token}` answered
/// before routing: it is the hottest path (every open of every mail) and needs none of the
/// router's work.
pub fn edge(state: Arc<IngestState>, routes: Router) -> Edge {
    Edge { router: routes, state }
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
        // Every GET of /o/... takes the short way: whatever the path holds after /o/ is the
        // token, and the answer is the GIF (a mail client must never show a broken image).
        if request.method() == Method::GET && request.uri().path().starts_with("/o/") {
            let state = self.state.clone();
            return Either::Left(Box::pin(async move {
                let token = tracking::token(request.uri().path(), "/o/");
                let ip = tracking::client(&state, &request);
                Ok(tracking::pixel(&state, &token, request.headers(), ip).await)
            }));
        }
        Either::Right(self.router.call(request))
    }
}

impl Edge {
    /// The edge's busy-poller (see [`busy_poll`]): spawn it beside the server; it never returns.
    pub fn busy_poll(&self) -> impl Future<Output = ()> + Send + 'static {
        busy_poll(self.state.clone())
    }
}

/// The edge's routes with their documentation: what `router` serves and the document lists.
pub fn api() -> OpenApiRouter<Arc<IngestState>> {
    OpenApiRouter::new()
        .routes(routes!(events::post_events))
        .routes(routes!(inbound::post_inbound).layer(axum::extract::DefaultBodyLimit::max(mailpipe_schemas::INBOUND_MAX_BYTES)))
        .routes(routes!(tracking::open))
        .routes(routes!(tracking::click))
        .routes(routes!(tracking::unsubscribe_page, tracking::unsubscribe))
        // An empty token is a link that is not valid, answered like any other (the page, not
        // the API's 404).
        .route("/c/", axum::routing::get(tracking::click))
        .route("/u/", axum::routing::get(tracking::unsubscribe_page).post(tracking::unsubscribe))
}

pub fn router(state: Arc<IngestState>) -> Router {
    let body_limit = axum::extract::DefaultBodyLimit::max(state.max_body_bytes);
    let (router, _) = api().layer(body_limit).with_state(state).split_for_parts();
    router
}

/// Publishes events to the raw topic, keyed by tenant + recipient so one recipient's events
/// stay in order on a partitioned bus. Returns once they are durable.
pub async fn publish(bus: &dyn EventBus, events: &[Event]) -> Result<(), BusError> {
    let messages = events.iter().map(|e| Message { key: e.bus_key(), payload: Envelope::encode(e) }).collect();
    bus.publish(EVENTS_TOPIC, messages).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailpipe_bus::{EmbeddedBusConfig, EmbeddedEventBus};
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn a_bus_that_never_answers_is_unavailable_after_the_publish_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path().join("bus"))).unwrap();
        let registry = Registry::open(dir.path().join("registry.json")).unwrap();
        let mut state = IngestState::new(Arc::new(bus), Arc::new(registry), 10, 1 << 20);
        state.publish_timeout = Duration::from_millis(100);
        let started = Instant::now();
        let got = state.durable(std::future::pending::<Result<(), BusError>>()).await;
        assert!(matches!(got, Err(BusError::Unavailable(ref m)) if m.contains("100 ms")), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(state.waiting.count.load(Ordering::Relaxed), 0, "no longer counted as waiting");
        assert!(state.durable(async { Ok::<_, BusError>(7) }).await.is_ok_and(|n| n == 7));
    }

    /// Waits up to 5 s for `condition`.
    async fn eventually(condition: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        condition()
    }

    #[tokio::test]
    async fn the_edge_busy_polls_only_while_many_requests_wait_for_the_bus() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedEventBus::open(EmbeddedBusConfig::new(dir.path().join("bus"))).unwrap();
        let registry = Registry::open(dir.path().join("registry.json")).unwrap();
        let state = Arc::new(IngestState::new(Arc::new(bus), Arc::new(registry), 10, 1 << 20));
        let poller = tokio::spawn(busy_poll(state.clone()));
        let polling = || state.waiting.polling.load(Ordering::Relaxed);
        // Requests waiting for the bus, each until its gate opens.
        let mut gates = Vec::new();
        let mut requests = Vec::new();
        let mut arrive = |n: usize| {
            for _ in 0..n {
                let (gate, opened) = oneshot::channel::<()>();
                gates.push(gate);
                let state = state.clone();
                requests.push(tokio::spawn(async move { state.durable(async { opened.await.map_err(|_| BusError::Closed) }).await.is_ok() }));
            }
        };

        arrive(BUSY_POLL_FROM - 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(state.waiting.count.load(Ordering::Relaxed), BUSY_POLL_FROM - 1);
        assert!(!polling(), "a few requests waiting: the worker sleeps as usual");

        arrive(1);
        assert!(eventually(polling).await, "{BUSY_POLL_FROM} requests waiting: the worker polls");

        // Half of them still waiting keeps it polling; fewer for a moment stops it.
        for gate in gates.drain(..BUSY_POLL_FROM / 2) {
            gate.send(()).unwrap();
        }
        tokio::time::sleep(BUSY_POLL_LINGER * 20).await;
        assert_eq!(state.waiting.count.load(Ordering::Relaxed), BUSY_POLL_FROM / 2);
        assert!(polling(), "half of them still waiting: still polling");
        gates.pop().unwrap().send(()).unwrap();
        assert!(eventually(|| !polling()).await, "fewer than half waiting: back to sleeping");

        // A request whose client left (its future dropped) stops counting too.
        for request in &requests {
            request.abort();
        }
        assert!(eventually(|| state.waiting.count.load(Ordering::Relaxed) == 0).await, "dropped requests are not waiting any more");
        poller.abort();
    }
}
