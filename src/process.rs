//! Placeholder: child processes that are always killed and reaped.
