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
    /// The fast path's own exchange with the backend failed.
    #[error("backend failed: {0}")]
    UpstreamIo(std::io::Error),
    #[error("backend sent a bad response: {0}")]
    BadResponse(&'static str),
    #[error("backend did not answer in time")]
    Timeout,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The client's request body broke off or was malformed mid-stream.
    #[error("client request body failed: {0}")]
    ClientBody(hyper::Error),
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
            ProxyError::Connect(_)
            | ProxyError::Upstream(_)
            | ProxyError::UpstreamIo(_)
            | ProxyError::BadResponse(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the failure says something about the backend (and so should
    /// count against it and take it out of rotation).
    pub fn blames_backend(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect(_)
                | ProxyError::Upstream(_)
                | ProxyError::UpstreamIo(_)
                | ProxyError::BadResponse(_)
                | ProxyError::Timeout
        )
    }

    /// Whether trying another backend could help. Not after a timeout (the
    /// backend sat on the request: another try doubles the wait and maybe
    /// the effect) nor after a broken client body.
    pub fn may_try_next(&self) -> bool {
        self.blames_backend() && !matches!(self, ProxyError::Timeout)
    }

    /// A short JSON answer. Backend addresses and error details go to the
    /// log (debug), not to the client.
    pub fn into_response(self) -> Response<ProxyBody> {
        json_response(self.status(), &self.body())
    }

    /// The JSON body of the error's response (logs the error at debug).
    pub fn body(&self) -> serde_json::Value {
        let status = self.status();
        tracing::debug!(status = status.as_u16(), error = %self, "request failed");
        let reason = match self {
            ProxyError::NoBackend => "no healthy backend",
            ProxyError::Connect(_) => "no backend could be reached",
            ProxyError::Upstream(_) | ProxyError::UpstreamIo(_) | ProxyError::BadResponse(_) => {
                "the backend failed to answer"
            }
            ProxyError::Timeout => "the backend did not answer in time",
            ProxyError::BadRequest(why) => why,
            ProxyError::ClientBody(_) => "the request body could not be read",
        };
        serde_json::json!({ "error": reason, "status": status.as_u16() })
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
