-- Inbound events filed under `(unmatched)` (their send was not stored when they were
-- classified), one row per event: queries join them to their message's latest send, so they
-- count in the send's campaign whenever it arrives. A small copy of those rows, so that a
-- query reads only them rather than every event of the range.
-- ReplacingMergeTree by event_id and queries read it FINAL: the backfill below may run again
-- (a migration cut short) or overlap the view's first inserts without counting an event twice.
CREATE TABLE IF NOT EXISTS orphans (
    tenant LowCardinality(String),
    occurred_ms Int64 CODEC(Delta, ZSTD(1)),
    event_id UUID,
    message_key String CODEC(ZSTD(1)),
    variant LowCardinality(String),
    type LowCardinality(String),
    bounce_class LowCardinality(String),
    revenue_micros Nullable(Int64),
    recipient String CODEC(ZSTD(1))
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(occurred_ms, 1000)))
ORDER BY (tenant, occurred_ms, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS orphans_mv TO orphans AS
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
FROM events
WHERE campaign = '(unmatched)' AND type != 'sent';

INSERT INTO orphans
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
FROM events
WHERE campaign = '(unmatched)' AND type != 'sent';
