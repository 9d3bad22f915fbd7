//! Dashboards as small modules: each analytics endpoint is one file that turns its parameters
//! into `Aggregate` questions and shapes the answer, and documents its route (`route`, with
//! its `#[utoipa::path]`: path, parameters, answer, scope). One generic handler serves them
//! all and one list (`dashboards()`) registers them, so the router, the OpenAPI document, the
//! guard's scope check and the golden cases (`query/cases/<name>/`) all come from that list.

pub mod campaigns;
pub mod overview;

use crate::QueryState;
use axum::extract::State;
use axum::Json;
use chrono::{Datelike, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use mailpipe_http::{ApiError, Key};
use mailpipe_store::{EventStore, Frame, Grain, QueryError, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use utoipa_axum::router::UtoipaMethodRouter;

pub trait Dashboard: 'static {
    /// Its name: the folder of its golden cases.
    const NAME: &'static str;
    /// The URL query parameters.
    type Params: DeserializeOwned + Send + 'static;
    type Answer: Serialize + Send + 'static;

    fn answer(store: &dyn EventStore, tenant: &str, params: Self::Params) -> impl Future<Output = Result<Self::Answer, ApiError>> + Send;

    /// Its documented route: `routes!(route)` of the module's `route`, which calls [`handle`].
    fn route() -> UtoipaMethodRouter<QueryState>;
}

pub use mailpipe_http::Url;

/// What every dashboard's `route` does: the answer to the key's tenant.
pub async fn handle<D: Dashboard>(State(state): State<QueryState>, Key(principal): Key, Url(params): Url<D::Params>) -> Result<Json<D::Answer>, ApiError> {
    Ok(Json(D::answer(state.store.as_ref(), &principal.tenant, params).await?))
}

type JsonFuture<'a> = Pin<Box<dyn Future<Output = Result<serde_json::Value, ApiError>> + Send + 'a>>;

/// A registered dashboard.
pub struct Entry {
    pub name: &'static str,
    /// Its path, as its route documents it.
    pub path: String,
    pub(crate) route: UtoipaMethodRouter<QueryState>,
    /// The answer to a URL query string (`from=...&tz=...`), as JSON: what the endpoint
    /// would send, without HTTP (golden cases, parity).
    pub answer: for<'a> fn(&'a dyn EventStore, &'a str, &'a str) -> JsonFuture<'a>,
}

fn entry<D: Dashboard>() -> Entry {
    let route = D::route();
    Entry {
        name: D::NAME,
        path: route.1.paths.keys().next().cloned().unwrap_or_default(),
        route,
        answer: |store, tenant, query| {
            Box::pin(async move {
                let uri: axum::http::Uri = format!("/?{query}").parse().map_err(|_| ApiError::bad_request("query", "not a URL query string"))?;
                let axum::extract::Query(params) = axum::extract::Query::<D::Params>::try_from_uri(&uri).map_err(|e| ApiError::bad_request("query", e.body_text()))?;
                let answer = D::answer(store, tenant, params).await?;
                serde_json::to_value(answer).map_err(|e| ApiError::unavailable(e.to_string()))
            })
        },
    }
}

/// Every dashboard, in the order of the documentation.
pub fn dashboards() -> Vec<Entry> {
    vec![entry::<overview::Overview>(), entry::<campaigns::Campaigns>()]
}

pub(crate) fn routes(mut router: utoipa_axum::router::OpenApiRouter<QueryState>) -> utoipa_axum::router::OpenApiRouter<QueryState> {
    for d in dashboards() {
        router = router.routes(d.route);
    }
    router
}

/// The frame of a request's `from`, `to` (dates, inclusive) and `tz` (IANA name): `to`
/// defaults to today in `tz`, `from` to 29 days before `to`, `tz` to UTC.
pub fn frame(from: Option<&str>, to: Option<&str>, tz: Option<&str>, grain: Grain) -> Result<Frame, ApiError> {
    let tz: Tz = match tz.filter(|s| !s.is_empty()) {
        None => chrono_tz::UTC,
        Some(name) => name.parse().map_err(|_| ApiError::bad_request("tz", format!("unknown time zone {name:?}; use an IANA name such as Europe/Paris")))?,
    };
    let date = |field: &str, value: &str| {
        NaiveDate::parse_from_str(value, "%Y-%m-%d")
            .ok()
            .filter(|d| (1970..=9999).contains(&d.year()))
            .ok_or_else(|| ApiError::bad_request(field, "must be a date YYYY-MM-DD between 1970-01-01 and 9999-12-31"))
    };
    let to = match to.filter(|s| !s.is_empty()) {
        Some(s) => date("to", s)?,
        None => Utc::now().with_timezone(&tz).date_naive(),
    };
    let from = match from.filter(|s| !s.is_empty()) {
        Some(s) => date("from", s)?,
        None => to - Duration::days(29),
    };
    let frame = Frame::new(from, to, tz, grain);
    let field = |e: &QueryError| match e {
        QueryError::TooLong(_) => "to",
        QueryError::OddOffset => "tz",
        _ => "from",
    };
    frame.validate().map_err(|e| ApiError::bad_request(field(&e), e.to_string()))?;
    Ok(frame)
}

/// The one mapping of store errors for dashboards: a bad question is the caller's (400), the
/// rest is the store's (503, retry).
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Query(q) => ApiError::bad_request("query", q.to_string()),
        other => {
            // During an outage every request fails alike: one line per interval, with a count.
            static FAILURES: std::sync::OnceLock<mailpipe_bus::Throttle> = std::sync::OnceLock::new();
            if let Some(failures) = FAILURES.get_or_init(|| mailpipe_bus::Throttle::every(std::time::Duration::from_secs(10))).log() {
                tracing::error!(error = %other, failures, "store query failed ({failures} since the last line like this)");
            }
            ApiError::unavailable("the store cannot answer right now; retry")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_the_last_thirty_days() {
        let f = frame(None, Some("2026-11-21"), None, Grain::Day).unwrap();
        assert_eq!(f.from, NaiveDate::from_ymd_opt(2026, 10, 23).unwrap());
        assert_eq!(f.tz, chrono_tz::UTC);
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let field = |from, to, tz| frame(from, to, tz, Grain::Day).unwrap_err().errors[0].field.clone();
        assert_eq!(field(Some("21/11/2026"), None, None), "from");
        assert_eq!(field(None, None, Some("Mars/Olympus")), "tz");
        assert_eq!(field(Some("2026-11-22"), Some("2026-11-21"), None), "from");
        assert_eq!(field(Some("2000-01-01"), Some("2026-11-21"), None), "to");
        assert_eq!(field(Some("1969-12-01"), Some("1970-01-31"), None), "from");
        assert_eq!(field(Some("1975-01-01"), Some("1975-01-02"), Some("Pacific/Kiritimati")), "tz");
        // Years chrono parses but no range can hold, and the default `from` before them.
        assert_eq!(field(None, Some("-262143-01-01"), None), "to");
        assert_eq!(field(None, Some("+262142-12-31"), None), "to");
        assert_eq!(field(None, Some("1970-01-05"), None), "from");
    }

    #[test]
    fn every_dashboard_has_its_own_path_and_golden_folder() {
        let all = dashboards();
        let mut paths: Vec<&str> = all.iter().map(|d| d.path.as_str()).collect();
        assert!(paths.iter().all(|p| p.starts_with("/v1/")), "{paths:?}");
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), all.len());
        for d in &all {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cases").join(d.name);
            assert!(dir.is_dir(), "no golden cases for {} in {}", d.name, dir.display());
        }
    }
}
