//! Realistic generated traffic: tenants, campaigns with A/B variants over the last N days,
//! recipients at the big mailbox providers and corporate domains in several time zones, and
//! every outcome with day-of-week and hour-of-day patterns in the recipient's time zone.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use mailpipe_schemas::{BounceClass, Event, EventType, Provider};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const DEMO_TENANTS: [&str; 3] = ["acme", "globex", "initech"];

const DOMAINS: [(&str, u32); 12] = [
    ("gmail.com", 34), ("yahoo.com", 9), ("aol.com", 2), ("outlook.com", 8), ("hotmail.com", 6), ("icloud.com", 7),
    ("me.com", 1), ("northwind-traders.com", 9), ("contoso.com", 8), ("fabrikam.io", 6), ("tailspin.dev", 5), ("wingtip.co.uk", 5),
];
const ZONES: [Tz; 8] = [
    chrono_tz::America::New_York, chrono_tz::America::Chicago, chrono_tz::America::Los_Angeles, chrono_tz::Europe::London,
    chrono_tz::Europe::Berlin, chrono_tz::Europe::Paris, chrono_tz::Asia::Kolkata, chrono_tz::Australia::Sydney,
];
const FIRST: [&str; 12] = ["ana", "ben", "chloe", "dmitri", "emma", "farid", "grace", "hiro", "ines", "jon", "kofi", "lena"];
const LAST: [&str; 10] = ["smith", "garcia", "mueller", "rossi", "tanaka", "dubois", "kowalski", "silva", "nguyen", "okafor"];
const TOPICS: [&str; 12] = [
    "welcome", "spring-sale", "product-launch", "newsletter", "webinar", "black-friday", "winback", "onboarding",
    "feature-update", "survey", "holiday-gifts", "renewal",
];
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Microsoft Outlook 16.0.17928; ms-office; MSOffice 16)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 (via ggpht.com GoogleImageProxy)",
];
/// Relative chance of reading mail in each local hour.
const HOUR_WEIGHT: [f64; 24] = [
    0.1, 0.05, 0.03, 0.03, 0.05, 0.15, 0.4, 0.8, 1.0, 0.95, 0.85, 0.8, 0.9, 0.85, 0.75, 0.7, 0.65, 0.7, 0.8, 0.9, 0.85, 0.6, 0.35, 0.2,
];

/// How much traffic to make.
#[derive(Clone, Debug)]
pub struct Profile {
    pub tenants: Vec<String>,
    pub campaigns_per_tenant: usize,
    pub recipients_per_tenant: usize,
    pub audience: (usize, usize),
    pub days: i64,
    pub seed: u64,
}

impl Profile {
    /// What `serve --demo` loads: a few hundred thousand events.
    pub fn demo() -> Profile {
        Profile {
            tenants: DEMO_TENANTS.iter().map(|s| s.to_string()).collect(),
            campaigns_per_tenant: 12,
            recipients_per_tenant: 6000,
            audience: (1500, 5000),
            days: 90,
            seed: 2026,
        }
    }

    /// About `events` events, for benchmarks.
    pub fn sized(events: usize) -> Profile {
        let messages = events * 10 / 27;
        let campaigns = 40;
        let per = (messages / (3 * campaigns)).max(10);
        Profile { campaigns_per_tenant: campaigns, recipients_per_tenant: per * 2, audience: (per * 8 / 10, per * 12 / 10), seed: 7, ..Profile::demo() }
    }
}

struct Recipient {
    address: String,
    tz: Tz,
    engagement: f64,
}

struct Campaign {
    name: String,
    variants: &'static [&'static str],
    send_at: DateTime<Utc>,
    audience: usize,
    /// How long sending takes: two hours for a broadcast; the whole period for the triggered
    /// welcome mail, sent evenly up to the minute the demo starts.
    spread: Duration,
}

pub struct Generator {
    profile: Profile,
    now: DateTime<Utc>,
    rng: StdRng,
    out: Vec<Event>,
}

impl Generator {
    pub fn new(profile: Profile, now: DateTime<Utc>) -> Generator {
        let rng = StdRng::seed_from_u64(profile.seed);
        Generator { profile, now, rng, out: Vec::new() }
    }

    /// The number of messages that will be sent, for progress bars.
    pub fn planned_messages(&self) -> usize {
        let (lo, hi) = self.profile.audience;
        self.profile.tenants.len() * self.profile.campaigns_per_tenant * (lo + hi) / 2
    }

    /// Generates everything, handing over events in chunks of about `chunk`, with the number
    /// of messages done so far.
    pub fn run(mut self, chunk: usize, mut emit: impl FnMut(Vec<Event>, usize)) {
        let mut done = 0;
        for tenant in self.profile.tenants.clone() {
            let recipients = self.recipients(&tenant);
            for campaign in self.campaigns(&tenant) {
                let start = self.rng.random_range(0..recipients.len());
                for i in 0..campaign.audience {
                    let r = &recipients[(start + i * 7919) % recipients.len()];
                    self.message(&tenant, &campaign, i, r);
                    done += 1;
                    if self.out.len() >= chunk {
                        emit(std::mem::take(&mut self.out), done);
                    }
                }
            }
        }
        emit(std::mem::take(&mut self.out), done);
    }

    fn recipients(&mut self, tenant: &str) -> Vec<Recipient> {
        let total: u32 = DOMAINS.iter().map(|d| d.1).sum();
        (0..self.profile.recipients_per_tenant)
            .map(|i| {
                let mut pick = self.rng.random_range(0..total);
                let domain = DOMAINS.iter().find(|d| if pick < d.1 { true } else { pick -= d.1; false }).map_or("gmail.com", |d| d.0);
                let first = FIRST[self.rng.random_range(0..FIRST.len())];
                let last = LAST[self.rng.random_range(0..LAST.len())];
                Recipient {
                    address: format!("{first}.{last}{i}@{domain}"),
                    tz: ZONES[self.rng.random_range(0..ZONES.len())],
                    engagement: self.rng.random_range(0.2..1.8) * if tenant == "globex" { 0.8 } else { 1.0 },
                }
            })
            .collect()
    }

    /// Broadcasts spread over the period, the last a few hours before now, and one triggered
    /// welcome mail sent all along.
    fn campaigns(&mut self, tenant: &str) -> Vec<Campaign> {
        let n = self.profile.campaigns_per_tenant.max(2);
        let days = self.profile.days;
        let (lo, hi) = self.profile.audience;
        let mut campaigns: Vec<Campaign> = (0..n - 1)
            .map(|i| {
                // On weekdays, at 9:00-15:00 UTC, never later than three hours ago.
                let mut day = self.now - Duration::days(days) + Duration::days(((i as i64 + 1) * days) / (n as i64 - 1));
                while day.weekday().number_from_monday() > 5 {
                    day -= Duration::days(1);
                }
                let send_at = Utc
                    .with_ymd_and_hms(day.year(), day.month(), day.day(), self.rng.random_range(9..15), 0, 0)
                    .single()
                    .unwrap_or(day)
                    .min(self.now - Duration::hours(3));
                Campaign {
                    name: format!("{tenant}-{}-{:02}", TOPICS[i % TOPICS.len()], i + 1),
                    variants: if i % 2 == 0 { &["A", "B"] } else { &[""] },
                    send_at,
                    audience: self.rng.random_range(lo..=hi.max(lo)),
                    spread: Duration::hours(2),
                }
            })
            .collect();
        campaigns.push(Campaign {
            name: format!("{tenant}-welcome"),
            variants: &[""],
            send_at: self.now - Duration::days(days),
            audience: self.rng.random_range(lo..=hi.max(lo)),
            spread: Duration::days(days),
        });
        campaigns
    }

    fn message(&mut self, tenant: &str, c: &Campaign, i: usize, r: &Recipient) {
        let variant = c.variants[i % c.variants.len()];
        let message_id = format!("<{}.{i}@mail.{tenant}.example>", c.name);
        // Evenly over the spread with a little jitter; the last message a minute before now
        // for the welcome mail.
        let step = c.spread.num_seconds() / c.audience.max(1) as i64;
        let jitter = if i + 1 == c.audience { 0 } else { self.rng.random_range(0..step.max(1)) };
        let sent_at = (c.send_at + Duration::seconds(step * (i as i64 + 1) - jitter)).min(self.now - Duration::minutes(1));
        let provider = Provider::from_recipient(&r.address);
        let ev = |g: &mut Generator, t: EventType, at: DateTime<Utc>| Event {
            campaign: c.name.clone(),
            variant: variant.to_string(),
            message_id: message_id.clone(),
            recipient: r.address.clone(),
            ..Event::new(uuid::Uuid::from_u128(g.rng.random()), tenant, t, at)
        };
        // The triggered welcome mail goes out on the transactional stream, broadcasts on the
        // marketing one: an unsubscribe suppresses only its own stream.
        let stream = if c.name.ends_with("-welcome") { "transactional" } else { "marketing" };
        let mut e = ev(self, EventType::Sent, sent_at);
        e.stream = Some(stream.into());
        self.push(e);
        let roll: f64 = self.rng.random();
        let corporate = provider == Provider::Other;
        let hard = if corporate { 0.02 } else { 0.008 };
        if roll < hard || roll < hard + 0.008 {
            let at = sent_at + Duration::seconds(self.rng.random_range(1..20));
            let mut e = ev(self, EventType::Bounced, at);
            let is_hard = roll < hard;
            e.bounce_class = Some(if is_hard { BounceClass::Hard } else { BounceClass::Soft });
            // One hard bounce in ten is a policy rejection taken for hard: a doubtful one, which
            // the suppression list holds for 30 days only (chosen without the generator's random
            // numbers, so the fixtures built from it stay as they were).
            let (status, reason) = match (is_hard, i % 10 == 3) {
                (true, false) => ("5.1.1", "550 5.1.1 user unknown"),
                (true, true) => ("5.7.1", "550 5.7.1 message rejected by policy"),
                (false, _) => ("4.2.2", "452 4.2.2 mailbox full"),
            };
            e.status = Some(status.into());
            e.reason = Some(reason.into());
            self.push(e);
            return;
        }
        let mut delivered_at = sent_at + Duration::seconds(self.rng.random_range(1..30));
        if self.rng.random_bool(0.04) {
            let mut e = ev(self, EventType::Deferred, sent_at + Duration::seconds(5));
            e.status = Some("4.7.0".into());
            e.reason = Some("421 4.7.0 try again later".into());
            self.push(e);
            delivered_at = sent_at + Duration::minutes(self.rng.random_range(10..180));
        }
        let e = ev(self, EventType::Delivered, delivered_at);
        self.push(e);

        let provider_factor = match provider {
            Provider::Apple => 1.6,
            Provider::Outlook => 0.8,
            _ => 1.0,
        };
        let variant_factor = if variant == "B" { 1.18 } else { 1.0 };
        let p_open = (0.3 * r.engagement * provider_factor * variant_factor).min(0.95);
        if self.rng.random_bool(p_open) {
            let first_open = self.engaged_time(delivered_at, r.tz, 8.0);
            let opens = 1 + (self.rng.random::<f64>().ln() / 0.55f64.ln()) as usize;
            let mut t = first_open;
            for _ in 0..opens.min(6) {
                let mut e = ev(self, EventType::Open, t);
                e.user_agent = Some(USER_AGENTS[self.rng.random_range(0..USER_AGENTS.len())].into());
                self.push(e);
                t = self.engaged_time(t, r.tz, 20.0);
            }
            if self.rng.random_bool((0.2 * r.engagement * variant_factor).min(0.9)) {
                let clicked_at = first_open + Duration::seconds(self.rng.random_range(5..600));
                for k in 0..self.rng.random_range(1..=2) {
                    let mut e = ev(self, EventType::Click, clicked_at + Duration::minutes(k * 3));
                    e.link = Some(format!("https://{tenant}.example/{}?utm_campaign={}", ["shop", "pricing", "blog", "offer"][k as usize % 4], c.name));
                    self.push(e);
                }
                if self.rng.random_bool(0.1) {
                    let at = clicked_at + Duration::minutes(self.rng.random_range(2..240));
                    let mut e = ev(self, EventType::Conversion, at);
                    e.revenue_micros = Some(self.rng.random_range(15_000_000..250_000_000) / 10_000 * 10_000);
                    e.currency = Some("USD".into());
                    self.push(e);
                }
            }
        }
        let after = self.engaged_time(delivered_at, r.tz, 24.0);
        let reply_rate = if tenant == "globex" { 0.04 } else { 0.008 };
        let complaint_rate = if matches!(provider, Provider::Yahoo | Provider::Outlook) { 0.002 } else { 0.0006 };
        for (t, p) in [
            (EventType::Unsubscribe, 0.004),
            (EventType::Complaint, complaint_rate),
            (EventType::Reply, reply_rate),
            (EventType::AutoReply, 0.015),
        ] {
            if self.rng.random_bool(p) {
                let at = if t == EventType::AutoReply { delivered_at + Duration::seconds(self.rng.random_range(2..60)) } else { after };
                let mut e = ev(self, t, at);
                if t == EventType::Unsubscribe {
                    e.stream = Some(stream.into());
                }
                if t == EventType::Complaint {
                    e.reason = Some("feedback:abuse".into());
                }
                self.push(e);
            }
        }
    }

    /// A time after `from` when the recipient is likely at their mail: an exponential delay,
    /// kept with the chance of that local hour and weekday.
    fn engaged_time(&mut self, from: DateTime<Utc>, tz: Tz, mean_hours: f64) -> DateTime<Utc> {
        let mut candidate = from;
        for _ in 0..12 {
            let delay = -mean_hours * 3600.0 * (1.0 - self.rng.random::<f64>()).ln();
            candidate = from + Duration::seconds(delay as i64 + 1);
            let local = candidate.with_timezone(&tz);
            let weekday = if local.weekday().number_from_monday() > 5 { 0.55 } else { 1.0 };
            if self.rng.random::<f64>() < HOUR_WEIGHT[local.hour() as usize] * weekday {
                break;
            }
        }
        candidate
    }

    fn push(&mut self, e: Event) {
        if e.occurred_at <= self.now {
            self.out.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_has_every_kind_of_event_and_a_daily_rhythm() {
        let mut profile = Profile::demo();
        profile.recipients_per_tenant = 2000;
        profile.audience = (400, 600);
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
        let mut events = Vec::new();
        Generator::new(profile, now).run(10_000, |chunk, _| events.extend(chunk));
        for t in EventType::ALL {
            assert!(events.iter().any(|e| e.event_type == t), "no {t:?} events");
        }
        assert!(events.iter().all(|e| e.occurred_at <= now && e.occurred_at > now - Duration::days(91)));
        // Traffic runs up to the minute the demo starts, and the last week is full.
        let latest = events.iter().map(|e| e.occurred_at).max().unwrap();
        assert!(latest >= now - Duration::minutes(5), "the latest event is at {latest}");
        let last_week = events.iter().filter(|e| e.event_type == EventType::Sent && e.occurred_at > now - Duration::days(7)).count();
        let sent = events.iter().filter(|e| e.event_type == EventType::Sent).count();
        assert!(last_week * 20 > sent, "only {last_week} of {sent} sends in the last week");
        let opens: Vec<_> = events.iter().filter(|e| e.event_type == EventType::Open).collect();
        let mut by_hour = [0usize; 24];
        for e in &opens {
            by_hour[e.occurred_at.hour() as usize] += 1;
        }
        let (lo, hi) = (by_hour.iter().min().unwrap(), by_hour.iter().max().unwrap());
        assert!(opens.len() > 1000 && hi > &(2 * lo), "opens by UTC hour are flat: {by_hour:?}");
        let mut ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), events.len());
    }
}
