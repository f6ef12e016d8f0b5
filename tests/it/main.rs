//! Integration tests: the real `kms-killswitch` binary, against the real kms-sim over HTTP with
//! the real AWS SDK. One test binary (faster to build and link); one module per capability.
#![forbid(unsafe_code)]

mod support;

mod audit;
mod aws_failures;
mod concurrent;
mod crash;
mod daemon;
mod fs_trust;
mod fuzz;
mod fuzz_audit;
mod fuzz_queue;
mod hostile;
mod hostile_paths;
mod keys;
mod lockdown;
mod notify;
mod policy_check;
mod queue;
mod secrets;
mod ship;
mod transitions;
