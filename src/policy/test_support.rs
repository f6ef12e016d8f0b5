//! Helpers shared by the policy's unit tests: a policy path, the smallest valid policy, and
//! assertions on what [`parse`] says about a text.

use std::path::Path;

use super::{Policy, PolicyError, Problem, parse};

pub(super) const PATH: &str = "/etc/kms-killswitch/policy.yaml";
/// The smallest valid policy; tests append to it or replace lines of it.
pub(super) const MINIMAL: &str = "version: 1
aws:
  region: eu-west-1
key_stores:
  - id: cks-1234567890abcdef0
";

pub(super) fn parse_ok(text: &str) -> Policy {
    match parse(text, Path::new(PATH)) {
        Ok(policy) => policy,
        Err(err) => panic!("expected a valid policy, got: {err}"),
    }
}

pub(super) fn problems(text: &str) -> Vec<Problem> {
    match parse(text, Path::new(PATH)) {
        Ok(policy) => panic!("expected an invalid policy, got {policy:?}"),
        Err(PolicyError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("expected PolicyError::Invalid, got: {other}"),
    }
}

/// Asserts the policy has exactly one problem, at `line`, whose message contains `needle`.
pub(super) fn assert_one_problem(text: &str, line: Option<u64>, needle: &str) {
    let problems = problems(text);
    assert_eq!(problems.len(), 1, "expected one problem, got {problems:?}");
    assert_eq!(problems[0].position.map(|p| p.line), line, "{problems:?}");
    assert!(
        problems[0].message.contains(needle),
        "{:?} does not contain {needle:?}",
        problems[0].message
    );
}
