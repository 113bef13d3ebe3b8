//! Every way a proxied request can fail. Which status and reason each
//! becomes, whether it may be retried and whom it blames are rules, in
//! [`super::rules`]; this module only builds the HTTP answer.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::body::ProxyBody;
use super::rules;
use crate::upstream::ConnectError;

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
    ClientBody(String),
    /// The client stopped sending its request (body) for longer than
    /// `CLIENT_BODY_TIMEOUT_SECS`.
    #[error("the client stopped sending its request")]
    ClientTimeout,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(rules::answer(self).0).unwrap_or(StatusCode::BAD_GATEWAY)
    }

    /// The balancer's answer (the error itself goes to the log, at debug).
    pub fn into_response(self) -> Response<ProxyBody> {
        tracing::debug!(status = self.status().as_u16(), error = %self, "request failed");
        let mut resp = json_bytes(self.status(), rules::answer_body(&self));
        if matches!(self, ProxyError::ClientTimeout | ProxyError::ClientBody(_)) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A JSON response of our own.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    json_bytes(status, value.to_string())
}

fn json_bytes(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
