//! API errors: every failure answers `{"error": {"code": "stable_snake_case", "message": "..."}}`
//! with the HTTP status that fits. Codes are part of the API; messages are for people.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_server::ServerError;
use cairn_store::StoreError;
use serde::Serialize;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable snake_case code.
    pub code: &'static str,
    /// A human-readable explanation (never a secret).
    pub message: String,
    /// Seconds to wait before retrying (429 answers).
    pub retry_after_s: Option<u64>,
}

/// The JSON body of an error.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "sign in or present an API token",
        )
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your role does not allow this",
        )
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn csrf() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "csrf_token_invalid",
            "missing or wrong CSRF token",
        )
    }

    pub fn too_many(code: &'static str, retry_after_s: u64) -> Self {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                code,
                format!("too many attempts; retry in {retry_after_s} s"),
            )
        }
    }

    /// An internal failure; `what` names the part that failed (logged, and shown).
    pub fn internal(what: &str) -> Self {
        tracing::error!(what, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("internal error ({what})"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(message) => Self::new(StatusCode::CONFLICT, "conflict", message),
            StoreError::NotFound(message) => Self::not_found(message),
            error => {
                tracing::error!(%error, "store failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store failed",
                )
            }
        }
    }
}

impl From<ServerError> for ApiError {
    fn from(error: ServerError) -> Self {
        let message = error.to_string();
        let (status, code) = match &error {
            ServerError::UnknownEndpoint(_) => (StatusCode::NOT_FOUND, "device_not_registered"),
            ServerError::NoSocket => (StatusCode::SERVICE_UNAVAILABLE, "no_device_socket"),
            ServerError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "device_timeout"),
            ServerError::QueueTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "device_asleep"),
            ServerError::Device { code, .. } => match code.class {
                4 => (StatusCode::UNPROCESSABLE_ENTITY, "device_refused"),
                _ => (StatusCode::BAD_GATEWAY, "device_failed"),
            },
            ServerError::Operation(_) | ServerError::Message(_) => {
                (StatusCode::BAD_GATEWAY, "device_response_invalid")
            }
            ServerError::Transport(_) => (StatusCode::BAD_GATEWAY, "transport_failed"),
            ServerError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ServerError::Bind { .. } | ServerError::Certificate(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
            }
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(value) = self
            .retry_after_s
            .and_then(|seconds| HeaderValue::from_str(&seconds.to_string()).ok())
        {
            response.headers_mut().insert("retry-after", value);
        }
        response
    }
}
