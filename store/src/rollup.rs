//! The pre-aggregation every embedded query is answered from: counts per tenant, campaign,
//! variant and 15-minute bucket (fine enough for any time zone's day boundaries), the first
//! open / click / unsubscribe / complaint of each message (for exact unique counts), and the
//! ids of stored events (for idempotent inserts). It is rebuilt from the stored rows at start.

use crate::query::{CampaignSummary, Overview, OverviewQuery, SentMessage, Totals};
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
    cells: BTreeMap<(i64, u32), Totals>,
    first_ms: i64,
    last_ms: i64,
}

#[derive(Clone, Copy)]
struct First {
    at_ms: i64,
    campaign: u32,
    variant: u32,
}

/// A Message-ID without its angle brackets: reports quote it either way.
pub(crate) fn message_key(message_id: &str) -> &str {
    message_id.trim().trim_start_matches('<').trim_end_matches('>')
}

fn message_hash(message_id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    message_key(message_id).hash(&mut h);
    h.finish()
}

/// The counter a first-of-its-kind event adds to, for the kinds counted once per message.
fn unique_counter(t: &mut Totals, kind: EventType) -> Option<&mut u64> {
    match kind {
        EventType::Open => Some(&mut t.unique_opens),
        EventType::Click => Some(&mut t.unique_clicks),
        EventType::Unsubscribe => Some(&mut t.unsubscribes),
        EventType::Complaint => Some(&mut t.complaints),
        _ => None,
    }
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
        cc.first_ms = cc.first_ms.min(row.occurred_ms);
        cc.last_ms = cc.last_ms.max(row.occurred_ms);
        let bucket = row.occurred_ms.div_euclid(BUCKET_MS);
        let cell = cc.cells.entry((bucket, variant)).or_default();
        match row.event_type {
            EventType::Sent => {
                cell.sent += 1;
                tenant.sends.insert(message_hash(row.message_id), (campaign, variant));
            }
            EventType::Delivered => cell.delivered += 1,
            EventType::Deferred => cell.deferred += 1,
            EventType::Bounced if row.bounce_class == Some(BounceClass::Hard) => cell.hard_bounces += 1,
            EventType::Bounced => cell.soft_bounces += 1,
            EventType::Open => cell.opens += 1,
            EventType::Click => cell.clicks += 1,
            EventType::Reply => cell.replies += 1,
            EventType::AutoReply => cell.auto_replies += 1,
            EventType::Conversion => {
                cell.conversions += 1;
                cell.revenue_micros += row.revenue_micros;
            }
            EventType::Unsubscribe | EventType::Complaint => {}
        }
        if unique_counter(cell, row.event_type).is_some() {
            tenant.count_first(row, campaign, variant);
        }
        true
    }

    pub fn overview(&self, tenant: &str, q: &OverviewQuery) -> Overview {
        let (_, bounds) = q.day_boundaries();
        let mut daily = q.empty_days();
        if let Some(t) = self.tenants.get(tenant) {
            let lo = bounds[0].div_euclid(BUCKET_MS);
            let hi = bounds[bounds.len() - 1].div_euclid(BUCKET_MS);
            let selected = t.campaigns.iter().filter(|c| q.campaign.as_ref().is_none_or(|name| *name == c.name));
            for c in selected {
                let mut day = 0;
                for (&(bucket, _), cell) in c.cells.range((lo, 0)..(hi, 0)) {
                    let at = bucket * BUCKET_MS;
                    while day + 1 < daily.len() && at >= bounds[day + 1] {
                        day += 1;
                    }
                    daily[day].totals.add(cell);
                }
            }
        }
        q.answer(daily)
    }

    pub fn sent_message(&self, tenant: &str, message_id: &str) -> Option<SentMessage> {
        let t = self.tenants.get(tenant)?;
        let &(campaign, variant) = t.sends.get(&message_hash(message_id))?;
        let c = &t.campaigns[campaign as usize];
        Some(SentMessage { campaign: c.name.clone(), variant: c.variants[variant as usize].clone() })
    }

    pub fn campaigns(&self, tenant: &str) -> Vec<CampaignSummary> {
        let Some(t) = self.tenants.get(tenant) else { return Vec::new() };
        let mut out: Vec<CampaignSummary> = t
            .campaigns
            .iter()
            .map(|c| CampaignSummary {
                campaign: c.name.clone(),
                variants: {
                    let mut v: Vec<String> = c.variants.iter().filter(|v| !v.is_empty()).cloned().collect();
                    v.sort();
                    v
                },
                sent: c.cells.values().map(|cell| cell.sent).sum(),
                first_event_ms: c.first_ms,
                last_event_ms: c.last_ms,
            })
            .collect();
        out.sort_by(|a, b| b.last_event_ms.cmp(&a.last_event_ms).then_with(|| a.campaign.cmp(&b.campaign)));
        out
    }
}

impl TenantRollup {
    fn campaign_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.campaign_ids.get(name) {
            return id;
        }
        let id = self.campaigns.len() as u32;
        self.campaign_ids.insert(name.to_string(), id);
        self.campaigns.push(CampaignCells {
            name: name.to_string(),
            variant_ids: HashMap::new(),
            variants: Vec::new(),
            cells: BTreeMap::new(),
            first_ms: i64::MAX,
            last_ms: i64::MIN,
        });
        id
    }

    /// Counts the message once for this kind, in the bucket of its earliest such event: a
    /// late-arriving earlier event moves the count rather than adding one.
    fn count_first(&mut self, row: RowRef<'_>, campaign: u32, variant: u32) {
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
            let cell = self.campaigns[old.campaign as usize]
                .cells
                .get_mut(&(old.at_ms.div_euclid(BUCKET_MS), old.variant));
            if let Some(counter) = cell.and_then(|c| unique_counter(c, row.event_type)) {
                *counter -= 1;
            }
        }
        let cell = self.campaigns[campaign as usize]
            .cells
            .entry((row.occurred_ms.div_euclid(BUCKET_MS), variant))
            .or_default();
        if let Some(counter) = unique_counter(cell, row.event_type) {
            *counter += 1;
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

    fn q(from: (i32, u32, u32), to: (i32, u32, u32), tz: chrono_tz::Tz, campaign: Option<&str>) -> OverviewQuery {
        OverviewQuery {
            from: NaiveDate::from_ymd_opt(from.0, from.1, from.2).unwrap(),
            to: NaiveDate::from_ymd_opt(to.0, to.1, to.2).unwrap(),
            campaign: campaign.map(String::from),
            tz,
        }
    }

    #[test]
    fn unique_counts_follow_the_earliest_event_even_when_it_arrives_late() {
        let mut r = Rollup::default();
        apply(&mut r, "t", row(1, EventType::Open, "2026-05-02T10:00:00Z", "c", "m1"));
        apply(&mut r, "t", row(2, EventType::Open, "2026-05-03T10:00:00Z", "c", "m1"));
        // The earliest open of m1 arrives last: the unique open moves to 1 May.
        apply(&mut r, "t", row(3, EventType::Open, "2026-05-01T10:00:00Z", "c", "m1"));
        apply(&mut r, "t", row(4, EventType::Open, "2026-05-02T11:00:00Z", "c", "m2"));
        let o = r.overview("t", &q((2026, 5, 1), (2026, 5, 3), chrono_tz::UTC, None));
        assert_eq!((o.totals.opens, o.totals.unique_opens), (4, 2));
        let per_day: Vec<(u64, u64)> = o.daily.iter().map(|d| (d.totals.opens, d.totals.unique_opens)).collect();
        assert_eq!(per_day, vec![(1, 1), (2, 1), (1, 0)]);
    }

    #[test]
    fn a_repeated_event_id_counts_once() {
        let mut r = Rollup::default();
        assert!(apply(&mut r, "t", row(1, EventType::Sent, "2026-05-01T10:00:00Z", "c", "m1")));
        assert!(!apply(&mut r, "t", row(1, EventType::Sent, "2026-05-01T10:00:00Z", "c", "m1")));
        let o = r.overview("t", &q((2026, 5, 1), (2026, 5, 1), chrono_tz::UTC, None));
        assert_eq!(o.totals.sent, 1);
    }

    #[test]
    fn days_are_cut_in_the_requested_time_zone() {
        let mut r = Rollup::default();
        // 23:30 UTC on 1 May is already 2 May in Tokyo and still 1 May in New York.
        apply(&mut r, "t", row(1, EventType::Sent, "2026-05-01T23:30:00Z", "c", "m1"));
        let tokyo = r.overview("t", &q((2026, 5, 1), (2026, 5, 2), chrono_tz::Asia::Tokyo, None));
        assert_eq!(tokyo.daily.iter().map(|d| d.totals.sent).collect::<Vec<_>>(), vec![0, 1]);
        let ny = r.overview("t", &q((2026, 5, 1), (2026, 5, 2), chrono_tz::America::New_York, None));
        assert_eq!(ny.daily.iter().map(|d| d.totals.sent).collect::<Vec<_>>(), vec![1, 0]);
        // Kathmandu is UTC+5:45: 18:14 UTC is 23:59 local, 18:15 UTC is next day.
        apply(&mut r, "t", row(2, EventType::Sent, "2026-05-01T18:14:00Z", "c", "m2"));
        apply(&mut r, "t", row(3, EventType::Sent, "2026-05-01T18:15:00Z", "c", "m3"));
        let ktm = r.overview("t", &q((2026, 5, 1), (2026, 5, 2), chrono_tz::Asia::Kathmandu, None));
        assert_eq!(ktm.daily.iter().map(|d| d.totals.sent).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn tenants_and_campaigns_are_kept_apart() {
        let mut r = Rollup::default();
        apply(&mut r, "a", row(1, EventType::Sent, "2026-05-01T10:00:00Z", "c1", "m1"));
        apply(&mut r, "a", row(2, EventType::Conversion, "2026-05-01T10:00:00Z", "c2", "m2"));
        apply(&mut r, "b", row(3, EventType::Sent, "2026-05-01T10:00:00Z", "c1", "m1"));
        apply(&mut r, "b", row(4, EventType::Bounced, "2026-05-01T10:00:00Z", "c1", "m1"));
        let range = |c| q((2026, 5, 1), (2026, 5, 1), chrono_tz::UTC, c);
        let a = r.overview("a", &range(None)).totals;
        assert_eq!((a.sent, a.conversions, a.revenue_micros, a.hard_bounces), (1, 1, 2_500_000, 0));
        assert_eq!(r.overview("a", &range(Some("c1"))).totals.conversions, 0);
        assert_eq!(r.overview("b", &range(None)).totals.hard_bounces, 1);
        assert_eq!(r.overview("nobody", &range(None)).totals, Totals::default());
        assert_eq!(r.campaigns("a").len(), 2);
        assert_eq!(r.sent_message("a", "m1").map(|m| m.campaign), Some("c1".to_string()));
        assert_eq!(r.sent_message("a", "<m1>").map(|m| m.campaign), Some("c1".to_string()));
        assert_eq!(r.sent_message("a", "m2"), None, "only sends are joined");
        assert_eq!(r.sent_message("nobody", "m1"), None);
        assert!(r.campaigns("nobody").is_empty());
    }
}
