//! Every way a proxied request can fail. Which status and reason each
//! becomes, whether it may be retried and whom it blames are rules, in
//! [`super::rules`]; the HTTP answer is built in [`super::body`].

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
    /// `CONNECT`, which the balancer does not tunnel (see
    /// [`super::rules`]).
    #[error("CONNECT is not supported")]
    MethodNotAllowed,
    /// The client's request body broke off or was malformed mid-stream.
    #[error("client request body failed: {0}")]
    ClientBody(String),
    /// The client stopped sending its request (body) for longer than
    /// `CLIENT_BODY_TIMEOUT_SECS`.
    #[error("the client stopped sending its request")]
    ClientTimeout,
    /// The client's token bucket is empty (`RATE_LIMIT_RPS`): a token is
    /// back in this many seconds.
    #[error("rate limited for {retry_after} s")]
    RateLimited { retry_after: u64 },
}
