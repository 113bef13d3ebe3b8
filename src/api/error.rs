//! The API's errors and their one mapping to HTTP.
//!
//! Bad input is a 4xx naming the offending field; a database that is down
//! is a 503 with the reason (which never holds a password: sqlx's messages do
//! not carry credentials, and configuration is only ever shown redacted);
//! anything else is a 500 with a generic body and one log line.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: `field` is wrong in the way `message` says.
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("request body too large")]
    TooLarge,
    #[error("unsupported content type, send application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::debug!(error = %e, "request failed: database unavailable");
            ApiError::Unavailable(e.to_string())
        } else {
            tracing::error!(error = %e, "database query failed");
            ApiError::Internal
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({
            "success": false,
            "error": self.to_string(),
            "status": status.as_u16(),
        });
        match &self {
            ApiError::BadRequest { field, message } => {
                body["field"] = json!(field);
                body["error"] = json!(format!("{field}: {message}"));
            }
            ApiError::TooLarge | ApiError::UnsupportedMediaType => {
                body["field"] = json!("body");
            }
            _ => {}
        }
        (status, Json(body)).into_response()
    }
}
