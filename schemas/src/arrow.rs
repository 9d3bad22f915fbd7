//! The Arrow schema of a stored event row: one column per `Event` field, plus the derived
//! `provider`. Stores write and read exactly these columns. A column is only ever added, at
//! the end and nullable, so files written before it still read (the column as nulls).

use arrow_schema::{DataType, Field, Schema, TimeUnit};
use std::sync::Arc;

/// Column names in schema order.
pub const COLUMNS: [&str; 19] = [
    "event_id",
    "tenant",
    "type",
    "occurred_at",
    "received_at",
    "campaign",
    "variant",
    "message_id",
    "recipient",
    "provider",
    "link",
    "bounce_class",
    "status",
    "reason",
    "revenue_micros",
    "currency",
    "user_agent",
    "ip",
    "stream",
];

pub fn arrow_schema() -> Arc<Schema> {
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let s = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::FixedSizeBinary(16), false),
        s("tenant", false),
        s("type", false),
        Field::new("occurred_at", ts(), false),
        Field::new("received_at", ts(), false),
        s("campaign", false),
        s("variant", false),
        s("message_id", false),
        s("recipient", false),
        s("provider", false),
        s("link", true),
        s("bounce_class", true),
        s("status", true),
        s("reason", true),
        Field::new("revenue_micros", DataType::Int64, true),
        s("currency", true),
        s("user_agent", true),
        s("ip", true),
        // Added after the first release: older files lack it (read as nulls).
        s("stream", true),
    ]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn column_list_matches_schema() {
        let schema = super::arrow_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, super::COLUMNS);
    }
}
