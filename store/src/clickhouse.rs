//! The ClickHouse backend (feature `clickhouse`), through the official `clickhouse` crate over
//! HTTP. Raw events go to `events`; materialized views keep the aggregate tables (`rollup_15m`,
//! `message_firsts`, `sends`). An `Aggregate` compiles to SQL over `rollup_15m` (counts),
//! `message_firsts` restricted to the messages with an event in the range (first events), and
//! raw `events` (distinct recipients), with the shared buckets and row shape of `aggregate::sql`.
//!
//! Exactly once: an insert first asks which of its ids the table already holds (the batch's
//! keys as a temporary table, one query on the sorting key (tenant, occurred_ms)) and writes
//! only the others, in one block. A redelivered batch,
//! a resubmitted event and a retry after a lost answer are all recognised this way; one
//! partition of the bus has one writer at a time, so no two writers race on the same id.
//!
//! Migrations live in `schemas/clickhouse/migrations`, written for a modern server; features
//! an older server lacks (LowCardinality, column codecs) are left out when it is older.

use crate::aggregate::sql::{self, Bind, Dialect, Family, PartialRow, Sql};
use crate::aggregate::{message_key, Accumulator, Dimension, Frame, Grain, Measure};
use crate::{Aggregate, AggregateAnswer, EventStore, Filters, SentMessage, StoreError, UNMATCHED_CAMPAIGN};
use async_trait::async_trait;
use clickhouse::{Client, Row};
use mailpipe_schemas::{BounceClass, Event};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use uuid::Uuid;

/// The migrations, in order: (version, name, SQL written for a modern server).
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (1, "events", include_str!("../../schemas/clickhouse/migrations/0001_events.sql")),
    (2, "rollups", include_str!("../../schemas/clickhouse/migrations/0002_rollups.sql")),
    (3, "orphans", include_str!("../../schemas/clickhouse/migrations/0003_orphans.sql")),
    (4, "streams", include_str!("../../schemas/clickhouse/migrations/0004_streams.sql")),
];

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, \
    checksum String, applied_ms Int64) ENGINE = MergeTree ORDER BY version";
const APPLIED: &str = "SELECT version, checksum FROM schema_migrations";
const RECORD_MIGRATION: &str = "INSERT INTO schema_migrations (version, name, checksum, applied_ms) VALUES (?, ?, ?, ?)";
const COUNTS: &str = "SELECT count(), uniqExact(event_id) FROM events";
const SEND: &str = "SELECT campaign, variant, stream FROM sends WHERE tenant = ? AND message_key = ? ORDER BY occurred_ms DESC, stream DESC LIMIT 1";

/// ClickHouse's SQL; times are written as literals (they are ours, not the caller's).
struct ClickHouseDialect;
const DIALECT: ClickHouseDialect = ClickHouseDialect;

impl Dialect for ClickHouseDialect {
    fn placeholder(&self, _n: usize) -> String {
        "?".into()
    }
    fn int_div(&self, a: String, b: i64) -> String {
        format!("intDiv({a}, {b})")
    }
    fn int64(&self, e: &str) -> String {
        format!("toInt64({e})")
    }
}

fn rollup_column(dim: Dimension) -> String {
    match dim {
        Dimension::Campaign => "campaign".into(),
        Dimension::Variant => "variant".into(),
    }
}

/// Events per bucket, group, type and bounce class, from `rollup_15m` (whose 15-minute buckets
/// never straddle a local day or hour).
fn rollup_counts(q: &Aggregate, tenant: &str) -> Option<Sql> {
    if !q.wants_counts() {
        return None;
    }
    let d = &DIALECT;
    let mut s = Sql::default();
    let bucket = sql::bucket_expr(d, q, "bucket_ms");
    let tenant = s.bind(d, Bind::Str(tenant.into()));
    let range = q.frame.as_ref().map_or(String::new(), |f| format!(" AND bucket_ms >= {} AND bucket_ms < {}", f.lo_ms, f.hi_ms));
    let filters = sql::filters(d, &mut s, q, &rollup_column);
    s.push(&format!(
        "SELECT {bucket} AS b, {dims}, type AS t, bounce_class AS bc, toInt64(countMerge(events)) AS n, sumMerge(revenue_micros) AS rev, \
         minMerge(first_ms) AS fms, maxMerge(last_ms) AS lms FROM rollup_15m WHERE tenant = {tenant}{range}{filters} AND NOT {ORPHAN} \
         GROUP BY {bucket}{group}, type, bounce_class",
        dims = sql::dims_select(q, &rollup_column),
        group = sql::dims_group(q, &rollup_column),
    ));
    Some(s)
}

/// Messages whose first event of a kind falls in each bucket, from `message_firsts` (every
/// message of the tenant: restricting it to the messages with an event in the range costs more,
/// with the message key computed from `message_id` per event, than it saves; measured). The
/// filters apply to the first's campaign and variant, joined to its send where the first was
/// filed under `(unmatched)`.
fn rollup_firsts(q: &Aggregate, tenant: &str) -> Option<Sql> {
    let kinds = q.first_types();
    if kinds.is_empty() {
        return None;
    }
    let d = &DIALECT;
    let first_column = |dim: Dimension| match dim {
        Dimension::Campaign => "c".to_string(),
        Dimension::Variant => "v".to_string(),
    };
    let mut s = Sql::default();
    let bucket = sql::bucket_expr(d, q, "fms");
    let kinds = sql::type_list(&kinds);
    let outer_tenant = s.bind(d, Bind::Str(tenant.into()));
    let range = q.frame.as_ref().map_or(String::new(), |f| format!(" AND fms >= {} AND fms < {}", f.lo_ms, f.hi_ms));
    let sends = latest_sends(&mut s, q, tenant);
    let filters = sql::filters(d, &mut s, q, &first_column);
    s.push(&format!(
        "SELECT {bucket} AS b, {dims}, t, '' AS bc, toInt64(count()) AS n, toInt64(0) AS rev, toInt64(0) AS fms0, toInt64(0) AS lms \
         FROM (SELECT t, fms, if(c0 = '{UNMATCHED_CAMPAIGN}' AND sc != '', sc, c0) AS c, if(c0 = '{UNMATCHED_CAMPAIGN}' AND sc != '', sv, v0) AS v \
               FROM (SELECT type AS t, message_key, minMerge(first_ms) AS fms, argMinMerge(campaign) AS c0, argMinMerge(variant) AS v0 FROM message_firsts \
                     WHERE tenant = {outer_tenant} AND type IN ({kinds}) GROUP BY type, message_key) AS f \
               ANY LEFT JOIN {sends} AS s USING message_key) \
         WHERE 1 = 1{range}{filters} GROUP BY {bucket}{group}, t",
        dims = sql::dims_select(q, &first_column),
        group = sql::dims_group(q, &first_column),
    ));
    Some(s)
}

/// An event filed under `(unmatched)` (inbound mail whose send was unknown when it was
/// classified): `rollup_15m` counts it there, so queries take it from `orphans` instead and
/// join it to its send.
const ORPHAN: &str = "(campaign = '(unmatched)' AND type != 'sent')";

fn time_range(q: &Aggregate) -> String {
    q.frame.as_ref().map_or(String::new(), |f| format!(" AND occurred_ms >= {} AND occurred_ms < {}", f.lo_ms, f.hi_ms))
}

/// `(SELECT message_key, sc, sv ...)`: the campaign and variant of the latest send of each
/// message of the tenant that has orphans in the range (GLOBAL: on a cluster, `sends` and
/// `events` are Distributed tables, and the set is built once, by the initiator).
fn latest_sends(s: &mut Sql, q: &Aggregate, tenant: &str) -> String {
    let d = &DIALECT;
    let t1 = s.bind(d, Bind::Str(tenant.into()));
    let t2 = s.bind(d, Bind::Str(tenant.into()));
    format!(
        "(SELECT message_key, argMax(campaign, occurred_ms) AS sc, argMax(variant, occurred_ms) AS sv FROM sends WHERE tenant = {t1} \
          AND message_key GLOBAL IN (SELECT message_key FROM orphans WHERE tenant = {t2}{range}) GROUP BY message_key)",
        range = time_range(q),
    )
}

/// The tenant's orphans in the range (of `types`, if given), from `orphans`, with the campaign
/// (`c0`) and variant (`v0`) of their message's latest send where one is stored.
fn orphans(s: &mut Sql, q: &Aggregate, tenant: &str, types: &str) -> String {
    let d = &DIALECT;
    let t = s.bind(d, Bind::Str(tenant.into()));
    let inner = format!(
        "SELECT occurred_ms, type, bounce_class, revenue_micros, recipient, CAST(variant AS String) AS v, message_key \
         FROM orphans FINAL WHERE tenant = {t}{range}{types}",
        range = time_range(q),
    );
    let sends = latest_sends(s, q, tenant);
    format!(
        "(SELECT occurred_ms, type, bounce_class, revenue_micros, recipient, if(sc = '', '{UNMATCHED_CAMPAIGN}', sc) AS c0, if(sc = '', v, sv) AS v0 \
          FROM ({inner}) AS o ANY LEFT JOIN {sends} AS s USING message_key)"
    )
}

fn orphan_column(dim: Dimension) -> String {
    match dim {
        Dimension::Campaign => "c0".into(),
        Dimension::Variant => "v0".into(),
    }
}

/// Orphans per bucket, group, type and bounce class, in their send's campaign.
fn orphan_counts(q: &Aggregate, tenant: &str) -> Option<Sql> {
    if !q.wants_counts() {
        return None;
    }
    let d = &DIALECT;
    let mut s = Sql::default();
    let bucket = sql::bucket_expr(d, q, "occurred_ms");
    let source = orphans(&mut s, q, tenant, "");
    let filters = sql::filters(d, &mut s, q, &orphan_column);
    s.push(&format!(
        "SELECT {bucket} AS b, {dims}, type AS t, bounce_class AS bc, toInt64(count()) AS n, toInt64(sum(ifNull(revenue_micros, 0))) AS rev, \
         toInt64(min(occurred_ms)) AS fms, toInt64(max(occurred_ms)) AS lms FROM {source} WHERE 1 = 1{filters} \
         GROUP BY {bucket}{group}, type, bounce_class",
        dims = sql::dims_select(q, &orphan_column),
        group = sql::dims_group(q, &orphan_column),
    ));
    Some(s)
}

/// Distinct recipients per bucket, group and type, from `events` (orphans in their send's
/// campaign).
fn distinct_recipients(q: &Aggregate, tenant: &str) -> Option<Sql> {
    let types = q.distinct_types();
    if types.is_empty() {
        return None;
    }
    let d = &DIALECT;
    let mut s = Sql::default();
    let bucket = sql::bucket_expr(d, q, "occurred_ms");
    let types = format!(" AND type IN ({})", sql::type_list(&types));
    let t = s.bind(d, Bind::Str(tenant.into()));
    let source = orphans(&mut s, q, tenant, &types);
    let filters = sql::filters(d, &mut s, q, &orphan_column);
    s.push(&format!(
        "SELECT {bucket} AS b, {dims}, type AS t, '' AS bc, toInt64(uniqExact(lower(recipient))) AS n, toInt64(0) AS rev, toInt64(0) AS fms, toInt64(0) AS lms \
         FROM (SELECT occurred_ms, type, recipient, CAST(campaign AS String) AS c0, CAST(variant AS String) AS v0 FROM events \
               WHERE tenant = {t}{range}{types} AND NOT {ORPHAN} \
               UNION ALL SELECT occurred_ms, type, recipient, c0, v0 FROM {source}) \
         WHERE 1 = 1{filters} GROUP BY {bucket}{group}, type",
        range = time_range(q),
        dims = sql::dims_select(q, &orphan_column),
        group = sql::dims_group(q, &orphan_column),
    ));
    Some(s)
}

/// The queries an aggregate compiles to, each with the part of the answer it feeds.
fn compile(q: &Aggregate, tenant: &str) -> Vec<(Family, Sql)> {
    [
        (Family::Counts, rollup_counts(q, tenant)),
        (Family::Counts, orphan_counts(q, tenant)),
        (Family::Firsts, rollup_firsts(q, tenant)),
        (Family::Distinct, distinct_recipients(q, tenant)),
    ]
    .into_iter()
    .filter_map(|(f, s)| s.map(|s| (f, s)))
    .collect()
}

/// Rows per insert of a large batch: the duplicate lookup of one part overlaps the insert of the
/// one before (the server works on both at once).
const PART_ROWS: usize = 50_000;
const PROBE_TABLE: &str = "CREATE TEMPORARY TABLE IF NOT EXISTS probe (tenant String, occurred_ms Int64, event_id UUID) ENGINE = Memory";
const PROBE_CLEAR: &str = "TRUNCATE TABLE probe";
/// Ids of the probed events that are stored: the probe's (tenant, occurred_ms) pairs go
/// through the sorting key's index. GLOBAL, so that on a cluster the probe travels to the shards.
const PROBE_LOOKUP: &str = "SELECT event_id FROM events WHERE (tenant, occurred_ms) GLOBAL IN (SELECT tenant, occurred_ms FROM probe) \
    AND event_id GLOBAL IN (SELECT event_id FROM probe)";

/// Every statement the store sends besides the migrations, with example values in place of
/// its parameters: for checking them on other ClickHouse versions.
pub fn query_templates() -> Vec<String> {
    let fill = |sql: &str, values: &[&str]| {
        let mut out = String::new();
        let mut values = values.iter();
        for (i, part) in sql.split('?').enumerate() {
            if i > 0 {
                out.push_str(values.next().expect("a value per parameter"));
            }
            out.push_str(part);
        }
        out
    };
    let mut out = vec![
        MIGRATIONS_TABLE.to_string(),
        fill(RECORD_MIGRATION, &["1", "'events'", "'0123456789abcdef'", "1700000000000"]),
        APPLIED.to_string(),
        COUNTS.to_string(),
        fill(SEND, &["'acme'", "'m@x'"]),
        PROBE_TABLE.to_string(),
        "INSERT INTO probe (tenant, occurred_ms, event_id) VALUES ('acme', 1700000000000, generateUUIDv4())".to_string(),
        PROBE_LOOKUP.to_string(),
        PROBE_CLEAR.to_string(),
        "SELECT version()".to_string(),
        "SELECT 1".to_string(),
    ];
    let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 3, d).unwrap();
    let samples = [
        Aggregate { frame: Some(Frame::new(day(1), day(31), chrono_tz::Europe::Paris, Grain::Day)), filters: Filters { campaign: Some("spring".into()), variant: Some("B".into()) }, group_by: vec![], measures: Measure::all() },
        Aggregate { frame: Some(Frame::new(day(1), day(31), chrono_tz::Asia::Kathmandu, Grain::HourOfWeek)), filters: Filters::default(), group_by: vec![Dimension::Campaign, Dimension::Variant], measures: Measure::all() },
        Aggregate { frame: None, filters: Filters::default(), group_by: vec![Dimension::Campaign], measures: Measure::all() },
    ];
    for q in &samples {
        for (_, s) in compile(q, "acme") {
            let values: Vec<String> = s.binds.iter().map(|b| match b {
                Bind::Str(v) => format!("'{v}'"),
                Bind::Ms(ms) => ms.to_string(),
            }).collect();
            out.push(fill(&s.text, &values.iter().map(String::as_str).collect::<Vec<_>>()));
        }
    }
    out
}



#[derive(Clone, Debug)]
pub struct ClickHouseStoreConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
}

pub struct ClickHouseEventStore {
    client: Client,
    /// A session of its own for the duplicate lookup, whose probe is a temporary table; one
    /// lookup at a time (a ClickHouse session takes one query at a time).
    probe: tokio::sync::Mutex<Client>,
    /// Ids this process wrote lately: a client's resubmission (the same derived id, posted
    /// again with another timestamp) is not found by the lookup, which goes by time.
    recent: std::sync::Mutex<RecentIds>,
}

/// How many written ids a store process remembers (about 40 bytes each).
const RECENT_IDS: usize = 1 << 20;

/// The newest `capacity` ids, the oldest forgotten first.
struct RecentIds {
    set: HashSet<Uuid>,
    order: std::collections::VecDeque<Uuid>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> RecentIds {
        RecentIds { set: HashSet::new(), order: std::collections::VecDeque::new(), capacity }
    }

    fn add(&mut self, id: Uuid) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// What a server can do beyond what ClickHouse 18.16 (Debian's package) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub low_cardinality: bool,
    pub codecs: bool,
    /// `ALTER TABLE ... ADD COLUMN IF NOT EXISTS`; without it the migration runner adds the
    /// column and takes "already exists" (a migration cut short, run again) as done.
    pub add_column_if_not_exists: bool,
}

impl Capabilities {
    pub const MODERN: Capabilities = Capabilities { low_cardinality: true, codecs: true, add_column_if_not_exists: true };

    /// From `SELECT version()`, e.g. `18.16.1` or `24.8.4.13`.
    pub fn of_version(version: &str) -> Capabilities {
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let major_minor = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        let modern = major_minor >= (19, 3);
        Capabilities { low_cardinality: modern, codecs: modern, add_column_if_not_exists: modern }
    }

    /// The statements of a migration as this server takes them.
    pub fn render(self, sql: &str) -> Vec<String> {
        let mut sql = strip_comments(sql);
        if !self.low_cardinality {
            sql = sql.replace("LowCardinality(String)", "String");
        }
        if !self.codecs {
            sql = strip_codecs(&sql);
        }
        if !self.add_column_if_not_exists {
            sql = sql.replace("ADD COLUMN IF NOT EXISTS", "ADD COLUMN");
        }
        sql.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
    }
}

/// On a server without `ADD COLUMN IF NOT EXISTS`, an `ADD COLUMN` that finds its column there
/// (added by the same migration, cut short before it was recorded) has nothing left to do.
fn column_added_before(caps: Capabilities, statement: &str, error: &str) -> bool {
    !caps.add_column_if_not_exists && statement.contains("ADD COLUMN") && error.contains("already exists")
}

fn strip_comments(sql: &str) -> String {
    sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n")
}

/// Removes every ` CODEC(...)` clause (nested parentheses included).
fn strip_codecs(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find(" CODEC(") {
        out.push_str(&rest[..at]);
        let mut depth = 0;
        let mut end = rest.len();
        for (i, c) in rest[at + 1..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = at + 1 + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn engine(e: clickhouse::error::Error) -> StoreError {
    StoreError::Engine(format!("clickhouse: {e}"))
}

/// One event as the `events` table holds it; absent optional text is the empty string.
#[derive(Row, Serialize)]
struct EventRow<'a> {
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: Uuid,
    tenant: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    occurred_ms: i64,
    received_ms: i64,
    campaign: &'a str,
    variant: &'a str,
    message_id: &'a str,
    recipient: &'a str,
    link: &'a str,
    bounce_class: &'a str,
    status: &'a str,
    reason: &'a str,
    revenue_micros: Option<i64>,
    currency: &'a str,
    user_agent: &'a str,
    ip: &'a str,
    stream: &'a str,
}

impl<'a> EventRow<'a> {
    fn of(e: &'a Event) -> Self {
        let s = |o: &'a Option<String>| o.as_deref().unwrap_or("");
        EventRow {
            event_id: e.event_id,
            tenant: &e.tenant,
            event_type: e.event_type.as_str(),
            occurred_ms: e.occurred_at.timestamp_millis(),
            received_ms: e.received_at.timestamp_millis(),
            campaign: &e.campaign,
            variant: &e.variant,
            message_id: &e.message_id,
            recipient: &e.recipient,
            link: s(&e.link),
            bounce_class: e.bounce_class.map_or("", BounceClass::as_str),
            status: s(&e.status),
            reason: s(&e.reason),
            revenue_micros: e.revenue_micros,
            currency: s(&e.currency),
            user_agent: s(&e.user_agent),
            ip: s(&e.ip),
            stream: s(&e.stream),
        }
    }
}

#[derive(Row, Serialize)]
struct ProbeRow<'a> {
    tenant: &'a str,
    occurred_ms: i64,
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: Uuid,
}

#[derive(Row, Deserialize)]
struct IdRow {
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: Uuid,
}

#[derive(Row, Deserialize)]
struct SendRow {
    campaign: String,
    variant: String,
    stream: String,
}

#[derive(Row, Deserialize)]
struct AppliedRow {
    version: u32,
    checksum: String,
}

/// Stable across builds and platforms: FNV-1a over the migration's text.
fn checksum(sql: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in sql.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

impl ClickHouseEventStore {
    /// Connects to the database (which must exist; `migrate` creates it).
    pub fn new(config: &ClickHouseStoreConfig) -> ClickHouseEventStore {
        let client = Self::client(config).with_database(&config.database);
        let probe = client.clone().with_setting("session_id", format!("mailpipe-{}", Uuid::new_v4())).with_setting("session_timeout", "600");
        ClickHouseEventStore { client, probe: tokio::sync::Mutex::new(probe), recent: std::sync::Mutex::new(RecentIds::new(RECENT_IDS)) }
    }

    fn client(config: &ClickHouseStoreConfig) -> Client {
        // No HTTP compression: ClickHouse 18.16 answers lz4-compressed fetches with nothing.
        // No schema validation: it relies on a format 18.16 lacks (RowBinaryWithNamesAndTypes).
        Client::default()
            .with_url(&config.url)
            .with_user(&config.user)
            .with_password(&config.password)
            .with_compression(clickhouse::Compression::None)
            .with_validation(false)
    }

    pub async fn version(&self) -> Result<String, StoreError> {
        self.client.query("SELECT version()").fetch_one::<String>().await.map_err(engine)
    }

    /// Creates the database if needed and applies the migrations not applied yet, in order.
    /// Returns the versions applied now.
    pub async fn migrate(config: &ClickHouseStoreConfig) -> Result<Vec<u32>, StoreError> {
        let server = Self::client(config);
        server.query(&format!("CREATE DATABASE IF NOT EXISTS {}", config.database)).execute().await.map_err(engine)?;
        let store = Self::new(config);
        let caps = Capabilities::of_version(&store.version().await?);
        store
            .client
            .query(MIGRATIONS_TABLE)
            .execute()
            .await
            .map_err(engine)?;
        let applied: BTreeMap<u32, String> = store
            .client
            .query(APPLIED)
            .fetch_all::<AppliedRow>()
            .await
            .map_err(engine)?
            .into_iter()
            .map(|r| (r.version, r.checksum))
            .collect();
        let mut now_applied = Vec::new();
        for &(version, name, sql) in MIGRATIONS {
            let sum = checksum(sql);
            match applied.get(&version) {
                Some(s) if *s == sum => continue,
                Some(_) => {
                    return Err(StoreError::Engine(format!(
                        "migration {version:04} ({name}) changed after it was applied; add a new migration instead"
                    )))
                }
                None => {}
            }
            // Every statement is idempotent (IF NOT EXISTS), so a migration cut short is
            // simply run again.
            for statement in caps.render(sql) {
                match store.client.query(&statement).execute().await {
                    Ok(()) => {}
                    Err(e) if column_added_before(caps, &statement, &e.to_string()) => {}
                    Err(e) => {
                        return Err(StoreError::Engine(format!("migration {version:04} ({name}): {e}\n{statement}")))
                    }
                }
            }
            store
                .client
                .query(RECORD_MIGRATION)
                .bind(version)
                .bind(name)
                .bind(&sum)
                .bind(chrono::Utc::now().timestamp_millis())
                .execute()
                .await
                .map_err(engine)?;
            tracing::info!(version, name, "clickhouse migration applied");
            now_applied.push(version);
        }
        Ok(now_applied)
    }

    /// Ids of `events` that the table holds already: the batch's keys go to ClickHouse as a
    /// binary insert into a temporary table (a literal list of thousands costs far more to
    /// parse than the lookup itself), then one query on the sorting key.
    async fn stored_ids(&self, events: &[&Event]) -> Result<HashSet<Uuid>, StoreError> {
        let probe = self.probe.lock().await;
        probe.query(PROBE_TABLE).execute().await.map_err(engine)?;
        probe.query(PROBE_CLEAR).execute().await.map_err(engine)?;
        let mut insert = probe.insert::<ProbeRow<'_>>("probe").await.map_err(engine)?;
        for e in events {
            insert
                .write(&ProbeRow { tenant: &e.tenant, occurred_ms: e.occurred_at.timestamp_millis(), event_id: e.event_id })
                .await
                .map_err(engine)?;
        }
        insert.end().await.map_err(engine)?;
        let rows = probe.query(PROBE_LOOKUP).fetch_all::<IdRow>().await.map_err(engine)?;
        Ok(rows.into_iter().map(|r| r.event_id).collect())
    }

    /// Ids now stored (their insert was answered), for the next batches to skip.
    fn remember(&self, written: &[&Event]) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for e in written {
            recent.add(e.event_id);
        }
    }

    /// The events of `part` that the table does not hold yet.
    async fn fresh<'e>(&self, part: &[&'e Event]) -> Result<Vec<&'e Event>, StoreError> {
        let started = std::time::Instant::now();
        let stored = self.stored_ids(part).await?;
        tracing::debug!(rows = part.len(), stored = stored.len(), ms = started.elapsed().as_millis() as u64, "clickhouse duplicate lookup");
        Ok(part.iter().copied().filter(|e| !stored.contains(&e.event_id)).collect())
    }

    /// Writes `rows` in one insert; returns how many.
    async fn write(&self, rows: &[&Event]) -> Result<usize, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let mut insert = self.client.insert::<EventRow<'_>>("events").await.map_err(engine)?;
        for e in rows {
            insert.write(&EventRow::of(e)).await.map_err(engine)?;
        }
        insert.end().await.map_err(engine)?;
        tracing::debug!(rows = rows.len(), ms = started.elapsed().as_millis() as u64, "clickhouse insert");
        metrics::counter!("mailpipe_store_rows_written_total").increment(rows.len() as u64);
        Ok(rows.len())
    }

    /// Events stored, over all tenants, and how many distinct ids they have (equal unless
    /// something was stored twice).
    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        self.client.query(COUNTS).fetch_one::<(u64, u64)>().await.map_err(engine)
    }

    async fn sent_message(&self, tenant: &str, message_id: &str) -> Result<Option<SentMessage>, StoreError> {
        let row = self
            .client
            .query(SEND)
            .bind(tenant)
            .bind(message_key(message_id))
            .fetch_optional::<SendRow>()
            .await
            .map_err(engine)?;
        Ok(row.map(|r| SentMessage { campaign: r.campaign, variant: r.variant, stream: Some(r.stream).filter(|s| !s.is_empty()) }))
    }
}

#[async_trait]
impl EventStore for ClickHouseEventStore {
    /// Batches over `PART_ROWS` go in parts, each part's duplicate lookup running (in the probe
    /// session) while the part before it is written.
    async fn insert(&self, events: &[Event]) -> Result<usize, StoreError> {
        let mut in_batch = HashSet::with_capacity(events.len());
        let unique: Vec<&Event> = {
            let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            events.iter().filter(|e| in_batch.insert(e.event_id) && !recent.set.contains(&e.event_id)).collect()
        };
        let mut parts = unique.chunks(PART_ROWS);
        let Some(first) = parts.next() else { return Ok(0) };
        let mut fresh = self.fresh(first).await?;
        let mut written = 0;
        for part in parts {
            let (n, next) = tokio::try_join!(self.write(&fresh), self.fresh(part))?;
            written += n;
            self.remember(&fresh);
            fresh = next;
        }
        written += self.write(&fresh).await?;
        self.remember(&fresh);
        Ok(written)
    }

    /// Nothing to do: an insert is written by ClickHouse before it answers.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn aggregate(&self, tenant: &str, q: &Aggregate) -> Result<AggregateAnswer, StoreError> {
        q.validate()?;
        // The queries of one question run at once.
        let runs = compile(q, tenant).into_iter().map(|(family, s)| {
            let mut query = self.client.query(&s.text);
            for b in &s.binds {
                query = match b {
                    Bind::Str(v) => query.bind(v.as_str()),
                    Bind::Ms(ms) => query.bind(*ms),
                };
            }
            async move {
                let rows = query.fetch_all::<PartialRow>().await.map_err(|e| StoreError::Engine(format!("clickhouse: {e}\n{}", s.text)))?;
                Ok::<_, StoreError>((family, rows))
            }
        });
        let mut acc = Accumulator::default();
        for (family, rows) in futures::future::try_join_all(runs).await? {
            for row in rows {
                sql::fold(&mut acc, q, family, row);
            }
        }
        Ok(acc.answer(q))
    }

    async fn message(&self, tenant: &str, message_id: &str) -> Result<Option<SentMessage>, StoreError> {
        self.sent_message(tenant, message_id).await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.counts().await?.0)
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.client.query("SELECT 1").fetch_one::<u8>().await.map_err(engine).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_are_recognised_by_the_unmatched_campaign() {
        assert!(ORPHAN.contains(&format!("'{UNMATCHED_CAMPAIGN}'")));
    }

    #[test]
    fn old_servers_get_the_schema_without_what_they_lack() {
        let sql = "CREATE TABLE t (a LowCardinality(String), b Int64 CODEC(Delta, ZSTD(1)), c String CODEC(ZSTD(1)))\n-- note;\nENGINE = MergeTree ORDER BY a;\nSELECT 1;\nALTER TABLE t ADD COLUMN IF NOT EXISTS d String";
        let old = Capabilities::of_version("18.16.1").render(sql);
        assert_eq!(
            old,
            vec![
                "CREATE TABLE t (a String, b Int64, c String)\nENGINE = MergeTree ORDER BY a",
                "SELECT 1",
                "ALTER TABLE t ADD COLUMN d String"
            ]
        );
        let again = "Code: 44, e.displayText() = DB::Exception: Cannot add column d: column with this name already exists";
        assert!(column_added_before(Capabilities::of_version("18.16.1"), &old[2], again));
        assert!(!column_added_before(Capabilities::of_version("18.16.1"), &old[0], again));
        assert!(!column_added_before(Capabilities::MODERN, &old[2], again));
        let modern = Capabilities::of_version("24.8.4.13").render(sql);
        assert!(modern[0].contains("LowCardinality(String)") && modern[0].contains("CODEC(Delta, ZSTD(1))"));
        assert!(modern[2].contains("IF NOT EXISTS"));
        assert_eq!(Capabilities::of_version("24.8.4.13"), Capabilities::MODERN);
    }
}
