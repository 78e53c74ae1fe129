//! Engine errors and their one mapping to Docker's error replies.
//!
//! Every failure of the engine is an [`EngineError`]; its variant decides the
//! HTTP status in [`EngineError::status`], and [`IntoResponse`] writes the
//! body `{"message": …}` with `Content-Type: application/json` exactly (the
//! Go client only parses the body with that exact header). Already-in-state
//! answers are 304 with no body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use strata_snapshotter::ErrorKind;

/// An engine failure, classified the way Docker's errdefs are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed (bad parameter, bad filter, bad tarball).
    #[error("{0}")]
    InvalidArgument(String),
    /// The image, container or object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (name in use, image
    /// used by a container, ...).
    #[error("{0}")]
    Conflict(String),
    /// The object is already in the requested state (304, no body).
    #[error("{0}")]
    NotModified(String),
    /// The operation is not implemented by this engine or driver.
    #[error("{0}")]
    NotImplemented(String),
    /// A backing service (e.g. a remote snapshotter) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: I/O failures, corrupt metadata.
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
    /// An I/O failure with what was being done, e.g. `io("write /x", err)`.
    pub fn io(context: impl std::fmt::Display, err: std::io::Error) -> Self {
        Self::Internal(format!("{context}: {err}"))
    }

    /// The HTTP status of this error: the one place kinds become codes.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::NotModified(_) => StatusCode::NOT_MODIFIED,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidArgument(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::NotModified(m)
            | Self::NotImplemented(m)
            | Self::Unavailable(m)
            | Self::Internal(m) => m,
        }
    }
}

impl From<strata_snapshotter::Error> for EngineError {
    fn from(err: strata_snapshotter::Error) -> Self {
        let message = err.message().to_string();
        match err.kind() {
            ErrorKind::NotFound => Self::NotFound(message),
            ErrorKind::AlreadyExists | ErrorKind::FailedPrecondition => Self::Conflict(message),
            ErrorKind::InvalidArgument => Self::InvalidArgument(message),
            ErrorKind::Unimplemented => Self::NotImplemented(message),
            ErrorKind::Unavailable => Self::Unavailable(message),
            ErrorKind::Internal => Self::Internal(message),
        }
    }
}

/// The exact content type the Go client requires to parse an error body.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Builds a Docker error reply with the given status and message.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    if status == StatusCode::NOT_MODIFIED {
        return status.into_response();
    }
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    response
}

impl IntoResponse for EngineError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), message = self.message(), "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), message = self.message(), "request refused");
        }
        error_response(status, self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> (StatusCode, Option<String>, String) {
        let status = response.status();
        let ctype = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or_default().to_string());
        let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
        (status, ctype, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn errors_are_docker_json_with_exact_content_type() {
        let cases = [
            (EngineError::invalid("bad"), 400),
            (EngineError::not_found("No such image: x"), 404),
            (EngineError::conflict("in use"), 409),
            (EngineError::internal("boom"), 500),
            (EngineError::NotImplemented("nope".into()), 501),
            (EngineError::Unavailable("down".into()), 503),
        ];
        for (err, code) in cases {
            let message = err.message().to_string();
            let (status, ctype, body) = body_of(err.into_response()).await;
            assert_eq!(status.as_u16(), code);
            assert_eq!(ctype.as_deref(), Some("application/json"));
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["message"], message.as_str());
        }
    }

    #[tokio::test]
    async fn not_modified_has_no_body() {
        let (status, _, body) =
            body_of(EngineError::NotModified("container is already running".into()).into_response()).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
    }

    #[test]
    fn snapshotter_kinds_map_to_statuses() {
        use strata_snapshotter::Error;
        assert_eq!(EngineError::from(Error::not_found("x")).status(), StatusCode::NOT_FOUND);
        assert_eq!(EngineError::from(Error::already_exists("x")).status(), StatusCode::CONFLICT);
        assert_eq!(EngineError::from(Error::failed_precondition("x")).status(), StatusCode::CONFLICT);
        assert_eq!(EngineError::from(Error::invalid_argument("x")).status(), StatusCode::BAD_REQUEST);
        assert_eq!(EngineError::from(Error::internal("x")).status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
