//! hashgate: a sticky consistent-hash HTTP balancer and the API replicas
//! behind it.
//!
//! # Map
//!
//! ```text
//!  client ──► server (accept loop, limits, drain)
//!               │
//!               ▼
//!            proxy ── client_ip (peer / trusted X-Forwarded-For) ──► ring::key_hash
//!               │                                                        │
//!               │   balancer::Pool snapshot (ArcSwap): backends + ring ◄─┘
//!               │        ▲                          ▲
//!               │   discovery loop            health loop (probe + rise/fall)
//!               │   (static / dns / range)    passive failures wake it
//!               ▼
//!            upstream::ConnPool (keep-alive HTTP/1.1 per backend) ──► backend
//! ```
//!
//! - [`config`]: typed configuration, parsed once; bad values name their variable.
//! - [`ring`]: the Maglev consistent-hash table and each key's fallback order.
//! - [`backend`]: a backend's identity, health cell, counters and pool.
//! - [`discovery`]: where backends come from (static list, DNS, port range).
//! - [`health`]: rise/fall state machine, HTTP probe, checking loop.
//! - [`pages`]: what the `/lb` and `/status.html` pages share (number formats).
//! - [`healthcheck`]: the blocking `<binary> healthcheck` probe for containers.
//! - [`upstream`]: pooled keep-alive connections to one backend.
//! - [`proxy`]: the request path: pick, forward, fail over, map errors;
//!   [`proxy::h1`] is the HTTP/1.1 fast path that serves the common request
//!   without hyper and hands every other connection to hyper's path;
//!   [`proxy::rules`] holds the header rules both paths obey.
//! - [`balancer`]: wiring, own endpoints (`/health`, `/lb`, `/lb/status`).
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
//! - [`workers`]: the balancer's per-core connection threads, each a
//!   single-threaded event loop that also owns its upstream connections.

pub mod api;
pub mod backend;
pub mod balancer;
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
pub mod store;
pub mod telemetry;
pub mod threads;
pub mod upstream;
pub mod worker;
