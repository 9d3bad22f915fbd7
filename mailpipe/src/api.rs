//! The HTTP API as one contract: the OpenAPI 3.1 document assembled from every role's
//! documented routes (`openapi()`, served at `/v1/openapi.json`, browsable at `/docs` from
//! assets inside the binary, checked in as `schemas/http/openapi.json`), and the guard that
//! enforces what the document declares (`guarded`).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Router;
use mailpipe_config::Config;
use mailpipe_http::openapi::Conventions;
use mailpipe_http::Guard;
use mailpipe_tenants::Registry;
use std::sync::Arc;
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mailpipe",
        description = "Analytics and deliverability pipeline for email senders: sending nodes report outcomes, mail clients hit tracking links, dashboards read the numbers. Every `/v1/` operation but this document takes an API key (`Authorization: Bearer mp_live_...`) with the one scope it names, and is rate limited per key (`RateLimit-*` headers). Every error answer is `{\"errors\": [{\"index\"?, \"field\", \"reason\"}]}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "events", description = "Outcomes reported by sending nodes."),
        (name = "inbound", description = "Raw inbound mail: bounces, complaints, replies."),
        (name = "tracking", description = "What recipients' mail clients reach: public, never rate limited."),
        (name = "stats", description = "Dashboards and statistics of the key's tenant."),
        (name = "suppressions", description = "The addresses a tenant must not mail: checks before a send, history, manual changes, the changes feed, imports."),
        (name = "operations", description = "Health, readiness, metrics and this document."),
    ),
)]
struct Doc;

/// The whole API's document: every role's routes, whichever roles this process runs.
pub fn openapi() -> Document {
    let mut doc = Doc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.merge(mailpipe_ingest::api().into_openapi());
    doc.merge(mailpipe_query::api().into_openapi());
    doc.merge(mailpipe_suppression::api().into_openapi());
    doc.merge(crate::ops_api().into_openapi());
    Conventions.modify(&mut doc);
    doc
}

/// The document as served and checked in: pretty JSON with a final newline.
pub fn openapi_json() -> String {
    let mut json = openapi().to_pretty_json().unwrap_or_default();
    json.push('\n');
    json
}

/// The guard of the document's routes, with this configuration's rate limits and budget of
/// request bodies (one guard per process).
pub fn guard(config: &Config, registry: Arc<Registry>) -> Guard {
    let budget = mailpipe_http::BodyBudget::new(config.http.max_inflight_body_bytes, config.http.max_body_bytes.max(mailpipe_schemas::INBOUND_MAX_BYTES));
    Guard::new(registry, config.http.rate_limits, &openapi()).with_body_budget(budget)
}

/// `router` behind `guard`, with `/docs`, and a JSON 404 for paths no route serves.
pub fn guarded(router: Router, guard: Guard) -> Router {
    let docs: Router = utoipa_swagger_ui::SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/v1/openapi.json")).into();
    router
        .merge(docs)
        .route_layer(axum::middleware::from_fn_with_state(Arc::new(guard), mailpipe_http::guard::layer))
        .fallback(mailpipe_http::guard::not_found)
}

/// The document, made once per process (cloning it shares the bytes).
#[derive(Clone)]
pub struct DocumentJson(pub axum::body::Bytes);

/// This document
///
/// The OpenAPI 3.1 description of every operation (the one `/docs` shows).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document.", content_type = "application/json", body = Object, example = json!({"openapi": "3.1.0", "info": {"title": "mailpipe"}, "paths": {}}))),
)]
pub(crate) async fn document(State(doc): State<DocumentJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}
