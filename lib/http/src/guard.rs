//! The guard in front of every route, run after routing: it knows each route's rule from the
//! OpenAPI document (an operation's `security` names the one scope it needs; an operation
//! without is public), so a route's documentation and its enforcement cannot disagree. For a
//! keyed route it authenticates the key before the body is read, checks the scope and the
//! key's rate limit (a token bucket holding one minute's allowance, refilled continuously),
//! and adds the `RateLimit-*` headers. It answers a wrong method with 405, turns any plain-text
//! error of the framework into the JSON error body, and counts requests by route, status and
//! tier. A `/v1/` route the document does not list is refused: a new route must declare its
//! scope.

use crate::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, QuantaClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use mailpipe_config::RateLimits;
use mailpipe_tenants::{Principal, Registry, Scope, Tier};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// What a route asks of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Anyone: tracking hits, health, metrics, the documentation.
    Public,
    /// A key of the route's tenant with this scope (or `admin`).
    Key(Scope),
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, QuantaClock, StateInformationMiddleware>;

/// One key's bucket, made for its limit.
struct Bucket {
    per_minute: u32,
    limiter: Limiter,
}

pub struct Guard {
    registry: Arc<Registry>,
    /// Rules by route path (as the router writes it), then method.
    rules: HashMap<String, Vec<(Method, Rule)>>,
    limits: RateLimits,
    buckets: RwLock<HashMap<String, Arc<Bucket>>>,
    clock: QuantaClock,
    /// Handed to keyed requests, for [`crate::Body`].
    body_budget: Option<crate::BodyBudget>,
    /// For the benchmark's reference only: every keyed route acts as this principal, with no
    /// key, scope or limit checked.
    unchecked: Option<Principal>,
}

impl Guard {
    /// The guard of the routes `openapi` documents.
    ///
    /// Panics when an operation names a scope that does not exist: a typo in a route's
    /// declaration must not reach a running server.
    pub fn new(registry: Arc<Registry>, limits: RateLimits, openapi: &utoipa::openapi::OpenApi) -> Guard {
        let mut rules: HashMap<String, Vec<(Method, Rule)>> = HashMap::new();
        for (path, method, operation) in crate::openapi::operations(openapi) {
            let scopes: Vec<String> = operation.security.iter().flatten().flat_map(crate::openapi::scopes_of).collect();
            let rule = match scopes.as_slice() {
                [] => Rule::Public,
                [scope] => Rule::Key(Scope::parse(scope).unwrap_or_else(|e| panic!("{method} {path}: {e}"))),
                more => panic!("{method} {path} names {} scopes; a route needs exactly one", more.len()),
            };
            rules.entry(path.to_string()).or_default().push((method, rule));
        }
        Guard { registry, rules, limits, buckets: RwLock::new(HashMap::new()), clock: QuantaClock::default(), body_budget: None, unchecked: None }
    }

    /// Keyed requests read their bodies within `budget`.
    pub fn with_body_budget(mut self, budget: crate::BodyBudget) -> Guard {
        self.body_budget = Some(budget);
        self
    }

    /// The same routes with nothing checked, every keyed request acting as `principal`: the
    /// reference that the benchmark of the guard's cost compares against.
    pub fn unchecked(mut self, principal: Principal) -> Guard {
        self.unchecked = Some(principal);
        self
    }

    /// The rule of each documented route: (path, method, rule).
    pub fn rules(&self) -> impl Iterator<Item = (&str, &Method, Rule)> {
        self.rules.iter().flat_map(|(path, rules)| rules.iter().map(move |(m, r)| (path.as_str(), m, *r)))
    }

    /// Requests a minute `principal` may make.
    pub fn limit_of(&self, principal: &Principal) -> u32 {
        principal.rate_limit_per_minute.unwrap_or(match principal.tier {
            Tier::Starter => self.limits.starter,
            Tier::Pro => self.limits.pro,
            Tier::Enterprise => self.limits.enterprise,
        })
    }

    fn bucket(&self, principal: &Principal) -> Arc<Bucket> {
        let per_minute = self.limit_of(principal).max(1);
        if let Some(b) = self.buckets.read().get(&principal.key_id).filter(|b| b.per_minute == per_minute) {
            return b.clone();
        }
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        let bucket = Arc::new(Bucket { per_minute, limiter: RateLimiter::direct_with_clock(quota, self.clock.clone()).with_middleware() });
        self.buckets.write().insert(principal.key_id.clone(), bucket.clone());
        bucket
    }

    fn rule(&self, path: Option<&str>, method: &Method) -> Result<Rule, Response> {
        let Some(path) = path else { return Ok(Rule::Public) };
        let Some(rules) = self.rules.get(path) else {
            return if path.starts_with("/v1/") {
                Err(ApiError::new(StatusCode::FORBIDDEN, "path", "this route declares no scope").into_response())
            } else {
                Ok(Rule::Public)
            };
        };
        let method = if method == Method::HEAD { &Method::GET } else { method };
        match rules.iter().find(|(m, _)| m == method) {
            Some((_, rule)) => Ok(*rule),
            None => {
                let allowed: Vec<&str> = rules.iter().map(|(m, _)| m.as_str()).collect();
                let mut response =
                    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method", format!("use {}", allowed.join(" or "))).into_response();
                if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                    response.headers_mut().insert(header::ALLOW, v);
                }
                Err(response)
            }
        }
    }

    fn authenticate(&self, headers: &HeaderMap, needed: Scope) -> Result<Principal, ApiError> {
        if let Some(p) = &self.unchecked {
            return Ok(p.clone());
        }
        let unauthorized = |reason: String| ApiError::new(StatusCode::UNAUTHORIZED, "authorization", reason);
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization: Bearer <api key>".into()))?;
        let key = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("expected Authorization: Bearer <api key>".into()))?;
        let principal = self.registry.authenticate(key.trim()).map_err(|e| unauthorized(e.to_string()))?;
        if !principal.allows(needed) {
            let has: Vec<&str> = principal.scopes.iter().map(|s| s.as_str()).collect();
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "authorization",
                format!("this call needs a key with scope {needed} (or admin); this key has {}", has.join(", ")),
            ));
        }
        Ok(principal)
    }

    /// Takes one request from the key's bucket: the `RateLimit-*` headers, and whether it may
    /// go on (otherwise the 429 answer).
    fn take(&self, principal: &Principal) -> (Vec<(&'static str, HeaderValue)>, Option<Response>) {
        let bucket = self.bucket(principal);
        let limit = bucket.per_minute;
        let interval = Duration::from_secs(60) / limit;
        let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        let headers = |remaining: u32, reset: Duration| {
            vec![
                ("ratelimit-limit", HeaderValue::from(limit)),
                ("ratelimit-remaining", HeaderValue::from(remaining)),
                ("ratelimit-reset", HeaderValue::from(secs(reset))),
            ]
        };
        match bucket.limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                (headers(remaining, interval * (limit - remaining)), None)
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let retry_after = secs(wait).max(1);
                let mut response = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "authorization",
                    format!("this key may make {limit} requests a minute; retry in {retry_after} s"),
                )
                .into_response();
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                metrics::counter!("mailpipe_http_rate_limited_total", "tier" => principal.tier.as_str()).increment(1);
                (headers(0, wait + interval * (limit - 1)), Some(response))
            }
        }
    }
}

/// The guard as middleware: mount it with `Router::route_layer` (it needs the matched route).
pub async fn layer(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let mut tier = "none";
    let mut limit_headers = Vec::new();
    let response = match guard.rule(route.as_deref(), request.method()) {
        Err(refused) => refused,
        Ok(Rule::Public) => next.run(request).await,
        Ok(Rule::Key(scope)) => match guard.authenticate(request.headers(), scope) {
            Err(e) => e.into_response(),
            Ok(principal) => {
                tier = principal.tier.as_str();
                let (headers, limited) = if guard.unchecked.is_some() { (Vec::new(), None) } else { guard.take(&principal) };
                limit_headers = headers;
                match limited {
                    Some(response) => response,
                    None => {
                        request.extensions_mut().insert(principal);
                        if let Some(budget) = &guard.body_budget {
                            request.extensions_mut().insert(budget.clone());
                        }
                        next.run(request).await
                    }
                }
            }
        },
    };
    let mut response = json_errors(response).await;
    for (name, value) in limit_headers {
        response.headers_mut().insert(name, value);
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("mailpipe_http_requests_total", "route" => route.unwrap_or_else(|| "unmatched".into()), "status" => status, "tier" => tier)
        .increment(1);
    response
}

/// An error answer without a body type of its own (the framework's plain text: a body too
/// large, a wrong content type, a missing route) becomes the JSON error body.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let plain = response.headers().get(header::CONTENT_TYPE).is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let reason = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let field = match status {
        StatusCode::NOT_FOUND => "path",
        StatusCode::METHOD_NOT_ALLOWED => "method",
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::LENGTH_REQUIRED => "body",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "content-type",
        StatusCode::NOT_ACCEPTABLE => "accept",
        _ => "",
    };
    let error = ApiError::new(status, field, reason).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, error.into_body())
}

/// The answer to a path no route serves.
pub async fn not_found() -> ApiError {
    ApiError::not_found("path", "no such route; the API is described at /docs and /v1/openapi.json")
}
