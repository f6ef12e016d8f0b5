//! Shared by the examples (`demo`, `chaos`; each includes it with `#[path]`): build the
//! `kms-killswitch` binary in the example's own profile, and a hermetic `Command` for it (nothing
//! of the machine's AWS settings, no config override, no instance metadata). Owns nothing else:
//! it must not start, configure or check anything.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Build `kms-killswitch` with the profile this example was built with, and return its path.
///
/// `cargo run --example` does not build the package's binaries, and examples get no
/// `CARGO_BIN_EXE_*`; so the example asks the cargo that runs it (`$CARGO`) for the binary. It is
/// a no-op when the binary is fresh. The binary sits next to `examples/`, in the same target
/// directory and profile as the example, wherever CARGO_TARGET_DIR points.
pub fn build_daemon() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the example executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the example does not run from <target>/<profile>/examples")?;
    let profile = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .context("the demo's profile directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "--locked",
            "--bin",
            "kms-killswitch",
            "--manifest-path",
        ])
        .arg(&manifest);
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --bin kms-killswitch failed with {status}");
    }
    let binary = profile_dir.join("kms-killswitch");
    if !binary.is_file() {
        bail!("cargo built no binary at {}", binary.display());
    }
    Ok(binary)
}

/// A `Command` for `binary` with a clean environment: no `AWS_*`, `KMS_KILLSWITCH*` or
/// `NOTIFY_SOCKET` inherited, and no instance-metadata probing.
pub fn hermetic(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("AWS_") || key.starts_with("KMS_KILLSWITCH") || key == "NOTIFY_SOCKET" {
            command.env_remove(key.as_ref());
        }
    }
    command.env("AWS_EC2_METADATA_DISABLED", "true");
    command
}
