//! The processing steps. Each is synchronous and pure: an event in, an outcome out.

use mailpipe_schemas::{Envelope, Event, EventType, SCHEMA_VERSION};

#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Pass the (possibly changed) event to the next step.
    Next(Event),
    /// Drop it on purpose (filtered, not an error).
    Drop(&'static str),
    /// It can never be processed: park it in the dead-letter lane with the reason.
    DeadLetter(String),
}

pub trait Processor: Send + Sync {
    fn name(&self) -> &'static str;
    fn process(&self, event: Event) -> Outcome;
}

/// Decodes a bus payload; the error is the dead-letter reason.
pub fn decode(payload: &[u8]) -> Result<Event, String> {
    let envelope: Envelope = serde_json::from_slice(payload).map_err(|e| format!("undecodable: {e}"))?;
    if envelope.v != SCHEMA_VERSION {
        return Err(format!("unsupported schema version {}", envelope.v));
    }
    Ok(envelope.event)
}

/// Checks what every stored event needs, whoever published it.
pub struct Validate;

impl Processor for Validate {
    fn name(&self) -> &'static str {
        "validate"
    }

    fn process(&self, event: Event) -> Outcome {
        let missing = [("tenant", &event.tenant), ("campaign", &event.campaign), ("message_id", &event.message_id), ("recipient", &event.recipient)]
            .into_iter()
            .find(|(_, v)| v.is_empty());
        if let Some((field, _)) = missing {
            return Outcome::DeadLetter(format!("missing {field}"));
        }
        match event.event_type {
            EventType::Click if event.link.as_deref().is_none_or(str::is_empty) => Outcome::DeadLetter("click without link".into()),
            EventType::Bounced if event.bounce_class.is_none() => Outcome::DeadLetter("bounce without bounce_class".into()),
            EventType::Conversion if event.revenue_micros.is_none_or(|r| r < 0) => {
                Outcome::DeadLetter("conversion without a revenue of 0 or more".into())
            }
            _ => Outcome::Next(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        serde_json::from_value(serde_json::json!({
            "event_id": "0190c7a0-0000-7000-8000-000000000001", "tenant": "t", "type": "click",
            "occurred_at": "2026-11-21T10:00:00Z", "received_at": "2026-11-21T10:00:00Z",
            "campaign": "c", "message_id": "m", "recipient": "a@b.com", "link": "https://x.test/"
        }))
        .unwrap()
    }

    #[test]
    fn decode_refuses_garbage_and_unknown_versions() {
        assert!(decode(b"nope").unwrap_err().starts_with("undecodable"));
        let mut env = serde_json::to_value(Envelope::new(event())).unwrap();
        env["v"] = 99.into();
        assert_eq!(decode(env.to_string().as_bytes()).unwrap_err(), "unsupported schema version 99");
        let ok = serde_json::to_vec(&Envelope::new(event())).unwrap();
        assert_eq!(decode(&ok).unwrap(), event());
    }

    #[test]
    fn validate_dead_letters_incomplete_events() {
        assert_eq!(Validate.process(event()), Outcome::Next(event()));
        let mut e = event();
        e.link = None;
        assert_eq!(Validate.process(e), Outcome::DeadLetter("click without link".into()));
        let mut e = event();
        e.tenant.clear();
        assert_eq!(Validate.process(e), Outcome::DeadLetter("missing tenant".into()));
    }
}
