//! Fuzz target: arbitrary bytes as a client's first packet at the dispatcher (issue 6).
//! The checks (no panic, and a well-formed answer for every accepted CONNECT) live in
//! `connect_check.rs`, shared with the stable replay test in tests/it/faults/fuzz_replay.rs.
#![no_main]

#[path = "../connect_check.rs"]
mod connect_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    connect_check::check(data);
});
