//! `balancer`: the sticky consistent-hash reverse proxy (port 13003).

use std::process::ExitCode;

use hashgate::config::Env;
use hashgate::{balancer, shutdown, telemetry};

// mimalloc (v3): glibc's malloc was ~3.5% of the balancer's CPU under load
// (a few small allocations per request, freed on the same thread); with it,
// requests per core-second rose ~10% in bench/run.sh. It needs only a C
// compiler, which the bundled SQLite needs anyway. crates/alloc adds the
// thread that purges freed pages (idle connections' memory).
#[global_allocator]
static ALLOC: hashgate_alloc::MiMalloc = hashgate_alloc::MiMalloc;

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    // `balancer healthcheck`: the container probe (the image has no shell or
    // curl). An unparsable port falls back to the default; the server itself
    // would have refused to start with it anyway.
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        let port = Env::from_process()
            .port_or("BALANCER_PORT", 13003)
            .unwrap_or(13003);
        return hashgate::health::selfcheck::main_for_port(port);
    }
    // Returns freed memory to the OS when the workers go quiet.
    hashgate_alloc::init();
    telemetry::init("info");
    balancer::main_with(&Env::from_process(), shutdown::signal())
}
