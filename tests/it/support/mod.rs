//! Test support shared by every integration test module: run the real binary, start kms-sim.
//! Add helpers in a file of your own under `support/` and declare it here.
#![allow(dead_code)]

pub mod daemon;
pub mod sim;
pub mod webhook;

use std::path::Path;
use std::process::{Command, Output};

/// The `kms-killswitch` binary cargo built for this test run.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kms-killswitch"))
}

/// A `Command` for the binary with a clean, hermetic environment: no AWS settings inherited from
/// the machine, no instance metadata probing, no config override.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("AWS_") || key.starts_with("KMS_KILLSWITCH") || key == "NOTIFY_SOCKET" {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    cmd.env("RUST_LOG", "info");
    cmd
}

/// Run the binary with `args` and capture its output.
pub fn run(args: &[&str]) -> Output {
    command().args(args).output().expect("the test binary runs")
}

/// The demo world's base credentials (kms-sim's `sim/worlds/demo.yaml`, account 111111111111).
pub const DEMO_ACCESS_KEY_ID: &str = "AKIDKMSSIMDEMO";
pub const DEMO_SECRET_ACCESS_KEY: &str = "kms-sim-demo-secret";

/// A hermetic command for the binary on `policy`, with the demo world's base credentials in the
/// environment (like an operator's shell) and `region` as `AWS_REGION`.
pub fn command_with_policy(policy: &Path, region: &str) -> Command {
    let mut cmd = command();
    cmd.arg("--config").arg(policy);
    cmd.env("AWS_ACCESS_KEY_ID", DEMO_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", DEMO_SECRET_ACCESS_KEY)
        .env("AWS_REGION", region);
    cmd
}

/// Write a policy file 0600 (the binary refuses one that others may write).
pub fn write_policy_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write policy");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod policy");
}

/// The fuzz targets' case count: `KMS_KILLSWITCH_FUZZ_CASES` (default 2,000).
pub fn fuzz_cases() -> u32 {
    std::env::var("KMS_KILLSWITCH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// The fuzz targets' proptest configuration: [`fuzz_cases`] cases, nothing persisted, and room
/// for the rejects a filtered strategy makes in proportion to the cases. With proptest's fixed
/// defaults (65,536 local and 1,024 global rejects) the first 1M-case runs stopped with "Too
/// many local rejects" after ~660,000 cases: a limit of the harness, not a finding.
pub fn fuzz_config() -> proptest::test_runner::Config {
    let cases = fuzz_cases();
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        max_local_rejects: cases.saturating_mul(4).max(65_536),
        max_global_rejects: cases.max(1_024),
        ..proptest::test_runner::Config::default()
    }
}
