//! `dstack completion SHELL`: print a completion script for bash, zsh, fish, elvish or
//! PowerShell.
//!
//! The script is generated from the same clap types that parse the command line, so it always
//! knows every command and flag of this binary (hidden commands such as `runner` are left out).

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, ExitStatus, Printer};

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// The command tree to complete: [`Cli`] without its hidden commands.
///
/// `clap_complete` offers hidden subcommands like any other, and clap cannot remove a
/// subcommand, so the tree is rebuilt from `Cli`'s own arguments and visible subcommands.
fn completable() -> clap::Command {
    let full = Cli::command();
    let mut command = clap::Command::new("dstack")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        command = command.about(about.clone());
    }
    command
}

/// The completion script of `shell`, for a binary called `dstack`.
fn script(shell: Shell) -> String {
    let mut command = completable();
    let mut buffer = Vec::new();
    clap_complete::generate(shell, &mut command, "dstack", &mut buffer);
    String::from_utf8_lossy(&buffer).into_owned()
}

pub fn run(args: &CompletionArgs, printer: &Printer) -> ExitStatus {
    printer.data(&script(args.shell));
    ExitStatus::Success
}
