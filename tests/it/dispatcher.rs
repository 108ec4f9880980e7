//! Integration tests: dispatcher.
