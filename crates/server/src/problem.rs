//! Errors as RFC 9457 `application/problem+json`, with a stable machine-readable type.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable code; the type URI is `urn:msec:problem:{code}`.
    pub code: &'static str,
    pub detail: String,
    pub extra: serde_json::Value,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            extra: serde_json::Value::Null,
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
}

impl From<msec_store::StoreError> for Problem {
    fn from(e: msec_store::StoreError) -> Problem {
        match e {
            msec_store::StoreError::Conflict(m) => {
                Problem::new(StatusCode::CONFLICT, "conflict", m)
            }
            msec_store::StoreError::Erased(m) => Problem::new(StatusCode::GONE, "erased", m),
            msec_store::StoreError::NotFound(m) => Problem::not_found(m),
            msec_store::StoreError::Invalid(m) => Problem::bad_request(m),
            other => {
                tracing::error!(error = %other, "database error while serving a request");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the database is unavailable; retry later",
                )
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let mut body = json!({
            "type": format!("urn:msec:problem:{}", self.code),
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let (Some(obj), serde_json::Value::Object(extra)) = (body.as_object_mut(), self.extra) {
            obj.extend(extra);
        }
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

/// The one path parameter of a route (`{id}`), taken as text. A parameter that is no text
/// (`%FF`) is a problem+json 400 like every other bad request, not axum's plain-text answer.
pub(crate) struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<PathParam, Problem> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| PathParam(p))
            .map_err(|e| Problem::bad_request(format!("bad path: {}", e.body_text())))
    }
}
