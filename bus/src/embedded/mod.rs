//! The embedded bus: one append-only log file per topic, written by one thread that groups
//! every pending publish into a single write + fdatasync (group commit), and consumer group
//! offsets in small files replaced atomically.
//!
//! Record layout: `len: u32 LE | crc32: u32 LE | key_len: u16 LE | key | payload`, where `len`
//! counts the bytes after the crc and the crc covers them. A record's offset is its byte
//! position in the log. On open, the tail after the last whole record (a torn write) is cut.

mod bus;
mod config;
#[cfg(test)]
mod tests;

pub use bus::EmbeddedEventBus;
pub use config::EmbeddedBusConfig;
