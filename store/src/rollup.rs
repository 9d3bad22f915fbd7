//! The pre-aggregation every embedded query is answered from: counts per tenant, campaign,
//! variant and 15-minute bucket (fine enough for any time zone's day boundaries), the first
//! open / click / unsubscribe / complaint of each message (for exact unique counts), and the
//! ids of stored events (for idempotent inserts). It is rebuilt from the stored rows at start.

use crate::aggregate::{first_index, message_key, Accumulator, Aggregate, Cell, Dimension};
use crate::SentMessage;
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
    /// Sent messages: message hash -> (campaign, variant), to join inbound mail to its send.
    sends: HashMap<u64, (u32, u32)>,
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
        let campaign = tenant.campaign_id(row.campaign);
        let cc = &mut tenant.campaigns[campaign as usize];
        let variant = cc.variant_id(row.variant);
        let bucket = row.occurred_ms.div_euclid(BUCKET_MS);
        let hard = row.bounce_class == Some(BounceClass::Hard);
        let at = row.occurred_ms;
        cc.cells.entry((bucket, variant)).or_default().add_events(row.event_type, hard, 1, row.revenue_micros, at, at);
        if row.event_type == EventType::Sent {
            tenant.sends.insert(message_hash(row.message_id), (campaign, variant));
        }
        if let Some(kind) = first_index(row.event_type) {
            tenant.count_first(row, kind, campaign, variant);
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
        let &(campaign, variant) = t.sends.get(&message_hash(message_id))?;
        let c = &t.campaigns[campaign as usize];
        Some(SentMessage { campaign: c.name.clone(), variant: c.variants[variant as usize].clone() })
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
    fn count_first(&mut self, row: RowRef<'_>, kind: usize, campaign: u32, variant: u32) {
        let key = (message_hash(row.message_id), row.event_type);
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
