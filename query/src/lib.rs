//! The query role: the HTTP API over the store's typed queries, scoped to the tenant of the
//! API key, and the dashboard pages (from `dashboards/`).

use axum::extract::{Query as UrlQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use mailpipe_http::{authorize, ApiError};
use mailpipe_store::{Answer, EventStore, OverviewQuery, Query, StoreError};
use mailpipe_tenants::{Registry, Scope};
use serde::Deserialize;
use std::sync::Arc;

pub struct QueryState {
    pub store: Arc<dyn EventStore>,
    pub registry: Arc<Registry>,
}

pub fn router(state: Arc<QueryState>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(include_str!("../../dashboards/index.html")) }))
        .route("/assets/dashboard.js", get(|| async { asset("text/javascript", include_str!("../../dashboards/dashboard.js")) }))
        .route("/assets/dashboard.css", get(|| async { asset("text/css", include_str!("../../dashboards/dashboard.css")) }))
        .route("/v1/stats/overview", get(overview))
        .route("/v1/campaigns", get(campaigns))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverviewParams {
    from: Option<String>,
    to: Option<String>,
    campaign: Option<String>,
    tz: Option<String>,
}

/// The overview query of the request: `to` defaults to today in `tz`, `from` to 29 days
/// before `to`, `tz` to UTC.
fn overview_query(p: OverviewParams) -> Result<OverviewQuery, ApiError> {
    let tz: Tz = match p.tz.as_deref().filter(|s| !s.is_empty()) {
        None => chrono_tz::UTC,
        Some(name) => name.parse().map_err(|_| ApiError::bad_request("tz", format!("unknown time zone {name:?}; use an IANA name such as Europe/Paris")))?,
    };
    let date = |field: &str, value: &str| {
        NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| ApiError::bad_request(field, "must be a date YYYY-MM-DD"))
    };
    let to = match p.to.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => date("to", s)?,
        None => Utc::now().with_timezone(&tz).date_naive(),
    };
    let from = match p.from.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => date("from", s)?,
        None => to - Duration::days(29),
    };
    let q = OverviewQuery { from, to, campaign: p.campaign.filter(|c| !c.is_empty()), tz };
    q.validate().map_err(|e| ApiError::bad_request(if matches!(e, mailpipe_store::QueryError::Reversed { .. }) { "from" } else { "to" }, e.to_string()))?;
    Ok(q)
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Query(q) => ApiError::bad_request("query", q.to_string()),
        other => {
            tracing::error!(error = %other, "store query failed");
            ApiError::unavailable("the store cannot answer right now; retry")
        }
    }
}

async fn overview(
    State(state): State<Arc<QueryState>>,
    headers: HeaderMap,
    params: Result<UrlQuery<OverviewParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Answer>, ApiError> {
    let principal = authorize(&headers, &state.registry, Scope::Read)?;
    let UrlQuery(params) = params.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let q = overview_query(params)?;
    let answer = state.store.query(&principal.tenant, Query::Overview(q)).await.map_err(store_error)?;
    Ok(Json(answer))
}

async fn campaigns(State(state): State<Arc<QueryState>>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = authorize(&headers, &state.registry, Scope::Read)?;
    let answer = state.store.query(&principal.tenant, Query::Campaigns).await.map_err(store_error)?;
    Ok(Json(serde_json::json!({ "tenant": principal.tenant, "campaigns": answer })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(from: Option<&str>, to: Option<&str>, tz: Option<&str>) -> OverviewParams {
        OverviewParams { from: from.map(String::from), to: to.map(String::from), campaign: Some(String::new()), tz: tz.map(String::from) }
    }

    #[test]
    fn defaults_cover_the_last_thirty_days() {
        let q = overview_query(params(None, Some("2026-11-21"), None)).unwrap();
        assert_eq!(q.from, NaiveDate::from_ymd_opt(2026, 10, 23).unwrap());
        assert_eq!(q.campaign, None);
        assert_eq!(q.tz, chrono_tz::UTC);
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let field = |p| overview_query(p).unwrap_err().errors[0].field.clone();
        assert_eq!(field(params(Some("21/11/2026"), None, None)), "from");
        assert_eq!(field(params(None, None, Some("Mars/Olympus"))), "tz");
        assert_eq!(field(params(Some("2026-11-22"), Some("2026-11-21"), None)), "from");
        assert_eq!(field(params(Some("2000-01-01"), Some("2026-11-21"), None)), "to");
    }
}
