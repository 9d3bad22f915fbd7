-- Counts per tenant, campaign, variant, 15-minute bucket (fine enough for the day boundaries
-- of every time zone), type and bounce class: the overview reads these, never raw events.
CREATE TABLE IF NOT EXISTS rollup_15m (
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
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(bucket_ms, 1000)))
ORDER BY (tenant, bucket_ms, campaign, variant, type, bounce_class);

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_15m_mv TO rollup_15m AS
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
FROM events
GROUP BY tenant, campaign, variant, bucket_ms, type, bounce_class;

-- The first open, click, unsubscribe and complaint of each message, and the campaign and
-- variant it was counted in: unique counts are "messages whose first such event falls in the
-- range", so an earlier event that arrives late moves the count instead of adding one.
-- The message key is the Message-ID without angle brackets (reports quote it either way).
CREATE TABLE IF NOT EXISTS message_firsts (
    tenant LowCardinality(String),
    type LowCardinality(String),
    message_key String,
    first_ms AggregateFunction(min, Int64),
    campaign AggregateFunction(argMin, String, Int64),
    variant AggregateFunction(argMin, String, Int64)
) ENGINE = AggregatingMergeTree
ORDER BY (tenant, type, message_key);

CREATE MATERIALIZED VIEW IF NOT EXISTS message_firsts_mv TO message_firsts AS
SELECT
    tenant,
    type,
    replaceRegexpAll(message_id, '^\\s*<*|>*\\s*$', '') AS message_key,
    minState(occurred_ms) AS first_ms,
    argMinState(CAST(campaign AS String), occurred_ms) AS campaign,
    argMinState(CAST(variant AS String), occurred_ms) AS variant
FROM events
WHERE type IN ('open', 'click', 'unsubscribe', 'complaint')
GROUP BY tenant, type, message_key;

-- Sent messages by message key: joins bounces, complaints and replies to their send.
CREATE TABLE IF NOT EXISTS sends (
    tenant LowCardinality(String),
    message_key String,
    campaign String,
    variant String,
    occurred_ms Int64
) ENGINE = ReplacingMergeTree
ORDER BY (tenant, message_key);

CREATE MATERIALIZED VIEW IF NOT EXISTS sends_mv TO sends AS
SELECT
    tenant,
    replaceRegexpAll(message_id, '^\\s*<*|>*\\s*$', '') AS message_key,
    CAST(campaign AS String) AS campaign,
    CAST(variant AS String) AS variant,
    occurred_ms
FROM events
WHERE type = 'sent';
