//! Integration tests for lockdown (filled by its issue).
