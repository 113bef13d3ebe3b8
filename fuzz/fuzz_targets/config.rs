#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hashgate_fuzz::config::check(data));
