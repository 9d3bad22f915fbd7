//! The query role: the HTTP API over the store's analytics questions, scoped to the tenant of
//! the API key (`dashboards/`: one module per endpoint), and the dashboard pages (from the
//! top-level `dashboards/` folder).

pub mod dashboards;

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use mailpipe_store::EventStore;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;

#[derive(Clone)]
pub struct QueryState {
    pub store: Arc<dyn EventStore>,
}

/// The query role's API routes with their documentation.
pub fn api() -> OpenApiRouter<QueryState> {
    dashboards::routes(OpenApiRouter::new())
}

/// The API and the dashboard pages.
pub fn router(state: Arc<QueryState>) -> Router {
    let pages = Router::new()
        .route("/", get(|| async { Html(include_str!("../../dashboards/index.html")) }))
        .route("/suppressions", get(|| async { Html(include_str!("../../dashboards/suppressions.html")) }))
        .route("/assets/common.js", get(|| async { asset("text/javascript", include_str!("../../dashboards/common.js")) }))
        .route("/assets/dashboard.js", get(|| async { asset("text/javascript", include_str!("../../dashboards/dashboard.js")) }))
        .route("/assets/suppressions.js", get(|| async { asset("text/javascript", include_str!("../../dashboards/suppressions.js")) }))
        .route("/assets/dashboard.css", get(|| async { asset("text/css", include_str!("../../dashboards/dashboard.css")) }));
    let (api, _) = api().with_state((*state).clone()).split_for_parts();
    api.merge(pages)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}
