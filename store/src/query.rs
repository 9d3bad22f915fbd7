//! Per-message questions (the recipient-ordered side of the store): where a send was counted.

use serde::Serialize;

/// Stores join events of this campaign to their send at query time, by message key, so they
/// land in the send's campaign and variant whenever the send arrives (the latest send by time
/// when a message id was sent more than once).
pub use mailpipe_schemas::UNMATCHED_CAMPAIGN;

/// Where a sent message was counted, and the mail stream it went out on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SentMessage {
    pub campaign: String,
    pub variant: String,
    pub stream: Option<String>,
}
