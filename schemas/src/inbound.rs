//! A raw inbound message (bounce, complaint, reply) on the bus: one JSON line saying whose it
//! is and when it came, then the message bytes exactly as received.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Largest inbound message accepted (`POST /v1/inbound`, `mailpipe inbound`, the classifier):
/// a bounce quoting a large attachment fits; above it the answer is 413, which the MTA takes
/// as a permanent failure.
pub const INBOUND_MAX_BYTES: usize = 16 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundEnvelope {
    pub v: u16,
    pub inbound_id: Uuid,
    pub tenant: String,
    pub received_at: DateTime<Utc>,
}

impl InboundEnvelope {
    pub fn encode(&self, raw: &[u8]) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out.extend_from_slice(raw);
        out
    }

    /// The envelope and the raw message, or why the payload is not one.
    pub fn decode(payload: &[u8]) -> Result<(InboundEnvelope, &[u8]), String> {
        let newline = payload.iter().position(|&b| b == b'\n').ok_or("no envelope line")?;
        let envelope: InboundEnvelope =
            serde_json::from_slice(&payload[..newline]).map_err(|e| format!("undecodable envelope: {e}"))?;
        if envelope.v != crate::SCHEMA_VERSION {
            return Err(format!("unsupported schema version {}", envelope.v));
        }
        Ok((envelope, &payload[newline + 1..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_survive_the_round_trip() {
        let e = InboundEnvelope { v: 1, inbound_id: Uuid::nil(), tenant: "t".into(), received_at: Utc::now() };
        let raw = b"From: x\r\n\r\nbody\n\xff\x00";
        let encoded = e.encode(raw);
        let (back, body) = InboundEnvelope::decode(&encoded).unwrap();
        assert_eq!((back, body), (e, &raw[..]));
        assert!(InboundEnvelope::decode(b"garbage").is_err());
    }
}

/// How many independent signals stand behind a classified bounce's verdict, read from its
/// reason (`userunknown [status+reply_code+wording]: 550 ...`, as the inbound classifier writes
/// it; the signals are `format`, `status`, `reply_code` and `wording`). `None` for a reason
/// written any other way, such as a sending node's own diagnostic.
pub fn verdict_signals(reason: &str) -> Option<usize> {
    let (head, _) = reason.split_once("]").filter(|(h, _)| !h.contains(':'))?;
    let (word, list) = head.split_once(" [")?;
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let known = ["format", "status", "reply_code", "wording"];
    let signals: Vec<&str> = list.split('+').filter(|s| !s.is_empty()).collect();
    signals.iter().all(|s| known.contains(s)).then_some(signals.len())
}

#[cfg(test)]
mod verdict_tests {
    use super::verdict_signals;

    #[test]
    fn signals_are_read_from_classified_reasons_only() {
        assert_eq!(verdict_signals("userunknown [status+reply_code+wording]: 550 5.1.1 no such user"), Some(3));
        assert_eq!(verdict_signals("userunknown [wording]: mailbox gone"), Some(1));
        assert_eq!(verdict_signals("onhold []: nothing said"), Some(0));
        assert_eq!(verdict_signals("550 5.1.1 [no such user]"), None);
        assert_eq!(verdict_signals("user unknown [status]"), None);
        assert_eq!(verdict_signals("userunknown [guess]: x"), None);
    }
}
