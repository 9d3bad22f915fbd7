//! The analytics fixture the parity and golden tests share: hand-made edge cases plus
//! generated traffic for three tenants, the same on every run.

use chrono::{DateTime, TimeZone, Utc};
use mailpipe::demo::{Generator, Profile};
use mailpipe_schemas::{BounceClass, Event, EventType};
use mailpipe_store::UNMATCHED_CAMPAIGN;
use uuid::Uuid;

pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Hand-made edge cases the generator does not produce: late earlier opens, bracketed and
/// unbracketed ids of one message, either side of midnight in Kathmandu, a message first
/// opened in another campaign, events across the March DST changes of Paris and New York,
/// a repeated id, a second tenant with the same message id, inbound mail stored before its send.
pub fn edge_cases() -> Vec<Event> {
    let id = |n: u128| Uuid::from_u128(0xfeed_0000 + n);
    let ev = |n, t, when: &str, campaign: &str, msg: &str| Event {
        campaign: campaign.into(),
        variant: "B".into(),
        message_id: msg.into(),
        recipient: "edge@example.com".into(),
        ..Event::new(id(n), "acme", t, at(when))
    };
    vec![
        ev(1, EventType::Sent, "2026-05-01T18:10:00Z", "edge", "<e1@x>"),
        // Opens of e1: the earliest arrives last and moves the unique open to its day.
        ev(2, EventType::Open, "2026-05-03T10:00:00Z", "edge", "e1@x"),
        ev(3, EventType::Open, "2026-05-02T10:00:00Z", "edge", "<e1@x>"),
        ev(4, EventType::Open, "2026-05-01T18:20:00Z", "edge", "e1@x"),
        // Either side of midnight in Kathmandu (UTC+5:45).
        ev(5, EventType::Click, "2026-05-01T18:14:59Z", "edge", "e2@x"),
        ev(6, EventType::Click, "2026-05-01T18:15:00Z", "edge", "e3@x"),
        Event { bounce_class: Some(BounceClass::Hard), ..ev(7, EventType::Bounced, "2026-05-02T01:00:00Z", "edge", "e4@x") },
        Event { bounce_class: Some(BounceClass::Soft), ..ev(8, EventType::Bounced, "2026-05-02T01:00:00Z", "edge", "e5@x") },
        Event { revenue_micros: Some(12_340_000), ..ev(9, EventType::Conversion, "2026-05-02T23:59:59Z", "edge", "e1@x") },
        ev(10, EventType::Unsubscribe, "2026-05-02T05:00:00Z", "edge", "e1@x"),
        ev(11, EventType::Unsubscribe, "2026-05-02T06:00:00Z", "edge", "e1@x"),
        ev(12, EventType::Complaint, "2026-05-02T07:00:00Z", "other", "e6@x"),
        // The same id twice: stored and counted once.
        ev(13, EventType::Delivered, "2026-05-01T18:11:00Z", "edge", "e1@x"),
        ev(13, EventType::Delivered, "2026-05-01T18:11:00Z", "edge", "e1@x"),
        Event { tenant: "globex".into(), ..ev(14, EventType::Sent, "2026-05-01T12:00:00Z", "edge", "<e1@x>") },
        // e7 is first opened (bracketed) in `edge`, then (unbracketed) in `other`: its unique
        // open belongs to `edge`, and a filter on `other` finds none.
        ev(15, EventType::Open, "2026-05-01T09:00:00Z", "edge", "<e7@x>"),
        ev(16, EventType::Open, "2026-05-02T09:00:00Z", "other", "e7@x"),
        // Around the DST changes: Paris springs forward at 01:00 UTC on 29 March, New York
        // at 07:00 UTC on 8 March.
        ev(17, EventType::Sent, "2026-03-29T00:59:59Z", "dst", "d1@x"),
        ev(18, EventType::Open, "2026-03-29T01:00:00Z", "dst", "d1@x"),
        ev(19, EventType::Open, "2026-03-29T21:59:59Z", "dst", "<d1@x>"),
        ev(20, EventType::Click, "2026-03-29T22:00:00Z", "dst", "d1@x"),
        ev(21, EventType::Sent, "2026-03-08T04:59:59Z", "dst", "d2@x"),
        ev(22, EventType::Sent, "2026-03-08T05:00:00Z", "dst", "d3@x"),
        ev(23, EventType::Open, "2026-03-09T03:59:59Z", "dst", "d3@x"),
        ev(24, EventType::Open, "2026-03-09T04:00:00Z", "dst", "d2@x"),
        // Inbound mail classified before its send was stored (filed under `(unmatched)`):
        // the send arrives later and takes it into its campaign; `never@x` is never sent.
        Event { bounce_class: Some(BounceClass::Hard), variant: String::new(), ..ev(25, EventType::Bounced, "2026-05-05T10:00:00Z", UNMATCHED_CAMPAIGN, "<late@x>") },
        ev(26, EventType::Sent, "2026-05-05T09:00:00Z", "edge", "late@x"),
        Event { variant: String::new(), ..ev(27, EventType::Complaint, "2026-05-06T08:00:00Z", UNMATCHED_CAMPAIGN, "late2@x") },
        Event { variant: "A".into(), ..ev(28, EventType::Sent, "2026-05-05T09:30:00Z", "other", "<late2@x>") },
        Event { variant: String::new(), ..ev(29, EventType::Reply, "2026-05-06T12:00:00Z", UNMATCHED_CAMPAIGN, "never@x") },
    ]
}

/// The instant the generated traffic ends at (it covers the 90 days before).
pub fn generated_until() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 31, 12, 0, 0).unwrap()
}

/// Edge cases plus about `generated` events of generated traffic for acme, globex, initech.
pub fn events(generated: usize) -> Vec<Event> {
    let mut events = edge_cases();
    Generator::new(Profile::sized(generated), generated_until()).run(5_000, |chunk, _| events.extend(chunk));
    events
}
