//! The conventions every operation of the OpenAPI document follows, applied in one place
//! ([`Conventions`], a `utoipa::Modify`): the `api_key` security scheme; on every keyed
//! operation the 401, 403 and 429 answers and the `RateLimit-*` headers; on every operation
//! that takes a body the 413 and 415 answers; on every keyed operation and every one that takes
//! input the 400.
//! All error answers carry [`ErrorBody`](crate::ErrorBody).

use crate::{ErrorBody, FieldError};
use axum::http::Method;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{PartialSchema, ToSchema};

/// The security scheme every keyed operation names, with its one scope.
pub const SECURITY_SCHEME: &str = "api_key";

/// Every operation of the document: (path, method, operation).
pub fn operations(doc: &OpenApi) -> Vec<(&str, Method, &Operation)> {
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in item_operations(item) {
            out.push((path.as_str(), method, op));
        }
    }
    out
}

fn item_operations(item: &PathItem) -> Vec<(Method, &Operation)> {
    [
        (Method::GET, &item.get),
        (Method::POST, &item.post),
        (Method::PUT, &item.put),
        (Method::DELETE, &item.delete),
        (Method::PATCH, &item.patch),
        (Method::HEAD, &item.head),
        (Method::OPTIONS, &item.options),
        (Method::TRACE, &item.trace),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|op| (m, op)))
    .collect()
}

fn item_operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch, &mut item.head, &mut item.options, &mut item.trace]
        .into_iter()
        .filter_map(Option::as_mut)
}

/// The scopes a security requirement names. `SecurityRequirement` keeps its map private, so
/// it is read through its JSON form ({"api_key": ["stats:read"]}), once per operation at start.
pub fn scopes_of(requirement: &SecurityRequirement) -> Vec<String> {
    let value = serde_json::to_value(requirement).unwrap_or_default();
    value.get(SECURITY_SCHEME).and_then(|v| v.as_array()).into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
}

pub struct Conventions;

fn error(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
        .build()
}

fn integer_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))).description(Some(description)).build()
}

/// (status, name in components.responses, description)
const KEYED: [(&str, &str, &str); 3] = [
    ("401", "Unauthorized", "No API key, or one that is unknown, revoked, expired or mistyped."),
    ("403", "Forbidden", "The key lacks the scope this operation needs."),
    ("429", "TooManyRequests", "The key's rate limit is spent; retry after `Retry-After` seconds."),
];
const WITH_BODY: [(&str, &str, &str); 2] = [
    ("413", "PayloadTooLarge", "The body is larger than `http.max_body_bytes`."),
    ("415", "UnsupportedMediaType", "The body's content type is not one this operation takes."),
];
/// A keyed body is read only when the process has room for it (`http.max_inflight_body_bytes`).
const KEYED_WITH_BODY: (&str, &str, &str) = ("503", "Unavailable", "The server cannot take this now (too many bodies in flight, or the bus cannot take writes); retry after `Retry-After` seconds.");
const BAD_REQUEST: (&str, &str, &str) = ("400", "BadRequest", "A parameter or the body is invalid; each problem is listed.");

impl utoipa::Modify for Conventions {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("mp_live_<id>_<secret><checksum>")
                    .description(Some("An API key (`mailpipe keys create`). Each operation names the one scope it needs; `admin` has them all."))
                    .build(),
            ),
        );
        components.schemas.insert(ErrorBody::name().into(), ErrorBody::schema());
        components.schemas.insert(FieldError::name().into(), FieldError::schema());
        let limit_headers = [
            ("RateLimit-Limit", "Requests a minute this key may make."),
            ("RateLimit-Remaining", "Requests left now (the bucket refills continuously)."),
            ("RateLimit-Reset", "Seconds until the bucket is full again."),
        ];
        let retry_after = || integer_header("Seconds after which to retry.");
        for (status, name, description) in KEYED.iter().chain(&WITH_BODY).chain([&BAD_REQUEST, &KEYED_WITH_BODY]) {
            let mut response = error(description);
            if *status == "503" {
                response.headers.insert("Retry-After".into(), retry_after().into());
            }
            if *status == "429" {
                response.headers.insert("Retry-After".into(), integer_header("Seconds until the key may call again.").into());
                for (header, description) in limit_headers {
                    response.headers.insert(header.into(), integer_header(description).into());
                }
            }
            components.responses.insert(name.to_string(), RefOr::T(response));
        }
        for item in doc.paths.paths.values_mut() {
            for op in item_operations_mut(item) {
                let keyed = op.security.as_ref().is_some_and(|s| !s.is_empty());
                // A keyed operation refuses unknown query parameters too.
                let takes_input = keyed || op.request_body.is_some() || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let mut add: Vec<&(&str, &str, &str)> = Vec::new();
                if keyed {
                    add.extend(&KEYED);
                }
                if op.request_body.is_some() {
                    add.extend(&WITH_BODY);
                }
                if takes_input {
                    add.push(&BAD_REQUEST);
                }
                if keyed && op.request_body.is_some() {
                    add.push(&KEYED_WITH_BODY);
                }
                for (status, name, _) in add {
                    op.responses.responses.entry(status.to_string()).or_insert_with(|| RefOr::Ref(Ref::new(format!("#/components/responses/{name}"))));
                }
                // Every 503 says when to retry (`ApiError` adds `Retry-After: 1`).
                if let Some(RefOr::T(r)) = op.responses.responses.get_mut("503") {
                    r.headers.entry("Retry-After".into()).or_insert_with(|| retry_after().into());
                }
                if keyed {
                    for response in op.responses.responses.values_mut() {
                        if let RefOr::T(r) = response {
                            for (name, description) in limit_headers {
                                r.headers.entry(name.into()).or_insert_with(|| integer_header(description).into());
                            }
                        }
                    }
                }
            }
        }
    }
}
