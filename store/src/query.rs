//! Per-message questions (the recipient-ordered side of the store): where a send was counted.

use serde::Serialize;

/// Campaign of inbound mail (bounce, complaint, reply) whose send was not known when it was
/// classified. Stores join such events to their send at query time, by message key, so they
/// land in the send's campaign and variant whenever the send arrives (the latest send by time
/// when a message id was sent more than once).
pub const UNMATCHED_CAMPAIGN: &str = "(unmatched)";

/// Where a sent message was counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SentMessage {
    pub campaign: String,
    pub variant: String,
}
