//! One address of one tenant: the suppressions in force, the soft bounces being counted, and
//! the history of changes with their provenance. A record on the suppressions topic is the
//! whole entry, so the latest record of an address is all a reader needs (the topic can be
//! compacted). The steps here are pure: an entry and an event (or request, or the clock) in,
//! the changed entry out, or `None` when nothing changes; a redelivered event changes nothing
//! because every change has an id derived from what caused it.

use chrono::{DateTime, Duration, Utc};
use mailpipe_config::SoftBouncePolicy;
use mailpipe_schemas::{derived_id, BounceClass, Event, EventType};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the record and request formats on the bus.
pub const RECORD_VERSION: u16 = 1;
/// Changes kept in an entry's history (the oldest go first).
pub const HISTORY_MAX: usize = 100;
/// How long a doubtful hard bounce suppresses (see [`confident_hard_bounce`]).
pub const DOUBTFUL_HARD_BOUNCE_DAYS: i64 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    HardBounce,
    Complaint,
    Unsubscribe,
    SoftBounceLimit,
    Manual,
}

impl Reason {
    pub const ALL: [Reason; 5] = [Reason::HardBounce, Reason::Complaint, Reason::Unsubscribe, Reason::SoftBounceLimit, Reason::Manual];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HardBounce => "hard_bounce",
            Reason::Complaint => "complaint",
            Reason::Unsubscribe => "unsubscribe",
            Reason::SoftBounceLimit => "soft_bounce_limit",
            Reason::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// 1..=5, for the index (0 is "nothing in force").
    pub fn code(self) -> u8 {
        Reason::ALL.iter().position(|r| *r == self).map_or(0, |i| i as u8 + 1)
    }

    pub fn from_code(code: u8) -> Option<Reason> {
        Reason::ALL.get((code as usize).checked_sub(1)?).copied()
    }

    /// Which reason an answer names when several apply: the one that matters most to a
    /// sender's reputation.
    pub fn rank(self) -> u8 {
        match self {
            Reason::Complaint => 0,
            Reason::HardBounce => 1,
            Reason::Unsubscribe => 2,
            Reason::Manual => 3,
            Reason::SoftBounceLimit => 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Suppressed,
    Released,
    Expired,
}

/// What caused a change, and by whom.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Provenance {
    /// `event` (a bounce, complaint or unsubscribe), `api`, `import` or `policy` (an expiry).
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Enhanced status code of the bounce (5.1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The bounce's diagnostic or classified reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostic: Option<String>,
    /// Feedback type of a complaint (abuse, fraud, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_type: Option<String>,
    /// The API key that asked (its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One change of an entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Change {
    pub id: Uuid,
    pub action: Action,
    /// The reason suppressed, released or expired.
    pub reason: Reason,
    /// The stream it is for; absent: every stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    pub at: DateTime<Utc>,
    /// When a temporary suppression ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// A hard bounce the classifier was not sure of: suppressed for a while, not for good.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub doubtful: bool,
    pub provenance: Provenance,
}

/// A soft bounce being counted towards the policy's limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoftBounce {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

/// The whole state of one address of one tenant: one record on the suppressions topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub v: u16,
    pub tenant: String,
    /// Normalised ([`crate::Address`]).
    pub address: String,
    /// The suppressions in force (their `Suppressed` changes).
    #[serde(default)]
    pub active: Vec<Change>,
    #[serde(default)]
    pub soft_bounces: Vec<SoftBounce>,
    /// Oldest first, at most [`HISTORY_MAX`].
    #[serde(default)]
    pub history: Vec<Change>,
    /// The change this record made; absent when it only counted a soft bounce or a delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made: Option<Change>,
}

/// A manual change, from the API or an import, on the requests topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub v: u16,
    pub id: Uuid,
    pub tenant: String,
    /// Normalised.
    pub address: String,
    pub at: DateTime<Utc>,
    /// The key id that asked.
    pub by: String,
    /// `api` or `import`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    Suppress {
        reason: Reason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<DateTime<Utc>>,
    },
    Release,
}

/// Whether a hard bounce's status says the address itself is bad (RFC 3463: 5.1.x is a bad
/// destination mailbox address, 5.2.1 a disabled mailbox). A hard bounce for any other cause
/// (policy, content, a full mailbox taken for hard) is doubtful. A bounce reported by a
/// sending node without a status is its own verdict, and trusted. A bounce mailpipe classified
/// itself also needs two independent signals behind the verdict (its reason says which).
pub fn confident_hard_bounce(status: Option<&str>, reason: Option<&str>) -> bool {
    let status_ok = match status {
        None => true,
        Some(s) => s.starts_with("5.1.") || s == "5.2.1",
    };
    status_ok && reason.and_then(mailpipe_schemas::verdict_signals).is_none_or(|n| n >= 2)
}

impl Entry {
    pub fn new(tenant: &str, address: &str) -> Entry {
        Entry { v: RECORD_VERSION, tenant: tenant.into(), address: address.into(), active: Vec::new(), soft_bounces: Vec::new(), history: Vec::new(), made: None }
    }

    /// Whether this change was already made (a redelivered event or request).
    fn has(&self, id: Uuid) -> bool {
        self.history.iter().any(|c| c.id == id) || self.soft_bounces.iter().any(|b| b.id == id)
    }

    fn record(mut self, change: Change) -> Entry {
        self.history.push(change.clone());
        if self.history.len() > HISTORY_MAX {
            let over = self.history.len() - HISTORY_MAX;
            self.history.drain(..over);
        }
        self.made = Some(change);
        self
    }

    /// Puts `change` (a suppression) in force, unless one for the same reason and stream
    /// already is, for at least as long.
    fn suppress(mut self, change: Change) -> Option<Entry> {
        let same = |c: &Change| c.reason == change.reason && c.stream == change.stream;
        if let Some(existing) = self.active.iter().find(|c| same(c)) {
            let lasts_longer = match (existing.expires_at, change.expires_at) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(a), Some(b)) => b > a,
            };
            if !lasts_longer {
                return None;
            }
        }
        self.active.retain(|c| !same(c));
        self.active.push(change.clone());
        Some(self.record(change))
    }

    /// The entry after `event`, or `None` when it changes nothing.
    pub fn on_event(self, event: &Event, policy: SoftBouncePolicy) -> Option<Entry> {
        let id = derived_id(&[b"suppression", event.event_id.as_bytes()]);
        if self.has(id) {
            return None;
        }
        let at = event.occurred_at;
        let provenance = Provenance {
            source: "event".into(),
            event_id: Some(event.event_id),
            event_type: Some(event.event_type.as_str().into()),
            campaign: Some(event.campaign.clone()).filter(|c| !c.is_empty()),
            message_id: Some(event.message_id.clone()).filter(|m| !m.is_empty()),
            ..Provenance::default()
        };
        let change = |reason, stream, expires_at, doubtful, provenance| Change { id, action: Action::Suppressed, reason, stream, at, expires_at, doubtful, provenance };
        match (event.event_type, event.bounce_class) {
            (EventType::Bounced, Some(BounceClass::Hard)) => {
                let confident = confident_hard_bounce(event.status.as_deref(), event.reason.as_deref());
                let expires = (!confident).then(|| at + Duration::days(DOUBTFUL_HARD_BOUNCE_DAYS));
                let provenance = Provenance { status: event.status.clone(), diagnostic: event.reason.clone(), ..provenance };
                self.suppress(change(Reason::HardBounce, None, expires, !confident, provenance))
            }
            (EventType::Bounced, Some(BounceClass::Soft)) => {
                let mut entry = self;
                let window_start = at - Duration::days(policy.window_days as i64);
                entry.soft_bounces.retain(|b| b.at > window_start);
                entry.soft_bounces.push(SoftBounce { at, id });
                entry.made = None;
                if entry.soft_bounces.len() < policy.limit as usize {
                    return Some(entry);
                }
                entry.soft_bounces.clear();
                let expires = Some(at + Duration::days(policy.suppress_days as i64));
                let provenance = Provenance {
                    status: event.status.clone(),
                    diagnostic: Some(format!("{} soft bounces within {} days{}", policy.limit, policy.window_days, event.reason.as_deref().map(|r| format!("; the last: {r}")).unwrap_or_default())),
                    ..provenance
                };
                let cleared = entry.clone();
                Some(entry.suppress(change(Reason::SoftBounceLimit, None, expires, false, provenance)).unwrap_or(cleared))
            }
            (EventType::Delivered, _) if !self.soft_bounces.is_empty() => {
                let mut entry = self;
                entry.soft_bounces.clear();
                entry.made = None;
                Some(entry)
            }
            (EventType::Complaint, _) => {
                let feedback_type = event.reason.as_deref().map(|r| r.strip_prefix("feedback:").unwrap_or(r).to_string());
                self.suppress(change(Reason::Complaint, None, None, false, Provenance { feedback_type, ..provenance }))
            }
            (EventType::Unsubscribe, _) => self.suppress(change(Reason::Unsubscribe, event.stream.clone(), None, false, provenance)),
            _ => None,
        }
    }

    /// The entry after a manual change.
    pub fn on_request(self, request: &Request) -> Option<Entry> {
        let id = derived_id(&[b"suppression-request", request.id.as_bytes()]);
        if self.has(id) {
            return None;
        }
        let provenance = Provenance { source: request.source.clone(), by: Some(request.by.clone()), note: request.note.clone(), ..Provenance::default() };
        match &request.op {
            Op::Suppress { reason, stream, expires_at } => self.suppress(Change {
                id,
                action: Action::Suppressed,
                reason: *reason,
                stream: stream.clone(),
                at: request.at,
                expires_at: *expires_at,
                doubtful: false,
                provenance,
            }),
            Op::Release => {
                let first = self.strongest()?.clone();
                let mut entry = self;
                entry.active.clear();
                entry.soft_bounces.clear();
                let change = Change { id, action: Action::Released, reason: first.reason, stream: None, at: request.at, expires_at: None, doubtful: false, provenance };
                Some(entry.record(change))
            }
        }
    }

    /// The entry after the first of its suppressions that ended by `now` has expired; call it
    /// again for the next.
    pub fn expire(self, now: DateTime<Utc>) -> Option<Entry> {
        let i = self.active.iter().position(|c| c.expires_at.is_some_and(|e| e <= now))?;
        let mut entry = self;
        let ended = entry.active.remove(i);
        let expires_at = ended.expires_at.unwrap_or(now);
        let id = derived_id(&[b"suppression-expiry", ended.id.as_bytes()]);
        let change = Change {
            id,
            action: Action::Expired,
            reason: ended.reason,
            stream: ended.stream,
            at: expires_at,
            expires_at: None,
            doubtful: false,
            provenance: Provenance { source: "policy".into(), ..Provenance::default() },
        };
        Some(entry.record(change))
    }

    /// The suppression in force that an answer names first.
    pub fn strongest(&self) -> Option<&Change> {
        self.active.iter().min_by_key(|c| (c.reason.rank(), c.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: SoftBouncePolicy = SoftBouncePolicy { limit: 3, window_days: 14, suppress_days: 7 };

    fn at(day: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000 + day * 86_400, 0).unwrap()
    }

    fn event(n: u128, t: EventType, day: i64) -> Event {
        Event { campaign: "spring".into(), message_id: format!("<{n}@x>"), recipient: "ana@x.com".into(), ..Event::new(Uuid::from_u128(n), "t", t, at(day)) }
    }

    fn bounce(n: u128, class: BounceClass, status: Option<&str>, day: i64) -> Event {
        Event { bounce_class: Some(class), status: status.map(str::to_string), reason: Some("550 no such user".into()), ..event(n, EventType::Bounced, day) }
    }

    #[test]
    fn a_hard_bounce_suppresses_for_good_once_and_a_redelivery_changes_nothing() {
        let e = Entry::new("t", "ana@x.com").on_event(&bounce(1, BounceClass::Hard, Some("5.1.1"), 0), POLICY).unwrap();
        let c = e.made.clone().unwrap();
        assert_eq!((c.reason, c.expires_at, c.doubtful, c.provenance.status.as_deref()), (Reason::HardBounce, None, false, Some("5.1.1")));
        assert_eq!(c.provenance.campaign.as_deref(), Some("spring"));
        assert!(e.clone().on_event(&bounce(1, BounceClass::Hard, Some("5.1.1"), 0), POLICY).is_none(), "redelivered");
        assert!(e.clone().on_event(&bounce(2, BounceClass::Hard, Some("5.1.1"), 1), POLICY).is_none(), "already suppressed for good");
        assert_eq!(e.history.len(), 1);
    }

    #[test]
    fn a_doubtful_hard_bounce_suppresses_for_a_while_and_a_confident_one_then_for_good() {
        let e = Entry::new("t", "a").on_event(&bounce(1, BounceClass::Hard, Some("5.7.1"), 0), POLICY).unwrap();
        let c = e.made.clone().unwrap();
        assert!(c.doubtful);
        assert_eq!(c.expires_at, Some(at(DOUBTFUL_HARD_BOUNCE_DAYS)));
        let e = e.on_event(&bounce(2, BounceClass::Hard, Some("5.1.1"), 1), POLICY).unwrap();
        assert_eq!(e.active.len(), 1);
        assert_eq!(e.active[0].expires_at, None);
    }

    #[test]
    fn a_classified_hard_bounce_with_one_signal_is_doubtful() {
        let classified = |n, reason: &str| Event { reason: Some(reason.into()), ..bounce(n, BounceClass::Hard, Some("5.1.1"), 0) };
        let one = Entry::new("t", "a").on_event(&classified(1, "userunknown [wording]: mailbox gone"), POLICY).unwrap();
        assert!(one.made.unwrap().doubtful, "one signal");
        let two = Entry::new("t", "a").on_event(&classified(2, "userunknown [status+wording]: 550 5.1.1 mailbox gone"), POLICY).unwrap();
        assert!(!two.made.unwrap().doubtful, "two signals");
    }

    #[test]
    fn soft_bounces_suppress_at_the_limit_within_the_window_and_a_delivery_resets_them() {
        let mut e = Entry::new("t", "a");
        for (n, day) in [(1, 0), (2, 1)] {
            e = e.on_event(&bounce(n, BounceClass::Soft, Some("4.2.2"), day), POLICY).unwrap();
            assert!(e.made.is_none() && e.active.is_empty());
        }
        assert!(e.clone().on_event(&bounce(2, BounceClass::Soft, Some("4.2.2"), 1), POLICY).is_none(), "a redelivered soft bounce counts once");
        let reset = e.clone().on_event(&event(3, EventType::Delivered, 2), POLICY).unwrap();
        assert!(reset.soft_bounces.is_empty());
        let not_yet = reset.on_event(&bounce(4, BounceClass::Soft, None, 3), POLICY).unwrap();
        assert!(not_yet.active.is_empty());
        // The first two fall out of the window by day 20: two in it is under the limit.
        let late = e.clone().on_event(&bounce(5, BounceClass::Soft, None, 20), POLICY).unwrap();
        assert!(late.active.is_empty());
        let hit = e.on_event(&bounce(6, BounceClass::Soft, None, 5), POLICY).unwrap();
        let c = hit.made.clone().unwrap();
        assert_eq!((c.reason, c.expires_at), (Reason::SoftBounceLimit, Some(at(12))));
        assert!(hit.soft_bounces.is_empty());
        let gone = hit.expire(at(12)).unwrap();
        assert!(gone.active.is_empty());
        assert_eq!(gone.made.unwrap().action, Action::Expired);
    }

    #[test]
    fn complaints_unsubscribes_requests_and_releases() {
        let complaint = Event { reason: Some("feedback:abuse".into()), ..event(1, EventType::Complaint, 0) };
        let e = Entry::new("t", "a").on_event(&complaint, POLICY).unwrap();
        assert_eq!(e.made.as_ref().unwrap().provenance.feedback_type.as_deref(), Some("abuse"));
        let unsub = Event { stream: Some("marketing".into()), ..event(2, EventType::Unsubscribe, 1) };
        let e = e.on_event(&unsub, POLICY).unwrap();
        assert_eq!(e.active.len(), 2);
        assert_eq!(e.strongest().unwrap().reason, Reason::Complaint);
        let release = Request { v: 1, id: Uuid::from_u128(9), tenant: "t".into(), address: "a".into(), at: at(2), by: "k1".into(), source: "api".into(), note: Some("asked by phone".into()), op: Op::Release };
        let e = e.on_request(&release).unwrap();
        assert!(e.active.is_empty());
        let made = e.made.clone().unwrap();
        assert_eq!((made.action, made.provenance.by.as_deref(), made.provenance.note.as_deref()), (Action::Released, Some("k1"), Some("asked by phone")));
        assert!(e.clone().on_request(&release).is_none(), "a request is applied once");
        let again = e.on_event(&Event { reason: Some("feedback:abuse".into()), ..event(3, EventType::Complaint, 3) }, POLICY).unwrap();
        assert_eq!(again.active.len(), 1, "a new complaint suppresses again");
        assert!(Entry::new("t", "b").on_request(&release).is_none(), "nothing to release");
    }

    #[test]
    fn history_is_capped_and_reasons_round_trip() {
        let mut e = Entry::new("t", "a");
        for n in 0..(HISTORY_MAX as u128 + 20) {
            let req = |op| Request { v: 1, id: Uuid::from_u128(n), tenant: "t".into(), address: "a".into(), at: at(n as i64), by: "k".into(), source: "api".into(), note: None, op };
            e = e.on_request(&req(if n % 2 == 0 { Op::Suppress { reason: Reason::Manual, stream: None, expires_at: None } } else { Op::Release })).unwrap();
        }
        assert_eq!(e.history.len(), HISTORY_MAX);
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert_eq!(Reason::from_code(0), None);
    }
}
