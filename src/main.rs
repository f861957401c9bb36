//! The `dstack` binary: parse arguments, run the command, exit with its status.
//!
//! Only this file exits the process (STYLE.md). `dstack --version` answers before anything else
//! is set up, so it stays fast.

use std::process::ExitCode;

fn main() -> ExitCode {
    let status = dstack::cli::main(std::env::args_os().collect());
    ExitCode::from(status.code())
}
