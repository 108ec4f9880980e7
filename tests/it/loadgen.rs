//! Integration tests: loadgen.
