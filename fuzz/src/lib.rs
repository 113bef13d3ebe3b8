//! The property checks behind hashgate's fuzz targets, one module per
//! target (`fuzz_targets/<name>.rs` only calls `<name>::check`).
//!
//! A check decodes one fuzz input, runs hashgate's code on it and panics
//! when a property fails; libFuzzer reports the panic as a crash and keeps
//! the input. Keeping the checks in a library lets the same code replay the
//! committed corpus on stable (`tests/replay.rs`) and write the seeds
//! (`examples/seeds.rs`, through each module's `encode`), so a seed always
//! means what its name says.
//!
//! The judges are written here, apart from hashgate: httparse re-parses the
//! rewritten heads, framing follows RFC 9112 §6.3 as a strict peer reads it,
//! a reference decoder finds the end of a chunked body, and the
//! `X-Forwarded-For` walk is re-done from the rule in
//! `src/proxy/client_ip.rs`'s docs.

pub mod chunked;
pub mod client_ip;
pub mod config;
pub mod known;
pub mod request_head;
pub mod response_head;

mod wire;
