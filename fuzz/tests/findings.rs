//! The reproducers of reported findings, `fuzz/artifacts-found/<target>/`,
//! replayed with no tolerance (see `src/known.rs`): each must still fail
//! its target's checks. When one passes, its finding is fixed: delete its
//! tolerance in `src/known.rs` and move the file to `corpus/<target>/`,
//! where it stays as a regression seed.
//!
//!     cargo test --manifest-path fuzz/Cargo.toml --test findings

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::Ordering;

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 5] = [
    ("request_head", hashgate_fuzz::request_head::check),
    ("response_head", hashgate_fuzz::response_head::check),
    ("chunked", hashgate_fuzz::chunked::check),
    ("client_ip", hashgate_fuzz::client_ip::check),
    ("config", hashgate_fuzz::config::check),
];

#[test]
fn every_reported_finding_still_reproduces() {
    hashgate_fuzz::known::STRICT.store(true, Ordering::Relaxed);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts-found");
    let mut fixed = Vec::new();
    for (target, check) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for file in entries.map(|e| e.expect("directory entry").path()) {
            let data = std::fs::read(&file).expect("reproducer");
            match catch_unwind(AssertUnwindSafe(|| check(&data))) {
                Ok(()) => fixed.push(file.display().to_string()),
                Err(_) => eprintln!("still open: {}", file.display()),
            }
        }
    }
    assert!(
        fixed.is_empty(),
        "these no longer fail; see this file's docs:\n{}",
        fixed.join("\n")
    );
}
