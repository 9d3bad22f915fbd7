//! Events to Arrow record batches and back to rollup rows.

use super::rollup::{Rollup, RowRef};
use crate::StoreError;
use datafusion::arrow::array::{
    Array, AsArray, FixedSizeBinaryBuilder, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};
use mailpipe_schemas::{arrow_schema, BounceClass, Event, EventType};
use std::sync::Arc;

pub fn to_batch(events: &[&Event]) -> Result<RecordBatch, StoreError> {
    let mut ids = FixedSizeBinaryBuilder::with_capacity(events.len(), 16);
    for e in events {
        ids.append_value(e.event_id.as_bytes()).map_err(|e| StoreError::Engine(e.to_string()))?;
    }
    let strs = |f: &dyn Fn(&Event) -> Option<&str>| -> Arc<dyn Array> {
        Arc::new(events.iter().map(|e| f(e)).collect::<StringArray>())
    };
    let ts = |f: &dyn Fn(&Event) -> i64| -> Arc<dyn Array> {
        Arc::new(TimestampMillisecondArray::from(events.iter().map(|e| f(e)).collect::<Vec<_>>()).with_timezone("UTC"))
    };
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(ids.finish()),
        strs(&|e| Some(&e.tenant)),
        strs(&|e| Some(e.event_type.as_str())),
        ts(&|e| e.occurred_at.timestamp_millis()),
        ts(&|e| e.received_at.timestamp_millis()),
        strs(&|e| Some(&e.campaign)),
        strs(&|e| Some(&e.variant)),
        strs(&|e| Some(&e.message_id)),
        strs(&|e| Some(&e.recipient)),
        strs(&|e| Some(e.provider().as_str())),
        strs(&|e| e.link.as_deref()),
        strs(&|e| e.bounce_class.map(|b| b.as_str())),
        strs(&|e| e.status.as_deref()),
        strs(&|e| e.reason.as_deref()),
        Arc::new(events.iter().map(|e| e.revenue_micros).collect::<Int64Array>()),
        strs(&|e| e.currency.as_deref()),
        strs(&|e| e.user_agent.as_deref()),
        strs(&|e| e.ip.as_deref()),
        strs(&|e| e.stream.as_deref()),
    ];
    RecordBatch::try_new(arrow_schema(), columns).map_err(|e| StoreError::Engine(e.to_string()))
}

/// Counts every row of a stored batch into the rollup; returns how many were new.
pub fn apply_batch(rollup: &mut Rollup, batch: &RecordBatch) -> Result<usize, StoreError> {
    let bad = |what: &str| StoreError::Engine(format!("stored batch has no usable column {what}"));
    let col = |name: &str| batch.column_by_name(name).ok_or_else(|| bad(name));
    let ids = col("event_id")?.as_fixed_size_binary_opt().ok_or_else(|| bad("event_id"))?;
    let string = |name: &str| col(name)?.as_string_opt::<i32>().ok_or_else(|| bad(name));
    let (tenant, kind, campaign, variant, message, bounce) = (
        string("tenant")?,
        string("type")?,
        string("campaign")?,
        string("variant")?,
        string("message_id")?,
        string("bounce_class")?,
    );
    let occurred = col("occurred_at")?.as_primitive_opt::<TimestampMillisecondType>().ok_or_else(|| bad("occurred_at"))?;
    let revenue = col("revenue_micros")?.as_primitive_opt::<Int64Type>().ok_or_else(|| bad("revenue_micros"))?;
    let stream = string("stream")?;
    let mut new = 0;
    for i in 0..batch.num_rows() {
        let id: [u8; 16] = ids.value(i).try_into().map_err(|_| bad("event_id"))?;
        let event_type = EventType::parse(kind.value(i)).ok_or_else(|| bad("type"))?;
        let bounce_class = match (bounce.is_null(i), bounce.value(i)) {
            (false, "hard") => Some(BounceClass::Hard),
            (false, "soft") => Some(BounceClass::Soft),
            _ => None,
        };
        let row = RowRef {
            event_id: u128::from_be_bytes(id),
            tenant: tenant.value(i),
            event_type,
            occurred_ms: occurred.value(i),
            campaign: campaign.value(i),
            variant: variant.value(i),
            message_id: message.value(i),
            bounce_class,
            revenue_micros: if revenue.is_null(i) { 0 } else { revenue.value(i) },
            stream: (!stream.is_null(i)).then(|| stream.value(i)),
        };
        new += usize::from(rollup.apply(row)?);
    }
    Ok(new)
}
