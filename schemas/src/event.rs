//! Rust types of an event and its bus envelope.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the event envelope on the bus. A consumer rejects (dead-letters) versions it
/// does not know instead of guessing.
pub const SCHEMA_VERSION: u16 = 1;

/// Campaign of inbound mail (bounce, complaint, reply) whose send was not known when it was
/// classified; reserved: a sending node cannot report events in it.
pub const UNMATCHED_CAMPAIGN: &str = "(unmatched)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Sent,
    Delivered,
    Deferred,
    Bounced,
    Open,
    Click,
    Unsubscribe,
    Complaint,
    Reply,
    AutoReply,
    Conversion,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::Sent,
        EventType::Delivered,
        EventType::Deferred,
        EventType::Bounced,
        EventType::Open,
        EventType::Click,
        EventType::Unsubscribe,
        EventType::Complaint,
        EventType::Reply,
        EventType::AutoReply,
        EventType::Conversion,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Sent => "sent",
            EventType::Delivered => "delivered",
            EventType::Deferred => "deferred",
            EventType::Bounced => "bounced",
            EventType::Open => "open",
            EventType::Click => "click",
            EventType::Unsubscribe => "unsubscribe",
            EventType::Complaint => "complaint",
            EventType::Reply => "reply",
            EventType::AutoReply => "auto_reply",
            EventType::Conversion => "conversion",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The types a sending node may report over `POST /v1/events`; the others come from
    /// tracking hits and inbound mail.
    pub fn reported_by_senders(self) -> bool {
        matches!(
            self,
            EventType::Sent
                | EventType::Delivered
                | EventType::Deferred
                | EventType::Bounced
                | EventType::Conversion
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceClass {
    /// The address itself is bad: suppress it for good.
    Hard,
    /// Anything else: mailbox full, throttling, policy, a transient failure.
    Soft,
}

impl BounceClass {
    pub fn as_str(self) -> &'static str {
        match self {
            BounceClass::Hard => "hard",
            BounceClass::Soft => "soft",
        }
    }
}

/// Mailbox provider of a recipient, from the domain of the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Gmail,
    Yahoo,
    Outlook,
    Apple,
    Other,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Gmail => "gmail",
            Provider::Yahoo => "yahoo",
            Provider::Outlook => "outlook",
            Provider::Apple => "apple",
            Provider::Other => "other",
        }
    }

    /// Provider by the recipient's domain. Corporate domains hosted by Google or Microsoft
    /// need an MX lookup to tell, which is enrichment's job, not this table's.
    pub fn from_recipient(recipient: &str) -> Provider {
        let domain = recipient.rsplit('@').next().unwrap_or("").to_ascii_lowercase();
        match domain.as_str() {
            "gmail.com" | "googlemail.com" => Provider::Gmail,
            "yahoo.com" | "yahoo.co.uk" | "yahoo.fr" | "yahoo.de" | "ymail.com" | "aol.com"
            | "rocketmail.com" => Provider::Yahoo,
            "outlook.com" | "hotmail.com" | "hotmail.co.uk" | "live.com" | "msn.com"
            | "outlook.fr" | "hotmail.fr" => Provider::Outlook,
            "icloud.com" | "me.com" | "mac.com" => Provider::Apple,
            _ => Provider::Other,
        }
    }
}

/// One event, as it travels on the bus and is stored. Optional fields are set only by the
/// event types they belong to (`link` by clicks, `bounce_class` by bounces, `revenue_micros`
/// by conversions, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Stable identity: a redelivered or resubmitted event keeps its id and is stored once.
    pub event_id: Uuid,
    pub tenant: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When it happened: stated by the sending node, or the time of the tracking hit.
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub occurred_at: DateTime<Utc>,
    /// When the edge accepted it; the base of end-to-end lag.
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub received_at: DateTime<Utc>,
    pub campaign: String,
    #[serde(default)]
    pub variant: String,
    pub message_id: String,
    pub recipient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_class: Option<BounceClass>,
    /// Enhanced status code (RFC 3463) of a bounce or deferral, e.g. `5.1.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Diagnostic text or classified reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Conversion revenue in millionths of the currency unit, so sums stay exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revenue_micros: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The mail stream (`marketing`, `transactional`, ...) of a send, and of an unsubscribe
    /// from a message sent on one: the unsubscribe suppresses that stream only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

impl Event {
    /// An event of `event_type` for `tenant` that happened and arrived at `at`, with every
    /// other field empty: fill in the rest with struct update syntax.
    pub fn new(event_id: Uuid, tenant: &str, event_type: EventType, at: DateTime<Utc>) -> Event {
        Event {
            event_id,
            tenant: tenant.to_string(),
            event_type,
            occurred_at: at,
            received_at: at,
            campaign: String::new(),
            variant: String::new(),
            message_id: String::new(),
            recipient: String::new(),
            link: None,
            bounce_class: None,
            status: None,
            reason: None,
            revenue_micros: None,
            currency: None,
            user_agent: None,
            ip: None,
            stream: None,
        }
    }

    /// The bus key: tenant and recipient, so one recipient's events stay in order.
    pub fn bus_key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.tenant.len() + 1 + self.recipient.len());
        key.extend_from_slice(self.tenant.as_bytes());
        key.push(0);
        key.extend_from_slice(self.recipient.as_bytes());
        key
    }

    pub fn provider(&self) -> Provider {
        Provider::from_recipient(&self.recipient)
    }
}

/// A stable id from the parts that identify something (each part is length-prefixed, so
/// no two different lists of parts collide by concatenation): resubmitting the same thing gives
/// the same id, and the store keeps it once.
pub fn derived_id(parts: &[&[u8]]) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// What is written on the bus: the schema version and the event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub v: u16,
    pub event: Event,
}

impl Envelope {
    pub fn new(event: Event) -> Self {
        Envelope { v: SCHEMA_VERSION, event }
    }

    /// The bus payload of `event` (an `Envelope` in JSON), without copying the event.
    pub fn encode(event: &Event) -> Vec<u8> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            v: u16,
            event: &'a Event,
        }
        serde_json::to_vec(&Borrowed { v: SCHEMA_VERSION, event }).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip_through_their_names() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        assert_eq!(EventType::parse("opened"), None);
    }

    #[test]
    fn the_borrowed_encoding_is_an_envelope() {
        let e: Event = serde_json::from_value(serde_json::json!({
            "event_id": "0190c7a0-0000-7000-8000-000000000001", "tenant": "t", "type": "open",
            "occurred_at": "2026-11-21T10:00:00Z", "received_at": "2026-11-21T10:00:00Z",
            "campaign": "c", "message_id": "m", "recipient": "a@b.com"
        }))
        .unwrap();
        let back: Envelope = serde_json::from_slice(&Envelope::encode(&e)).unwrap();
        assert_eq!(back, Envelope::new(e.clone()));
        assert_eq!(e.bus_key(), b"t\0a@b.com");
    }

    #[test]
    fn derived_ids_are_stable_and_do_not_collide_by_concatenation() {
        assert_eq!(derived_id(&[b"a", b"bc"]), derived_id(&[b"a", b"bc"]));
        assert_ne!(derived_id(&[b"a", b"bc"]), derived_id(&[b"ab", b"c"]));
    }

    #[test]
    fn providers_come_from_the_recipient_domain() {
        assert_eq!(Provider::from_recipient("a@GMail.com"), Provider::Gmail);
        assert_eq!(Provider::from_recipient("a@hotmail.com"), Provider::Outlook);
        assert_eq!(Provider::from_recipient("a@icloud.com"), Provider::Apple);
        assert_eq!(Provider::from_recipient("a@acme.io"), Provider::Other);
        assert_eq!(Provider::from_recipient("no-at-sign"), Provider::Other);
    }
}
