//! `GET /v1/campaigns`: the tenant's campaigns with their variants, sent counts and the time
//! of their first and last event, latest first.

use super::{store_error, Dashboard, Url};
use crate::QueryState;
use axum::extract::State;
use axum::Json;
use mailpipe_http::{ApiError, Key};
use mailpipe_schemas::EventType;
use mailpipe_store::{Aggregate, Dimension, EventStore, Filters, Measure};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub struct Campaigns;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Params {}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CampaignSummary {
    pub campaign: String,
    pub variants: Vec<String>,
    pub sent: u64,
    pub first_event_ms: i64,
    pub last_event_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = CampaignList, example = json!({"tenant": "acme", "campaigns": [{"campaign": "spring-sale", "variants": ["A", "B"], "sent": 4980, "first_event_ms": 1763978400000i64, "last_event_ms": 1764151200000i64}]}))]
pub struct Answer {
    pub tenant: String,
    pub campaigns: Vec<CampaignSummary>,
}

/// The tenant's campaigns
///
/// Every campaign with its variants, sent count and the time of its first and last event,
/// latest first.
#[utoipa::path(
    get,
    path = "/v1/campaigns",
    tag = "stats",
    responses((status = 200, description = "The campaigns.", body = Answer)),
    security(("api_key" = ["stats:read"])),
)]
async fn route(state: State<QueryState>, key: Key, params: Url<Params>) -> Result<Json<Answer>, ApiError> {
    super::handle::<Campaigns>(state, key, params).await
}

impl Dashboard for Campaigns {
    const NAME: &'static str = "campaigns";
    type Params = Params;
    type Answer = Answer;

    fn route() -> utoipa_axum::router::UtoipaMethodRouter<QueryState> {
        utoipa_axum::routes!(route)
    }

    async fn answer(store: &dyn EventStore, tenant: &str, _: Params) -> Result<Answer, ApiError> {
        let measures = vec![Measure::Count(EventType::Sent), Measure::FirstEventMs, Measure::LastEventMs];
        let q = Aggregate { frame: None, filters: Filters::default(), group_by: vec![Dimension::Campaign, Dimension::Variant], measures };
        let answer = store.aggregate(tenant, &q).await.map_err(store_error)?;
        let mut by_name: BTreeMap<String, CampaignSummary> = BTreeMap::new();
        for row in answer.rows {
            let (campaign, variant) = (row.group[0].clone(), row.group[1].clone());
            let c = by_name.entry(campaign.clone()).or_insert(CampaignSummary { campaign, variants: Vec::new(), sent: 0, first_event_ms: i64::MAX, last_event_ms: i64::MIN });
            if !variant.is_empty() {
                c.variants.push(variant);
            }
            c.sent += row.values[0].max(0) as u64;
            c.first_event_ms = c.first_event_ms.min(row.values[1]);
            c.last_event_ms = c.last_event_ms.max(row.values[2]);
        }
        let mut campaigns: Vec<CampaignSummary> = by_name.into_values().collect();
        for c in &mut campaigns {
            c.variants.sort();
        }
        campaigns.sort_by(|a, b| b.last_event_ms.cmp(&a.last_event_ms).then_with(|| a.campaign.cmp(&b.campaign)));
        Ok(Answer { tenant: tenant.to_string(), campaigns })
    }
}
