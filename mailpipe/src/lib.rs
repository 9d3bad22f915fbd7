//! Assembly of the roles into one process: opens the backends named by the configuration,
//! serves ingest, query and operations endpoints on one listener, runs the store writer, and
//! stops in the order that loses nothing.

pub mod bench;
pub mod demo;
pub mod telemetry;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use mailpipe_bus::{EmbeddedBusConfig, EmbeddedEventBus, EventBus};
use mailpipe_config::{BusConfig, Config, StoreConfig};
use mailpipe_processors::{InboundRunner, Runner, RunnerConfig, Validate};
use mailpipe_store::datafusion::{DataFusionEventStore, DataFusionStoreConfig};
use mailpipe_store::EventStore;
use mailpipe_tenants::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The opened backends of one process.
pub struct App {
    pub config: Config,
    pub bus: Arc<dyn EventBus>,
    pub store: Arc<DataFusionEventStore>,
    pub registry: Arc<Registry>,
}

impl App {
    pub async fn open(config: Config) -> anyhow::Result<App> {
        telemetry::metrics();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let bus: Arc<dyn EventBus> = match &config.bus {
            BusConfig::Embedded => Arc::new(EmbeddedEventBus::open(EmbeddedBusConfig::new(config.bus_dir()))?),
        };
        let store = match &config.store {
            StoreConfig::Datafusion { compact_after_files } => {
                let mut store_config = DataFusionStoreConfig::new(config.store_dir());
                store_config.compact_after_files = *compact_after_files;
                Arc::new(DataFusionEventStore::open(store_config).await?)
            }
        };
        let registry = Arc::new(Registry::open(config.registry_path())?);
        Ok(App { config, bus, store, registry })
    }

    pub fn router(&self) -> Router {
        let ingest = mailpipe_ingest::router(Arc::new(mailpipe_ingest::IngestState {
            bus: self.bus.clone(),
            registry: self.registry.clone(),
            max_events_per_request: self.config.http.max_events_per_request,
            max_body_bytes: self.config.http.max_body_bytes,
        }));
        let query = mailpipe_query::router(Arc::new(mailpipe_query::QueryState {
            store: self.store.clone(),
            registry: self.registry.clone(),
        }));
        let ops = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(|| async { telemetry::render_metrics() }))
            .with_state((self.bus.clone(), self.store.clone() as Arc<dyn EventStore>));
        ingest.merge(query).merge(ops)
    }

    /// Serves on `listener` and runs the store writer until `Running::shutdown`.
    pub async fn start(self, listener: TcpListener) -> anyhow::Result<Running> {
        let addr = listener.local_addr()?;
        // The edge and the classifier stop first; the store writer then drains what they left.
        let (stop_tx, stop_rx) = watch::channel(false);
        let (stop_store_tx, stop_store_rx) = watch::channel(false);
        let inbound = InboundRunner { bus: self.bus.clone(), store: self.store.clone(), group: "inbound-classifier".into() };
        let inbound = tokio::spawn(logged("inbound classifier", inbound.run(stop_rx.clone())));
        let runner = Runner {
            bus: self.bus.clone(),
            store: self.store.clone(),
            steps: vec![Box::new(Validate)],
            config: RunnerConfig {
                group: self.config.processor.group.clone(),
                batch_max: self.config.processor.batch_max,
                flush_interval: Duration::from_millis(self.config.processor.flush_interval_ms),
            },
        };
        let runner = tokio::spawn(logged("store writer", runner.run(stop_store_rx)));
        let mut http_stop = stop_rx;
        let app = self.router();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|stop| *stop).await;
                })
                .await
        });
        tracing::info!(%addr, "mailpipe serving");
        Ok(Running { addr, stop: stop_tx, stop_store: stop_store_tx, server, inbound, runner, app: self })
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

async fn ready(State((bus, store)): State<(Arc<dyn EventBus>, Arc<dyn EventStore>)>) -> impl IntoResponse {
    match (bus.health().await, store.health().await) {
        (Ok(()), Ok(())) => (StatusCode::OK, "ready\n".to_string()),
        (bus, store) => {
            let why = [bus.err().map(|e| e.to_string()), store.err().map(|e| e.to_string())];
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", why.into_iter().flatten().collect::<Vec<_>>().join("; ")))
        }
    }
}

pub struct Running {
    pub addr: SocketAddr,
    pub app: App,
    stop: watch::Sender<bool>,
    stop_store: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    inbound: JoinHandle<Result<(), mailpipe_processors::RunnerError>>,
    runner: JoinHandle<Result<(), mailpipe_processors::RunnerError>>,
}

impl Running {
    /// Stops taking requests, lets the writer drain the bus into the store and flush it,
    /// commits, and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        self.server.await.context("http server task")?.context("http server")?;
        self.inbound.await.context("classifier task")?.context("classifier")?;
        self.stop_store.send_replace(true);
        self.runner.await.context("processor task")?.context("processor")?;
        tracing::info!("mailpipe stopped cleanly");
        Ok(())
    }

    /// Waits until the store holds at least `events` events (for tests and the demo).
    pub async fn wait_for_events(&self, events: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.app.store.event_count() < events {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}
