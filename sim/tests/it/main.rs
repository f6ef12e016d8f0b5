//! kms-sim driven by the real AWS SDK for Rust (aws-sdk-kms, aws-sdk-cloudwatch, aws-sdk-sts,
//! aws-sdk-sqs, aws-sdk-sns,
//! aws-config's AssumeRoleProvider), the official AWS CLI, raw HTTP for the control API, and the
//! real `kms-sim` binary. One test binary: faster to build and link.
#![forbid(unsafe_code)]

mod support;

mod alarm_history;
mod binary;
mod cli;
mod cloudwatch;
mod control;
mod faults;
mod keys;
mod kms;
mod metrics;
mod sns;
mod sqs;
mod sts;
