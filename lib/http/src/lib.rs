//! What every HTTP role shares: the one mapping of errors to status codes and JSON bodies
//! (`{"errors": [{"index"?, "field", "reason"}]}`), and API key authentication.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mailpipe_tenants::{Principal, Registry, Scope};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    pub reason: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub errors: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, field: &str, reason: impl Into<String>) -> Self {
        ApiError { status, errors: vec![FieldError { index: None, field: field.into(), reason: reason.into() }] }
    }
    pub fn bad_request(field: &str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, field, reason)
    }
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "", reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(serde_json::json!({ "errors": self.errors }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The principal of the request's `Authorization: Bearer <key>`, if it may act with `needed`.
pub fn authorize(headers: &HeaderMap, registry: &Registry, needed: Scope) -> Result<Principal, ApiError> {
    let unauthorized = |reason: &str| ApiError::new(StatusCode::UNAUTHORIZED, "authorization", reason);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <api key>"))?;
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("expected Authorization: Bearer <api key>"))?;
    let principal = registry.authenticate(key.trim()).ok_or_else(|| unauthorized("unknown API key"))?;
    if !principal.scope.allows(needed) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "authorization",
            format!("this key has scope {:?}; this call needs {:?}", principal.scope, needed).to_lowercase(),
        ));
    }
    Ok(principal)
}

/// A request authenticated by a key that may read: in a handler's arguments, it refuses the
/// request (401/403) before the handler runs. The state must give the tenant registry.
pub struct ReadKey(pub Principal);

impl<S> axum::extract::FromRequestParts<S> for ReadKey
where
    S: Send + Sync,
    std::sync::Arc<Registry>: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        let registry = <std::sync::Arc<Registry> as axum::extract::FromRef<S>>::from_ref(state);
        authorize(&parts.headers, &registry, Scope::Read).map(ReadKey)
    }
}
