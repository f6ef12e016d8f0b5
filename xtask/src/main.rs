//! `cargo xtask`: build helpers that generate what the Debian package ships besides the binary.
//! Owns the layout of `target/dist/` (the only place it writes); it must not touch the sources,
//! the network, or anything the package installs on a host.
//!
//! - `cargo xtask dist`: man pages (`kms-killswitch(1)`, one per subcommand, and
//!   `kms-killswitch-policy(5)` from the README's "Policy reference"), bash/zsh/fish completions,
//!   and the systemd unit with the packaged binary path.
//! - `cargo xtask sbom [PATH]`: a CycloneDX 1.5 JSON document of every crate in Cargo.lock.
#![forbid(unsafe_code)]

mod markdown;
mod pages;
mod sbom;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap_complete::Shell;

/// Where everything is generated, relative to the workspace root.
const DIST: &str = "target/dist";
/// The unit in the repository (installed by hand into /usr/local/bin) ...
const UNIT: &str = "systemd/kms-killswitch.service";
/// ... and the one line the package changes: it installs the binary in /usr/bin.
const HAND_EXEC_START: &str = "ExecStart=/usr/local/bin/kms-killswitch run";
const PACKAGED_EXEC_START: &str = "ExecStart=/usr/bin/kms-killswitch run";
/// The package also ships the man pages, so its unit points `systemctl help` at them.
const DESCRIPTION: &str = "\nDescription=";
const DOCUMENTATION: &str = "\n# `systemctl help kms-killswitch` opens these.\nDocumentation=man:kms-killswitch(1) man:kms-killswitch-policy(5)";

fn main() -> Result<()> {
    let root = workspace_root();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["dist"] => dist(&root),
        ["sbom"] => sbom::write(&root, &root.join(DIST).join("kms-killswitch.cdx.json")),
        ["sbom", path] => sbom::write(&root, Path::new(path)),
        _ => bail!("usage: cargo xtask dist | cargo xtask sbom [PATH]"),
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Man pages, completions and the packaged unit under `target/dist/`, replacing the old ones.
fn dist(root: &Path) -> Result<()> {
    let dist = root.join(DIST);
    for generated in ["man", "completions", "systemd"] {
        let dir = dist.join(generated);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    let man = dist.join("man");
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    pages::write_command_pages(kms_killswitch::cli::command(), &man)?;
    let readme = read(&root.join("README.md"))?;
    pages::write_policy_page(&readme, &man)?;

    let completions = dist.join("completions");
    fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = kms_killswitch::cli::command();
        clap_complete::generate_to(shell, &mut cmd, "kms-killswitch", &completions)
            .with_context(|| format!("writing the {shell} completion"))?;
    }

    let unit = read(&root.join(UNIT))?;
    if unit.lines().filter(|line| *line == HAND_EXEC_START).count() != 1 {
        bail!("{UNIT} must have exactly one line `{HAND_EXEC_START}` for the package to rewrite");
    }
    let systemd = dist.join("systemd");
    fs::create_dir_all(&systemd).with_context(|| format!("creating {}", systemd.display()))?;
    let packaged = unit.replace(HAND_EXEC_START, PACKAGED_EXEC_START);
    let Some(at) = packaged
        .find(DESCRIPTION)
        .and_then(|at| Some(at + 1 + packaged[at + 1..].find('\n')?))
    else {
        bail!("{UNIT} has no `Description=` line to put `Documentation=` after");
    };
    let packaged = format!("{}{DOCUMENTATION}{}", &packaged[..at], &packaged[at..]);
    let path = systemd.join("kms-killswitch.service");
    fs::write(&path, packaged).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", dist.display());
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
