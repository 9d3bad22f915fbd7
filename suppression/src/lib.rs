//! The suppression list: the addresses a tenant must not mail. The suppression writer
//! (`writer`) turns hard bounces, complaints, unsubscribes, repeated soft bounces and manual
//! changes into records on the suppressions topic, one whole entry (`entry`) per record; every
//! process that answers checks follows that topic into an in-memory index of address hashes
//! (`index`, `list`), with a snapshot so that a restart reads only what came after; the API
//! (`api`) answers from that index.

pub mod address;
pub mod api;
pub mod entry;
pub mod index;
pub mod list;
pub mod writer;

pub use address::{Address, Key};
pub use api::{api, router, SuppressionState};
pub use entry::{Entry, Reason};
pub use index::Index;
pub use list::{Follower, Records};
pub use writer::Writer;
