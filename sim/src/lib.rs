//! kms-sim: a local, wire-faithful simulator of AWS KMS custom key stores, CloudWatch alarms and
//! STS. Placeholder until issue 3 lands.
#![forbid(unsafe_code)]
