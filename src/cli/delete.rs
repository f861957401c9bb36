//! `dstack delete` (alias `destroy`): delete what the files declare, in reverse dependency order.

use clap::Args;

use super::apply::{ApplyArgs, apply_flow};
use super::context::{self, Globals};
use super::plan::PlanArgs;
use super::{ExitStatus, Printer};

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// A configuration file, a directory of them, or `-` for standard input (repeatable; default:
    /// the `*.dstack.yml` files of the current directory).
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub files: Vec<String>,
    /// A variable for `${{ var.NAME }}` (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Delete only these resources (repeatable, `KIND/NAME`).
    #[arg(long = "target", value_name = "KIND/NAME")]
    pub targets: Vec<String>,
    /// Do not ask for confirmation (needed without a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Steps run at the same time.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallelism: u16,
}

pub fn run(args: &DeleteArgs, globals: &Globals, printer: &Printer) -> miette::Result<ExitStatus> {
    let plan = PlanArgs {
        files: args.files.clone(),
        vars: args.vars.clone(),
        refresh: true,
        targets: args.targets.clone(),
        replace: Vec::new(),
        run_args: Vec::new(),
    };
    let settings = ApplyArgs {
        plan: plan.clone(),
        planfile: None,
        yes: args.yes,
        parallelism: args.parallelism,
        allow_data_loss: true,
        detach: true,
    };
    context::block_on(apply_flow(&plan, None, true, &settings, globals, printer))?
}
