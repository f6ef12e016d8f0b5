//! The `kms-killswitch` binary: parse the command line, start logging, run the command, and map
//! its outcome to an exit code. Everything else lives in the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    kms_killswitch::cli::main()
}
