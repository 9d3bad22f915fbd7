use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFusionStoreConfig {
    pub dir: PathBuf,
    /// A day partition with more small files than this is compacted (the newest of them,
    /// merged into files whose sizes halve from old to new: see `to_merge`).
    #[serde(default = "default_compact_after_files")]
    pub compact_after_files: usize,
}

fn default_compact_after_files() -> usize {
    16
}

impl DataFusionStoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DataFusionStoreConfig { dir: dir.into(), compact_after_files: default_compact_after_files() }
    }
}
