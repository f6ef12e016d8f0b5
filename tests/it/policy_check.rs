//! Integration tests for policy_check (filled by its issue).
