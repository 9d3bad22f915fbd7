//! Per-message questions (the recipient-ordered side of the store): where a send was counted.

use serde::Serialize;

/// Where a sent message was counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SentMessage {
    pub campaign: String,
    pub variant: String,
}
