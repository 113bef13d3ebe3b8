//! Every way a proxied request can fail, and the one place they become HTTP.

use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::body::ProxyBody;
use crate::upstream::{ConnectError, UpstreamBody};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no healthy backend")]
    NoBackend,
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("backend failed: {0}")]
    Upstream(hyper::Error),
    #[error("backend did not answer in time")]
    Timeout,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

/// A failed attempt; `request` is the request when none of it was sent, so
/// the caller may try it elsewhere.
pub struct Failure {
    pub request: Option<Request<UpstreamBody>>,
    pub error: ProxyError,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A short JSON answer. Backend addresses and error details go to the
    /// log (debug), not to the client.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        tracing::debug!(status = status.as_u16(), error = %self, "request failed");
        let reason = match &self {
            ProxyError::NoBackend => "no healthy backend",
            ProxyError::Connect(_) => "no backend could be reached",
            ProxyError::Upstream(_) => "the backend failed to answer",
            ProxyError::Timeout => "the backend did not answer in time",
            ProxyError::BadRequest(why) => why,
        };
        json_response(
            status,
            &serde_json::json!({ "error": reason, "status": status.as_u16() }),
        )
    }
}

/// A JSON response of our own.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
