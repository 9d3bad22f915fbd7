//! Assembly of the roles: opens the backends named by the configuration, serves ingest, query
//! and operations endpoints, runs the processors, and stops in the order that loses nothing.
//! `serve` runs every role in one process; `ingest`, `process` and `query` run one each.

pub mod api;
pub mod bench;
pub mod demo;
pub mod telemetry;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use utoipa_axum::{router::OpenApiRouter, routes};
use mailpipe_bus::{EmbeddedBusConfig, EmbeddedEventBus, EventBus, KafkaBusConfig, KafkaEventBus};
use mailpipe_config::{BusConfig, Config, StoreConfig};
use mailpipe_processors::{InboundRunner, Runner, RunnerConfig, Validate};
use mailpipe_store::clickhouse::{ClickHouseEventStore, ClickHouseStoreConfig};
use mailpipe_store::datafusion::{DataFusionEventStore, DataFusionStoreConfig};
use mailpipe_store::EventStore;
use mailpipe_ingest::IngestState;
use mailpipe_tenants::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The roles a process can run: `serve` runs them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The HTTP edge: events, inbound mail, tracking hits -> bus.
    Ingest,
    /// The processors: bus -> classifier -> store.
    Process,
    /// The HTTP API and dashboard, from the store.
    Query,
}

/// Opens the bus the configuration names.
pub async fn open_bus(config: &Config) -> anyhow::Result<Arc<dyn EventBus>> {
    Ok(match &config.bus {
        BusConfig::Embedded { retention, segment_bytes } => {
            let bus = EmbeddedBusConfig { retention: Some(*retention), segment_bytes: *segment_bytes, ..EmbeddedBusConfig::new(config.bus_dir()) };
            Arc::new(EmbeddedEventBus::open(bus)?)
        }
        BusConfig::Kafka(k) => {
            let bus = KafkaEventBus::connect(KafkaBusConfig {
                brokers: k.brokers.clone(),
                topic_prefix: k.topic_prefix.clone(),
                partitions: k.partitions,
                replication_factor: k.replication_factor,
                retention_ms: k.retention_ms,
                client: k.client.clone(),
            })
            .await
            .with_context(|| format!("connecting to Kafka at {}", k.brokers))?;
            Arc::new(bus)
        }
    })
}

/// Opens the store the configuration names (applying ClickHouse migrations when configured).
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn EventStore>> {
    Ok(match &config.store {
        StoreConfig::Datafusion { compact_after_files } => {
            let mut store_config = DataFusionStoreConfig::new(config.store_dir());
            store_config.compact_after_files = *compact_after_files;
            Arc::new(DataFusionEventStore::open(store_config).await?)
        }
        StoreConfig::Clickhouse(c) => {
            let ch = clickhouse_config(c);
            if c.migrate_on_start {
                ClickHouseEventStore::migrate(&ch).await.with_context(|| format!("migrating ClickHouse at {}", c.url))?;
            }
            let store = ClickHouseEventStore::new(&ch);
            store.health().await.with_context(|| format!("reaching ClickHouse at {}", c.url))?;
            Arc::new(store)
        }
    })
}

pub fn clickhouse_config(c: &mailpipe_config::ClickHouseConfig) -> ClickHouseStoreConfig {
    ClickHouseStoreConfig { url: c.url.clone(), database: c.database.clone(), user: c.user.clone(), password: c.password.clone() }
}

/// What the operations routes read: the backends this process uses, its suppression index,
/// and the API document.
#[derive(Clone)]
pub struct OpsState {
    bus: Option<Arc<dyn EventBus>>,
    store: Option<Arc<dyn EventStore>>,
    suppressions: Option<Arc<mailpipe_suppression::Index>>,
    doc: api::DocumentJson,
}

impl axum::extract::FromRef<OpsState> for api::DocumentJson {
    fn from_ref(state: &OpsState) -> Self {
        state.doc.clone()
    }
}

/// The operations routes with their documentation.
pub fn ops_api() -> OpenApiRouter<OpsState> {
    health_api().merge(document_api())
}

fn health_api() -> OpenApiRouter<OpsState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(ready)).routes(routes!(metrics_text))
}

fn document_api() -> OpenApiRouter<OpsState> {
    OpenApiRouter::new().routes(routes!(api::document))
}

/// The operations routes on the listeners of this process: `/v1/openapi.json` on the public
/// one, and `/healthz`, `/readyz` (every backend this process uses answers) and `/metrics` on
/// the public one too, or, with `http.ops_listen`, only on the operations listener (the second
/// router). The pixel's short way stays on the public listener whatever this says.
pub fn ops_routers(config: &Config, bus: Option<Arc<dyn EventBus>>, store: Option<Arc<dyn EventStore>>, suppressions: Option<&Suppressions>) -> (Router, Option<Router>) {
    let suppressions = suppressions.map(|s| s.state.index.clone());
    let state = OpsState { bus, store, suppressions, doc: api::DocumentJson(api::openapi_json().into()) };
    let document = document_api().with_state(state.clone()).split_for_parts().0;
    let health = health_api().with_state(state).split_for_parts().0;
    match config.http.ops_listen {
        None => (document.merge(health), None),
        Some(_) => (document, Some(health)),
    }
}

/// Serves the operations routes on `http.ops_listen` until `stop`, if it is set.
async fn serve_ops(config: &Config, ops: Option<Router>, stop: watch::Receiver<bool>) -> anyhow::Result<Option<(SocketAddr, JoinHandle<std::io::Result<()>>)>> {
    let (Some(addr), Some(ops)) = (config.http.ops_listen, ops) else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.with_context(|| format!("listening on {addr} (http.ops_listen)"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "operations endpoints on their own listener");
    Ok(Some((bound, serve_until(listener, ops, config, stop))))
}

/// Liveness
///
/// `ok` while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive.", content_type = "text/plain", body = String, example = "ok\n")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Metrics
///
/// Prometheus text: requests by route, status and tier, rate-limited requests, events by
/// source, bus and store figures.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format.", content_type = "text/plain", body = String, example = "mailpipe_http_requests_total{route=\"/v1/stats/overview\",status=\"200\",tier=\"pro\"} 42\n")))]
async fn metrics_text() -> String {
    telemetry::render_metrics()
}

/// Runs one role until `shutdown` resolves (`mailpipe ingest | process | query`).
pub async fn run_role(config: Config, role: Role, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    telemetry::metrics();
    let listener = TcpListener::bind(config.http.listen).await.with_context(|| format!("listening on {}", config.http.listen))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut processors = None;
    let mut suppressions = None;
    let ops_server;
    let server = match role {
        Role::Ingest => {
            let bus = open_bus(&config).await?;
            let registry = open_registry(&config)?;
            let (public, ops) = ops_routers(&config, Some(bus.clone()), None, None);
            ops_server = serve_ops(&config, ops, stop_rx.clone()).await?;
            serve_edge_until(listener, edge(&config, bus, registry, public), &config, stop_rx)
        }
        Role::Query => {
            let bus = open_bus(&config).await?;
            let store = open_store(&config).await?;
            let registry = open_registry(&config)?;
            let lists = Suppressions::open(&config, bus.clone(), "query").await?;
            let (public, ops) = ops_routers(&config, Some(bus), Some(store.clone()), Some(&lists));
            ops_server = serve_ops(&config, ops, stop_rx.clone()).await?;
            let routes = query_router(store).merge(lists.router()).merge(public);
            suppressions = Some(lists);
            serve_until(listener, api::guarded(routes, api::guard(&config, registry)), &config, stop_rx)
        }
        Role::Process => {
            let bus = open_bus(&config).await?;
            let store = open_store(&config).await?;
            let registry = open_registry(&config)?;
            let lists = Suppressions::open(&config, bus.clone(), "process").await?;
            processors = Some(Processors::start(&config, bus.clone(), store.clone(), &lists));
            let (public, ops) = ops_routers(&config, Some(bus), Some(store), Some(&lists));
            suppressions = Some(lists);
            ops_server = serve_ops(&config, ops, stop_rx.clone()).await?;
            serve_until(listener, api::guarded(public, api::guard(&config, registry)), &config, stop_rx)
        }
    };
    tracing::info!(role = ?role, addr = %config.http.listen, "mailpipe role running");
    shutdown.await;
    if let Some(processors) = processors {
        processors.stop().await?;
    }
    stop_tx.send_replace(true);
    server.await.context("http server task")??;
    if let Some((_, ops)) = ops_server {
        ops.await.context("operations server task")??;
    }
    if let Some(suppressions) = suppressions {
        suppressions.stop().await;
    }
    Ok(())
}

fn serve_until<S>(listener: TcpListener, app: S, config: &Config, stop: watch::Receiver<bool>) -> JoinHandle<std::io::Result<()>>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    tokio::spawn(mailpipe_http::serve(listener, app, mailpipe_http::Limits::of(&config.http), stop))
}

/// Whether the edge busy-polls, on this machine (`http.busy_poll`).
fn busy_poll(config: &Config) -> bool {
    config.busy_poll(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The edge's server, with its busy-poller (`http.busy_poll`) running for as long as it serves.
fn serve_edge_until(listener: TcpListener, edge: mailpipe_ingest::Edge, config: &Config, stop: watch::Receiver<bool>) -> JoinHandle<std::io::Result<()>> {
    let poller = busy_poll(config).then(|| tokio::spawn(edge.busy_poll()));
    let server = serve_until(listener, edge, config, stop);
    tokio::spawn(async move {
        let result = server.await;
        if let Some(poller) = poller {
            poller.abort();
        }
        result?
    })
}

/// The ingest routes and `others`, behind one guard, with the pixel's short way in front.
fn edge(config: &Config, bus: Arc<dyn EventBus>, registry: Arc<Registry>, others: Router) -> mailpipe_ingest::Edge {
    let mut state = IngestState::new(bus, registry.clone(), config.http.max_events_per_request, config.http.max_body_bytes);
    state.trusted_proxies = config.http.trusted_proxies.clone();
    state.publish_timeout = Duration::from_millis(config.http.publish_timeout_ms);
    let state = Arc::new(state);
    let routes = mailpipe_ingest::router(state.clone()).merge(others);
    mailpipe_ingest::edge(state, api::guarded(routes, api::guard(config, registry)))
}

fn query_router(store: Arc<dyn EventStore>) -> Router {
    mailpipe_query::router(Arc::new(mailpipe_query::QueryState { store }))
}

/// Opens the tenant registry, and writes when its keys were last used every minute.
fn open_registry(config: &Config) -> anyhow::Result<Arc<Registry>> {
    let registry = Arc::new(Registry::open(config.registry_path())?);
    let saver = Arc::downgrade(&registry);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        every.tick().await;
        loop {
            every.tick().await;
            let Some(registry) = saver.upgrade() else { return };
            if let Err(e) = tokio::task::spawn_blocking(move || registry.save_last_used()).await.unwrap_or(Ok(())) {
                tracing::warn!(error = %e, "saving when API keys were last used failed");
            }
        }
    });
    Ok(registry)
}

/// The suppression list as one process sees it: an index following the suppressions topic
/// (from its snapshot `<data_dir>/suppression/<name>.snapshot`), the records behind it, and
/// the API routes that answer from them.
pub struct Suppressions {
    follower: mailpipe_suppression::Follower,
    pub state: mailpipe_suppression::SuppressionState,
}

impl Suppressions {
    pub async fn open(config: &Config, bus: Arc<dyn EventBus>, name: &str) -> anyhow::Result<Suppressions> {
        let snapshot = config.suppression_dir().join(format!("{name}.snapshot"));
        let interval = Duration::from_secs(config.suppression.snapshot_interval_secs);
        let follower = mailpipe_suppression::Follower::start(bus.clone(), snapshot, interval).await.context("following the suppressions topic")?;
        let records = Arc::new(mailpipe_suppression::Records::open(bus.as_ref()).await.context("reading the suppressions topic")?);
        Ok(Suppressions { state: mailpipe_suppression::SuppressionState { index: follower.index.clone(), records, bus }, follower })
    }

    pub fn router(&self) -> Router {
        mailpipe_suppression::router(self.state.clone())
    }

    /// Stops following the topic and saves the snapshot.
    pub async fn stop(self) {
        self.follower.stop().await;
    }
}

/// The processors of one process: the inbound classifier, the store writer and the
/// suppression writer. The classifier stops first; the writers then drain what it left.
pub struct Processors {
    stop_inbound: watch::Sender<bool>,
    stop_writers: watch::Sender<bool>,
    inbound: JoinHandle<Result<(), mailpipe_processors::RunnerError>>,
    runner: JoinHandle<Result<(), mailpipe_processors::RunnerError>>,
    suppression: JoinHandle<Result<(), mailpipe_bus::BusError>>,
}

impl Processors {
    pub fn start(config: &Config, bus: Arc<dyn EventBus>, store: Arc<dyn EventStore>, suppressions: &Suppressions) -> Processors {
        let (stop_inbound, inbound_rx) = watch::channel(false);
        let (stop_writers, writers_rx) = watch::channel(false);
        let writer = mailpipe_suppression::Writer {
            bus: bus.clone(),
            index: suppressions.state.index.clone(),
            records: suppressions.state.records.clone(),
            config: config.suppression.clone(),
            store: store.clone(),
        };
        let suppression = tokio::spawn(logged("suppression writer", writer.run(writers_rx.clone())));
        let inbound = InboundRunner { bus: bus.clone(), store: store.clone(), group: "inbound-classifier".into() };
        let inbound = tokio::spawn(logged("inbound classifier", inbound.run(inbound_rx)));
        let runner = Runner {
            bus,
            store,
            steps: vec![Box::new(Validate)],
            config: RunnerConfig {
                group: config.processor.group.clone(),
                batch_max: config.processor.batch_max,
                flush_interval: Duration::from_millis(config.processor.flush_interval_ms),
            },
        };
        let runner = tokio::spawn(logged("store writer", runner.run(writers_rx)));
        Processors { stop_inbound, stop_writers, inbound, runner, suppression }
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop_inbound.send_replace(true);
        self.inbound.await.context("classifier task")?.context("classifier")?;
        self.stop_writers.send_replace(true);
        self.runner.await.context("processor task")?.context("processor")?;
        self.suppression.await.context("suppression writer task")?.context("suppression writer")?;
        Ok(())
    }
}

/// Every role in one process (`mailpipe serve`).
pub struct App {
    pub config: Config,
    pub bus: Arc<dyn EventBus>,
    pub store: Arc<dyn EventStore>,
    pub registry: Arc<Registry>,
    pub suppressions: Suppressions,
}

impl App {
    pub async fn open(config: Config) -> anyhow::Result<App> {
        telemetry::metrics();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let bus = open_bus(&config).await?;
        let store = open_store(&config).await?;
        let registry = open_registry(&config)?;
        let suppressions = Suppressions::open(&config, bus.clone(), "serve").await?;
        Ok(App { config, bus, store, registry, suppressions })
    }

    /// Every role's HTTP routes in one service, and the operations routes when they have a
    /// listener of their own (`http.ops_listen`).
    pub fn service(&self) -> (mailpipe_ingest::Edge, Option<Router>) {
        let (public, ops) = ops_routers(&self.config, Some(self.bus.clone()), Some(self.store.clone()), Some(&self.suppressions));
        let others = query_router(self.store.clone()).merge(self.suppressions.router()).merge(public);
        (edge(&self.config, self.bus.clone(), self.registry.clone(), others), ops)
    }

    /// Serves on `listener` and runs the processors until `Running::shutdown`.
    pub async fn start(self, listener: TcpListener) -> anyhow::Result<Running> {
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let (service, ops) = self.service();
        let ops = serve_ops(&self.config, ops, stop_rx.clone()).await?;
        let processors = Processors::start(&self.config, self.bus.clone(), self.store.clone(), &self.suppressions);
        let server = serve_edge_until(listener, service, &self.config, stop_rx);
        tracing::info!(%addr, "mailpipe serving");
        let (ops_addr, ops_server) = ops.unzip();
        Ok(Running { addr, ops_addr, stop, server, ops_server, processors, app: self })
    }
}

/// Runs a processor, saying loudly if it stops on an error no retry could cure.
async fn logged<E: std::fmt::Display>(name: &'static str, run: impl std::future::Future<Output = Result<(), E>>) -> Result<(), E> {
    let result = run.await;
    if let Err(e) = &result {
        tracing::error!(processor = name, error = %e, "processor stopped; restart mailpipe after fixing the cause");
    }
    result
}

/// Readiness
///
/// 200 when every backend this process uses answers (the bus, the store) and its suppression
/// index has caught up after a start; 503 naming what does not.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", content_type = "text/plain", body = String, example = "ready\n"),
        (status = 503, description = "A backend does not answer; the reason names it.", body = mailpipe_http::ErrorBody),
    ),
)]
async fn ready(State(OpsState { bus, store, suppressions, .. }): State<OpsState>) -> Result<&'static str, mailpipe_http::ApiError> {
    let mut why = Vec::new();
    if suppressions.is_some_and(|index| !index.is_ready()) {
        why.push("the suppression index is still loading".to_string());
    }
    if let Some(Err(e)) = match &bus { Some(b) => Some(b.health().await), None => None } {
        why.push(e.to_string());
    }
    if let Some(Err(e)) = match &store { Some(s) => Some(s.health().await), None => None } {
        why.push(e.to_string());
    }
    if why.is_empty() {
        Ok("ready\n")
    } else {
        Err(mailpipe_http::ApiError::unavailable(format!("not ready: {}", why.join("; "))))
    }
}

pub struct Running {
    pub addr: SocketAddr,
    /// Where the operations endpoints answer, with `http.ops_listen`.
    pub ops_addr: Option<SocketAddr>,
    pub app: App,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    ops_server: Option<JoinHandle<std::io::Result<()>>>,
    processors: Processors,
}

impl Running {
    /// Stops taking requests, lets the processors drain the bus into the store and flush it,
    /// commits, and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        self.server.await.context("http server task")?.context("http server")?;
        if let Some(ops) = self.ops_server {
            ops.await.context("operations server task")?.context("operations server")?;
        }
        self.processors.stop().await?;
        self.app.suppressions.stop().await;
        tracing::info!("mailpipe stopped cleanly");
        Ok(())
    }

    /// Waits until the store holds at least `events` events (for tests and the demo).
    pub async fn wait_for_events(&self, events: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.app.store.count().await.unwrap_or(0) < events as u64 {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}
