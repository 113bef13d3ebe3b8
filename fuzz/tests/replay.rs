//! Replays the committed seed corpus through every target's checks, on
//! stable and without libFuzzer: what `fuzz/run.sh` falls back to when the
//! nightly toolchain is missing, and a quick check that the seeds and the
//! checks still agree after a change to either.
//!
//!     cargo test --manifest-path fuzz/Cargo.toml
//!
//! This replays the inputs as they are; it finds nothing new (no coverage,
//! no mutation). Only `cargo +nightly fuzz run` fuzzes.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 5] = [
    ("request_head", hashgate_fuzz::request_head::check),
    ("response_head", hashgate_fuzz::response_head::check),
    ("chunked", hashgate_fuzz::chunked::check),
    ("client_ip", hashgate_fuzz::client_ip::check),
    ("config", hashgate_fuzz::config::check),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every file of `corpus/<target>/` through its target; the files
/// that fail, with the message.
fn replay(corpus: &str) -> (usize, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(corpus);
    let mut count = 0;
    let mut failed = Vec::new();
    for (target, check) in TARGETS {
        for file in files(&root.join(target)) {
            let data = std::fs::read(&file).expect("corpus file");
            count += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failed.push(format!("{}: {message}", file.display()));
            }
        }
    }
    (count, failed)
}

#[test]
fn the_seed_corpus_passes_every_check() {
    let (count, failed) = replay("corpus");
    assert!(count >= 100, "only {count} seeds: is fuzz/corpus there?");
    assert!(
        failed.is_empty(),
        "{} of {count} seeds fail:\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!("replayed {count} seeds: all pass");
}
