-- The mail stream of a send (`marketing`, `transactional`, ...): kept with the event, and with
-- its message in `sends`, so that an unsubscribe from the message suppresses that stream only.
ALTER TABLE events ADD COLUMN IF NOT EXISTS stream LowCardinality(String) DEFAULT '';

ALTER TABLE sends ADD COLUMN IF NOT EXISTS stream String DEFAULT '';

-- The new view is created before the old one is dropped, so no send is missed in between;
-- a send inserted while both exist has two rows (one without its stream) until they merge,
-- and the lookup prefers the row with a stream.
CREATE MATERIALIZED VIEW IF NOT EXISTS sends_streams_mv TO sends AS
SELECT
    tenant,
    replaceRegexpAll(message_id, '^\\s*<*|>*\\s*$', '') AS message_key,
    CAST(campaign AS String) AS campaign,
    CAST(variant AS String) AS variant,
    occurred_ms,
    CAST(stream AS String) AS stream
FROM events
WHERE type = 'sent';

DROP TABLE IF EXISTS sends_mv;
