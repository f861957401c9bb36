//! The command line: clap types, one file per command, and the printer.
//!
//! Each command file turns its arguments into options, calls the core and prints what it gets
//! back. Commands return an [`ExitStatus`] or an error; [`main`] renders errors uv-style
//! (`error:`, indented causes, `hint:`) and is the only place that decides the exit code.

use std::ffi::OsString;

use clap::{Parser, Subcommand};

mod apply;
pub mod artifacts;
mod completion;
mod config;
pub mod context;
mod delete;
mod fleet;
mod plan;
pub mod printer;
pub mod run;
pub mod runs;
mod schema;
mod state;
mod validate;
mod volume;

pub use printer::Printer;
// The readers of saved plans and pushed state documents, for the fuzz targets (`fuzz/`).
pub use apply::read_plan;
pub use state::read_document;

/// Exit codes (DESIGN §4); the same for every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Success; `plan` found no changes.
    Success,
    /// Error: bad input, declined prompt, lock held, stale plan, backend error before any change.
    Failure,
    /// `plan --detailed-exitcode`: changes present.
    Changes,
    /// Apply partly done: state records exactly what succeeded; re-running converges.
    Partial,
    /// A run the command waited for ended `failed`, `stopped` or `aborted`.
    RunFailed,
    /// Interrupted (Ctrl-C) after recording what finished.
    Interrupted,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Failure => 1,
            Self::Changes => 2,
            Self::Partial => 3,
            Self::RunFailed => 4,
            Self::Interrupted => 130,
        }
    }
}

/// Declarative, Terraform-style desired state for ML compute.
///
/// Describe volumes, runs (tasks, dev environments, services), fleets and tags in `*.dstack.yml`
/// files; check them with `dstack validate`.
#[derive(Debug, Parser)]
#[command(name = "dstack", version, about, max_term_width = 100)]
pub struct Cli {
    /// More diagnostic output on stderr (`-vv` for even more); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Where state is kept: `sqlite:PATH`, a path, or `s3://BUCKET/KEY` (default:
    /// `state:` in .dstack/config.yml, else .dstack/state.db).
    #[arg(long, global = true, env = "DSTACK_STATE", value_name = "URL")]
    pub state: Option<String>,

    /// How long to wait for the state lock (`30s`, `5m`), retrying with backoff.
    #[arg(long, global = true, value_name = "DURATION", default_value = "0s", value_parser = context::parse_duration)]
    pub lock_timeout: std::time::Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check configuration files and report every error with its line and column.
    #[command(after_help = "Examples:\n  dstack validate\n  dstack validate -f examples/ --json")]
    Validate(validate::ValidateArgs),
    /// Print the JSON Schema of a configuration type (or of all of them).
    #[command(after_help = "Examples:\n  dstack schema > dstack.schema.json\n  dstack schema task")]
    Schema(schema::SchemaArgs),
    /// Show what `apply` would change (exit 2 with `--detailed-exitcode` when something would).
    #[command(
        after_help = "Examples:\n  dstack plan\n  dstack plan -f train.dstack.yml --detailed-exitcode --format markdown\n  dstack plan -o plan.out && dstack apply plan.out"
    )]
    Plan(plan::PlanCommandArgs),
    /// Make the resources match the configuration files (or apply a saved plan).
    #[command(
        after_help = "Examples:\n  dstack apply -f train.dstack.yml\n  dstack apply -y -d\n  dstack apply plan.out"
    )]
    Apply(apply::ApplyArgs),
    /// Delete the resources the files declare.
    #[command(
        visible_alias = "destroy",
        after_help = "Examples:\n  dstack delete -f vol.dstack.yml\n  dstack delete -y"
    )]
    Delete(delete::DeleteArgs),
    /// Run a legacy workflow of .dstack/workflows.yaml under a generated name (`grumpy-zebra-1`).
    #[command(
        after_help = "After the workflow, `--NAME VALUE` sets one of its variables (.dstack/variables.yaml), `--help`\nshows its help and variables, and arguments after `--` are `${{ run.args }}`.\n\nExamples:\n  dstack run hello-txt\n  dstack run train --batch-size 4 -d\n  dstack run train -- --epochs 3"
    )]
    Run(run::RunArgs),
    /// List runs (`-a` for all of them, `-v` for their resources).
    #[command(after_help = "Examples:\n  dstack ps\n  dstack ps -a -v\n  dstack ps -a --json")]
    Ps(runs::PsArgs),
    /// Print a run's output (`-f` to follow it).
    #[command(after_help = "Examples:\n  dstack logs train\n  dstack logs train-3 -f")]
    Logs(runs::LogsArgs),
    /// Stop a run gracefully (`-x` aborts it: no artifacts are saved).
    #[command(after_help = "Examples:\n  dstack stop train\n  dstack stop train-3 -x")]
    Stop(runs::StopArgs),
    /// Open a shell in a running run (or run a command after `--`).
    #[command(after_help = "Examples:\n  dstack attach dev\n  dstack attach dev -- ls /workflow")]
    Attach(runs::AttachArgs),
    /// List the artifacts of a run or tag.
    #[command(after_help = "Examples:\n  dstack ls hello-txt\n  dstack ls awesome-tag --json")]
    Ls(artifacts::LsArgs),
    /// Tag a run's artifacts, list tags, delete them.
    #[command(
        after_help = "Examples:\n  dstack tags add hello-txt-1 awesome-tag\n  dstack tags list\n  dstack tags delete awesome-tag"
    )]
    Tags(artifacts::TagsArgs),
    /// Upload a run's or tag's artifacts to the remote store (only what it lacks).
    #[command(after_help = "Examples:\n  dstack push hello-txt-1\n  dstack push awesome-tag")]
    Push(artifacts::TransferArgs),
    /// Download a run's or tag's artifacts from the remote store into the local one.
    #[command(after_help = "Examples:\n  dstack pull hello-txt-1\n  dstack pull awesome-tag")]
    Pull(artifacts::TransferArgs),
    /// Delete finished runs and their artifacts (unless a tag keeps them).
    #[command(
        after_help = "Examples:\n  dstack rm hello-txt-1\n  dstack rm -y old-run-1 old-run-2"
    )]
    Rm(artifacts::RmArgs),
    /// Inspect and manage recorded state: list, show, pull, push, migrate, unlock, recover.
    #[command(
        after_help = "Examples:\n  dstack state list\n  dstack state show volume/data\n  dstack --state s3://my-bucket/team/state.json state pull > state.json"
    )]
    State(state::StateArgs),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    #[command(
        after_help = "Examples:\n  dstack completion bash > ~/.local/share/bash-completion/completions/dstack\n  dstack completion zsh > ~/.zfunc/_dstack\n  dstack completion fish > ~/.config/fish/completions/dstack.fish"
    )]
    Completion(completion::CompletionArgs),
    /// Execute a run's job (started by `apply`; not for direct use).
    #[command(hide = true)]
    Runner(runs::RunnerArgs),
    /// List recorded volumes (`-v` for region and attachments), or delete one.
    #[command(
        after_help = "Examples:\n  dstack volume list\n  dstack volume list -v --json\n  dstack volume delete my-data -y"
    )]
    Volume(volume::VolumeArgs),
    /// List recorded fleets, or delete one (terminating its instances).
    #[command(after_help = "Examples:\n  dstack fleet list\n  dstack fleet delete gpus -y")]
    Fleet(fleet::FleetArgs),
    /// Write or edit .dstack/config.yml: region, profile, state bucket, artifact store.
    #[command(
        after_help = "Examples:\n  dstack config\n  dstack config --region us-east-1 --bucket my-bucket\n  dstack config --artifacts s3://my-bucket/artifacts --profile work"
    )]
    Config(config::ConfigArgs),
}

/// Run the command line and return the exit status. Never panics on user input.
pub fn main(args: Vec<OsString>) -> ExitStatus {
    let printer = Printer::detect();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let code = error.exit_code();
            let _ = error.print();
            return if code == 0 {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            };
        }
    };
    // `dstack ps -v` means "more columns", as in dstack; logs need one `-v` more there.
    let log_level = if matches!(cli.command, Command::Ps(_) | Command::Volume(_)) {
        cli.verbose.saturating_sub(1)
    } else {
        cli.verbose
    };
    init_tracing(log_level);
    let globals = context::Globals {
        state: cli.state.clone(),
        lock_timeout: cli.lock_timeout,
    };
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args, &printer),
        Command::Schema(args) => schema::run(&args, &printer),
        Command::Plan(args) => plan::run(&args, &globals, &printer),
        Command::Apply(args) => apply::run(&args, &globals, &printer),
        Command::Delete(args) => delete::run(&args, &globals, &printer),
        Command::State(args) => state::run(&args, &globals, &printer),
        Command::Run(args) => run::run(&args, &globals, &printer),
        Command::Ps(args) => runs::ps(&args, cli.verbose > 0, &globals, &printer),
        Command::Logs(args) => runs::logs(&args, &globals, &printer),
        Command::Stop(args) => runs::stop(&args, &globals, &printer),
        Command::Attach(args) => runs::attach(&args, &globals, &printer),
        Command::Ls(args) => artifacts::ls(&args, &globals, &printer),
        Command::Tags(args) => artifacts::tags(&args, &globals, &printer),
        Command::Rm(args) => artifacts::rm(&args, &globals, &printer),
        Command::Push(args) => artifacts::push(&args, &globals, &printer),
        Command::Pull(args) => artifacts::pull(&args, &globals, &printer),
        Command::Completion(args) => Ok(completion::run(&args, &printer)),
        Command::Runner(args) => runs::runner(&args),
        Command::Volume(args) => volume::run(&args, cli.verbose > 0, &globals, &printer),
        Command::Fleet(args) => fleet::run(&args, &globals, &printer),
        Command::Config(args) => config::run(&args, &printer),
    };
    match result {
        Ok(status) => status,
        Err(report) => {
            printer.message(&render_error(&report, &printer));
            ExitStatus::Failure
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        // Libraries (the AWS SDK, hyper) only speak up for errors unless asked.
        0 => "error,dstack=warn",
        1 => "warn,dstack=debug",
        _ => "info,dstack=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

/// `error: what failed`, indented causes, then `hint: what to do`.
pub fn render_error(report: &miette::Report, printer: &Printer) -> String {
    if let Some(problems) = report.downcast_ref::<context::ConfigProblems>() {
        let mut out = crate::config::diagnostic::render(&problems.0, printer.color, printer.width);
        out.push_str(&format!("{}: {problems}\n", printer.paint("error", "31")));
        return out;
    }
    let mut out = format!("{}: {report}\n", printer.paint("error", "31"));
    let mut source = report.source();
    while let Some(cause) = source {
        out.push_str(&format!("  Caused by: {cause}\n"));
        source = cause.source();
    }
    if let Some(help) = report.help() {
        out.push_str(&format!("\n{}: {help}\n", printer.paint("hint", "36")));
    }
    out
}
