//! The pre-aggregation every embedded query is answered from: counts per tenant, campaign,
//! variant and 15-minute bucket (fine enough for any time zone's day boundaries), the first
//! open / click / unsubscribe / complaint of each message (for exact unique counts), and the
//! ids of stored events (for idempotent inserts). It is rebuilt from the stored rows at start.

use crate::aggregate::{first_index, message_key, Accumulator, Aggregate, Cell, Dimension};
use crate::{SentMessage, UNMATCHED_CAMPAIGN};
use mailpipe_schemas::{BounceClass, Event, EventType};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

pub(crate) const BUCKET_MS: i64 = 15 * 60 * 1000;

/// The fields of an event the rollup reads, borrowed so a rebuild from Arrow columns does
/// not allocate per row.
#[derive(Clone, Copy, Debug)]
pub struct RowRef<'a> {
    pub event_id: u128,
    pub tenant: &'a str,
    pub event_type: EventType,
    pub occurred_ms: i64,
    pub campaign: &'a str,
    pub variant: &'a str,
    pub message_id: &'a str,
    pub bounce_class: Option<BounceClass>,
    pub revenue_micros: i64,
}

impl<'a> RowRef<'a> {
    pub fn of(e: &'a Event) -> Self {
        RowRef {
            event_id: e.event_id.as_u128(),
            tenant: &e.tenant,
            event_type: e.event_type,
            occurred_ms: e.occurred_at.timestamp_millis(),
            campaign: &e.campaign,
            variant: &e.variant,
            message_id: &e.message_id,
            bounce_class: e.bounce_class,
            revenue_micros: e.revenue_micros.unwrap_or(0),
        }
    }
}

#[derive(Default)]
pub struct Rollup {
    seen: HashSet<u128>,
    tenants: HashMap<String, TenantRollup>,
}

#[derive(Default)]
struct TenantRollup {
    campaign_ids: HashMap<String, u32>,
    campaigns: Vec<CampaignCells>,
    /// First event of a kind per message: (message hash, kind) -> where it was counted.
    firsts: HashMap<(u64, EventType), First>,
    /// The latest send (by time) of each message: to join inbound mail to it.
    sends: HashMap<u64, Send>,
    /// Events filed under `(unmatched)`, by message: counted in the campaign of the message's
    /// send (under `(unmatched)` while none is known) and moved when a send arrives.
    orphans: HashMap<u64, Vec<Orphan>>,
}

#[derive(Clone, Copy)]
struct Send {
    campaign: u32,
    variant: u32,
    at_ms: i64,
}

#[derive(Clone, Copy)]
struct Orphan {
    at_ms: i64,
    kind: EventType,
    hard: bool,
    revenue_micros: i64,
    /// Where it is counted now.
    campaign: u32,
    variant: u32,
}

struct CampaignCells {
    name: String,
    variant_ids: HashMap<String, u32>,
    variants: Vec<String>,
    cells: BTreeMap<(i64, u32), Cell>,
}

#[derive(Clone, Copy)]
struct First {
    at_ms: i64,
    campaign: u32,
    variant: u32,
}

fn message_hash(message_id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    message_key(message_id).hash(&mut h);
    h.finish()
}

impl Rollup {
    pub fn contains(&self, event_id: u128) -> bool {
        self.seen.contains(&event_id)
    }

    pub fn events(&self) -> usize {
        self.seen.len()
    }

    /// Counts one event; false (and nothing counted) if its id was counted before.
    pub fn apply(&mut self, row: RowRef<'_>) -> bool {
        if !self.seen.insert(row.event_id) {
            return false;
        }
        let tenant = match self.tenants.get_mut(row.tenant) {
            Some(t) => t,
            None => self.tenants.entry(row.tenant.to_string()).or_default(),
        };
        let hash = message_hash(row.message_id);
        let mut campaign = tenant.campaign_id(row.campaign);
        let mut variant = tenant.campaigns[campaign as usize].variant_id(row.variant);
        let (at, hard) = (row.occurred_ms, row.bounce_class == Some(BounceClass::Hard));
        if row.campaign == UNMATCHED_CAMPAIGN && row.event_type != EventType::Sent {
            if let Some(send) = tenant.sends.get(&hash) {
                (campaign, variant) = (send.campaign, send.variant);
            }
            let orphan = Orphan { at_ms: at, kind: row.event_type, hard, revenue_micros: row.revenue_micros, campaign, variant };
            tenant.orphans.entry(hash).or_default().push(orphan);
        }
        let cells = &mut tenant.campaigns[campaign as usize].cells;
        cells.entry((at.div_euclid(BUCKET_MS), variant)).or_default().add_events(row.event_type, hard, 1, row.revenue_micros, at, at);
        if let Some(kind) = first_index(row.event_type) {
            tenant.count_first(hash, row, kind, campaign, variant);
        }
        if row.event_type == EventType::Sent && tenant.sends.get(&hash).is_none_or(|s| at >= s.at_ms) {
            tenant.sends.insert(hash, Send { campaign, variant, at_ms: at });
            tenant.relocate_orphans(hash);
        }
        true
    }

    /// Sums the cells a question selects, each 15-minute bucket into the bucket of the
    /// question's grain (time zone offsets are whole quarter hours, so a 15-minute bucket
    /// never straddles two days or hours). The first of a message counts in the campaign and
    /// variant of that first event, so filters apply to firsts as they do to any event.
    pub fn aggregate(&self, tenant: &str, q: &Aggregate) -> Accumulator {
        let mut acc = Accumulator::default();
        let Some(t) = self.tenants.get(tenant) else { return acc };
        let (lo, hi) = match &q.frame {
            Some(f) => (f.lo_ms.div_euclid(BUCKET_MS), f.hi_ms.div_euclid(BUCKET_MS)),
            None => (i64::MIN, i64::MAX),
        };
        let selected = t.campaigns.iter().filter(|c| q.filters.campaign.as_ref().is_none_or(|name| *name == c.name));
        for c in selected {
            let variant_ok: Vec<bool> = c.variants.iter().map(|v| q.filters.variant.as_ref().is_none_or(|want| want == v)).collect();
            // Consecutive cells of one 15-minute bucket and group add into one entry.
            let mut last: Option<((i64, u32), Option<i64>)> = None;
            let mut pending: Option<(i64, u32, Cell)> = None;
            for (&(bucket, variant), cell) in c.cells.range((lo, 0)..(hi, 0)) {
                if !variant_ok[variant as usize] {
                    continue;
                }
                let grain_bucket = match last {
                    Some(((b, _), g)) if b == bucket => g,
                    _ => q.bucket_of(bucket * BUCKET_MS),
                };
                last = Some(((bucket, variant), grain_bucket));
                let Some(g) = grain_bucket else { continue };
                let group_variant = if q.group_by.contains(&Dimension::Variant) { variant } else { 0 };
                if let Some((pg, pv, sum)) = pending.as_mut() {
                    if *pg == g && *pv == group_variant {
                        sum.add(cell);
                        continue;
                    }
                }
                if let Some((pg, pv, sum)) = pending.take() {
                    acc.cell(pg, group(q, c, pv)).add(&sum);
                }
                pending = Some((g, group_variant, *cell));
            }
            if let Some((pg, pv, sum)) = pending {
                acc.cell(pg, group(q, c, pv)).add(&sum);
            }
        }
        acc
    }

    pub fn sent_message(&self, tenant: &str, message_id: &str) -> Option<SentMessage> {
        let t = self.tenants.get(tenant)?;
        let send = t.sends.get(&message_hash(message_id))?;
        let c = &t.campaigns[send.campaign as usize];
        Some(SentMessage { campaign: c.name.clone(), variant: c.variants[send.variant as usize].clone() })
    }
}

/// The values of the question's group-by dimensions for cells of campaign `c`, variant `v`.
fn group(q: &Aggregate, c: &CampaignCells, v: u32) -> Vec<String> {
    q.group_by
        .iter()
        .map(|d| match d {
            Dimension::Campaign => c.name.clone(),
            Dimension::Variant => c.variants[v as usize].clone(),
        })
        .collect()
}

impl TenantRollup {
    fn campaign_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.campaign_ids.get(name) {
            return id;
        }
        let id = self.campaigns.len() as u32;
        self.campaign_ids.insert(name.to_string(), id);
        self.campaigns.push(CampaignCells { name: name.to_string(), variant_ids: HashMap::new(), variants: Vec::new(), cells: BTreeMap::new() });
        id
    }

    /// Counts the message once for this kind, in the bucket of its earliest such event: a
    /// late-arriving earlier event moves the count rather than adding one.
    fn count_first(&mut self, hash: u64, row: RowRef<'_>, kind: usize, campaign: u32, variant: u32) {
        let key = (hash, row.event_type);
        let here = First { at_ms: row.occurred_ms, campaign, variant };
        let previous = match self.firsts.get_mut(&key) {
            None => {
                self.firsts.insert(key, here);
                None
            }
            Some(f) if row.occurred_ms < f.at_ms => Some(std::mem::replace(f, here)),
            Some(_) => return,
        };
        if let Some(old) = previous {
            let cells = &mut self.campaigns[old.campaign as usize].cells;
            if let Some(cell) = cells.get_mut(&(old.at_ms.div_euclid(BUCKET_MS), old.variant)) {
                cell.firsts[kind] -= 1;
            }
        }
        let cells = &mut self.campaigns[campaign as usize].cells;
        cells.entry((row.occurred_ms.div_euclid(BUCKET_MS), variant)).or_default().firsts[kind] += 1;
    }

    /// Moves the message's orphans (and its first of a kind, where that is an orphan) to the
    /// campaign and variant of its send.
    fn relocate_orphans(&mut self, hash: u64) {
        let (Some(send), Some(orphans)) = (self.sends.get(&hash).copied(), self.orphans.get_mut(&hash)) else { return };
        let unmatched = self.campaign_ids.get(UNMATCHED_CAMPAIGN).copied();
        let mut emptied = Vec::new();
        for o in orphans.iter_mut().filter(|o| (o.campaign, o.variant) != (send.campaign, send.variant)) {
            let bucket = o.at_ms.div_euclid(BUCKET_MS);
            let first = first_index(o.kind).filter(|_| {
                self.firsts.get(&(hash, o.kind)).is_some_and(|f| f.at_ms == o.at_ms && (f.campaign, f.variant) == (o.campaign, o.variant))
            });
            if let Some(cell) = self.campaigns[o.campaign as usize].cells.get_mut(&(bucket, o.variant)) {
                cell.remove_event(o.kind, o.hard, o.revenue_micros);
                if let Some(k) = first {
                    cell.firsts[k] -= 1;
                }
                emptied.push((o.campaign, bucket, o.variant));
            }
            let cell = self.campaigns[send.campaign as usize].cells.entry((bucket, send.variant)).or_default();
            cell.add_events(o.kind, o.hard, 1, o.revenue_micros, o.at_ms, o.at_ms);
            if let Some(k) = first {
                cell.firsts[k] += 1;
                self.firsts.insert((hash, o.kind), First { at_ms: o.at_ms, campaign: send.campaign, variant: send.variant });
            }
            (o.campaign, o.variant) = (send.campaign, send.variant);
        }
        // A cell of `(unmatched)` holds only orphans: its time span is theirs, or it is gone.
        for (campaign, bucket, variant) in emptied {
            let Some(cell) = self.campaigns[campaign as usize].cells.get_mut(&(bucket, variant)) else { continue };
            if cell.is_empty() {
                self.campaigns[campaign as usize].cells.remove(&(bucket, variant));
            } else if Some(campaign) == unmatched {
                let here = self.orphans.values().flatten().filter(|o| (o.campaign, o.variant) == (campaign, variant) && o.at_ms.div_euclid(BUCKET_MS) == bucket);
                let (lo, hi) = here.fold((i64::MAX, i64::MIN), |(lo, hi), o| (lo.min(o.at_ms), hi.max(o.at_ms)));
                (cell.first_ms, cell.last_ms) = (lo, hi);
            }
        }
    }
}

impl CampaignCells {
    fn variant_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.variant_ids.get(name) {
            return id;
        }
        let id = self.variants.len() as u32;
        self.variant_ids.insert(name.to_string(), id);
        self.variants.push(name.to_string());
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateAnswer, Filters, Frame, Grain, Measure};
    use chrono::NaiveDate;

    fn row(id: u128, t: EventType, at: &str, campaign: &'static str, msg: &'static str) -> (u128, EventType, i64, &'static str, &'static str) {
        (id, t, chrono::DateTime::parse_from_rfc3339(at).unwrap().timestamp_millis(), campaign, msg)
    }

    fn apply(r: &mut Rollup, tenant: &str, (id, t, ms, campaign, msg): (u128, EventType, i64, &str, &str)) -> bool {
        r.apply(RowRef {
            event_id: id,
            tenant,
            event_type: t,
            occurred_ms: ms,
            campaign,
            variant: "",
            message_id: msg,
            bounce_class: (t == EventType::Bounced).then_some(BounceClass::Hard),
            revenue_micros: if t == EventType::Conversion { 2_500_000 } else { 0 },
        })
    }

    const MEASURES: [Measure; 6] = [
        Measure::Count(EventType::Sent),
        Measure::Count(EventType::Open),
        Measure::FirstPerMessage(EventType::Open),
        Measure::Count(EventType::Conversion),
        Measure::RevenueMicros,
        Measure::Bounces(BounceClass::Hard),
    ];

    /// Per day of the range: the values of `MEASURES`.
    fn daily(r: &Rollup, tenant: &str, from: u32, to: u32, tz: chrono_tz::Tz, campaign: Option<&str>) -> Vec<Vec<i64>> {
        let d = |n| NaiveDate::from_ymd_opt(2026, 5, n).unwrap();
        let frame = Frame::new(d(from), d(to), tz, Grain::Day);
        let q = Aggregate { frame: Some(frame.clone()), filters: Filters { campaign: campaign.map(String::from), variant: None }, group_by: vec![], measures: MEASURES.to_vec() };
        let a: AggregateAnswer = r.aggregate(tenant, &q).answer(&q);
        frame
            .days()
            .into_iter()
            .map(|day| a.rows.iter().find(|row| row.bucket == Frame::day_bucket(day)).map_or(vec![0; MEASURES.len()], |row| row.values.clone()))
            .collect()
    }

    fn column(days: &[Vec<i64>], m: usize) -> Vec<i64> {
        days.iter().map(|d| d[m]).collect()
    }

    #[test]
    fn unique_counts_follow_the_earliest_event_even_when_it_arrives_late() {
        let mut r = Rollup::default();
        apply(&mut r, "t", row(1, EventType::Open, "2026-05-02T10:00:00Z", "c", "m1"));
        apply(&mut r, "t", row(2, EventType::Open, "2026-05-03T10:00:00Z", "c", "m1"));
        // The earliest open of m1 arrives last: the unique open moves to 1 May.
        apply(&mut r, "t", row(3, EventType::Open, "2026-05-01T10:00:00Z", "c", "<m1>"));
        apply(&mut r, "t", row(4, EventType::Open, "2026-05-02T11:00:00Z", "c", "m2"));
        let days = daily(&r, "t", 1, 3, chrono_tz::UTC, None);
        assert_eq!(column(&days, 1), vec![1, 2, 1]);
        assert_eq!(column(&days, 2), vec![1, 1, 0]);
    }

    #[test]
    fn a_repeated_event_id_counts_once() {
        let mut r = Rollup::default();
        assert!(apply(&mut r, "t", row(1, EventType::Sent, "2026-05-01T10:00:00Z", "c", "m1")));
        assert!(!apply(&mut r, "t", row(1, EventType::Sent, "2026-05-01T10:00:00Z", "c", "m1")));
        assert_eq!(column(&daily(&r, "t", 1, 1, chrono_tz::UTC, None), 0), vec![1]);
    }

    #[test]
    fn days_are_cut_in_the_requested_time_zone() {
        let mut r = Rollup::default();
        // 23:30 UTC on 1 May is already 2 May in Tokyo and still 1 May in New York.
        apply(&mut r, "t", row(1, EventType::Sent, "2026-05-01T23:30:00Z", "c", "m1"));
        assert_eq!(column(&daily(&r, "t", 1, 2, chrono_tz::Asia::Tokyo, None), 0), vec![0, 1]);
        assert_eq!(column(&daily(&r, "t", 1, 2, chrono_tz::America::New_York, None), 0), vec![1, 0]);
        // Kathmandu is UTC+5:45: 18:14 UTC is 23:59 local, 18:15 UTC is next day.
        apply(&mut r, "t", row(2, EventType::Sent, "2026-05-01T18:14:00Z", "c", "m2"));
        apply(&mut r, "t", row(3, EventType::Sent, "2026-05-01T18:15:00Z", "c", "m3"));
        assert_eq!(column(&daily(&r, "t", 1, 2, chrono_tz::Asia::Kathmandu, None), 0), vec![1, 2]);
    }

    #[test]
    fn inbound_mail_stored_before_its_send_joins_it_when_the_send_arrives() {
        let mut r = Rollup::default();
        let complaint = |id, msg| RowRef { event_type: EventType::Complaint, campaign: UNMATCHED_CAMPAIGN, ..orphan(id, msg) };
        r.apply(orphan(1, "<m1>"));
        r.apply(complaint(2, "m2"));
        let unmatched = daily_of(&r, Some(UNMATCHED_CAMPAIGN));
        assert_eq!((unmatched[0][5], unmatched[0][6]), (1, 1), "filed under (unmatched) while no send is known");
        apply(&mut r, "t", row(3, EventType::Sent, "2026-05-01T09:00:00Z", "c", "m1"));
        apply(&mut r, "t", row(4, EventType::Sent, "2026-05-01T09:00:00Z", "c", "<m2>"));
        assert_eq!((daily_of(&r, Some("c"))[0][5], daily_of(&r, Some("c"))[0][6]), (1, 1));
        assert_eq!(daily_of(&r, Some(UNMATCHED_CAMPAIGN)), vec![vec![0; 7]]);
        // Once joined, later inbound mail goes straight to the send's campaign.
        r.apply(orphan(5, "m1"));
        assert_eq!(daily_of(&r, Some("c"))[0][5], 2);
        assert_eq!(r.sent_message("t", "m1").map(|m| m.campaign), Some("c".to_string()));
    }

    fn orphan(id: u128, msg: &'static str) -> RowRef<'static> {
        RowRef {
            event_id: id,
            tenant: "t",
            event_type: EventType::Bounced,
            occurred_ms: chrono::DateTime::parse_from_rfc3339("2026-05-01T10:00:00Z").unwrap().timestamp_millis(),
            campaign: UNMATCHED_CAMPAIGN,
            variant: "",
            message_id: msg,
            bounce_class: Some(BounceClass::Hard),
            revenue_micros: 0,
        }
    }

    /// 1 May in UTC: sent, bounces (hard), complaints (per message), events first-to-last span.
    fn daily_of(r: &Rollup, campaign: Option<&str>) -> Vec<Vec<i64>> {
        let d = NaiveDate::from_ymd_opt(2026, 5, 1).unwrap();
        let measures = vec![
            Measure::Count(EventType::Sent),
            Measure::Count(EventType::Open),
            Measure::Count(EventType::Click),
            Measure::Count(EventType::Reply),
            Measure::Count(EventType::Conversion),
            Measure::Bounces(BounceClass::Hard),
            Measure::FirstPerMessage(EventType::Complaint),
        ];
        let q = Aggregate { frame: Some(Frame::new(d, d, chrono_tz::UTC, Grain::Day)), filters: Filters { campaign: campaign.map(String::from), variant: None }, group_by: vec![], measures };
        let a = r.aggregate("t", &q).answer(&q);
        vec![a.rows.first().map_or(vec![0; 7], |row| row.values.clone())]
    }

    #[test]
    fn tenants_and_campaigns_are_kept_apart() {
        let mut r = Rollup::default();
        apply(&mut r, "a", row(1, EventType::Sent, "2026-05-01T10:00:00Z", "c1", "m1"));
        apply(&mut r, "a", row(2, EventType::Conversion, "2026-05-01T10:00:00Z", "c2", "m2"));
        apply(&mut r, "b", row(3, EventType::Sent, "2026-05-01T10:00:00Z", "c1", "m1"));
        apply(&mut r, "b", row(4, EventType::Bounced, "2026-05-01T10:00:00Z", "c1", "m1"));
        assert_eq!(daily(&r, "a", 1, 1, chrono_tz::UTC, None), vec![vec![1, 0, 0, 1, 2_500_000, 0]]);
        assert_eq!(daily(&r, "a", 1, 1, chrono_tz::UTC, Some("c1")), vec![vec![1, 0, 0, 0, 0, 0]]);
        assert_eq!(daily(&r, "b", 1, 1, chrono_tz::UTC, None), vec![vec![1, 0, 0, 0, 0, 1]]);
        assert_eq!(daily(&r, "nobody", 1, 1, chrono_tz::UTC, None), vec![vec![0; 6]]);
        assert_eq!(r.sent_message("a", "m1").map(|m| m.campaign), Some("c1".to_string()));
        assert_eq!(r.sent_message("a", "<m1>").map(|m| m.campaign), Some("c1".to_string()));
        assert_eq!(r.sent_message("a", "m2"), None, "only sends are joined");
        assert_eq!(r.sent_message("nobody", "m1"), None);
    }
}
