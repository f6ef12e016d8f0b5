//! Integration tests for daemon (filled by its issue).
