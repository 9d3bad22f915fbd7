//! The questions the API asks a store, and their answers. Every store answers these; the
//! parity suite holds them to the same numbers.

use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use serde::Serialize;

/// Longest range one overview covers, so a request cannot ask for centuries of days.
pub const MAX_RANGE_DAYS: i64 = 731;

#[derive(Clone, Debug, PartialEq)]
pub enum Query {
    Overview(OverviewQuery),
    Campaigns,
    /// The send a message id belongs to (to join bounces, complaints and replies to it).
    Message { message_id: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct OverviewQuery {
    /// First day, inclusive, in `tz`.
    pub from: NaiveDate,
    /// Last day, inclusive, in `tz`.
    pub to: NaiveDate,
    pub campaign: Option<String>,
    pub tz: Tz,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("`from` ({from}) is after `to` ({to})")]
    Reversed { from: NaiveDate, to: NaiveDate },
    #[error("the range is {0} days; at most {MAX_RANGE_DAYS} are allowed")]
    TooLong(i64),
}

impl OverviewQuery {
    /// One empty day per day of the range, to be filled by a store.
    pub fn empty_days(&self) -> Vec<DayTotals> {
        self.day_boundaries().0.into_iter().map(|date| DayTotals { date, totals: Totals::default() }).collect()
    }

    /// The answer made of the filled days: totals and rates follow from them.
    pub fn answer(&self, daily: Vec<DayTotals>) -> Overview {
        let mut totals = Totals::default();
        for d in &daily {
            totals.add(&d.totals);
        }
        Overview {
            from: self.from,
            to: self.to,
            tz: self.tz.name().to_string(),
            campaign: self.campaign.clone(),
            totals,
            rates: totals.rates(),
            daily,
        }
    }

    pub fn validate(&self) -> Result<(), QueryError> {
        if self.from > self.to {
            return Err(QueryError::Reversed { from: self.from, to: self.to });
        }
        let days = (self.to - self.from).num_days() + 1;
        if days > MAX_RANGE_DAYS {
            return Err(QueryError::TooLong(days));
        }
        Ok(())
    }

    /// The days of the range, each with the UTC milliseconds where it starts, plus the end of
    /// the last day: `days.len() + 1` boundaries.
    pub fn day_boundaries(&self) -> (Vec<NaiveDate>, Vec<i64>) {
        let mut days = Vec::new();
        let mut bounds = Vec::new();
        let mut day = self.from;
        loop {
            bounds.push(local_midnight_ms(self.tz, day));
            if day > self.to {
                break;
            }
            days.push(day);
            day = day.succ_opt().unwrap_or(day);
        }
        (days, bounds)
    }
}

/// Milliseconds since the epoch of the first instant of `day` in `tz` (days that start in a
/// DST gap start at the first instant that exists).
fn local_midnight_ms(tz: Tz, day: NaiveDate) -> i64 {
    let mut t = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..8 {
        if let Some(dt) = tz.from_local_datetime(&t).earliest() {
            return dt.timestamp_millis();
        }
        t += chrono::Duration::minutes(15);
    }
    t.and_utc().timestamp_millis()
}

/// Counts for a range. Opens and clicks come as totals and as unique messages; unsubscribes
/// and complaints count each message once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub sent: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub hard_bounces: u64,
    pub soft_bounces: u64,
    pub opens: u64,
    pub unique_opens: u64,
    pub clicks: u64,
    pub unique_clicks: u64,
    pub unsubscribes: u64,
    pub complaints: u64,
    pub replies: u64,
    pub auto_replies: u64,
    pub conversions: u64,
    /// Sum of conversion revenue, in millionths of the currency unit.
    pub revenue_micros: i64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.sent += o.sent;
        self.delivered += o.delivered;
        self.deferred += o.deferred;
        self.hard_bounces += o.hard_bounces;
        self.soft_bounces += o.soft_bounces;
        self.opens += o.opens;
        self.unique_opens += o.unique_opens;
        self.clicks += o.clicks;
        self.unique_clicks += o.unique_clicks;
        self.unsubscribes += o.unsubscribes;
        self.complaints += o.complaints;
        self.replies += o.replies;
        self.auto_replies += o.auto_replies;
        self.conversions += o.conversions;
        self.revenue_micros += o.revenue_micros;
    }

    pub fn rates(&self) -> Rates {
        let r = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        Rates {
            delivery_rate: r(self.delivered, self.sent),
            open_rate: r(self.unique_opens, self.delivered),
            click_rate: r(self.unique_clicks, self.delivered),
            click_to_open_rate: r(self.unique_clicks, self.unique_opens),
            bounce_rate: r(self.hard_bounces + self.soft_bounces, self.sent),
            complaint_rate: r(self.complaints, self.delivered),
            unsubscribe_rate: r(self.unsubscribes, self.delivered),
            reply_rate: r(self.replies, self.delivered),
            conversion_rate: r(self.conversions, self.delivered),
        }
    }
}

/// Ratios of the totals; 0 where the denominator is 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    pub delivery_rate: f64,
    pub open_rate: f64,
    pub click_rate: f64,
    pub click_to_open_rate: f64,
    pub bounce_rate: f64,
    pub complaint_rate: f64,
    pub unsubscribe_rate: f64,
    pub reply_rate: f64,
    pub conversion_rate: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DayTotals {
    pub date: NaiveDate,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Overview {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub tz: String,
    pub campaign: Option<String>,
    pub totals: Totals,
    pub rates: Rates,
    pub daily: Vec<DayTotals>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CampaignSummary {
    pub campaign: String,
    pub variants: Vec<String>,
    pub sent: u64,
    pub first_event_ms: i64,
    pub last_event_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Overview(Overview),
    Campaigns(Vec<CampaignSummary>),
    Message(Option<SentMessage>),
}

/// Where a sent message was counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SentMessage {
    pub campaign: String,
    pub variant: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_boundaries_follow_the_time_zone_and_dst() {
        let q = OverviewQuery {
            from: NaiveDate::from_ymd_opt(2026, 3, 28).unwrap(),
            to: NaiveDate::from_ymd_opt(2026, 3, 29).unwrap(),
            campaign: None,
            tz: chrono_tz::Europe::Paris,
        };
        let (days, bounds) = q.day_boundaries();
        assert_eq!(days.len(), 2);
        assert_eq!(bounds.len(), 3);
        // 28 March is 24 h long in Paris; 29 March (spring forward) is 23 h.
        assert_eq!(bounds[1] - bounds[0], 24 * 3_600_000);
        assert_eq!(bounds[2] - bounds[1], 23 * 3_600_000);
        assert_eq!(bounds[0], chrono::DateTime::parse_from_rfc3339("2026-03-27T23:00:00Z").unwrap().timestamp_millis());
    }

    #[test]
    fn reversed_and_huge_ranges_are_refused() {
        let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).unwrap();
        let q = |from, to| OverviewQuery { from, to, campaign: None, tz: chrono_tz::UTC };
        assert!(matches!(q(d(2026, 2, 1), d(2026, 1, 1)).validate(), Err(QueryError::Reversed { .. })));
        assert!(matches!(q(d(2020, 1, 1), d(2026, 1, 1)).validate(), Err(QueryError::TooLong(_))));
        assert!(q(d(2026, 1, 1), d(2026, 1, 1)).validate().is_ok());
    }
}
