//! The event model of mailpipe: the one definition of an event that every stage shares,
//! versioned on the bus (`Envelope::v`) and mirrored as an Arrow schema for the stores.

mod arrow;
mod event;
mod inbound;
mod rfc3339;

pub use arrow::{arrow_schema, COLUMNS};
pub use event::{derived_id, BounceClass, Envelope, Event, EventType, Provider, SCHEMA_VERSION, UNMATCHED_CAMPAIGN};
pub use inbound::{verdict_signals, InboundEnvelope, INBOUND_MAX_BYTES};
