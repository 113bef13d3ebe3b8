//! The proxy's rules (`src/proxy/rules.rs`) through both request paths,
//! over real sockets: every case runs once on the HTTP/1.1 fast path and
//! once on hyper's, and both runs must give the same observable result
//! (status, body, headers, what the backend received, which backend
//! answered). Behaviour that differs by accident between the two paths is a
//! bug even when each path is tested on its own (STYLE.md habit 15).
//!
//! A connection reaches the hyper path by first asking for `/health`, which
//! the balancer answers itself and which hands the connection to hyper for
//! the rest of its life (see `tests/smuggling.rs`). A request the fast path
//! cannot carry (a body over [`rules::REPLAY_BODY_MAX`], chunked, an
//! `Upgrade`) goes to hyper on a fresh connection too; such a case still
//! runs both ways (a fresh connection, and one put on hyper first) and must
//! give the same result.
//!
//! The tables collect every mismatch before failing, so one run reports all
//! of them; each run gets a fresh balancer and backends where state
//! (outlier counts, pooled connections) could leak from one run into the
//! next.

#[path = "support/haproxy.rs"]
mod haproxy;
mod support;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hashgate::proxy::rules;
use support::wire::*;
use support::{TestBackend, TestBalancer, client_ip};
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------------
// Both paths, and what a client sees.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Fast,
    Hyper,
}

const PATHS: [Path; 2] = [Path::Fast, Path::Hyper];

/// Slack on top of a configured timeout before a wait counts as too long.
const SLACK: Duration = Duration::from_secs(3);

const LOCAL: [u8; 4] = [127, 0, 0, 1];

/// A client connection from `from`, on `path`.
async fn open(lb: SocketAddr, from: IpAddr, path: Path) -> Wire {
    let mut c = Wire::connect_from(from, lb).await;
    if path == Path::Hyper {
        c.send(&get("/health")).await;
        // 503 when no backend is healthy: still the balancer's own page.
        let r = recv(&mut c).await;
        assert!(
            matches!(r.status, 200 | 503),
            "the balancer's own /health: {r:?}"
        );
    }
    c
}

/// What a client got in answer to one request, comparable across paths.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Answer {
        version: String,
        status: u16,
        /// Lower-cased names, in wire order within a name (see [`fields`]).
        fields: Vec<(String, String)>,
        body: String,
        trailers: Vec<(String, String)>,
    },
    /// The connection ended without a response.
    Closed,
    /// No complete response within the limit.
    Silent,
    /// A malformed response or a connection that broke mid-response.
    Broken(String),
}

impl Got {
    fn status(&self) -> Option<u16> {
        match self {
            Got::Answer { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn body(&self) -> &str {
        match self {
            Got::Answer { body, .. } => body,
            _ => "",
        }
    }

    fn field(&self, name: &str) -> Option<&str> {
        match self {
            Got::Answer { fields, .. } => fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// A head's fields with lower-cased names, those in `skip` left out,
/// sorted by name (values of one name keep their order).
fn fields(head: &Head, skip: &[&str]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = head
        .fields
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .filter(|(n, _)| !skip.contains(&n.as_str()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Reads the answer to the request just sent, within `within`. `skip`:
/// fields left out of the comparison.
async fn answer(c: &mut Wire, within: Duration, skip: &[&str]) -> Got {
    match tokio::time::timeout(within, read_response(c, false)).await {
        Err(_) => Got::Silent,
        Ok(Ok(r)) => Got::Answer {
            body: r.text(),
            fields: fields(&r.head, skip),
            version: r.version,
            status: r.status,
            // Field names are case-insensitive (hyper writes them lower case).
            trailers: r
                .trailers
                .into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v))
                .collect(),
        },
        Ok(Err(e)) if is_close(&e) => Got::Closed,
        Ok(Err(e)) => Got::Broken(e.to_string()),
    }
}

fn is_close(e: &io::Error) -> bool {
    e.to_string().contains("before a response")
        || matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        )
}

/// Whether the connection still carries a request after the last answer
/// (nothing left over, and `GET /ping` gets some answer).
async fn still_open(c: &mut Wire) -> bool {
    if !c.buf.is_empty() {
        return false;
    }
    if c.stream.write_all(&get("/ping")).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(IO_LIMIT, read_response(c, false)).await,
        Ok(Ok(_))
    )
}

/// Whether the peer closes within `within` (EOF or reset), sending nothing
/// more.
async fn closes(c: &mut Wire, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, c.fill()).await {
            Err(_) => return Err(format!("still open after {within:?}")),
            Ok(Err(_)) | Ok(Ok(0)) if c.buf.is_empty() => return Ok(()),
            Ok(Err(_)) | Ok(Ok(0)) => {
                return Err(format!("{} more bytes, then a close", c.buf.len()));
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// The balancer's JSON answer to a failure, as the rules write it.
fn own_json(status: u16, reason: &str) -> String {
    serde_json::json!({ "error": reason, "status": status }).to_string()
}

/// `/lb/status`'s entry for the backend at `addr`.
async fn backend_status(lb: &TestBalancer, addr: SocketAddr) -> serde_json::Value {
    let s = lb.status().await;
    s["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not in {s}"))
}

/// What `/lb/status` says about blame: (errors, state, ejections).
async fn blame_of(lb: &TestBalancer, addr: SocketAddr) -> (u64, String, u64) {
    let b = backend_status(lb, addr).await;
    (
        b["errors"].as_u64().unwrap_or(u64::MAX),
        b["state"].as_str().unwrap_or("?").to_owned(),
        b["ejections"].as_u64().unwrap_or(u64::MAX),
    )
}

/// The next proxied request `backend` receives within `within`, if any.
async fn next_request(backend: &mut RawBackend, within: Duration) -> Option<Seen> {
    tokio::time::timeout(within, async {
        loop {
            match backend.events.recv().await? {
                Event::Request(seen) => return Some(seen),
                Event::Probe | Event::Closed(_) => {}
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Mismatches and broken rules, gathered so one run reports them all.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn push(&mut self, what: String) {
        self.0.push(what);
    }

    fn same<T: std::fmt::Debug + PartialEq>(&mut self, case: &str, fast: &T, hyper: &T) {
        self.check(fast == hyper, || {
            format!("{case}: the paths differ\n  fast:  {fast:?}\n  hyper: {hyper:?}")
        });
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} failure(s):\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

/// Runs `run` for each path, each within the test limit.
async fn both<T, F, Fut>(mut run: F) -> [T; 2]
where
    F: FnMut(Path) -> Fut,
    Fut: Future<Output = T>,
{
    let mut out = Vec::new();
    for path in PATHS {
        out.push(
            tokio::time::timeout(TEST_LIMIT, run(path))
                .await
                .unwrap_or_else(|_| panic!("{path:?}: the run finished within the time limit")),
        );
    }
    out.try_into().unwrap_or_else(|_| unreachable!())
}

/// One run within the test limit.
async fn bounded_run<T>(run: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("the run finished within the time limit")
}

/// A request with a `Content-Length` body of `len` pattern bytes.
fn with_body(method: &str, target: &str, extra: &str, len: usize) -> Vec<u8> {
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len}\r\n{extra}\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&pattern(len, 42));
    req
}

/// Answers with the method, target and body length, naming itself.
fn named(name: &'static str) -> impl Fn(&Seen) -> Answer + Send + Sync + 'static {
    move |seen| {
        let body = format!("{} {} {}", seen.method, seen.target, seen.body.len());
        Answer::keep(ok_with(&format!("X-Backend: {name}\r\n"), body.as_bytes()))
    }
}

// ---------------------------------------------------------------------------
// 1. Retries (rules::may_retry).

/// How the client's primary backend fails a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehave {
    /// Reads the whole request, then closes without a byte of answer.
    ClosesAfterReading,
    /// Reads the whole request, then resets the connection.
    ResetsAfterReading,
    /// Nothing listens on its port any more.
    Refuses,
    /// Reads the request and never answers (UPSTREAM_TIMEOUT_SECS=1).
    NeverAnswers,
    /// Answers 503 of its own.
    Answers503,
}

/// What else is true of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    Nothing,
    /// It carries an `Idempotency-Key`.
    IdempotencyKey,
    /// It goes out on an idle keep-alive connection the balancer holds to
    /// the misbehaving backend.
    Pooled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// 200 from the other backend, which got the request intact.
    Retried,
    /// The balancer's own answer.
    Own(u16, &'static str),
    /// The failing backend's own answer, passed on as it is.
    Passed(u16, &'static str),
}

/// A request (method, body bytes, anything else), what its primary backend
/// does with it, and what the client must get.
struct RetryCase(&'static str, usize, Extra, Misbehave, Want);

impl RetryCase {
    fn name(&self) -> String {
        let RetryCase(method, len, extra, misbehave, _) = self;
        format!("{method} with {len} body bytes ({extra:?}), backend {misbehave:?}")
    }
}

const FAILED: Want = Want::Own(502, "the backend failed to answer");
const TIMED_OUT: Want = Want::Own(504, "the backend did not answer in time");

const KIB: usize = 1024;
/// The replay bound: a body up to this may be sent twice.
const MAX: usize = rules::REPLAY_BODY_MAX;

const RETRY_CASES: &[RetryCase] = {
    use Extra::{IdempotencyKey as Key, Nothing as No, Pooled};
    use Misbehave::*;
    use Want::Retried;
    &[
        RetryCase("PUT", KIB, No, ClosesAfterReading, Retried),
        RetryCase("PUT", KIB, No, ResetsAfterReading, Retried),
        RetryCase("PUT", MAX, No, ClosesAfterReading, Retried),
        RetryCase("PUT", MAX + 1, No, ClosesAfterReading, FAILED),
        RetryCase("PUT", 100 * KIB, No, ClosesAfterReading, FAILED),
        RetryCase("PUT", KIB, Pooled, ClosesAfterReading, Retried),
        RetryCase("POST", KIB, No, ClosesAfterReading, FAILED),
        RetryCase("POST", KIB, Pooled, ClosesAfterReading, FAILED),
        RetryCase("POST", KIB, Key, ClosesAfterReading, Retried),
        RetryCase("POST", 100 * KIB, Key, ClosesAfterReading, FAILED),
        // Nothing reached a backend: any request may go to the next one.
        RetryCase("POST", KIB, No, Refuses, Retried),
        RetryCase("POST", 100 * KIB, No, Refuses, Retried),
        // A backend's own 503 is its answer (and counts against it).
        RetryCase("GET", 0, No, Answers503, Want::Passed(503, "busy")),
        // Never after a timeout: the backend may still act on it.
        RetryCase("GET", 0, No, NeverAnswers, TIMED_OUT),
        RetryCase("PUT", KIB, No, NeverAnswers, TIMED_OUT),
    ]
};

/// What one run of a retry case showed.
#[derive(Debug, PartialEq, Eq)]
struct RetryOutcome {
    got: Got,
    /// What the good backend received: "METHOD target, N bytes, exact".
    good_got: Vec<String>,
    /// How many times the misbehaving backend received the request (none
    /// when its port refuses).
    bad_got: Vec<String>,
    /// `/lb/status` errors of (misbehaving, good) backend.
    errors: (u64, u64),
}

/// The first of a few client addresses whose primary backend is `name`
/// (each backend answers `/whoami` with its name), asking on `path`.
async fn client_on(lb: SocketAddr, name: &str, path: Path) -> IpAddr {
    for i in 0..64 {
        let ip = client_ip(i);
        let mut c = open(lb, ip, path).await;
        c.send(&get("/whoami")).await;
        if recv(&mut c).await.head.get("x-backend") == Some(name) {
            return ip;
        }
    }
    panic!("no client lands on {name}");
}

fn received(seen: &[Seen], len: usize) -> Vec<String> {
    let want = pattern(len, 42);
    seen.iter()
        .map(|s| {
            format!(
                "{} {}, {} bytes, exact: {}",
                s.method,
                s.target,
                s.body.len(),
                s.body == want
            )
        })
        .collect()
}

async fn run_retry(case: &RetryCase, path: Path) -> RetryOutcome {
    let RetryCase(method, len, extra, misbehave, _) = *case;
    let pooled = extra == Extra::Pooled;
    let mut bad = RawBackend::start(move |seen| {
        if seen.target == "/whoami" && pooled {
            return Answer::keep(ok_with("X-Backend: bad\r\n", b"bad"));
        }
        if seen.target == "/whoami" {
            // Not pooled: the case's request gets a fresh connection.
            return Answer {
                bytes: ok_with("X-Backend: bad\r\nConnection: close\r\n", b"bad"),
                then: Then::Close,
                delay: Duration::ZERO,
            };
        }
        match misbehave {
            Misbehave::Answers503 => Answer::keep(
                b"HTTP/1.1 503 Service Unavailable\r\nX-Backend: bad\r\nContent-Length: 4\r\n\r\nbusy"
                    .to_vec(),
            ),
            Misbehave::ClosesAfterReading => Answer::nothing(Then::Close),
            Misbehave::ResetsAfterReading => Answer::nothing(Then::Reset),
            Misbehave::Refuses | Misbehave::NeverAnswers => Answer::nothing(Then::Hang),
        }
    })
    .await;
    let mut good = RawBackend::start(named("good")).await;
    let lb = balancer(&[&bad, &good], &[("UPSTREAM_TIMEOUT_SECS", "1")]).await;
    let (bad_addr, good_addr) = (bad.addr, good.addr);
    // Asked on the case's path, so that a pooled connection is that path's.
    let ip = client_on(lb.addr, "bad", path).await;
    // Connections go back to the pool before their request stops counting
    // as active.
    support::wait_for("no request in flight", IO_LIMIT, || async {
        (lb.status().await["totals"]["active"] == 0).then_some(())
    })
    .await;
    bad.received_so_far();
    good.received_so_far();
    // A killed backend's port stays held (refusing) while `_refusing` lives.
    let (mut bad, _refusing) = if misbehave == Misbehave::Refuses {
        (None, Some(bad.kill().await))
    } else {
        (Some(bad), None)
    };

    let mut c = open(lb.addr, ip, path).await;
    let key = if extra == Extra::IdempotencyKey {
        "Idempotency-Key: 7f3c1e\r\n"
    } else {
        ""
    };
    let req = if len == 0 {
        format!("{method} /case HTTP/1.1\r\nHost: {HOST}\r\n{key}\r\n").into_bytes()
    } else {
        with_body(method, "/case", key, len)
    };
    c.send(&req).await;
    let got = answer(&mut c, IO_LIMIT, &["date"]).await;
    // Both backends record a request before they act on it, so by the
    // time the client has its answer, everything either received is seen.
    let good_got = received(&good.received_so_far(), len);
    let bad_got = bad
        .as_mut()
        .map(|b| received(&b.received_so_far(), len))
        .unwrap_or_default();
    let errors = (
        blame_of(&lb, bad_addr).await.0,
        blame_of(&lb, good_addr).await.0,
    );
    RetryOutcome {
        got,
        good_got,
        bad_got,
        errors,
    }
}

/// Which failed attempts go to the next candidate: the same on both paths,
/// with bodies below and above the replay bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_one_rule_on_both_paths() {
    let mut failures = Failures::default();
    for case in RETRY_CASES {
        let RetryCase(method, len, _, misbehave, want) = *case;
        let name = case.name();
        let [fast, hyper] = both(|path| run_retry(case, path)).await;
        failures.same(&name, &fast, &hyper);
        for (path, o) in [(Path::Fast, &fast), (Path::Hyper, &hyper)] {
            let what = format!("{name} ({path:?})");
            let sent = format!("{method} /case, {len} bytes, exact: true");
            let (ok, wanted) = match want {
                Want::Retried => (
                    o.got.status() == Some(200)
                        && o.got.field("x-backend") == Some("good")
                        && o.got.body() == format!("{method} /case {len}")
                        && o.good_got == [sent.clone()],
                    "a 200 from the other backend, which got the request intact".to_owned(),
                ),
                Want::Own(status, reason) => (
                    o.got.status() == Some(status)
                        && o.got.body() == own_json(status, reason)
                        && o.good_got.is_empty(),
                    format!("the balancer's {status} {reason:?}, not retried"),
                ),
                Want::Passed(status, body) => (
                    o.got.status() == Some(status)
                        && o.got.body() == body
                        && o.got.field("x-backend") == Some("bad")
                        && o.good_got.is_empty(),
                    format!("the backend's own {status}, not retried"),
                ),
            };
            failures.check(ok, || {
                format!(
                    "{what}: want {wanted}; the client got {:?}, the other backend {:?}",
                    o.got, o.good_got
                )
            });
            // One gateway failure, counted once against the backend that
            // failed (for a refused port, that also shows it was tried first).
            failures.check(o.errors == (1, 0), || {
                format!("{what}: /lb/status errors (failing, other): {:?}", o.errors)
            });
            // Sent once to the backend that failed it; a replayable request
            // that failed on a reused idle connection before any answer
            // goes once more to that backend on a new connection first
            // (rules::may_retry_fresh: the backend may have closed the idle
            // connection just as it was reused).
            let replayable = want == Want::Retried && misbehave != Misbehave::Refuses;
            let times = if case.2 == Extra::Pooled && replayable {
                2
            } else {
                1
            };
            failures.check(
                misbehave == Misbehave::Refuses || o.bad_got == vec![sent.clone(); times],
                || {
                    format!(
                        "{what}: the failing backend got {:?}, want it {times} time(s)",
                        o.bad_got
                    )
                },
            );
        }
    }
    failures.assert_none();
}

// ---------------------------------------------------------------------------
// 2. Hop-by-hop, Connection-named and forwarding headers, both directions.

/// A request head's header lines (after `Host`), and its body.
struct RequestRow {
    name: &'static str,
    method: &'static str,
    lines: &'static str,
    body: &'static str,
    /// The body the backend must get (differs from `body` when chunked).
    want_body: &'static str,
}

const REQUEST_ROWS: &[RequestRow] = &[
    RequestRow {
        name: "end-to-end headers pass as they are",
        method: "GET",
        lines: "Accept: */*\r\nCookie: a=1\r\nCookie: b=2\r\nX-Empty:\r\nX-Mixed-Case: Value\r\nUser-Agent: rules/1\r\n",
        body: "",
        want_body: "",
    },
    RequestRow {
        name: "the fixed hop-by-hop list stops at the balancer",
        method: "GET",
        lines: "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\n\
                Proxy-Authorization: Basic dXNlcjpwYXNz\r\nProxy-Connection: keep-alive\r\nX-End: 1\r\n",
        body: "",
        want_body: "",
    },
    RequestRow {
        name: "hop-by-hop names in any case",
        method: "GET",
        lines: "CONNECTION: X-Odd\r\nKEEP-ALIVE: 1\r\nx-ODD: 1\r\nPROXY-AUTHORIZATION: x\r\nX-End: 1\r\n",
        body: "",
        want_body: "",
    },
    RequestRow {
        name: "an Upgrade without Connection: upgrade is dropped",
        method: "GET",
        lines: "Upgrade: h2c\r\nX-End: 1\r\n",
        body: "",
        want_body: "",
    },
    RequestRow {
        name: "headers named in Connection stop",
        method: "GET",
        lines: "Connection: X-A, x-b\r\nX-A: 1\r\nx-B: 2\r\nX-C: 3\r\n",
        body: "",
        want_body: "",
    },
    RequestRow {
        name: "nine names in Connection (more than the fast path keeps)",
        method: "GET",
        lines: "Connection: x-1, x-2, x-3, x-4, x-5, x-6, x-7, x-8, x-9\r\nX-1: 1\r\nX-2: 2\r\nX-3: 3\r\n\
                X-4: 4\r\nX-5: 5\r\nX-6: 6\r\nX-7: 7\r\nX-8: 8\r\nX-9: 9\r\nX-Kept: yes\r\n",
        body: "",
        want_body: "",
    },
    RequestRow {
        name: "Connection cannot name the framing, Host or the forwarding headers",
        method: "POST",
        lines: "Connection: content-length, host, x-forwarded-for, x-real-ip, x-forwarded-proto, x-forwarded-host, forwarded\r\n\
                X-Forwarded-For: 6.6.6.6\r\nContent-Length: 5\r\n",
        body: "hello",
        want_body: "hello",
    },
    RequestRow {
        name: "an untrusted client's forwarding headers are replaced, Forwarded removed",
        method: "GET",
        lines: "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7, 8.8.8.8\r\nX-Real-IP: 6.6.6.6\r\n\
                X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6;proto=https\r\n",
        body: "",
        want_body: "",
    },
    RequestRow {
        name: "a client's Connection: close",
        method: "GET",
        lines: "Connection: close\r\nX-End: 1\r\n",
        body: "",
        want_body: "",
    },
    RequestRow {
        name: "a chunked request with a Connection-named header",
        method: "POST",
        lines: "Transfer-Encoding: chunked\r\nConnection: X-A\r\nX-A: 1\r\nX-End: 1\r\n",
        body: "5\r\nhello\r\n0\r\n\r\n",
        want_body: "hello",
    },
];

/// A backend's whole answer.
struct ResponseRow {
    name: &'static str,
    /// Header lines of the client's `GET` (after `Host`).
    request: &'static str,
    raw: &'static str,
}

/// Every row's answer carries a Date, so that hyper's own Date (see
/// `every_answer_carries_a_date_on_both_paths`) does not enter this table.
const RESPONSE_ROWS: &[ResponseRow] = &[
    ResponseRow {
        name: "end-to-end headers pass as they are",
        request: "",
        raw: "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Type: text/plain\r\n\
              Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nETag: \"v1\"\r\nCache-Control: private\r\nX-Empty:\r\n\
              X-Mixed-Case: Value\r\nContent-Length: 2\r\n\r\nok",
    },
    ResponseRow {
        name: "the fixed hop-by-hop list stops at the balancer",
        request: "",
        raw: "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: keep-alive, X-Backend-Hop\r\n\
              Keep-Alive: timeout=30, max=100\r\nX-Backend-Hop: internal\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\
              Proxy-Connection: keep-alive\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\nTE: trailers\r\nX-End: 1\r\n\
              Content-Length: 2\r\n\r\nok",
    },
    ResponseRow {
        name: "headers named in Connection stop, in any case",
        request: "",
        raw: "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nCONNECTION: X-Secret, x-other\r\n\
              x-SECRET: 1\r\nX-Other: 2\r\nX-Kept: 3\r\nContent-Length: 2\r\n\r\nok",
    },
    ResponseRow {
        name: "Connection cannot name the framing or the forwarding headers",
        request: "",
        raw: "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
              Connection: content-length, x-forwarded-for, x-real-ip\r\nX-Forwarded-For: 10.0.0.1\r\n\
              X-Real-IP: 10.0.0.1\r\nContent-Length: 2\r\n\r\nok",
    },
    ResponseRow {
        name: "a backend's Connection: close ends only the backend connection",
        request: "",
        raw: "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\nX-End: 1\r\n\
              Content-Length: 2\r\n\r\nok",
    },
    ResponseRow {
        name: "an HTTP/1.0 backend's Keep-Alive",
        request: "",
        raw: "HTTP/1.0 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: keep-alive\r\n\
              Keep-Alive: timeout=5\r\nX-End: 1\r\nContent-Length: 2\r\n\r\nok",
    },
    ResponseRow {
        name: "a chunked answer with a trailer, to a client that did not ask for trailers",
        request: "",
        raw: "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nTransfer-Encoding: chunked\r\n\
              Trailer: X-Sum\r\nKeep-Alive: timeout=5\r\nX-End: 1\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 42\r\n\r\n",
    },
    ResponseRow {
        name: "a chunked answer with a trailer, to a client that sent TE: trailers",
        request: "TE: trailers\r\nConnection: TE\r\n",
        raw: "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nTransfer-Encoding: chunked\r\n\
              Trailer: X-Sum\r\nX-End: 1\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 42\r\n\r\n",
    },
];

/// The answer to every request row.
const PLAIN: &str =
    "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\nok";

fn table_backend(seen: &Seen) -> Answer {
    let row = seen
        .target
        .strip_prefix("/resp/")
        .and_then(|i| i.parse::<usize>().ok());
    match row {
        Some(i) => Answer::keep(RESPONSE_ROWS[i].raw.as_bytes().to_vec()),
        None => Answer::keep(PLAIN.as_bytes().to_vec()),
    }
}

/// The framing fields, compared through the bodies instead.
const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];

/// What the backend received, comparable across paths.
#[derive(Debug, PartialEq, Eq)]
struct Received {
    start: String,
    fields: Vec<(String, String)>,
    body: String,
}

/// A request row's outcome: what the backend received and what the client got.
#[derive(Debug, PartialEq, Eq)]
struct HeaderOutcome {
    received: Option<Received>,
    got: Got,
    open_after: bool,
}

/// Names a `Connection` header makes hop-by-hop, by the rules.
fn connection_named(head: &Head) -> Vec<String> {
    head.tokens("connection")
        .into_iter()
        .filter(|t| rules::connection_may_drop(t.as_bytes()))
        .collect()
}

/// Whether a field survives the hop (the same rule both ways, forwarding
/// headers aside).
fn passes(name: &str, named: &[String]) -> bool {
    !rules::is_hop_by_hop(name.as_bytes())
        && !named.iter().any(|n| n == name)
        && !FRAMING.contains(&name)
}

/// The fields the backend must get for `client` (a request from 127.0.0.1).
fn want_request_fields(client: &Head) -> Vec<(String, String)> {
    let named = connection_named(client);
    let host = client.get("host").unwrap_or_default().to_owned();
    let mut want: Vec<(String, String)> = fields(client, &[])
        .into_iter()
        .filter(|(n, _)| passes(n, &named) && !rules::is_forwarding(n.as_bytes()))
        .collect();
    for (n, v) in [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-real-ip", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", host.as_str()),
    ] {
        want.push((n.to_owned(), v.to_owned()));
    }
    want.sort_by(|a, b| a.0.cmp(&b.0));
    want
}

/// The fields the client must get for the backend's `answer` (framing and
/// the balancer's own `Connection` aside).
fn want_response_fields(answer: &Head) -> Vec<(String, String)> {
    let named = connection_named(answer);
    fields(answer, &[])
        .into_iter()
        .filter(|(n, _)| passes(n, &named))
        .collect()
}

/// Request row `i`'s head.
fn request_head(i: usize) -> String {
    let row = &REQUEST_ROWS[i];
    format!(
        "{} /req/{i} HTTP/1.1\r\nHost: {HOST}\r\n{}\r\n",
        row.method, row.lines
    )
}

async fn run_request_row(
    lb: &TestBalancer,
    backend: &mut RawBackend,
    i: usize,
    path: Path,
) -> HeaderOutcome {
    let mut c = open(lb.addr, IpAddr::from(LOCAL), path).await;
    let mut req = request_head(i).into_bytes();
    req.extend_from_slice(REQUEST_ROWS[i].body.as_bytes());
    c.send(&req).await;
    let got = answer(&mut c, IO_LIMIT, &[]).await;
    let received = next_request(backend, IO_LIMIT).await.map(|seen| Received {
        start: seen.head.start.clone(),
        fields: fields(&seen.head, &FRAMING),
        body: String::from_utf8_lossy(&seen.body).into_owned(),
    });
    let open_after = still_open(&mut c).await;
    backend.received_so_far();
    HeaderOutcome {
        received,
        got,
        open_after,
    }
}

async fn run_response_row(
    lb: &TestBalancer,
    backend: &mut RawBackend,
    i: usize,
    path: Path,
) -> (Got, bool) {
    let mut c = open(lb.addr, IpAddr::from(LOCAL), path).await;
    let request = RESPONSE_ROWS[i].request;
    c.send(format!("GET /resp/{i} HTTP/1.1\r\nHost: {HOST}\r\n{request}\r\n").as_bytes())
        .await;
    let got = answer(&mut c, IO_LIMIT, &[]).await;
    let open_after = still_open(&mut c).await;
    backend.received_so_far();
    (got, open_after)
}

/// Every request row: the backend sees the same header set on both paths,
/// the one the rules prescribe; the client gets the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_follow_one_rule_on_both_paths() {
    let mut backend = RawBackend::start(table_backend).await;
    let lb = balancer(&[&backend], &[]).await;
    let mut failures = Failures::default();
    for (i, row) in REQUEST_ROWS.iter().enumerate() {
        let mut outcomes = Vec::new();
        for path in PATHS {
            let o = bounded_run(run_request_row(&lb, &mut backend, i, path)).await;
            outcomes.push((path, o));
        }
        failures.same(row.name, &outcomes[0].1, &outcomes[1].1);

        let client = Head::parse(request_head(i).as_bytes()).expect("a valid table row");
        let want = want_request_fields(&client);
        let close = client.tokens("connection").iter().any(|t| t == "close");
        for (path, o) in &outcomes {
            let what = format!("{} ({path:?})", row.name);
            match &o.received {
                None => failures.push(format!(
                    "{what}: the backend received nothing; the client got {:?}",
                    o.got
                )),
                Some(r) => {
                    failures.check(r.fields == want, || {
                        format!(
                            "{what}: the backend's headers\n  got:  {:?}\n  want: {:?}",
                            r.fields, want
                        )
                    });
                    failures.check(r.body == row.want_body, || {
                        format!("{what}: the backend's body {:?}", r.body)
                    });
                    failures.check(
                        r.start == format!("{} /req/{i} HTTP/1.1", row.method),
                        || format!("{what}: the backend's request line {:?}", r.start),
                    );
                }
            }
            failures.check(o.got.status() == Some(200) && o.got.body() == "ok", || {
                format!("{what}: the client got {:?}", o.got)
            });
            failures.check(o.open_after != close, || {
                format!(
                    "{what}: the connection stays open after the answer: {}",
                    o.open_after
                )
            });
        }
    }
    failures.assert_none();
}

/// Every response row: the client gets the same header set on both paths,
/// the one the rules prescribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_follow_one_rule_on_both_paths() {
    let mut backend = RawBackend::start(table_backend).await;
    let lb = balancer(&[&backend], &[]).await;
    let mut failures = Failures::default();
    for (i, row) in RESPONSE_ROWS.iter().enumerate() {
        let mut outcomes = Vec::new();
        for path in PATHS {
            let got = bounded_run(run_response_row(&lb, &mut backend, i, path)).await;
            outcomes.push((path, got));
        }
        failures.same(row.name, &outcomes[0].1, &outcomes[1].1);

        let head_end = row.raw.find("\r\n\r\n").expect("a head") + 4;
        let sent = Head::parse(&row.raw.as_bytes()[..head_end]).expect("a valid table row");
        let want = want_response_fields(&sent);
        for (path, (got, open_after)) in &outcomes {
            let what = format!("{} ({path:?})", row.name);
            // The backend's connection is not the client's.
            failures.check(*open_after, || {
                format!("{what}: the client connection closed")
            });
            let Got::Answer {
                version,
                status,
                fields: got_fields,
                body,
                ..
            } = got
            else {
                failures.push(format!("{what}: no answer: {got:?}"));
                continue;
            };
            // An intermediary sends its own version (RFC 9110 §6.2).
            failures.check(version == "HTTP/1.1", || {
                format!("{what}: the client got an {version} answer")
            });
            let connection: Vec<&str> = got_fields
                .iter()
                .filter(|(n, _)| n == "connection")
                .flat_map(|(_, v)| v.split(','))
                .map(str::trim)
                .collect();
            failures.check(
                connection.iter().all(|t| {
                    t.eq_ignore_ascii_case("close") || t.eq_ignore_ascii_case("keep-alive")
                }),
                || format!("{what}: the backend's Connection reached the client: {connection:?}"),
            );
            let end_to_end: Vec<(String, String)> = got_fields
                .iter()
                .filter(|(n, _)| n != "connection" && !FRAMING.contains(&n.as_str()))
                .cloned()
                .collect();
            failures.check(end_to_end == want, || {
                format!("{what}: the client's headers\n  got:  {end_to_end:?}\n  want: {want:?}")
            });
            failures.check(*status == 200 && body == "ok", || {
                format!("{what}: {got:?}")
            });
        }
    }
    failures.assert_none();
}

// ---------------------------------------------------------------------------
// 3. The balancer's own answers.

#[derive(Debug, Clone, Copy)]
enum Own {
    /// Every backend fails its health check.
    NoBackend,
    /// The backend answers something that is not HTTP.
    Garbage,
    /// The backend never answers (UPSTREAM_TIMEOUT_SECS=1).
    Timeout,
    /// The client stops in the middle of its body (CLIENT_BODY_TIMEOUT_SECS=1).
    SlowBody,
    /// The client stops in the middle of its head (CLIENT_HEADER_TIMEOUT_SECS=1;
    /// hyper bounds a head by CLIENT_IDLE_TIMEOUT_SECS, set to 2).
    SlowHead,
}

const OWN_CASES: [(Own, u16, &str); 5] = [
    (Own::NoBackend, 503, "no healthy backend"),
    (Own::Garbage, 502, "the backend failed to answer"),
    (Own::Timeout, 504, "the backend did not answer in time"),
    (Own::SlowBody, 408, "the request was not received in time"),
    (Own::SlowHead, 408, "the request was not received in time"),
];

/// An own answer and whether the connection carries another request.
#[derive(Debug, PartialEq, Eq)]
struct OwnOutcome {
    got: Got,
    open_after: bool,
}

async fn run_own(case: Own, path: Path) -> OwnOutcome {
    let timeouts = [
        ("UPSTREAM_TIMEOUT_SECS", "1"),
        ("CLIENT_BODY_TIMEOUT_SECS", "1"),
        ("CLIENT_HEADER_TIMEOUT_SECS", "1"),
        ("CLIENT_IDLE_TIMEOUT_SECS", "2"),
    ];
    // The backend lives as long as `_backend`.
    let (lb, _backend): (TestBalancer, Box<dyn std::any::Any + Send>) = match case {
        Own::NoBackend => {
            let down = TestBackend::start("down", "127.0.0.1:0".parse().expect("addr")).await;
            down.set_healthy(false);
            let mut pairs = vec![
                ("BACKEND_HOSTS", down.addr.to_string()),
                ("HEALTH_INTERVAL_SECS", "3600".to_owned()),
            ];
            pairs.extend(timeouts.iter().map(|(k, v)| (*k, (*v).to_owned())));
            let lb = TestBalancer::start(&pairs).await;
            support::wait_for("the backend is down", IO_LIMIT, || async {
                let s = lb.status().await;
                (s["backends"][0]["state"] == "down").then_some(())
            })
            .await;
            (lb, Box::new(down))
        }
        _ => {
            let raw = RawBackend::start(move |_| match case {
                Own::Garbage => Answer {
                    bytes: b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
                    then: Then::Close,
                    delay: Duration::ZERO,
                },
                Own::Timeout => Answer::nothing(Then::Hang),
                _ => Answer::keep(ok(b"ok")),
            })
            .await;
            let lb = balancer(&[&raw], &timeouts).await;
            (lb, Box::new(raw))
        }
    };
    let mut c = open(lb.addr, IpAddr::from(LOCAL), path).await;
    match case {
        Own::SlowBody => {
            let mut req =
                format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n")
                    .into_bytes();
            req.extend_from_slice(&pattern(10, 1));
            c.send(&req).await;
        }
        Own::SlowHead => {
            c.send(format!("GET /x HTTP/1.1\r\nHost: {HOST}\r\nAcc").as_bytes())
                .await
        }
        _ => c.send(&get("/x")).await,
    }
    let got = answer(
        &mut c,
        Duration::from_secs(2) + SLACK,
        &["date", "content-length"],
    )
    .await;
    let open_after = still_open(&mut c).await;
    OwnOutcome { got, open_after }
}

/// Which failure becomes which status and JSON body: the same on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancers_own_answers_are_the_same_on_both_paths() {
    let mut failures = Failures::default();
    for (case, status, reason) in OWN_CASES {
        let [fast, hyper] = both(|path| run_own(case, path)).await;
        let name = format!("{case:?}");
        failures.same(&name, &fast, &hyper);
        for (path, o) in [(Path::Fast, &fast), (Path::Hyper, &hyper)] {
            failures.check(
                o.got.status() == Some(status)
                    && o.got.body() == own_json(status, reason)
                    && o.got.field("content-type") == Some("application/json"),
                || {
                    format!(
                        "{name} ({path:?}): want {status} {reason:?} as JSON, got {:?}",
                        o.got
                    )
                },
            );
            // The client's own fault ends its connection; a backend's does not.
            failures.check(o.open_after == (status != 408), || {
                format!(
                    "{name} ({path:?}): the connection stays open after the answer: {}",
                    o.open_after
                )
            });
        }
    }
    failures.assert_none();
}

/// RFC 9110 §6.6.1: an origin server MUST send `Date` on its 2xx-4xx
/// answers, and a recipient that forwards a response without one MUST add
/// it. hyper adds it to everything it writes; the question is whether the
/// fast path does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_date_on_both_paths() {
    let mut failures = Failures::default();
    let [fast, hyper] = both(|path| async move {
        let backend = RawBackend::start(|seen| match seen.target.as_str() {
            "/garbage" => Answer {
                bytes: b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
                then: Then::Close,
                delay: Duration::ZERO,
            },
            _ => Answer::keep(ok(b"no date here")),
        })
        .await;
        let lb = balancer(&[&backend], &[("CLIENT_BODY_TIMEOUT_SECS", "1")]).await;
        let mut dated = Vec::new();
        for req in [
            get("/proxied"),
            get("/garbage"),
            format!("POST /slow HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 9\r\n\r\nabc")
                .into_bytes(),
        ] {
            let mut c = open(lb.addr, IpAddr::from(LOCAL), path).await;
            c.send(&req).await;
            let got = answer(&mut c, IO_LIMIT, &[]).await;
            dated.push((got.status(), got.field("date").is_some()));
        }
        dated
    })
    .await;
    failures.same("Date on a proxied answer, a 502 and a 408", &fast, &hyper);
    for (path, dated) in [(Path::Fast, &fast), (Path::Hyper, &hyper)] {
        failures.check(
            dated == &[(Some(200), true), (Some(502), true), (Some(408), true)],
            || format!("{path:?}: (status, has Date) for a proxied answer without Date, a 502, a 408: {dated:?}"),
        );
    }
    failures.assert_none();
}

/// Requests for the balancer's own paths (rules::is_own_endpoint) and for
/// their near misses: (request line, answered by the balancer).
const OWN_PATHS: &[(&str, bool)] = &[
    ("GET /health", true),
    ("GET /health?verbose=1", true),
    ("HEAD /health", true),
    ("GET /lb", true),
    ("GET /lb/", true),
    ("GET /lb/status", true),
    ("POST /lb/status", true),
    ("GET /lb/no-such-page", true),
    ("GET /metrics", true),
    ("GET /healthz", false),
    ("GET /lbx", false),
    ("GET /api/lb", false),
    ("GET /metrics/x", false),
];

/// The balancer's own paths are answered by the balancer on both paths,
/// with the same status and type, and never reach a backend; their near
/// misses are proxied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_paths_are_never_proxied_on_both_paths() {
    let mut backend =
        RawBackend::start(|seen| Answer::keep(ok_with("X-Backend: b\r\n", seen.target.as_bytes())))
            .await;
    let lb = balancer(&[&backend], &[]).await;
    let mut failures = Failures::default();
    for (line, own) in OWN_PATHS {
        let mut outcomes = Vec::new();
        for path in PATHS {
            let run = async {
                let mut c = open(lb.addr, IpAddr::from(LOCAL), path).await;
                let body = if line.starts_with("POST") {
                    "Content-Length: 0\r\n"
                } else {
                    ""
                };
                c.send(format!("{line} HTTP/1.1\r\nHost: {HOST}\r\n{body}\r\n").as_bytes())
                    .await;
                let head = line.starts_with("HEAD");
                let got = tokio::time::timeout(IO_LIMIT, read_response(&mut c, head))
                    .await
                    .map_err(|_| "no answer in time".to_owned())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .map(|r| {
                        (
                            r.status,
                            r.head.get("content-type").map(str::to_owned),
                            r.head.get("x-backend").map(str::to_owned),
                        )
                    });
                let proxied: Vec<String> = backend
                    .received_so_far()
                    .into_iter()
                    .map(|s| format!("{} {}", s.method, s.target))
                    .collect();
                (got, proxied)
            };
            outcomes.push((path, bounded_run(run).await));
        }
        failures.same(line, &outcomes[0].1, &outcomes[1].1);
        for (path, (got, proxied)) in &outcomes {
            let what = format!("{line} ({path:?})");
            let from_backend = matches!(got, Ok((_, _, Some(_))));
            failures.check(
                got.is_ok() && from_backend != *own && proxied.is_empty() == *own,
                || {
                    format!(
                        "{what}: own path: {own}; the client got {got:?}, the backend {proxied:?}"
                    )
                },
            );
        }
    }
    failures.assert_none();
}

// ---------------------------------------------------------------------------
// 4. Timeouts.

/// A client that sends half a head and stops gets 408 within
/// CLIENT_HEADER_TIMEOUT_SECS. The first request of a connection is read
/// by the fast path (even one it will hand to hyper); on a connection
/// already on hyper, hyper bounds idle time and head together by
/// CLIENT_IDLE_TIMEOUT_SECS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_head_is_cut_off_on_both_paths() {
    let (header, idle) = (1, 2);
    let mut failures = Failures::default();
    let [fast, hyper] = both(|path| async move {
        let backend = RawBackend::start(echo_target).await;
        let (h, i) = (header.to_string(), idle.to_string());
        let lb = balancer(
            &[&backend],
            &[
                ("CLIENT_HEADER_TIMEOUT_SECS", &h),
                ("CLIENT_IDLE_TIMEOUT_SECS", &i),
            ],
        )
        .await;
        let mut c = open(lb.addr, IpAddr::from(LOCAL), path).await;
        let started = Instant::now();
        c.send(format!("GET /x HTTP/1.1\r\nHost: {HOST}\r\nAcc").as_bytes())
            .await;
        let got = answer(
            &mut c,
            Duration::from_secs(idle) + SLACK,
            &["date", "content-length"],
        )
        .await;
        let waited = started.elapsed();
        let closed = closes(&mut c, IO_LIMIT).await;
        (got, waited, closed)
    })
    .await;
    failures.same(
        "a half-sent head",
        &(&fast.0, &fast.2),
        &(&hyper.0, &hyper.2),
    );
    for (path, (got, waited, closed), limit) in
        [(Path::Fast, &fast, header), (Path::Hyper, &hyper, idle)]
    {
        eprintln!("half-sent head ({path:?}): {got:?} after {waited:?}, then {closed:?}");
        failures.check(
            got.status() == Some(408)
                && got.body() == own_json(408, "the request was not received in time"),
            || format!("{path:?}: want the 408 JSON answer, got {got:?} after {waited:?}"),
        );
        failures.check(*waited <= Duration::from_secs(limit) + SLACK, || {
            format!("{path:?}: cut off only after {waited:?} (limit {limit} s)")
        });
        failures.check(closed.is_ok(), || {
            format!("{path:?}: after the answer, {closed:?}")
        });
    }
    failures.assert_none();
}

/// A client that announces a body and sends ten bytes of it gets 408 (or a
/// close) after CLIENT_BODY_TIMEOUT_SECS, and no backend is blamed: the
/// stall is the client's. Below the fast path's body limit and above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_the_clients_fault_on_both_paths() {
    let limit = 1;
    let mut failures = Failures::default();
    for len in [1_000usize, 100_000] {
        let [fast, hyper] = both(|path| async move {
            let backend = RawBackend::start(echo_target).await;
            let lb = balancer(&[&backend], &[("CLIENT_BODY_TIMEOUT_SECS", "1")]).await;
            let mut c = open(lb.addr, IpAddr::from(LOCAL), path).await;
            let mut req =
                format!("PUT /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len}\r\n\r\n")
                    .into_bytes();
            req.extend_from_slice(&pattern(10, 3));
            let started = Instant::now();
            c.send(&req).await;
            let got = answer(
                &mut c,
                Duration::from_secs(limit) + SLACK,
                &["date", "content-length"],
            )
            .await;
            let waited = started.elapsed();
            let closed = closes(&mut c, IO_LIMIT).await;
            let blame = blame_of(&lb, backend.addr).await;
            (got, waited, closed, blame)
        })
        .await;
        let case = format!("Content-Length {len}, 10 bytes sent");
        eprintln!(
            "{case}: fast {:?} after {:?}; hyper {:?} after {:?}",
            fast.0, fast.1, hyper.0, hyper.1
        );
        failures.same(
            &case,
            &(&fast.0, &fast.2, &fast.3),
            &(&hyper.0, &hyper.2, &hyper.3),
        );
        for (path, (got, waited, closed, blame)) in [(Path::Fast, &fast), (Path::Hyper, &hyper)] {
            let what = format!("{case} ({path:?})");
            let answered = got.status() == Some(408)
                && got.body() == own_json(408, "the request was not received in time");
            failures.check(answered || *got == Got::Closed, || {
                format!("{what}: want 408 or a close, got {got:?}")
            });
            failures.check(*waited <= Duration::from_secs(limit) + SLACK, || {
                format!("{what}: cut off only after {waited:?}")
            });
            failures.check(closed.is_ok(), || {
                format!("{what}: after the answer, {closed:?}")
            });
            failures.check(*blame == (0, "up".to_owned(), 0), || {
                format!("{what}: the backend was blamed: (errors, state, ejections) = {blame:?}")
            });
        }
    }
    failures.assert_none();
}

/// A slow but steady upload (ten pieces over about three seconds) with a
/// response-head timeout of one second: the backend's time counts from the
/// request's last byte, so the upload goes through and nothing is blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_upload_is_not_a_backend_timeout_on_both_paths() {
    let mut failures = Failures::default();
    for len in [60 * KIB, 100 * KIB] {
        let [fast, hyper] = both(|path| async move {
            let mut backend = RawBackend::start(named("b")).await;
            let lb = balancer(
                &[&backend],
                &[
                    ("UPSTREAM_TIMEOUT_SECS", "1"),
                    ("CLIENT_BODY_TIMEOUT_SECS", "5"),
                ],
            )
            .await;
            let mut c = open(lb.addr, IpAddr::from(LOCAL), path).await;
            c.send(
                format!("PUT /slow HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len}\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            let body = pattern(len, 42);
            for piece in body.chunks(len.div_ceil(10)) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if c.stream.write_all(piece).await.is_err() {
                    break;
                }
            }
            let got = answer(&mut c, IO_LIMIT, &["date"]).await;
            let got_body = backend.received_so_far();
            let blame = blame_of(&lb, backend.addr).await;
            (got, received(&got_body, len), blame)
        })
        .await;
        let case = format!("{len} bytes in ten pieces");
        failures.same(&case, &fast, &hyper);
        for (path, (got, seen, blame)) in [(Path::Fast, &fast), (Path::Hyper, &hyper)] {
            let what = format!("{case} ({path:?})");
            failures.check(
                got.status() == Some(200) && got.body() == format!("PUT /slow {len}"),
                || format!("{what}: want 200, got {got:?}"),
            );
            failures.check(
                *seen == [format!("PUT /slow, {len} bytes, exact: true")],
                || format!("{what}: the backend got {seen:?}"),
            );
            failures.check(*blame == (0, "up".to_owned(), 0), || {
                format!("{what}: the backend was blamed: (errors, state, ejections) = {blame:?}")
            });
        }
    }
    failures.assert_none();
}

/// A backend that sends a head with Content-Length 100 and ten bytes of
/// body, then stalls: the client's connection is cut off within
/// UPSTREAM_BODY_TIMEOUT_SECS of the ten bytes, and the backend is blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_stalling_mid_body_is_cut_off_on_both_paths() {
    let limit = 1;
    let mut failures = Failures::default();
    let [fast, hyper] = both(|path| async move {
        let backend = RawBackend::start(|_| {
            let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec();
            bytes.extend_from_slice(&pattern(10, 9));
            Answer {
                bytes,
                then: Then::Hang,
                delay: Duration::ZERO,
            }
        })
        .await;
        let lb = balancer(&[&backend], &[("UPSTREAM_BODY_TIMEOUT_SECS", "1")]).await;
        let mut c = open(lb.addr, IpAddr::from(LOCAL), path).await;
        c.send(&get("/stall")).await;
        let head = tokio::time::timeout(IO_LIMIT, async {
            let head = c.head().await?.ok_or_else(|| eof("before the head"))?;
            let part = c.take(10).await?;
            Ok::<_, io::Error>((Head::parse(&head)?.start, part == pattern(10, 9)))
        })
        .await
        .map_err(|_| "no head and ten bytes in time".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let started = Instant::now();
        let closed = closes(&mut c, Duration::from_secs(limit) + SLACK).await;
        let waited = started.elapsed();
        let blame = blame_of(&lb, backend.addr).await;
        (head, closed, waited, blame.0)
    })
    .await;
    failures.same(
        "a stall after ten body bytes",
        &(&fast.0, &fast.1, fast.3),
        &(&hyper.0, &hyper.1, hyper.3),
    );
    for (path, (head, closed, waited, errors)) in [(Path::Fast, &fast), (Path::Hyper, &hyper)] {
        failures.check(*head == Ok(("HTTP/1.1 200 OK".to_owned(), true)), || {
            format!("{path:?}: the head and the first ten bytes: {head:?}")
        });
        failures.check(closed.is_ok(), || {
            format!("{path:?}: the client connection after the stall: {closed:?}")
        });
        eprintln!("mid-body stall ({path:?}): closed {waited:?} after the ten bytes");
        failures.check(*errors == 1, || {
            format!("{path:?}: the backend's errors: {errors}")
        });
    }
    failures.assert_none();
}

/// A client that stops reading while the backend sends 64 MiB: the
/// balancer gives up on it after CLIENT_WRITE_TIMEOUT_SECS and closes the
/// backend connection, so a stalled client does not hold a backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_frees_its_backend_on_both_paths() {
    let limit = 1;
    let mut failures = Failures::default();
    let big = std::sync::Arc::new(ok(&pattern(64 << 20, 5)));
    let [fast, hyper] = both(|path| {
        let big = std::sync::Arc::clone(&big);
        async move {
            let mut backend = RawBackend::start(move |_| Answer::keep(big.to_vec())).await;
            let lb = balancer(&[&backend], &[("CLIENT_WRITE_TIMEOUT_SECS", "1")]).await;
            let mut c = open(lb.addr, IpAddr::from(LOCAL), path).await;
            c.send(&get("/huge")).await;
            let conn = backend.request().await.conn;
            let started = Instant::now();
            let within = Duration::from_secs(limit) + SLACK;
            let freed = tokio::time::timeout(within, async {
                loop {
                    match backend.events.recv().await {
                        Some(Event::Closed(n)) if n == conn => return true,
                        None => return false,
                        _ => {}
                    }
                }
            })
            .await
            .unwrap_or(false);
            let waited = started.elapsed();
            drop(c);
            (freed, waited)
        }
    })
    .await;
    failures.same("a stalled reader", &fast.0, &hyper.0);
    for (path, (freed, waited)) in [(Path::Fast, &fast), (Path::Hyper, &hyper)] {
        eprintln!("stalled reader ({path:?}): backend connection closed: {freed} after {waited:?}");
        failures.check(*freed, || {
            format!("{path:?}: the backend connection was still open {waited:?} after the request")
        });
    }
    failures.assert_none();
}

// ---------------------------------------------------------------------------
// 5. Strict request heads (rules::check_head, rules::has_fragment, chunk
//    sizes): what is refused, and what an absolute-form target becomes.

/// What a strict-head case must give.
#[derive(Debug, Clone, Copy)]
enum Strict {
    /// The balancer's own JSON answer, then a close; nothing reaches a
    /// backend.
    Own(u16, &'static str),
    /// Refused as a malformed head (hyper's bare 400), then a close.
    Malformed,
    /// Forwarded as `method target` with this `Host`.
    Forwarded(&'static str, &'static str),
}

/// A chunked POST whose second chunk has the size line `size`.
fn chunked_with_size(size: &str) -> String {
    format!(
        "POST /up HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n{size}\r\nabc"
    )
}

/// (name, request, what it must give). `{HOST}` is the test's Host.
fn strict_cases() -> Vec<(&'static str, Vec<u8>, Strict)> {
    let own_bad = |why| Strict::Own(400, why);
    let req = |s: String| s.into_bytes();
    vec![
        (
            "two identical Host lines",
            req(format!(
                "GET /a HTTP/1.1\r\nHost: {HOST}\r\nHost: {HOST}\r\n\r\n"
            )),
            own_bad("more than one Host header"),
        ),
        (
            "two different Host lines",
            req(format!(
                "GET /a HTTP/1.1\r\nHost: {HOST}\r\nHost: evil.example\r\n\r\n"
            )),
            own_bad("more than one Host header"),
        ),
        (
            "a Host value that is no host",
            req("GET /a HTTP/1.1\r\nHost: a b\r\n\r\n".to_owned()),
            own_bad("invalid Host header"),
        ),
        (
            "absolute form, the same authority as Host",
            req(format!(
                "GET http://{HOST}/a?q=1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
            )),
            Strict::Forwarded("GET /a?q=1", HOST),
        ),
        (
            "absolute form, the default port spelled out",
            req(format!(
                "GET http://{HOST}:80/a HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
            )),
            Strict::Forwarded("GET /a", "edge.test:80"),
        ),
        (
            "absolute form without Host",
            req("GET http://other.example/a HTTP/1.1\r\n\r\n".to_owned()),
            Strict::Forwarded("GET /a", "other.example"),
        ),
        (
            "absolute form, another authority than Host",
            req(format!(
                "GET http://other.example/a HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
            )),
            own_bad("Host does not match the request target's authority"),
        ),
        (
            "absolute form with userinfo",
            req(format!(
                "GET http://u@{HOST}/a HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
            )),
            own_bad("invalid request target"),
        ),
        (
            "absolute form, not http",
            req(format!(
                "GET ftp://{HOST}/a HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
            )),
            own_bad("unsupported scheme in the request target"),
        ),
        (
            "CONNECT to an authority",
            req(format!(
                "CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n"
            )),
            Strict::Own(405, "CONNECT is not supported"),
        ),
        (
            "CONNECT to a path",
            req(format!("CONNECT /a HTTP/1.1\r\nHost: {HOST}\r\n\r\n")),
            Strict::Own(405, "CONNECT is not supported"),
        ),
        (
            "a fragment in the target",
            req(format!("GET /a#b HTTP/1.1\r\nHost: {HOST}\r\n\r\n")),
            Strict::Malformed,
        ),
        (
            "a fragment after the query",
            req(format!("GET /a?x=1#b HTTP/1.1\r\nHost: {HOST}\r\n\r\n")),
            Strict::Malformed,
        ),
        (
            "an asterisk target with GET",
            req(format!("GET * HTTP/1.1\r\nHost: {HOST}\r\n\r\n")),
            own_bad("a * target is only for OPTIONS"),
        ),
        (
            "an asterisk target with OPTIONS",
            req(format!("OPTIONS * HTTP/1.1\r\nHost: {HOST}\r\n\r\n")),
            Strict::Forwarded("OPTIONS *", HOST),
        ),
        (
            "an authority target with GET",
            req(format!("GET {HOST}:80 HTTP/1.1\r\nHost: {HOST}\r\n\r\n")),
            own_bad("invalid request target"),
        ),
        (
            "a 14-digit chunk size",
            req(chunked_with_size("10000000000000")),
            own_bad("the request body could not be read"),
        ),
        (
            "a 16-digit chunk size",
            req(chunked_with_size("ffffffffffffffff")),
            own_bad("the request body could not be read"),
        ),
        (
            "a 17-digit chunk size that overflows to 0",
            req(chunked_with_size("10000000000000000")),
            own_bad("the request body could not be read"),
        ),
        (
            "a 14-digit chunk size after 70 KiB already streamed",
            {
                let mut r = format!(
                    "POST /up HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n11800\r\n"
                )
                .into_bytes();
                r.extend_from_slice(&pattern(0x11800, 7));
                r.extend_from_slice(b"\r\n10000000000000\r\nabc");
                r
            },
            own_bad("the request body could not be read"),
        ),
    ]
}

/// What one strict-head case did: the answer, whether the connection
/// closed after it, and the requests the backend received (method and
/// target, Host).
#[derive(Debug, PartialEq, Eq)]
struct StrictOutcome {
    got: Got,
    closed_after: bool,
    received: Vec<(String, Vec<String>)>,
}

async fn run_strict(request: &[u8], path: Path) -> StrictOutcome {
    let mut backend = RawBackend::start(echo_target).await;
    let lb = balancer(&[&backend], &[("CLIENT_BODY_TIMEOUT_SECS", "2")]).await;
    let mut c = open(lb.addr, IpAddr::from(LOCAL), path).await;
    // A write may fail once the balancer refused the head and closed.
    let _ = c.stream.write_all(request).await;
    let got = answer(&mut c, IO_LIMIT, &["date"]).await;
    // A streamed body's partial request may still be on its way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let received: Vec<Seen> = backend.received_so_far();
    let closed_after = !still_open(&mut c).await;
    let received = received
        .into_iter()
        .map(|s| {
            let hosts = s.head.all("host").into_iter().map(str::to_owned).collect();
            (format!("{} {}", s.method, s.target), hosts)
        })
        .collect();
    StrictOutcome {
        got,
        closed_after,
        received,
    }
}

/// Every strict-head case: refused (or rewritten) the same way on both
/// paths, as the rules say; a refused head reaches no backend (a body
/// already streaming reaches it incomplete) and ends its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_heads_are_refused_alike_on_both_paths() {
    let mut failures = Failures::default();
    for (name, request, want) in strict_cases() {
        let [fast, hyper] = both(|path| run_strict(&request, path)).await;
        failures.same(name, &fast, &hyper);
        for (path, o) in [(Path::Fast, &fast), (Path::Hyper, &hyper)] {
            let what = format!("{name} ({path:?})");
            match want {
                Strict::Own(status, reason) => {
                    failures.check(
                        o.got.status() == Some(status)
                            && o.got.body() == own_json(status, reason)
                            && o.got.field("connection") == Some("close")
                            && o.closed_after,
                        || format!("{what}: want {status} {reason:?} and a close, got {o:?}"),
                    );
                    failures.check(status != 405 || o.got.field("allow").is_some(), || {
                        format!("{what}: a 405 without Allow: {o:?}")
                    });
                    let streamed = name.contains("streamed");
                    failures.check(
                        o.received.is_empty() || (streamed && o.received.len() == 1),
                        || format!("{what}: reached the backend: {:?}", o.received),
                    );
                }
                Strict::Malformed => failures.check(
                    o.got.status() == Some(400)
                        && o.got.body().is_empty()
                        && o.closed_after
                        && o.received.is_empty(),
                    || format!("{what}: want a bare 400, a close, nothing forwarded: {o:?}"),
                ),
                Strict::Forwarded(line, host) => failures.check(
                    o.got.status() == Some(200)
                        && !o.closed_after
                        && o.received == [(line.to_owned(), vec![host.to_owned()])],
                    || format!("{what}: want {line:?} with Host {host:?} forwarded: {o:?}"),
                ),
            }
        }
    }
    failures.assert_none();
}

/// Differential against HAProxy 2.6 in the same role (a reverse proxy in
/// front of one backend): every request HAProxy refuses itself, hashgate
/// refuses too (it may refuse more: two identical `Host` lines, a `Host`
/// that is no host name, `GET *`, a `ftp://` target, userinfo, CONNECT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatever_haproxy_refuses_is_refused() {
    let mut backend = RawBackend::start(echo_target).await;
    let Some(haproxy) = haproxy::Haproxy::start(backend.addr) else {
        return;
    };
    let lb = balancer(&[&backend], &[("CLIENT_BODY_TIMEOUT_SECS", "2")]).await;
    let mut failures = Failures::default();
    let mut refused_by_haproxy = 0;
    for (name, request, _) in strict_cases() {
        let mut verdicts = Vec::new();
        for front in [haproxy.addr, lb.addr] {
            backend.received_so_far();
            let mut c = Wire::connect(front).await;
            let _ = c.stream.write_all(&request).await;
            let got = answer(&mut c, Duration::from_secs(3), &[]).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let forwarded = !backend.received_so_far().is_empty();
            let refused = matches!(got.status(), Some(400..=499)) && !forwarded;
            verdicts.push((refused, got.status()));
        }
        let [(haproxy_refused, h), (ours_refused, o)] = verdicts[..] else {
            unreachable!()
        };
        refused_by_haproxy += usize::from(haproxy_refused);
        failures.check(!haproxy_refused || ours_refused, || {
            format!("{name}: HAProxy refuses it ({h:?}), hashgate answers {o:?}")
        });
    }
    // The comparison means something only if HAProxy refused some.
    failures.check(refused_by_haproxy >= 8, || {
        format!("HAProxy refused only {refused_by_haproxy} cases: is it HAProxy 2.6 in HTTP mode?")
    });
    failures.assert_none();
}
