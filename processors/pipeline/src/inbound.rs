//! The inbound classifier: raw mail from the `inbound` topic -> bounce, complaint, reply and
//! auto-reply events joined to the send they answer, published to the events topic (and from
//! there stored like any event). Offsets are committed only after the events are durable.

use crate::runner::RunnerError;
use chrono::Utc;
use mailpipe_bus::{commit, commit_points, retry, EventBus, Message, Record, DEAD_LETTER_TOPIC, EVENTS_TOPIC, INBOUND_TOPIC};
use mailpipe_inbound::{classify, Classification, Kind, Reason};
use mailpipe_schemas::{BounceClass, Event, EventType, InboundEnvelope};
use mailpipe_store::{EventStore, SentMessage};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub use mailpipe_store::UNMATCHED_CAMPAIGN;

/// The events a classified message stands for. `join` finds the send of a message id.
pub fn inbound_events(
    envelope: &InboundEnvelope,
    c: &Classification,
    join: &dyn Fn(&str) -> Option<SentMessage>,
) -> Vec<Event> {
    let candidates: Vec<&str> = c.original_message_id.iter().map(String::as_str).chain(c.thread.candidate_message_ids.iter().map(String::as_str)).collect();
    let joined = candidates.iter().find_map(|id| join(id).map(|send| (id.to_string(), send)));
    let (message_id, send) = match joined {
        Some((id, send)) => (id, send),
        None => (
            candidates.first().map_or_else(|| format!("<{}@inbound>", envelope.inbound_id), |id| id.to_string()),
            SentMessage { campaign: UNMATCHED_CAMPAIGN.into(), variant: String::new(), stream: None },
        ),
    };
    let event = |index: usize, event_type: EventType, recipient: &str| Event {
        campaign: send.campaign.clone(),
        variant: send.variant.clone(),
        message_id: message_id.clone(),
        recipient: recipient.to_string(),
        ..Event::new(event_id(envelope, index), &envelope.tenant, event_type, envelope.received_at)
    };
    let sender = c.thread.from_address.as_deref().unwrap_or("");
    match c.kind {
        Kind::Bounce => c
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.reason != Reason::Delivered && !r.address.is_empty())
            // A delay notice is a deferral: it counts toward no bounce rate or soft-bounce limit.
            .map(|(i, r)| Event {
                bounce_class: r.permanent.then_some(if r.hard_bounce { BounceClass::Hard } else { BounceClass::Soft }),
                status: (!r.status.is_empty()).then(|| r.status.clone()),
                reason: Some(bounce_reason(r)),
                ..event(i, if r.permanent { EventType::Bounced } else { EventType::Deferred }, &r.address)
            })
            .collect(),
        Kind::Complaint => {
            let feedback_type = c.feedback.as_ref().map_or("abuse", |f| f.feedback_type.as_str());
            let mut recipients: Vec<&str> = c.recipients.iter().map(|r| r.address.as_str()).collect();
            if let Some(f) = &c.feedback {
                recipients.extend(f.original_rcpt_to.iter().map(String::as_str));
            }
            recipients.dedup();
            recipients
                .into_iter()
                .filter(|r| !r.is_empty())
                .enumerate()
                .map(|(i, r)| Event { reason: Some(format!("feedback:{feedback_type}")), ..event(i, EventType::Complaint, r) })
                .collect()
        }
        Kind::AutoReply if !sender.is_empty() => {
            vec![Event { reason: Some("vacation".into()), ..event(0, EventType::AutoReply, sender) }]
        }
        Kind::Reply if !sender.is_empty() => vec![event(0, EventType::Reply, sender)],
        _ => Vec::new(),
    }
}

/// A bounce's reason: the classified reason, the signals that agree with the verdict in
/// brackets, then the MTA's own diagnostic (what the suppression list shows as provenance),
/// within the 1,000 bytes of an event field: `userunknown [status+reply_code+wording]: 550 ...`.
/// `mailpipe_schemas::verdict_signals` reads the brackets back.
fn bounce_reason(r: &mailpipe_inbound::Recipient) -> String {
    let signals: Vec<&str> = r.signals.iter().map(|s| s.as_str()).collect();
    let mut reason = format!("{} [{}]", r.reason.as_str(), signals.join("+"));
    let diagnostic = r.diagnostic.trim();
    if !diagnostic.is_empty() {
        reason.push_str(": ");
        for c in diagnostic.chars().filter(|c| !c.is_control()) {
            if reason.len() + c.len_utf8() > 1000 {
                break;
            }
            reason.push(c);
        }
    }
    reason
}

/// Ids derived from the inbound message, so a redelivered message yields the same events.
fn event_id(envelope: &InboundEnvelope, index: usize) -> uuid::Uuid {
    mailpipe_schemas::derived_id(&[envelope.inbound_id.as_bytes(), &index.to_le_bytes()])
}

pub struct InboundRunner {
    pub bus: Arc<dyn EventBus>,
    pub store: Arc<dyn EventStore>,
    pub group: String,
}

impl InboundRunner {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), RunnerError> {
        let mut sub = self.bus.subscribe(INBOUND_TOPIC, &self.group).await?;
        loop {
            let stopping = *shutdown.borrow();
            let wait = if stopping { Duration::ZERO } else { Duration::from_millis(100) };
            let records = tokio::select! {
                r = sub.poll(256, wait) => r?,
                _ = shutdown.changed(), if !stopping => continue,
            };
            if !records.is_empty() {
                let next = commit_points(&records);
                let (events, dead) = self.handle(&records).await?;
                if !dead.is_empty() {
                    retry("publishing dead letters", || self.bus.publish(DEAD_LETTER_TOPIC, dead.clone())).await?;
                }
                let messages: Vec<Message> = events.iter().map(event_message).collect();
                retry("publishing classified events", || self.bus.publish(EVENTS_TOPIC, messages.clone())).await?;
                commit(sub.as_mut(), &next).await?;
                metrics::counter!("mailpipe_processor_inbound_classified_total").increment(records.len() as u64);
            } else if stopping {
                return Ok(());
            }
        }
    }

    /// Classifies and joins each message. A store that cannot answer the join is waited for
    /// (with backoff, nothing acknowledged meanwhile): the events' ids are derived from the
    /// message, so a join given up once would file them under `(unmatched)` for good.
    async fn handle(&self, records: &[Record]) -> Result<(Vec<Event>, Vec<Message>), RunnerError> {
        let mut events = Vec::new();
        let mut dead = Vec::new();
        for record in records {
            let parsed = InboundEnvelope::decode(&record.payload)
                .and_then(|(env, raw)| classify(raw).map(|c| (env, c)).map_err(|e| e.to_string()));
            let (envelope, classification) = match parsed {
                Ok(ok) => ok,
                Err(reason) => {
                    let body = serde_json::json!({ "reason": format!("inbound: {reason}"), "topic": INBOUND_TOPIC, "partition": record.position.partition, "offset": record.position.offset, "at": Utc::now().to_rfc3339() });
                    dead.push(Message { key: record.key.clone(), payload: body.to_string().into_bytes() });
                    continue;
                }
            };
            let mut sends = Vec::new();
            let ids = classification.original_message_id.iter().chain(classification.thread.candidate_message_ids.iter());
            for id in ids {
                if let Some(send) = retry("joining inbound mail to its send", || self.store.message(&envelope.tenant, id)).await? {
                    sends.push((id.clone(), send));
                }
            }
            let join = |id: &str| sends.iter().find(|(known, _)| known == id).map(|(_, s)| s.clone());
            events.extend(inbound_events(&envelope, &classification, &join));
        }
        Ok((events, dead))
    }
}

fn event_message(e: &Event) -> Message {
    Message { key: e.bus_key(), payload: mailpipe_schemas::Envelope::encode(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(raw: &str) -> Vec<Event> {
        let envelope = InboundEnvelope { v: 1, inbound_id: uuid::Uuid::nil(), tenant: "acme".into(), received_at: Utc::now() };
        inbound_events(&envelope, &classify(raw.as_bytes()).expect("classifies"), &|_| None)
    }

    #[test]
    fn a_delay_notice_is_a_deferral_and_a_failure_a_bounce() {
        let head = "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\nTo: sender@example.com\n";
        let delay = events_of(&format!("{head}Subject: Warning: message delayed 2 days\n\nThe message has not yet been delivered to the following addresses:\n\n  <a@example.org>\n\nDelivery attempts will continue for some time.\n"));
        assert_eq!(delay.len(), 1);
        assert_eq!((delay[0].event_type, delay[0].bounce_class, delay[0].recipient.as_str()), (EventType::Deferred, None, "a@example.org"));
        let failed = events_of(&format!("{head}Subject: Undelivered Mail Returned to Sender\n\nThis message could not be delivered to the following recipients:\n\n<a@example.org>: 550 5.1.1 user unknown\n"));
        assert_eq!((failed[0].event_type, failed[0].bounce_class), (EventType::Bounced, Some(BounceClass::Hard)));
        // The status, the reply code and the wording all say the address is bad.
        let reason = failed[0].reason.as_deref().unwrap();
        assert!(reason.starts_with("userunknown [status+reply_code+wording]: "), "{reason}");
        assert_eq!(mailpipe_schemas::verdict_signals(reason), Some(3));
    }
}
