//! Build script: embeds the git commit the binary is built from, for `kms-killswitch --version`.
//! Owns only the `KMS_KILLSWITCH_GIT_COMMIT` compile-time variable; it must not touch the sources,
//! the network or anything outside `OUT_DIR`'s cargo instructions.
//!
//! The commit is, in order: `KMS_KILLSWITCH_GIT_COMMIT` from the environment (a distribution
//! building from a tarball can pass it), else `git rev-parse` when this crate's directory is the
//! top of a git work tree (not merely inside some other repository), else `unknown`.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=KMS_KILLSWITCH_GIT_COMMIT");
    let commit = match std::env::var("KMS_KILLSWITCH_GIT_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_owned(),
        _ => git_commit().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo::rustc-env=KMS_KILLSWITCH_GIT_COMMIT={commit}");
}

/// The short commit of HEAD, or `None` without git or outside this crate's own work tree.
fn git_commit() -> Option<String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let toplevel = git(&manifest_dir, &["rev-parse", "--show-toplevel"])?;
    let same = Path::new(&toplevel).canonicalize().ok()?
        == Path::new(&manifest_dir).canonicalize().ok()?;
    if !same {
        return None;
    }
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points to, packed refs.
    for file in ["HEAD", "packed-refs"] {
        rerun_if_changed(&manifest_dir, file);
    }
    if let Some(branch) = git(&manifest_dir, &["symbolic-ref", "-q", "HEAD"]) {
        rerun_if_changed(&manifest_dir, &branch);
    }
    git(&manifest_dir, &["rev-parse", "--short=12", "HEAD"])
}

/// Watch one file of the git directory; only if it exists (cargo reruns for a missing one always).
fn rerun_if_changed(dir: &str, git_file: &str) {
    let path = git(
        dir,
        &[
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            git_file,
        ],
    );
    if let Some(path) = path.filter(|path| Path::new(path).exists()) {
        println!("cargo::rerun-if-changed={path}");
    }
}

/// The trimmed stdout of a successful `git` command run in `dir`.
fn git(dir: &str, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    Some(text.trim().to_owned()).filter(|text| !text.is_empty())
}
