use std::path::PathBuf;
use std::time::Duration;

/// The embedded bus keeps each topic's log in `dir/<topic>/`, cut into segment files.
#[derive(Clone, Debug)]
pub struct EmbeddedBusConfig {
    pub dir: PathBuf,
    /// Largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// A segment is closed and the next one started once it holds this many bytes.
    pub segment_bytes: u64,
    /// A closed segment is deleted once every consumer group of its topic has read past it and
    /// it was last written longer ago than this; `None`: kept for ever. The suppressions topic
    /// is always kept whole.
    pub retention: Option<Duration>,
}

impl EmbeddedBusConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmbeddedBusConfig { dir: dir.into(), max_message_bytes: crate::MAX_MESSAGE_BYTES, segment_bytes: 128 << 20, retention: Some(Duration::from_secs(7 * 86_400)) }
    }
}
