-- Raw events, one row per event_id. Ordered for the tenant-and-time questions the API asks.
-- The store inserts only ids it does not hold yet; ReplacingMergeTree is the second line of
-- defence (a duplicate that still got in collapses on merge).
CREATE TABLE IF NOT EXISTS events (
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
    ip String CODEC(ZSTD(1))
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(occurred_ms, 1000)))
ORDER BY (tenant, occurred_ms, event_id);
