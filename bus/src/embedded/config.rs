use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The embedded bus keeps one append-only log file per topic under `dir`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBusConfig {
    pub dir: PathBuf,
    /// Largest message accepted, in bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_max_message_bytes() -> usize {
    crate::MAX_MESSAGE_BYTES
}

impl EmbeddedBusConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmbeddedBusConfig { dir: dir.into(), max_message_bytes: default_max_message_bytes() }
    }
}
