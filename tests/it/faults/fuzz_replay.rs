//! Stable replay of the CONNECT fuzz target's seed corpus (fuzz/corpus/connect) and of any
//! crash or corpus file cargo-fuzz saved there: the same checks as `cargo fuzz run connect`,
//! without nightly or libFuzzer, so `make test` covers them.

use std::path::PathBuf;

use super::connect_check::{Outcome, check};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/connect");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("corpus file"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn connect_corpus_replays_with_the_expected_outcomes() {
    let files = corpus();
    assert!(
        files.len() >= 12,
        "seed corpus missing: {} files",
        files.len()
    );
    for (name, data) in &files {
        let outcome = check(data);
        let expected = match name.as_str() {
            "v5" | "v5-bytewise" | "v5-empty-id" => Some(Outcome::Redirected),
            "v311" | "v31" => Some(Outcome::LegacyRefused),
            "junk" | "oversize" | "bad-varint" | "truncated" | "publish-first" | "v6"
            | "bad-utf8-id" => Some(Outcome::Closed),
            _ => None, // saved by the fuzzer: only the invariants inside `check` apply
        };
        if let Some(expected) = expected {
            assert_eq!(outcome, expected, "{name}");
        }
    }
}

#[test]
fn every_prefix_of_a_good_connect_is_truncated_not_answered() {
    let (_, v5) = corpus()
        .into_iter()
        .find(|(n, _)| n == "v5")
        .expect("v5 seed");
    for len in 1..v5.len() {
        assert_eq!(check(&v5[..len]), Outcome::Closed, "prefix of {len} bytes");
    }
}
