-- mailpipe's ClickHouse schema for a cluster: shards and replicas.
--
-- This is the cluster form of schemas/clickhouse/migrations/0001_events.sql to
-- 0004_streams.sql (same columns, sorting keys and partitions), for ClickHouse 24 or later.
-- Each table exists twice: `<name>_local` holds the data (Replicated*MergeTree, on every
-- node) and `<name>` is a Distributed table over all shards. mailpipe only ever names the
-- plain tables, so its inserts and queries work unchanged.
--
-- Apply it once, from any node, with the database mailpipe is configured with
-- (store.database, default "mailpipe"):
--
--   clickhouse-client --query "CREATE DATABASE IF NOT EXISTS mailpipe ON CLUSTER '{cluster}'"
--   clickhouse-client --database mailpipe --multiquery < deploy/clickhouse/cluster.sql
--
-- Needs, in every server's configuration: the macros {cluster}, {shard} and {replica}
-- (<macros>), the cluster under <remote_servers> with <internal_replication>true</internal_replication>
-- in each shard (a Distributed insert then writes one replica and replication copies it),
-- and ClickHouse Keeper or ZooKeeper. Table names are left unqualified on purpose: the
-- ON CLUSTER statements and currentDatabase() take the database of the session.
--
-- In a cluster, set `migrate_on_start = false` in [store] for every mailpipe role
-- (MAILPIPE__STORE__MIGRATE_ON_START=false): a role that migrates would create the
-- single-server, non-replicated tables on whichever node it reaches. `mailpipe migrate`
-- is for single servers only. Run this file on an empty database: where `mailpipe migrate`
-- already created `events` and friends, the IF NOT EXISTS below would keep those.
--
-- Settings for the user mailpipe connects as (a settings profile in users.xml, or
-- CREATE SETTINGS PROFILE ... SETTINGS distributed_foreground_insert = 1 TO <user>):
--   distributed_foreground_insert = 1  an INSERT into `events` returns only once every
--       shard holds its rows. With the default (0) it returns once the rows are queued on
--       the node that took it, and processors would commit Kafka offsets for rows that a
--       lost node can still take with it, and that the duplicate lookup cannot see yet.
--   insert_quorum = <replicas per shard>  optional: the insert also waits for every replica
--       of the shard. Without it a duplicate lookup that runs right after an insert (a
--       redelivery after a rebalance) can read a replica that has not fetched the rows yet
--       and let duplicates in. ReplacingMergeTree collapses them in events_local, but the
--       rollups below count what is inserted. The price: inserts fail, and processors retry,
--       while a replica is down.
--
-- Sharding: events are spread by cityHash64(tenant, message_id), so all the events of one
-- message (and every copy of one event, which has the same tenant and message id) land on
-- the same shard, where ReplacingMergeTree can collapse duplicates. The materialized views
-- run on each shard over the rows inserted there and write that shard's rollup tables.
-- Queries go through the Distributed tables and -Merge the aggregate states of every shard
-- on the node that runs the query, so the answers are exact whichever shard a row is on
-- (a Message-ID quoted with and without angle brackets may hash to two shards; its firsts
-- are still merged into one). The store's duplicate lookup (which of a batch's
-- (tenant, occurred_ms, event_id) exist) also reads the Distributed `events` table. The
-- sharding keys of the three rollup tables only matter for direct INSERTs into them:
-- mailpipe never makes any, the views fill the local tables.
--
-- Upgrading a cluster created from an earlier form of this file (before the `stream` column
-- of migration 0004): add the column to both tables of `events` and of `sends`, create the
-- new view, then drop the old one (in that order, so no send is missed in between):
--   ALTER TABLE events_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS stream LowCardinality(String) DEFAULT '';
--   ALTER TABLE events ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS stream LowCardinality(String) DEFAULT '';
--   ALTER TABLE sends_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS stream String DEFAULT '';
--   ALTER TABLE sends ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS stream String DEFAULT '';
--   then the CREATE MATERIALIZED VIEW sends_streams_mv statement below, and
--   DROP TABLE IF EXISTS sends_mv ON CLUSTER '{cluster}';

-- Raw events, one row per event_id.
CREATE TABLE IF NOT EXISTS events_local ON CLUSTER '{cluster}' (
    event_id UUID,
    tenant LowCardinality(String),
    type LowCardinality(String),
    occurred_ms Int64 CODEC(Delta, ZSTD(1)),
    received_ms Int64 CODEC(Delta, ZSTD(1)),
    campaign LowCardinality(String),
    variant LowCardinality(String),
    message_id String CODEC(ZSTD(1)),
    recipient String CODEC(ZSTD(1)),
    link String CODEC(ZSTD(1)),
    bounce_class LowCardinality(String),
    status LowCardinality(String),
    reason String CODEC(ZSTD(1)),
    revenue_micros Nullable(Int64),
    currency LowCardinality(String),
    user_agent String CODEC(ZSTD(1)),
    ip String CODEC(ZSTD(1)),
    stream LowCardinality(String) DEFAULT ''
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/events_local', '{replica}')
PARTITION BY toYYYYMM(toDateTime(intDiv(occurred_ms, 1000)))
ORDER BY (tenant, occurred_ms, event_id);

CREATE TABLE IF NOT EXISTS events ON CLUSTER '{cluster}' AS events_local
ENGINE = Distributed('{cluster}', currentDatabase(), events_local, cityHash64(tenant, message_id));

-- Counts per tenant, campaign, variant, 15-minute bucket, type and bounce class.
CREATE TABLE IF NOT EXISTS rollup_15m_local ON CLUSTER '{cluster}' (
    tenant LowCardinality(String),
    campaign LowCardinality(String),
    variant LowCardinality(String),
    bucket_ms Int64,
    type LowCardinality(String),
    bounce_class LowCardinality(String),
    events AggregateFunction(count),
    revenue_micros AggregateFunction(sum, Int64),
    first_ms AggregateFunction(min, Int64),
    last_ms AggregateFunction(max, Int64)
) ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/rollup_15m_local', '{replica}')
PARTITION BY toYYYYMM(toDateTime(intDiv(bucket_ms, 1000)))
ORDER BY (tenant, bucket_ms, campaign, variant, type, bounce_class);

CREATE TABLE IF NOT EXISTS rollup_15m ON CLUSTER '{cluster}' AS rollup_15m_local
ENGINE = Distributed('{cluster}', currentDatabase(), rollup_15m_local, cityHash64(tenant, campaign));

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_15m_mv ON CLUSTER '{cluster}' TO rollup_15m_local AS
SELECT
    tenant,
    campaign,
    variant,
    intDiv(occurred_ms, 900000) * 900000 AS bucket_ms,
    type,
    bounce_class,
    countState() AS events,
    sumState(ifNull(revenue_micros, toInt64(0))) AS revenue_micros,
    minState(occurred_ms) AS first_ms,
    maxState(occurred_ms) AS last_ms
FROM events_local
GROUP BY tenant, campaign, variant, bucket_ms, type, bounce_class;

-- The first open, click, unsubscribe and complaint of each message (by Message-ID without
-- angle brackets), with the campaign and variant it was counted in.
CREATE TABLE IF NOT EXISTS message_firsts_local ON CLUSTER '{cluster}' (
    tenant LowCardinality(String),
    type LowCardinality(String),
    message_key String,
    first_ms AggregateFunction(min, Int64),
    campaign AggregateFunction(argMin, String, Int64),
    variant AggregateFunction(argMin, String, Int64)
) ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/message_firsts_local', '{replica}')
ORDER BY (tenant, type, message_key);

CREATE TABLE IF NOT EXISTS message_firsts ON CLUSTER '{cluster}' AS message_firsts_local
ENGINE = Distributed('{cluster}', currentDatabase(), message_firsts_local, cityHash64(tenant, message_key));

CREATE MATERIALIZED VIEW IF NOT EXISTS message_firsts_mv ON CLUSTER '{cluster}' TO message_firsts_local AS
SELECT
    tenant,
    type,
    replaceRegexpAll(message_id, '^\\s*<*|>*\\s*$', '') AS message_key,
    minState(occurred_ms) AS first_ms,
    argMinState(CAST(campaign AS String), occurred_ms) AS campaign,
    argMinState(CAST(variant AS String), occurred_ms) AS variant
FROM events_local
WHERE type IN ('open', 'click', 'unsubscribe', 'complaint')
GROUP BY tenant, type, message_key;

-- Sent messages by message key: joins bounces, complaints, replies and unsubscribes to their
-- send (its campaign, variant and mail stream).
CREATE TABLE IF NOT EXISTS sends_local ON CLUSTER '{cluster}' (
    tenant LowCardinality(String),
    message_key String,
    campaign String,
    variant String,
    occurred_ms Int64,
    stream String DEFAULT ''
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/sends_local', '{replica}')
ORDER BY (tenant, message_key);

CREATE TABLE IF NOT EXISTS sends ON CLUSTER '{cluster}' AS sends_local
ENGINE = Distributed('{cluster}', currentDatabase(), sends_local, cityHash64(tenant, message_key));

CREATE MATERIALIZED VIEW IF NOT EXISTS sends_streams_mv ON CLUSTER '{cluster}' TO sends_local AS
SELECT
    tenant,
    replaceRegexpAll(message_id, '^\\s*<*|>*\\s*$', '') AS message_key,
    CAST(campaign AS String) AS campaign,
    CAST(variant AS String) AS variant,
    occurred_ms,
    CAST(stream AS String) AS stream
FROM events_local
WHERE type = 'sent';

-- Inbound events filed under `(unmatched)`, one row per event (read FINAL), joined to their
-- send at query time.
CREATE TABLE IF NOT EXISTS orphans_local ON CLUSTER '{cluster}' (
    tenant LowCardinality(String),
    occurred_ms Int64 CODEC(Delta, ZSTD(1)),
    event_id UUID,
    message_key String CODEC(ZSTD(1)),
    variant LowCardinality(String),
    type LowCardinality(String),
    bounce_class LowCardinality(String),
    revenue_micros Nullable(Int64),
    recipient String CODEC(ZSTD(1))
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/orphans_local', '{replica}')
PARTITION BY toYYYYMM(toDateTime(intDiv(occurred_ms, 1000)))
ORDER BY (tenant, occurred_ms, event_id);

CREATE TABLE IF NOT EXISTS orphans ON CLUSTER '{cluster}' AS orphans_local
ENGINE = Distributed('{cluster}', currentDatabase(), orphans_local, cityHash64(tenant, message_key));

CREATE MATERIALIZED VIEW IF NOT EXISTS orphans_mv ON CLUSTER '{cluster}' TO orphans_local AS
SELECT
    tenant,
    occurred_ms,
    event_id,
    replaceRegexpAll(message_id, '^\\s*<*|>*\\s*$', '') AS message_key,
    variant,
    type,
    bounce_class,
    revenue_micros,
    recipient
FROM events_local
WHERE campaign = '(unmatched)' AND type != 'sent';
