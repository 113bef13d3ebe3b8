//! The management API over HTTP: who may call it, and each call.
//!
//! | call | body |
//! |---|---|
//! | `POST /lb/backends/add` | `{"address":"host:port","weight":N}` (weight optional, 1) |
//! | `POST /lb/backends/{name}/disable`, `/enable`, `/drain` | none |
//! | `POST /lb/backends/{name}/weight` | `{"weight":N}` |
//! | `DELETE /lb/backends/{name}` | none |
//! | `POST /lb/log` | `{"level":"debug"}` or `{"filter":"info,hashgate=debug"}` |
//!
//! Every call needs `Authorization: Bearer <LB_ADMIN_TOKEN>`. While the
//! token is unset every call answers 403 saying how to enable them; a
//! missing or wrong token answers 401. Both before the body is read, and
//! nothing changes. The token is compared in constant time (SHA-256 of
//! both sides, then `subtle`'s comparison, so not even its length shows
//! in the timing), and never logged or shown.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::overrides::{Op, OpError};
use super::{Admin, ChangeError};
use crate::backend::BackendSpec;
use crate::config::Secret;
use crate::proxy::Proxy;
use crate::proxy::body::{ProxyBody, json_response};

/// Largest management request body read.
const MAX_BODY: usize = 16 * 1024;

/// A JSON error answer.
pub fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json_response(
        status,
        &serde_json::json!({ "error": message, "status": status.as_u16() }),
    )
}

/// Lets the request through when it carries the admin token; else the
/// answer to give (403 while no token is configured, 401 otherwise).
#[allow(clippy::result_large_err)]
pub fn authorize(token: Option<&Secret>, headers: &HeaderMap) -> Result<(), Response<ProxyBody>> {
    let Some(token) = token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "runtime management is disabled: set LB_ADMIN_TOKEN (at least 16 characters) \
             in the balancer's environment and restart it, then send Authorization: Bearer <token>",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let ok = given.is_some_and(|g| {
        let (a, b) = (
            Sha256::digest(g.as_bytes()),
            Sha256::digest(token.expose().as_bytes()),
        );
        bool::from(a[..].ct_eq(&b[..]))
    });
    if ok {
        return Ok(());
    }
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "a valid admin token is required: Authorization: Bearer <LB_ADMIN_TOKEN>",
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer realm="hashgate""#),
    );
    Err(resp)
}

/// One management call, parsed from the method and path.
enum Call {
    Add,
    Backend(String, Action),
    Log,
}

#[derive(Clone, Copy)]
enum Action {
    Disable,
    Enable,
    Drain,
    Weight,
    Remove,
}

/// Which call `path` names and the method it takes; `None` for paths that
/// are not management calls.
fn route(path: &str) -> Option<(Method, Result<Call, &'static str>)> {
    if path == "/lb/log" {
        return Some((Method::POST, Ok(Call::Log)));
    }
    let rest = path.strip_prefix("/lb/backends/")?;
    if rest == "add" {
        return Some((Method::POST, Ok(Call::Add)));
    }
    let (raw, action) = match rest.rsplit_once('/') {
        Some((name, "disable")) => (name, Action::Disable),
        Some((name, "enable")) => (name, Action::Enable),
        Some((name, "drain")) => (name, Action::Drain),
        Some((name, "weight")) => (name, Action::Weight),
        Some(_) => return None,
        None => (rest, Action::Remove),
    };
    let method = match action {
        Action::Remove => Method::DELETE,
        _ => Method::POST,
    };
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|n| n.into_owned())
        .map_err(|_| "the backend name is not valid UTF-8");
    Some((method, name.map(|n| Call::Backend(n, action))))
}

/// Whether `path` is a management call (answered by [`handle`]).
pub fn is_management(path: &str) -> bool {
    route(path).is_some()
}

/// Answers a management call (`path` is one, see [`is_management`]).
pub async fn handle(
    admin: &Admin,
    token: Option<&Secret>,
    proxy: &Arc<Proxy>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some((method, call)) = route(req.uri().path()) else {
        return error(StatusCode::NOT_FOUND, "no such balancer endpoint");
    };
    if *req.method() != method {
        let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static(if method == Method::POST {
                "POST"
            } else {
                "DELETE"
            }),
        );
        return resp;
    }
    if let Err(refused) = authorize(token, req.headers()) {
        return refused;
    }
    let call = match call {
        Ok(c) => c,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let body = match read_body(req, proxy).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let op = match call {
        Call::Log => return set_log(&body),
        Call::Add => match add_op(&body).await {
            Ok(op) => op,
            Err(resp) => return resp,
        },
        Call::Backend(name, action) => match action {
            Action::Disable => Op::Disable(name),
            Action::Enable => Op::Enable(name),
            Action::Drain => Op::Drain(name),
            Action::Remove => Op::Remove(name),
            Action::Weight => match parse::<WeightBody>(&body) {
                Ok(w) => Op::Weight(name, w.weight),
                Err(resp) => return resp,
            },
        },
    };
    let name = op.name().to_owned();
    match admin.change(proxy, op).await {
        Ok(changed) => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "ok": true,
                "backend": name,
                "changed": changed.what.is_some(),
                "change": changed.what,
                "override": changed.overrides.get(&name),
            }),
        ),
        Err(ChangeError::Refused(e)) => {
            let status = match e {
                OpError::NotFound(_) => StatusCode::NOT_FOUND,
                OpError::Exists(_) => StatusCode::CONFLICT,
                OpError::BadWeight => StatusCode::BAD_REQUEST,
            };
            error(status, &e.to_string())
        }
        Err(e @ ChangeError::StateFile(_)) => {
            tracing::error!(error = %e, "runtime change not made");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the state file could not be written; nothing was changed (see the balancer's log)",
            )
        }
    }
}

#[allow(clippy::result_large_err)]
async fn read_body(
    req: Request<Incoming>,
    proxy: &Proxy,
) -> Result<bytes::Bytes, Response<ProxyBody>> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(proxy.config.limits.client_body_timeout, limited.collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(_)) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large (16 KiB at most)",
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the request was not received in time",
        )),
    }
}

#[allow(clippy::result_large_err)]
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response<ProxyBody>> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("the body must be JSON as documented: {e}"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    crate::backend::DEFAULT_WEIGHT
}

#[allow(clippy::result_large_err)]
async fn add_op(body: &[u8]) -> Result<Op, Response<ProxyBody>> {
    let add: AddBody = parse(body)?;
    let bad = |why: String| error(StatusCode::BAD_REQUEST, &why);
    if add.address.contains('=') {
        return Err(bad(
            "address must be host:port (the weight is its own field)".into(),
        ));
    }
    let spec: BackendSpec = add
        .address
        .parse()
        .map_err(|e: String| bad(format!("address: {e}")))?;
    let name = spec.to_string();
    let address: SocketAddr = match spec.host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, spec.port),
        Err(_) => tokio::net::lookup_host((spec.host.as_str(), spec.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| bad(format!("address: {name} does not resolve")))?,
    };
    Ok(Op::Add {
        name,
        address,
        weight: add.weight,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogBody {
    level: Option<String>,
    filter: Option<String>,
}

fn set_log(body: &[u8]) -> Response<ProxyBody> {
    let log: LogBody = match parse(body) {
        Ok(l) => l,
        Err(resp) => return resp,
    };
    let filter = match (log.level, log.filter) {
        (Some(level), None) => {
            let level = level.to_ascii_lowercase();
            if !matches!(
                level.as_str(),
                "error" | "warn" | "info" | "debug" | "trace"
            ) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "level must be one of error, warn, info, debug, trace",
                );
            }
            level
        }
        (None, Some(filter)) => filter,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                r#"give either {"level":"debug"} or {"filter":"info,hashgate=debug"}"#,
            );
        }
    };
    match crate::telemetry::set_filter(&filter) {
        Ok(previous) => {
            tracing::info!(filter = %filter, previous = %previous, "log filter changed by an operator");
            json_response(
                StatusCode::OK,
                &serde_json::json!({ "ok": true, "filter": filter, "previous": previous }),
            )
        }
        Err(crate::telemetry::FilterError::Invalid(e)) => {
            error(StatusCode::BAD_REQUEST, &format!("invalid log filter: {e}"))
        }
        Err(crate::telemetry::FilterError::NotInstalled) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this process did not set up logging, so its filter cannot change",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_echoed() {
        let token = Secret::for_tests("0123456789abcdef-token");
        let mut h = HeaderMap::new();
        let refused = authorize(None, &h).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            authorize(Some(&token), &h).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer wrong"),
        );
        assert_eq!(
            authorize(Some(&token), &h).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer 0123456789abcdef-token"),
        );
        assert!(authorize(Some(&token), &h).is_ok());
    }

    #[test]
    fn management_paths_and_their_methods() {
        let m = |p: &str| route(p).map(|(m, c)| (m, c.is_ok()));
        assert_eq!(m("/lb/backends/add"), Some((Method::POST, true)));
        assert_eq!(
            m("/lb/backends/10.0.0.1:80/drain"),
            Some((Method::POST, true))
        );
        assert_eq!(m("/lb/backends/10.0.0.1:80"), Some((Method::DELETE, true)));
        assert_eq!(m("/lb/log"), Some((Method::POST, true)));
        assert!(m("/lb/backends/x/explode").is_none());
        assert!(m("/lb/backends").is_none() && m("/lb/status").is_none());
        match route("/lb/backends/%5Bfd00%3A%3A7%5D%3A80/disable") {
            Some((_, Ok(Call::Backend(name, _)))) => assert_eq!(name, "[fd00::7]:80"),
            _ => panic!("percent-encoded names decode"),
        }
    }
}
