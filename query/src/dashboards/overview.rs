//! `GET /v1/stats/overview`: totals, rates and daily counts of a range in a time zone, for all
//! campaigns or one.

use super::{frame, store_error, Dashboard, Url};
use crate::QueryState;
use axum::extract::State;
use axum::Json;
use mailpipe_http::{ApiError, Key};
use mailpipe_schemas::{BounceClass, EventType};
use mailpipe_store::{Aggregate, AggregateAnswer, EventStore, Filters, Frame, Grain, Measure};
use serde::{Deserialize, Serialize};

pub struct Overview;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// First day (YYYY-MM-DD, in `tz`); default (also when empty): 29 days before `to`.
    #[param(example = "2026-11-01", pattern = "^([0-9]{4}-[0-9]{2}-[0-9]{2})?$")]
    pub from: Option<String>,
    /// Last day, included; default (also when empty): today in `tz`. At most 366 days after `from`.
    #[param(example = "2026-11-30", pattern = "^([0-9]{4}-[0-9]{2}-[0-9]{2})?$")]
    pub to: Option<String>,
    /// Only this campaign.
    #[param(example = "spring-sale")]
    pub campaign: Option<String>,
    /// IANA time zone of the days; default UTC.
    #[param(example = "Europe/Paris")]
    pub tz: Option<String>,
}

/// The measures behind `Totals`, in the order of its fields.
const MEASURES: [Measure; 15] = [
    Measure::Count(EventType::Sent),
    Measure::Count(EventType::Delivered),
    Measure::Count(EventType::Deferred),
    Measure::Bounces(BounceClass::Hard),
    Measure::Bounces(BounceClass::Soft),
    Measure::Count(EventType::Open),
    Measure::FirstPerMessage(EventType::Open),
    Measure::Count(EventType::Click),
    Measure::FirstPerMessage(EventType::Click),
    Measure::FirstPerMessage(EventType::Unsubscribe),
    Measure::FirstPerMessage(EventType::Complaint),
    Measure::Count(EventType::Reply),
    Measure::Count(EventType::AutoReply),
    Measure::Count(EventType::Conversion),
    Measure::RevenueMicros,
];

/// Counts for a range. Opens and clicks come as totals and as unique messages; unsubscribes
/// and complaints count each message once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    fn of(v: &[i64]) -> Totals {
        let n = |i: usize| v[i].max(0) as u64;
        Totals {
            sent: n(0),
            delivered: n(1),
            deferred: n(2),
            hard_bounces: n(3),
            soft_bounces: n(4),
            opens: n(5),
            unique_opens: n(6),
            clicks: n(7),
            unique_clicks: n(8),
            unsubscribes: n(9),
            complaints: n(10),
            replies: n(11),
            auto_replies: n(12),
            conversions: n(13),
            revenue_micros: v[14],
        }
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
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

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DayTotals {
    pub date: chrono::NaiveDate,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Answer {
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
    pub tz: String,
    pub campaign: Option<String>,
    pub totals: Totals,
    pub rates: Rates,
    pub daily: Vec<DayTotals>,
}

/// Overview of a range
///
/// Totals, rates and daily counts of the days `from..=to` in `tz`, for all campaigns or one.
/// A message's first open, click, unsubscribe and complaint count in the day they happened.
#[utoipa::path(
    get,
    path = "/v1/stats/overview",
    tag = "stats",
    params(Params),
    responses((status = 200, description = "The range's numbers.", body = Answer)),
    security(("api_key" = ["stats:read"])),
)]
async fn route(state: State<QueryState>, key: Key, params: Url<Params>) -> Result<Json<Answer>, ApiError> {
    super::handle::<Overview>(state, key, params).await
}

impl Dashboard for Overview {
    const NAME: &'static str = "overview";
    type Params = Params;
    type Answer = Answer;

    fn route() -> utoipa_axum::router::UtoipaMethodRouter<QueryState> {
        utoipa_axum::routes!(route)
    }

    async fn answer(store: &dyn EventStore, tenant: &str, p: Params) -> Result<Answer, ApiError> {
        let frame = frame(p.from.as_deref(), p.to.as_deref(), p.tz.as_deref(), Grain::Day)?;
        let campaign = p.campaign.filter(|c| !c.is_empty());
        let q = Aggregate { frame: Some(frame.clone()), filters: Filters { campaign: campaign.clone(), variant: None }, group_by: vec![], measures: MEASURES.to_vec() };
        let answer = store.aggregate(tenant, &q).await.map_err(store_error)?;
        Ok(shape(&frame, campaign, &answer))
    }
}

fn shape(frame: &Frame, campaign: Option<String>, a: &AggregateAnswer) -> Answer {
    let daily: Vec<DayTotals> = frame
        .days()
        .into_iter()
        .map(|date| {
            let row = a.rows.iter().find(|r| r.bucket == Frame::day_bucket(date));
            DayTotals { date, totals: row.map_or_else(Totals::default, |r| Totals::of(&r.values)) }
        })
        .collect();
    let mut sums = vec![0i64; MEASURES.len()];
    for row in &a.rows {
        for (s, v) in sums.iter_mut().zip(&row.values) {
            *s += v;
        }
    }
    let totals = Totals::of(&sums);
    Answer { from: frame.from, to: frame.to, tz: frame.tz.name().to_string(), campaign, totals, rates: totals.rates(), daily }
}
