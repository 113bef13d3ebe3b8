//! hashgate: a sticky consistent-hash HTTP balancer and the API replicas
//! behind it.
//!
//! # Map
//!
//! A request travels down this picture, never back up:
//!
//! ```text
//!  client ──► server (accept loop: budget, head clock, write deadline, drain)
//!               │
//!               ▼
//!            proxy::h1 (fast path) ─┬─► proxy::driver ──► select (strategy's candidates)
//!            proxy::hyper_path ─────┘        │    └─────► proxy::rules (retry, blame, answers)
//!                                            ▼
//!                      attempt via upstream::ConnPool ──► backend
//!                                            │
//!                      proxy::report ──► Backend: load, outlier state, counters
//!
//!  balancer (wiring): discovery loop ──► backend::Published (ArcSwap snapshot)
//!                     health::checker ──► HealthCell + outlier (a pass can end an ejection)
//!                     least-queue poller ──► Load::set_queue
//! ```
//!
//! - [`config`]: typed configuration, parsed once; bad values name their variable.
//! - [`ring`]: the Maglev consistent-hash table and each key's fallback order.
//! - [`select`]: the selection seam: every strategy, for the balancer and the
//!   gateway alike, and the load figures they read.
//! - [`backend`]: a backend's identity, health, outlier state, load, counters
//!   and pool; the published snapshot of the set.
//! - [`discovery`]: where backends come from (static list, DNS, port range).
//! - [`health`]: active checks (rise/fall machine, probe, loop), outlier
//!   detection, and the `<binary> healthcheck` probe for containers.
//! - [`pages`]: what the `/lb` and `/status.html` pages share (number formats).
//! - [`upstream`]: pooled keep-alive connections to one backend, and the
//!   request body sent on them.
//! - [`chunked`]: the chunked-body scanner both request paths and the accept
//!   loop use.
//! - [`proxy`]: the request path: the shared state ([`proxy::Proxy`]), the
//!   one driver, the rules, the outcome reports, and the two transports
//!   ([`proxy::h1`], the HTTP/1.1 fast path, and [`proxy::hyper_path`]).
//! - [`balancer`]: wiring, background loops, own endpoints (`/health`, `/lb`,
//!   `/lb/status`, `/lb/stats`, `/lb/backends`, `/lb/config`, `/lb/route`,
//!   `/lb/clients`, `/metrics`).
//! - [`admin`]: runtime management, a room of its own: overrides by backend
//!   name layered over discovery, the admin token, the state file, the
//!   log filter switch and `balancer ctl`.
//! - [`stats`]: the figures operators read, per worker thread on the
//!   request path and summed when read; the client table; the charts' ring.
//! - [`api`]: an API instance (axum router, worker registry, `/health`,
//!   `/status.html`, `api keys`), served through the same accept loop.
//! - [`gateway`]: what makes an instance a gateway master: API keys,
//!   dispatch to workers (strategy, retries, circuit breakers), metering.
//!   `client ─► balancer ─► api ─► gateway::dispatch ─► worker`, a usage
//!   row per request to the database.
//! - [`worker`]: the sample worker (`worker` binary) the gateway fronts.
//! - [`store`]: the database seam: one `Store` over MySQL or embedded SQLite,
//!   migrations safe under concurrent start-up.
//! - [`cluster`]: the local launcher (`cargo run --bin cluster`), supervising
//!   the instances and the balancer as child processes of itself.
//! - [`server`], [`shutdown`], [`telemetry`]: the accept loop, the one
//!   shutdown path and logging, shared by every binary.
//! - [`threads`]: the balancer's per-core connection threads, each a
//!   single-threaded event loop that also owns its upstream connections.

pub mod admin;
pub mod api;
pub mod backend;
pub mod balancer;
pub mod chunked;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod gateway;
pub mod health;
pub mod pages;
pub mod proxy;
pub mod ring;
pub mod select;
pub mod server;
pub mod shutdown;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod threads;
pub mod upstream;
pub mod worker;
