//! `dstack plan`: show what `apply` would change, for people, pull requests and machines.

use clap::{Args, ValueEnum};

use super::context::{self, ConfigArgs, Globals};
use super::{ExitStatus, Printer};
use crate::apply::pipeline::{PlanOptions, Planned, make_plan};
use crate::backend::Backends;
use crate::config::load::Loaded;
use crate::config::project::Project;
use crate::model::ResourceId;
use crate::plan::{PlanInputs, render};
use crate::state::{LockInfo, StateStore};

/// Output formats of a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
    Markdown,
}

/// Flags shared by `plan`, `apply` and `delete`.
#[derive(Debug, Args, Clone)]
pub struct PlanArgs {
    /// A configuration file, a directory of them, or `-` for standard input (repeatable; default:
    /// the `*.dstack.yml` files of the current directory).
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub files: Vec<String>,
    /// A variable for `${{ var.NAME }}` (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Read every recorded object from its backend first, to find drift.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub refresh: bool,
    /// Limit the plan to these resources and what they depend on (repeatable, `KIND/NAME`).
    #[arg(long = "target", value_name = "KIND/NAME")]
    pub targets: Vec<String>,
    /// Replace these resources even if unchanged (repeatable, `KIND/NAME`).
    #[arg(long = "replace", value_name = "KIND/NAME")]
    pub replace: Vec<String>,
    /// Arguments for `${{ run.args }}`.
    #[arg(last = true, value_name = "RUN_ARGS")]
    pub run_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PlanCommandArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Exit 2 when there are changes (0: none, 1: error).
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Print the plan as JSON (same as `--format json`).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// `text`, `json`, or `markdown` (for a pull-request comment).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Save the plan, for `dstack apply FILE`.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

/// Parse `KIND/NAME` addresses.
pub fn parse_addresses(addresses: &[String]) -> miette::Result<Vec<ResourceId>> {
    addresses
        .iter()
        .map(|a| {
            ResourceId::parse(a).ok_or_else(|| {
                miette::miette!(
                    help =
                        "write `KIND/NAME`: `volume/data`, `run/train`, `fleet/gpus`, `tag/best`",
                    "invalid address `{a}`"
                )
            })
        })
        .collect()
}

/// Everything a plan is made from.
pub struct Prepared {
    pub project: Project,
    pub cwd: std::path::PathBuf,
    pub loaded: Loaded,
    pub store: Box<dyn StateStore>,
    pub backends: Backends,
}

/// Load configuration and open state and backends; configuration problems are an error.
pub async fn prepare(args: &PlanArgs, globals: &Globals) -> miette::Result<Prepared> {
    let cwd = context::current_dir()?;
    let project = context::project(&cwd)?;
    let loaded = context::load_configs(
        &cwd,
        &project,
        &ConfigArgs {
            files: args.files.clone(),
            vars: args.vars.clone(),
            run_args: args.run_args.clone(),
        },
    )?;
    let problems: Vec<_> = loaded.problems().cloned().collect();
    if !problems.is_empty() {
        return Err(context::ConfigProblems(problems).into());
    }
    let store = context::open_state(globals, &project).await?;
    let backends =
        crate::backend::for_project(&project, &context::env_var, context::fake_backend_enabled());
    Ok(Prepared {
        project,
        cwd,
        loaded,
        store,
        backends,
    })
}

/// Plan options from flags.
pub fn options(
    args: &PlanArgs,
    prepared: &Prepared,
    destroy: bool,
    parallelism: usize,
) -> miette::Result<PlanOptions> {
    let cwd = prepared.project.relative(&prepared.cwd);
    Ok(PlanOptions {
        refresh: args.refresh,
        targets: parse_addresses(&args.targets)?,
        replace: parse_addresses(&args.replace)?,
        destroy,
        parallelism,
        inputs: PlanInputs {
            files: args.files.clone(),
            cwd: if cwd == prepared.cwd.to_string_lossy() {
                String::new()
            } else {
                cwd
            },
            vars: context::parse_vars(&args.vars)?,
            run_args: args.run_args.clone(),
            ..PlanInputs::default()
        },
        locked: false,
        code_root: Some(prepared.project.root.clone()),
        artifacts: Some(crate::artifacts::Store::new(crate::backend::artifact_root(
            &prepared.project,
            &context::env_var,
        ))),
    })
}

/// Run the planning pipeline, with the lock if it can be had at once (to record recovery and
/// refresh results); without it otherwise.
pub async fn plan_once(
    prepared: &Prepared,
    mut options: PlanOptions,
    printer: &Printer,
) -> miette::Result<Planned> {
    let lock = LockInfo::new("plan");
    options.locked = prepared.store.lock_acquire(&lock).await.is_ok();
    let result = make_plan(
        prepared.store.as_ref(),
        &prepared.backends,
        &prepared.loaded,
        &options,
    )
    .await;
    if options.locked {
        prepared.store.lock_release(&lock.id).await?;
    }
    let planned = result?;
    if options.refresh && planned.refreshed > 0 {
        printer.message(&format!("Refreshed {} object(s).", planned.refreshed));
    }
    Ok(planned)
}

/// Write a saved plan, readable by its owner only, even over an existing file.
pub fn save(plan: &crate::plan::Plan, path: &std::path::Path) -> miette::Result<()> {
    let text = serde_json::to_string_pretty(plan).unwrap_or_default();
    crate::state::write_private(path, text.as_bytes())
        .map_err(|e| miette::miette!("cannot write the plan to `{}`: {e}", path.display()))
}

pub fn run(
    args: &PlanCommandArgs,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    context::block_on(async {
        let prepared = prepare(&args.plan, globals).await?;
        let options = options(&args.plan, &prepared, false, 10)?;
        let planned = plan_once(&prepared, options, printer).await?;
        let plan = &planned.plan;
        let format = if args.json {
            Format::Json
        } else {
            args.format.unwrap_or_default()
        };
        match format {
            Format::Text => printer.data(&render::text(plan)),
            Format::Json => printer
                .data_line(&serde_json::to_string_pretty(&render::json(plan)).unwrap_or_default()),
            Format::Markdown => printer.data(&render::markdown(plan)),
        }
        if let Some(out) = &args.out {
            save(plan, out)?;
            printer.message(&format!(
                "Saved the plan to `{}`; apply it with `dstack apply {}`.",
                out.display(),
                out.display()
            ));
        }
        Ok(if args.detailed_exitcode && plan.has_changes() {
            ExitStatus::Changes
        } else {
            ExitStatus::Success
        })
    })?
}
