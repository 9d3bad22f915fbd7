//! Configuration: compiled-in defaults, then a TOML file, then `MAILPIPE__SECTION__KEY`
//! environment variables. Unknown fields are errors; `validate` runs after loading.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(Box<figment::Error>),
    #[error("configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the embedded backends and the tenant registry keep their files.
    pub data_dir: PathBuf,
    /// Threads running the HTTP server and the processors; 0: one per core.
    pub worker_threads: usize,
    pub http: HttpConfig,
    pub bus: BusConfig,
    pub store: StoreConfig,
    pub processor: ProcessorConfig,
    pub suppression: SuppressionConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Base of the tracking URLs mailpipe mints, as recipients reach it.
    pub public_url: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most events one `POST /v1/events` may carry.
    pub max_events_per_request: usize,
    /// Keep an HTTP worker polling instead of sleeping while many requests wait for the bus
    /// (heavy load only): more answers per second, a busy CPU while the load lasts.
    pub busy_poll: BusyPoll,
    /// A listener of its own for `/healthz`, `/readyz` and `/metrics` (for example a port
    /// only the cluster reaches); unset, they are served on `listen` beside the API.
    #[serde(default)]
    pub ops_listen: Option<SocketAddr>,
    /// Requests a minute an API key may make on the `/v1/` routes, by the key's tier (a key
    /// may have its own limit instead). Limits hold per process.
    pub rate_limits: RateLimits,
    /// Proxies and load balancers in front of mailpipe whose `Forwarded` / `X-Forwarded-For`
    /// headers are believed (CIDR networks, `10.0.0.0/8`, `::1/128`). The client address
    /// recorded with a tracking hit is the socket's peer, unless the peer is one of these; then
    /// it is the nearest address in the header that is not one of these.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A client has this long to send a request's headers, counted from when the connection
    /// opens or its previous answer was written: slow senders and idle keep-alive connections
    /// are closed after it. Milliseconds.
    pub header_read_timeout_ms: u64,
    /// A connection on which no byte moves either way for this long (a stalled body, a client
    /// that stopped reading) is closed. Longer than any long poll. Milliseconds.
    pub idle_timeout_ms: u64,
    /// Open connections per listener; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Request bodies being received at once, in bytes, per process: beyond it, a keyed
    /// request is answered 503 with `Retry-After` before its body is read.
    pub max_inflight_body_bytes: usize,
    /// On SIGTERM, requests in flight get this long to finish before their connections are
    /// closed; the processors then drain the bus as usual. Milliseconds.
    pub shutdown_grace_ms: u64,
    /// A reported event, inbound mail or tracking hit waits at most this long for the bus to
    /// say it is durable; beyond it the request is answered 503 (retry: the same event keeps its
    /// id, so nothing is counted twice), so a stalled broker never hangs a sending node.
    /// Milliseconds.
    pub publish_timeout_ms: u64,
}

/// `http.rate_limits`: requests a minute by tier, as a token bucket holding one minute's
/// allowance that refills continuously.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    pub starter: u32,
    pub pro: u32,
    pub enterprise: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits { starter: 60, pro: 300, enterprise: 1000 }
    }
}

/// `http.busy_poll`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusyPoll {
    /// Only when the worker threads leave a core free (`worker_threads` set below the number of
    /// cores): polling gains only on a core of its own, and loses when it takes one from the
    /// other workers.
    Auto,
    On,
    Off,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum BusConfig {
    /// On-disk log in `<data_dir>/bus`, cut into segment files of about `segment_bytes`. A
    /// segment is deleted once every consumer group has read past it and it was last written
    /// longer than `retention` ago (`7d`, `36h`, `90m`; as Kafka's `retention.ms`, default 7
    /// days). The suppressions topic is kept whole: it is the list itself.
    Embedded {
        #[serde(with = "duration_text")]
        retention: std::time::Duration,
        segment_bytes: u64,
    },
    /// Apache Kafka (or any broker speaking its protocol), through librdkafka.
    Kafka(KafkaConfig),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`
    pub brokers: String,
    /// Prepended to mailpipe's topic names (`events`, `inbound`, `dead-letter`).
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Partitions of topics mailpipe creates when they are missing.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// `retention.ms` of topics mailpipe creates.
    #[serde(default = "default_retention_ms")]
    pub retention_ms: i64,
    /// Passed to librdkafka as they are: `security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `sasl.password`, `ssl.ca.location`, ...
    #[serde(default)]
    pub client: std::collections::BTreeMap<String, String>,
}

fn default_topic_prefix() -> String {
    "mailpipe.".into()
}
fn default_partitions() -> i32 {
    12
}
fn default_replication_factor() -> i32 {
    1
}
fn default_retention_ms() -> i64 {
    7 * 24 * 3_600_000
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// Parquet in `<data_dir>/store`, queried with DataFusion.
    Datafusion { compact_after_files: usize },
    /// A ClickHouse server, over HTTP.
    Clickhouse(ClickHouseConfig),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// `http://host:8123`
    pub url: String,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub password: String,
    /// Apply pending migrations when a role starts (otherwise run `mailpipe migrate`).
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
}

fn default_database() -> String {
    "mailpipe".into()
}
fn default_user() -> String {
    "default".into()
}
fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Consumer group of the store writer.
    pub group: String,
    /// Most events taken from the bus at once.
    pub batch_max: usize,
    /// How often the store is flushed and bus offsets committed, in milliseconds: the upper
    /// bound on work redone after a crash, and on the number of small files written.
    pub flush_interval_ms: u64,
}

/// The suppression list: the soft-bounce policy (for every tenant, or per tenant) and how often
/// each process saves its index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionConfig {
    pub soft_bounces: SoftBouncePolicy,
    /// Tenants whose soft-bounce policy differs: `[suppression.tenants.acme.soft_bounces]`.
    #[serde(default)]
    pub tenants: std::collections::BTreeMap<String, TenantSuppression>,
    /// How often the index snapshot (`<data_dir>/suppression/index.snapshot`) is saved when it
    /// changed, in seconds: a restart reads only the changes after it.
    pub snapshot_interval_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSuppression {
    pub soft_bounces: SoftBouncePolicy,
}

/// An address that soft-bounced `limit` times within `window_days`, with no delivery in
/// between, is suppressed for `suppress_days`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftBouncePolicy {
    pub limit: u32,
    pub window_days: u32,
    pub suppress_days: u32,
}

impl SuppressionConfig {
    /// The soft-bounce policy of `tenant`.
    pub fn policy(&self, tenant: &str) -> SoftBouncePolicy {
        self.tenants.get(tenant).map_or(self.soft_bounces, |t| t.soft_bounces)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            worker_threads: 0,
            http: HttpConfig {
                listen: "127.0.0.1:8080".parse().expect("valid default address"),
                public_url: "http://127.0.0.1:8080".into(),
                max_body_bytes: 10 << 20,
                max_events_per_request: 10_000,
                busy_poll: BusyPoll::Auto,
                ops_listen: None,
                rate_limits: RateLimits::default(),
                trusted_proxies: Vec::new(),
                header_read_timeout_ms: 10_000,
                idle_timeout_ms: 60_000,
                max_connections: 4096,
                max_inflight_body_bytes: 256 << 20,
                shutdown_grace_ms: 10_000,
                publish_timeout_ms: 5_000,
            },
            bus: BusConfig::Embedded { retention: std::time::Duration::from_secs(7 * 86_400), segment_bytes: 128 << 20 },
            store: StoreConfig::Datafusion { compact_after_files: 16 },
            processor: ProcessorConfig { group: "store-writer".into(), batch_max: 20_000, flush_interval_ms: 500 },
            suppression: SuppressionConfig {
                soft_bounces: SoftBouncePolicy { limit: 5, window_days: 14, suppress_days: 7 },
                tenants: Default::default(),
                snapshot_interval_secs: 60,
            },
        }
    }
}

impl Config {
    /// Defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut user = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid { field: "--config", reason: format!("{} does not exist", file.display()) });
            }
            user = user.merge(Toml::file(file));
        }
        let user = user.merge(Env::prefixed("MAILPIPE__").split("__"));
        // A backend chosen by the user brings its own settings: the default backend's settings
        // must not be merged into it.
        let mut defaults = serde_json::to_value(Config::default()).map_err(|e| ConfigError::Invalid { field: "defaults", reason: e.to_string() })?;
        for section in ["bus", "store"] {
            let chosen: Option<String> = user.extract_inner(&format!("{section}.backend")).ok();
            if chosen.is_some_and(|b| Some(b.as_str()) != defaults[section]["backend"].as_str()) {
                defaults[section] = serde_json::json!({});
            }
        }
        let config: Config = Figment::from(Serialized::defaults(defaults))
            .merge(user)
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Whether the edge busy-polls (`http.busy_poll`) on a machine with `cores` cores.
    pub fn busy_poll(&self, cores: usize) -> bool {
        match self.http.busy_poll {
            BusyPoll::On => true,
            BusyPoll::Off => false,
            BusyPoll::Auto => self.worker_threads > 0 && self.worker_threads < cores,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| Err(ConfigError::Invalid { field, reason: reason.to_string() });
        if !(self.http.public_url.starts_with("http://") || self.http.public_url.starts_with("https://")) {
            return invalid("http.public_url", "must start with http:// or https://");
        }
        if self.worker_threads > 1024 {
            return invalid("worker_threads", "must be at most 1024 (0: one per core)");
        }
        if self.http.max_events_per_request == 0 {
            return invalid("http.max_events_per_request", "must be at least 1");
        }
        let h = &self.http;
        if h.header_read_timeout_ms == 0 || h.idle_timeout_ms == 0 || h.shutdown_grace_ms == 0 || h.publish_timeout_ms == 0 {
            return invalid("http.header_read_timeout_ms", "header_read_timeout_ms, idle_timeout_ms, shutdown_grace_ms and publish_timeout_ms must be at least 1");
        }
        if h.max_connections == 0 {
            return invalid("http.max_connections", "must be at least 1");
        }
        if h.max_inflight_body_bytes < h.max_body_bytes {
            return invalid("http.max_inflight_body_bytes", "must be at least http.max_body_bytes (one largest body)");
        }
        let r = self.http.rate_limits;
        if r.starter == 0 || r.pro == 0 || r.enterprise == 0 {
            return invalid("http.rate_limits", "every tier's limit must be at least 1 request a minute");
        }
        if self.processor.batch_max == 0 {
            return invalid("processor.batch_max", "must be at least 1");
        }
        if self.processor.flush_interval_ms == 0 || self.processor.flush_interval_ms > 60_000 {
            return invalid("processor.flush_interval_ms", "must be between 1 and 60000");
        }
        if self.processor.group.is_empty() {
            return invalid("processor.group", "must not be empty");
        }
        let s = &self.suppression;
        for p in std::iter::once(&s.soft_bounces).chain(s.tenants.values().map(|t| &t.soft_bounces)) {
            if p.limit == 0 || p.window_days == 0 || p.suppress_days == 0 || p.window_days > 3650 || p.suppress_days > 3650 {
                return invalid("suppression.soft_bounces", "limit, window_days and suppress_days must be at least 1 (days at most 3650)");
            }
        }
        if s.snapshot_interval_secs == 0 {
            return invalid("suppression.snapshot_interval_secs", "must be at least 1");
        }
        if let BusConfig::Embedded { segment_bytes, .. } = &self.bus {
            if *segment_bytes < 4096 {
                return invalid("bus.segment_bytes", "must be at least 4096");
            }
        }
        if let BusConfig::Kafka(k) = &self.bus {
            if k.brokers.trim().is_empty() {
                return invalid("bus.brokers", "must name at least one broker (host:port)");
            }
            if k.partitions < 1 || k.replication_factor < 1 {
                return invalid("bus.partitions", "partitions and replication_factor must be at least 1");
            }
        }
        if let StoreConfig::Clickhouse(c) = &self.store {
            if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                return invalid("store.url", "must start with http:// or https://");
            }
            if c.database.is_empty() || !c.database.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                return invalid("store.database", "must be letters, digits and underscores");
            }
        }
        Ok(())
    }

    pub fn bus_dir(&self) -> PathBuf {
        self.data_dir.join("bus")
    }

    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    pub fn suppression_dir(&self) -> PathBuf {
        self.data_dir.join("suppression")
    }

    pub fn registry_path(&self) -> PathBuf {
        self.data_dir.join("registry.json")
    }
}

/// A retention as people write it in a configuration file: `7d`, `36h`, `90m`, `1h 30m`.
mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("retention {text:?} is not a duration such as 7d, 36h or 90m: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_equals_the_defaults() {
        let path = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../deploy/mailpipe.example.toml");
        figment::Jail::expect_with(|_| {
            assert_eq!(Config::load(Some(&path)).unwrap(), Config::default());
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_file_and_unknown_fields_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("m.toml", "data_dir = \"/tmp/x\"\n[http]\nlisten = \"0.0.0.0:9000\"\n")?;
            jail.set_env("MAILPIPE__HTTP__LISTEN", "127.0.0.1:7000");
            jail.set_env("MAILPIPE__PROCESSOR__FLUSH_INTERVAL_MS", "250");
            let c = Config::load(Some(Path::new("m.toml"))).unwrap();
            assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
            assert_eq!(c.http.listen.port(), 7000);
            assert_eq!(c.processor.flush_interval_ms, 250);

            jail.create_file("bad.toml", "[http]\nlisten_on = \"0.0.0.0:9000\"\n")?;
            let err = Config::load(Some(Path::new("bad.toml"))).unwrap_err().to_string();
            assert!(err.contains("listen_on"), "{err}");

            jail.set_env("MAILPIPE__PROCESSOR__BATCH_MAX", "0");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("processor.batch_max"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn busy_polling_is_automatic_only_with_a_core_to_spare() {
        let with = |worker_threads, busy_poll| Config { worker_threads, http: HttpConfig { busy_poll, ..Config::default().http }, ..Config::default() };
        assert!(!with(0, BusyPoll::Auto).busy_poll(2), "one worker per core: no core to spare");
        assert!(!with(2, BusyPoll::Auto).busy_poll(2));
        assert!(with(1, BusyPoll::Auto).busy_poll(2));
        assert!(with(2, BusyPoll::On).busy_poll(2));
        assert!(!with(1, BusyPoll::Off).busy_poll(2));
        figment::Jail::expect_with(|jail| {
            jail.set_env("MAILPIPE__HTTP__BUSY_POLL", "off");
            assert_eq!(Config::load(None).unwrap().http.busy_poll, BusyPoll::Off);
            jail.set_env("MAILPIPE__HTTP__BUSY_POLL", "sometimes");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("http.busy_poll") && err.contains("`auto`"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_embedded_bus_retention_reads_as_people_write_it() {
        figment::Jail::expect_with(|jail| {
            let bus = |c: Config| match c.bus {
                BusConfig::Embedded { retention, segment_bytes } => (retention.as_secs(), segment_bytes),
                other => panic!("{other:?}"),
            };
            assert_eq!(bus(Config::load(None).unwrap()), (7 * 86_400, 128 << 20), "defaults: 7 days, 128 MiB");
            jail.create_file("r.toml", "[bus]\nretention = \"36h\"\n")?;
            assert_eq!(bus(Config::load(Some(Path::new("r.toml"))).unwrap()), (36 * 3600, 128 << 20));
            jail.set_env("MAILPIPE__BUS__RETENTION", "1h 30m");
            jail.set_env("MAILPIPE__BUS__SEGMENT_BYTES", "65536");
            assert_eq!(bus(Config::load(None).unwrap()), (5400, 65536));
            jail.set_env("MAILPIPE__BUS__RETENTION", "a week");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("retention") && err.contains("7d"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn backends_are_tagged() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("k.toml", "[bus]\nbackend = \"kafka\"\n")?;
            let err = Config::load(Some(Path::new("k.toml"))).unwrap_err().to_string();
            assert!(err.contains("brokers"), "{err}");
            jail.create_file(
                "p.toml",
                "[bus]\nbackend = \"kafka\"\nbrokers = \"k1:9092\"\n[bus.client]\n\"security.protocol\" = \"SASL_SSL\"\n\
                 [store]\nbackend = \"clickhouse\"\nurl = \"http://ch:8123\"\n",
            )?;
            jail.set_env("MAILPIPE__STORE__PASSWORD", "s3cret");
            let c = Config::load(Some(Path::new("p.toml"))).unwrap();
            let BusConfig::Kafka(k) = &c.bus else { panic!("{:?}", c.bus) };
            assert_eq!((k.brokers.as_str(), k.partitions, k.topic_prefix.as_str()), ("k1:9092", 12, "mailpipe."));
            assert_eq!(k.client.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
            let StoreConfig::Clickhouse(ch) = &c.store else { panic!("{:?}", c.store) };
            assert_eq!((ch.database.as_str(), ch.password.as_str(), ch.migrate_on_start), ("mailpipe", "s3cret", true));
            jail.set_env("MAILPIPE__STORE__DATABASE", "x; DROP");
            assert!(Config::load(Some(Path::new("p.toml"))).unwrap_err().to_string().contains("store.database"));
            Ok(())
        });
    }
}

