//! Man pages: `kms-killswitch(1)` and one page per subcommand from the clap definitions, and
//! `kms-killswitch-policy(5)` from the README's "Policy reference" section (the one place that
//! text is kept). Owns the page names and the README markers; writes only into the given directory.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use roff::{Roff, bold, roman};

/// The README lines that bracket the policy reference rendered into `kms-killswitch-policy(5)`.
pub const POLICY_BEGIN: &str = "<!-- kms-killswitch-policy(5) begin -->";
pub const POLICY_END: &str = "<!-- kms-killswitch-policy(5) end -->";

/// `kms-killswitch.1`, `kms-killswitch-check.1`, …, `kms-killswitch-audit-verify.1` in `dir`.
pub fn write_command_pages(cmd: clap::Command, dir: &Path) -> Result<()> {
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))
}

/// `kms-killswitch-policy.5` in `dir`, from the marked section of `readme`.
pub fn write_policy_page(readme: &str, dir: &Path) -> Result<()> {
    let section = policy_section(readme)?;
    let mut page = Roff::new();
    page.control(
        "TH",
        [
            "KMS-KILLSWITCH-POLICY",
            "5",
            "",
            &format!("kms-killswitch {}", kms_killswitch::cli::VERSION),
        ],
    );
    page.control("SH", ["NAME"]);
    page.text([roman(
        "kms-killswitch-policy - the policy file of kms-killswitch",
    )]);
    page.control("SH", ["SYNOPSIS"]);
    page.text([bold(kms_killswitch::cli::DEFAULT_CONFIG)]);
    page.control("SH", ["DESCRIPTION"]);
    crate::markdown::render(section, &mut page)
        .context("rendering the README's policy reference")?;
    page.control("SH", ["SEE ALSO"]);
    page.text([
        bold("kms-killswitch"),
        roman("(1), "),
        bold("kms-killswitch-check"),
        roman("(1)"),
    ]);
    let path = dir.join("kms-killswitch-policy.5");
    fs::write(&path, page.render()).with_context(|| format!("writing {}", path.display()))
}

/// The README text strictly between the two markers.
fn policy_section(readme: &str) -> Result<&str> {
    let Some((_, after)) = readme.split_once(POLICY_BEGIN) else {
        bail!("README.md has no `{POLICY_BEGIN}` line")
    };
    let Some((section, _)) = after.split_once(POLICY_END) else {
        bail!("README.md has no `{POLICY_END}` line")
    };
    Ok(section)
}
