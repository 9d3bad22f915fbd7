//! What every HTTP role shares: the one mapping of errors to status codes and JSON bodies
//! (`{"errors": [{"index"?, "field", "reason"}]}`), the guard in front of every route (API
//! keys, scopes, rate limits, JSON errors, request metrics: `guard`), and the conventions of
//! the OpenAPI document (`openapi`).

pub mod guard;
pub mod openapi;
pub mod serve;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use mailpipe_tenants::Principal;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub use guard::{Guard, Rule};
pub use serve::{serve, Limits};

/// One problem of a request.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"index": 3, "field": "recipient", "reason": "must be an email address (local@domain)"}))]
pub struct FieldError {
    /// The position of the item in a request that carries several (events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The field, parameter or header at fault; empty when the request as a whole is.
    pub field: String,
    pub reason: String,
}

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"errors": [{"field": "tz", "reason": "unknown time zone \"Mars/Olympus\"; use an IANA name such as Europe/Paris"}]}))]
pub struct ErrorBody {
    pub errors: Vec<FieldError>,
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
    /// 503, with `Retry-After: 1`.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "", reason)
    }
    pub fn not_found(field: &str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, field, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(ErrorBody { errors: self.errors })).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The key a request was authorized with, in a handler's arguments. The [`Guard`] checked it
/// (and its scope) before the handler runs; a handler mounted without the guard answers 401.
pub struct Key(pub Principal);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Key {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Key)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "authorization", "this route needs an API key"))
    }
}

/// The URL query parameters of a request, a bad one answered with a JSON 400.
pub struct Url<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Url<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(params) = axum::extract::Query::<T>::from_request_parts(parts, state).await.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
        Ok(Url(params))
    }
}

/// A JSON request body read through [`Body`], a bad one answered with a JSON 400 naming where.
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let Body(bytes) = Body::from_request(request, state).await?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| ApiError::bad_request("body", format!("invalid JSON body: {e}")))
    }
}

/// The request bodies one process receives at once (`http.max_inflight_body_bytes`): the
/// [`Guard`] hands it to keyed requests, and [`Body`] reserves a body's length from it before
/// reading a byte, so that many large bodies at once are refused instead of filling memory.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
    /// Reserved for a body that does not say its length (chunked): the largest one allowed.
    unknown_length_kib: u32,
}

impl BodyBudget {
    pub fn new(max_inflight_bytes: usize, max_body_bytes: usize) -> BodyBudget {
        let total_kib = kib(max_inflight_bytes as u64, Semaphore::MAX_PERMITS as u32).max(1);
        BodyBudget { kib: Arc::new(Semaphore::new(total_kib as usize)), total_kib, unknown_length_kib: kib(max_body_bytes as u64, total_kib) }
    }

    /// Reserves room for a body of `length` bytes (unknown: the largest allowed) until the
    /// permit is dropped; `None` when the process is receiving too much already.
    pub fn reserve(&self, length: Option<u64>) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let kib = length.map_or(self.unknown_length_kib, |bytes| kib(bytes, self.total_kib));
        self.kib.clone().try_acquire_many_owned(kib).ok()
    }
}

/// `bytes` in KiB, rounded up, at most `max`.
fn kib(bytes: u64, max: u32) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).min(max)
}

/// The body of a request as bytes, with its limit and read errors answered in JSON, read only
/// when the process's [`BodyBudget`] has room for it.
pub struct Body(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let _reserved = match request.extensions().get::<BodyBudget>() {
            None => None,
            Some(budget) => {
                let length = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
                match budget.reserve(length) {
                    Some(permit) => Some(permit),
                    None => {
                        metrics::counter!("mailpipe_http_bodies_refused_total").increment(1);
                        return Err(ApiError::unavailable("the server is receiving too many request bodies at once (http.max_inflight_body_bytes); retry"));
                    }
                }
            }
        };
        axum::body::Bytes::from_request(request, state).await.map(Body).map_err(|e| {
            let status = e.status();
            let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "the body is larger than this route accepts (http.max_body_bytes)".to_string()
            } else {
                e.body_text()
            };
            ApiError::new(status, "body", reason)
        })
    }
}
