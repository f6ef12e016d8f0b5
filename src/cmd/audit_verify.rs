//! `kms-killswitch audit verify PATH`: check an audit log's hash chain with [`audit::verify`] and
//! print one line: the summary (exit 0) or the first broken line (exit 1). It only reads the log;
//! it owns no format knowledge (that is `src/audit/`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

use crate::audit::{self, AuditError};
use crate::cmd::{Context, Exit};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check an audit log's hash chain; exit 0 with a summary, or 1 naming the first broken line.
    Verify {
        /// The audit log (JSON Lines).
        path: PathBuf,
    },
}

pub fn run(_ctx: &Context, command: &AuditCommand) -> anyhow::Result<Exit> {
    let AuditCommand::Verify { path } = command;
    match audit::verify(path) {
        Ok(summary) => {
            let mut line = format!(
                "audit log {} OK: {}, {}",
                path.display(),
                crate::count(summary.records as usize, "record"),
                crate::count(summary.lockdowns as usize, "lockdown")
            );
            if let (Some(first), Some(last)) = (&summary.first_ts, &summary.last_ts) {
                line.push_str(&format!(", {first} .. {last}"));
            }
            if let Some(sha) = &summary.last_line_sha256 {
                // Compare with the `line_sha256` logged to journald for that seq: lines removed
                // from the end of the file are only detectable that way.
                line.push_str(&format!("; line {} sha256 {sha}", summary.records));
            }
            println!("{line}");
            Ok(Exit::Success)
        }
        Err(broken @ AuditError::Broken { .. }) => {
            println!("{broken}");
            Ok(Exit::Incomplete)
        }
        Err(err) => Err(err).context("cannot verify the audit log"),
    }
}
