//! Logs (`tracing`) and metrics (Prometheus text at `/metrics`), set up once per process.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once; later calls reuse it).
pub fn metrics() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| {
        let lag_buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0];
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("mailpipe_store_end_to_end_lag_seconds".into()), &lag_buckets)
            .expect("non-empty buckets")
            .install_recorder()
            .expect("metrics recorder installed once")
    })
}

pub fn render_metrics() -> String {
    metrics().render()
}

/// Logs to stderr: human-readable, or JSON lines with `MAILPIPE_LOG_FORMAT=json`; the level
/// comes from `RUST_LOG` (default `info`).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("MAILPIPE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
