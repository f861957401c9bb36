//! `dstack apply`: plan, confirm, execute; or execute a saved plan. Also the engine of
//! `dstack delete`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::context::{self, ConfigArgs, Globals};
use super::plan::{PlanArgs, Prepared, options, parse_addresses};
use super::{ExitStatus, Printer};
use crate::apply::executor::{Event, Executor, Interrupt, Options, Outcome};
use crate::apply::pipeline::{Planned, make_plan, resolve_all};
use crate::backend::Backends;
use crate::plan::desired::config_digest;
use crate::plan::{ChangeKind, Plan, render};
use crate::state::{LockInfo, RunRecord, StateStore, Step, lock_with_timeout};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// A plan saved by `dstack plan -o FILE`: apply exactly it, if the state and the
    /// configuration have not moved since.
    #[arg(value_name = "PLANFILE")]
    pub planfile: Option<std::path::PathBuf>,
    /// Do not ask for confirmation (needed without a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Steps run at the same time.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallelism: u16,
    /// Allow changes that destroy volume data.
    #[arg(long)]
    pub allow_data_loss: bool,
    /// Do not follow the runs after submitting them.
    #[arg(short = 'd', long)]
    pub detach: bool,
}

/// Ask on the terminal; refuse when there is none.
pub fn confirm(question: &str, yes: bool, printer: &Printer) -> miette::Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(miette::miette!(
            help = "pass `-y` to apply without confirmation (for scripts and CI)",
            "refusing to continue without confirmation: there is no terminal to ask"
        ));
    }
    printer.message(&format!("\n{question} [y/N] "));
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| miette::miette!("cannot read the answer: {e}"))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Start listening for Ctrl-C: the first stops new steps, the second abandons in-flight ones.
pub fn listen_for_interrupts(printer: &Printer) -> Interrupt {
    let interrupt = Interrupt::default();
    let listener = interrupt.clone();
    let printer = printer.clone();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            listener.press();
            if listener.count() == 1 {
                printer.message("\nInterrupted: starting nothing new; finishing and recording the steps under way (Ctrl-C again to abandon them).");
            } else {
                printer.message("\nInterrupted again: abandoning the steps under way; the next plan resolves them.");
            }
        }
    });
    interrupt
}

fn progress(printer: &Printer) -> impl Fn(Event) + Send + Sync + use<> {
    let printer = printer.clone();
    move |event| match event {
        Event::Started { address, change } => {
            let verb = match change {
                ChangeKind::Create => "creating",
                ChangeKind::Update => "updating",
                ChangeKind::Replace => "replacing",
                ChangeKind::Delete => "destroying",
                ChangeKind::NoOp => "checking",
            };
            printer.message(&format!("{address}: {verb}..."));
        }
        Event::Finished {
            address,
            change,
            detail,
            seconds,
        } => {
            let verb = match change {
                ChangeKind::Create => "created",
                ChangeKind::Update => "updated",
                ChangeKind::Replace => "replaced",
                ChangeKind::Delete => "destroyed",
                ChangeKind::NoOp => "unchanged",
            };
            let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
            printer.message(&format!("{address}: {verb}{detail} [{seconds:.1}s]"));
        }
        Event::Failed { address, message } => printer.message(&format!(
            "{address}: {} {message}",
            printer.paint("failed:", "31")
        )),
        Event::Retrying {
            address,
            attempt,
            message,
        } => printer.message(&format!(
            "{address}: retrying (attempt {attempt}): {message}"
        )),
        Event::Waiting { address, on } => {
            printer.message(&format!("{address}: waiting for {on} to end (deps)..."));
        }
    }
}

/// Check a saved plan against the state and the configuration.
fn check_saved(
    plan: &Plan,
    snapshot: &crate::state::Snapshot,
    digest: &str,
    path: &std::path::Path,
) -> miette::Result<()> {
    let stale = |why: String| {
        miette::miette!(
            help = "make a new plan: `dstack plan -o FILE`, then `dstack apply FILE`",
            "the saved plan `{}` is stale: {why}",
            path.display()
        )
    };
    if let Some(lineage) = &snapshot.lineage
        && *lineage != plan.inputs.lineage
    {
        return Err(stale(format!(
            "it was made for another state (lineage {}, the state has {lineage})",
            plan.inputs.lineage
        )));
    }
    if snapshot.serial != plan.inputs.serial {
        return Err(stale(format!(
            "the state changed since (serial {} when planned, {} now)",
            plan.inputs.serial, snapshot.serial
        )));
    }
    if plan.inputs.config_digest != digest {
        return Err(stale("the configuration files changed since".into()));
    }
    Ok(())
}

/// Read a saved plan.
pub fn read_plan(path: &std::path::Path) -> miette::Result<Plan> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| miette::miette!("cannot read the plan `{}`: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        miette::miette!(
            help = "make it with `dstack plan -o FILE`",
            "`{}` is not a dstack plan: {e}",
            path.display()
        )
    })?;
    let version = value
        .get("format_version")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    if version.split('.').next() != crate::plan::FORMAT_VERSION.split('.').next() {
        return Err(miette::miette!(
            help = "make it again with this version: `dstack plan -o FILE`",
            "`{}` has plan format `{version}`, this dstack reads `{}`",
            path.display(),
            crate::plan::FORMAT_VERSION
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        miette::miette!(
            help = "make it with `dstack plan -o FILE`",
            "`{}` is not a valid dstack plan: {e}",
            path.display()
        )
    })
}

/// Plan (or read the saved plan), confirm, execute, follow. Used by `apply` and `delete`.
pub async fn apply_flow(
    args: &PlanArgs,
    planfile: Option<&std::path::Path>,
    destroy: bool,
    settings: &ApplyArgs,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    let interrupt = listen_for_interrupts(printer);
    let saved = planfile.map(read_plan).transpose()?;
    let prepared = match &saved {
        Some(plan) => prepare_from_plan(plan, globals).await?,
        None => super::plan::prepare(args, globals).await?,
    };
    let store = prepared.store.as_ref();
    let lock = LockInfo::new(if destroy { "delete" } else { "apply" });
    lock_with_timeout(store, &lock, globals.lock_timeout).await?;
    let result = locked_apply(
        &prepared, args, saved, planfile, destroy, settings, &interrupt, printer,
    )
    .await;
    let released = store.lock_release(&lock.id).await;
    let (status, runs) = result?;
    released?;
    if runs.is_empty() || settings.detach || status != ExitStatus::Success {
        if !runs.is_empty() && settings.detach {
            printer.message(&format!(
                "Submitted {}; `dstack ps` shows them.",
                runs.iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        return Ok(status);
    }
    follow(
        store,
        &prepared.backends,
        runs,
        &interrupt,
        globals,
        printer,
    )
    .await
}

async fn prepare_from_plan(plan: &Plan, globals: &Globals) -> miette::Result<Prepared> {
    let cwd = context::current_dir()?;
    let project = context::project(&cwd)?;
    let cwd = if plan.inputs.cwd.is_empty() {
        project.root.clone()
    } else {
        project.root.join(&plan.inputs.cwd)
    };
    let vars: Vec<String> = plan
        .inputs
        .vars
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let loaded = context::load_configs(
        &cwd,
        &project,
        &ConfigArgs {
            files: plan.inputs.files.clone(),
            vars,
            run_args: plan.inputs.run_args.clone(),
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

#[allow(clippy::too_many_arguments)]
async fn locked_apply(
    prepared: &Prepared,
    args: &PlanArgs,
    saved: Option<Plan>,
    planfile: Option<&std::path::Path>,
    destroy: bool,
    settings: &ApplyArgs,
    interrupt: &Interrupt,
    printer: &Printer,
) -> miette::Result<(ExitStatus, Vec<RunRecord>)> {
    let store = prepared.store.as_ref();
    let planned = if let Some(plan) = saved {
        let snapshot = store.load().await?;
        let resources: Vec<_> = prepared.loaded.resources().cloned().collect();
        let configured = prepared.backends.names().into_iter().collect();
        let parts = crate::apply::pipeline::run_parts(
            &options(args, prepared, destroy, usize::from(settings.parallelism))?,
            &resources,
            &snapshot,
        )?;
        let (desired, targets) = resolve_all(
            &resources,
            &configured,
            &plan.inputs.lineage,
            &snapshot,
            &parts,
        )?;
        check_saved(
            &plan,
            &snapshot,
            &config_digest(&desired),
            planfile.unwrap_or(std::path::Path::new("plan")),
        )?;
        Planned {
            plan,
            snapshot,
            targets,
            refreshed: 0,
        }
    } else {
        let mut options = options(args, prepared, destroy, usize::from(settings.parallelism))?;
        options.locked = true;
        let planned = make_plan(store, &prepared.backends, &prepared.loaded, &options).await?;
        if options.refresh && planned.refreshed > 0 {
            printer.message(&format!("Refreshed {} object(s).", planned.refreshed));
        }
        planned
    };
    let plan = &planned.plan;
    printer.data(&render::text(plan));
    if !plan.has_changes() {
        return Ok((ExitStatus::Success, Vec::new()));
    }
    let data_loss = plan.data_loss();
    if !data_loss.is_empty() && !settings.allow_data_loss && !destroy {
        let names: Vec<&str> = data_loss.iter().map(|c| c.address.as_str()).collect();
        return Err(miette::miette!(
            help = "if that is what you want, apply with `--allow-data-loss`",
            "refusing to destroy the data of {}",
            names.join(", ")
        ));
    }
    if planfile.is_none() {
        let question = match (destroy, data_loss.is_empty()) {
            (true, true) => "Delete these resources?".to_string(),
            (true, false) => format!(
                "Delete these resources, destroying the data of {}?",
                data_loss
                    .iter()
                    .map(|c| c.address.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (false, true) => "Apply?".to_string(),
            (false, false) => format!(
                "Apply, destroying the data of {}?",
                data_loss
                    .iter()
                    .map(|c| c.address.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if !confirm(&question, settings.yes, printer)? {
            printer.message("Cancelled; nothing was changed.");
            return Ok((ExitStatus::Failure, Vec::new()));
        }
    }
    let mut snapshot = planned.snapshot.clone();
    if snapshot.lineage.is_none() {
        snapshot.lineage = Some(plan.inputs.lineage.clone());
    }
    let options = Options {
        parallelism: usize::from(settings.parallelism),
        project: prepared.project.name.clone(),
        project_dir: prepared.project.root.clone(),
        env: Arc::new(context::env_var),
        artifacts: Some(crate::artifacts::Store::new(crate::backend::artifact_root(
            &prepared.project,
            &context::env_var,
        ))),
    };
    let report = progress(printer);
    let executor = Executor::new(
        store,
        snapshot,
        &prepared.backends,
        &planned.targets,
        &options,
        interrupt.clone(),
        &report,
    );
    let outcome = executor.execute(plan).await;
    Ok((
        summarize(&outcome, destroy, printer),
        submitted_runs(&outcome),
    ))
}

fn submitted_runs(outcome: &Outcome) -> Vec<RunRecord> {
    outcome
        .runs
        .iter()
        .filter_map(|name| outcome.snapshot.runs.get(name).cloned())
        .collect()
}

fn summarize(outcome: &Outcome, destroy: bool, printer: &Printer) -> ExitStatus {
    let count = |kind: ChangeKind| outcome.applied.iter().filter(|(_, k)| *k == kind).count();
    let counts = format!(
        "{} added, {} changed, {} replaced, {} destroyed",
        count(ChangeKind::Create),
        count(ChangeKind::Update),
        count(ChangeKind::Replace),
        count(ChangeKind::Delete)
    );
    if outcome.succeeded() {
        let what = if destroy { "Delete" } else { "Apply" };
        printer.message(&format!("\n{what} complete. Resources: {counts}."));
        return ExitStatus::Success;
    }
    if outcome.interrupted {
        printer.message(&format!(
            "\nInterrupted. Recorded: {counts}. Run the command again to finish."
        ));
        return ExitStatus::Interrupted;
    }
    let mut message = format!("\n{}: ", printer.paint("error", "31"));
    message.push_str(&format!("{} step(s) failed", outcome.failed.len()));
    for (address, error) in &outcome.failed {
        message.push_str(&format!("\n  {address}: {error}"));
        if let Some(help) = miette::Diagnostic::help(error) {
            message.push_str(&format!("\n    hint: {help}"));
        }
    }
    if !outcome.skipped.is_empty() {
        message.push_str(&format!("\n  not started: {}", outcome.skipped.join(", ")));
    }
    message.push_str(&format!("\nRecorded: {counts}. The state holds exactly what succeeded; running the command again converges."));
    printer.message(&message);
    if outcome.applied.is_empty() {
        ExitStatus::Failure
    } else {
        ExitStatus::Partial
    }
}

/// Follow runs until they end, printing their output; record their final status. Ctrl-C stops
/// following (the runs go on); twice aborts them.
pub async fn follow(
    store: &dyn StateStore,
    backends: &Backends,
    mut runs: Vec<RunRecord>,
    interrupt: &Interrupt,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    printer.message(&format!(
        "Following {} (Ctrl-C detaches; the runs go on).",
        names.join(", ")
    ));
    for run in &runs {
        let ports = run.job.get("ports").and_then(serde_json::Value::as_array);
        for port in ports
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
        {
            if let Some((local, container)) = port.split_once(':') {
                printer.message(&format!(
                    "{}: port {container} is published at http://127.0.0.1:{local}",
                    run.name
                ));
            }
        }
    }
    let seen = interrupt.count();
    let several = runs.len() > 1;
    let mut offsets: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_status: BTreeMap<String, crate::state::RunStatus> =
        runs.iter().map(|r| (r.name.clone(), r.status)).collect();
    loop {
        let mut pending = false;
        for run in &mut runs {
            if run.status.is_finished() {
                continue;
            }
            let backend = backends.get(&run.backend)?;
            match backend.run_read(run).await {
                Ok(Some(observed)) => {
                    run.status = observed.status;
                    run.exit_code = observed.exit_code.or(run.exit_code);
                    run.message = observed.message.or(run.message.take());
                    if observed.status.is_finished() {
                        run.finished_at = observed.finished_at.or(Some(chrono::Utc::now()));
                    }
                }
                Ok(None) => {
                    run.status = crate::state::RunStatus::Aborted;
                    run.message = Some("the backend has no trace of the run".into());
                    run.finished_at = Some(chrono::Utc::now());
                }
                Err(error) => printer.warn(&format!("cannot read {}: {error}", run.name)),
            }
            // Print output after reading the status, so a finished run's last lines are shown.
            let prefix = several.then(|| format!("[{}] ", run.name));
            let offset = offsets.get(&run.name).copied().unwrap_or(0);
            let next = super::runs::print_logs(backends, run, offset, prefix.as_deref(), printer)
                .await
                .unwrap_or(offset);
            offsets.insert(run.name.clone(), next);
            if last_status.get(&run.name) != Some(&run.status) {
                let exit = run
                    .exit_code
                    .filter(|_| run.status.is_finished())
                    .map(|c| format!(" (exit code {c})"))
                    .unwrap_or_default();
                let message = run
                    .message
                    .as_ref()
                    .filter(|_| {
                        run.status.is_finished() && run.status != crate::state::RunStatus::Failed
                    })
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                printer.message(&format!("{}: {}{exit}{message}", run.name, run.status));
                last_status.insert(run.name.clone(), run.status);
            }
            pending |= !run.status.is_finished();
        }
        if !pending {
            break;
        }
        if interrupt.count() > seen {
            if interrupt.count() > seen + 1 {
                for run in runs.iter().filter(|r| !r.status.is_finished()) {
                    let _ = backends.get(&run.backend)?.run_stop(run, true).await;
                }
                printer.message("Aborted the runs.");
            } else {
                printer.message("Detached; the runs go on (`dstack ps`, `dstack logs RUN -f`).");
                return Ok(ExitStatus::Interrupted);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    record_runs(store, backends, globals, printer).await;
    let failed: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.status != crate::state::RunStatus::Done)
        .collect();
    if failed.is_empty() {
        Ok(ExitStatus::Success)
    } else {
        for run in failed {
            printer.message(&format!(
                "{}: the run ended {}",
                run.name,
                super::runs::status_text(run)
            ));
        }
        Ok(ExitStatus::RunFailed)
    }
}

/// Record final run statuses (and the manifests of their artifacts), if the lock can be had
/// soon; otherwise the next refresh does.
async fn record_runs(
    store: &dyn StateStore,
    backends: &Backends,
    globals: &Globals,
    printer: &Printer,
) {
    let lock = LockInfo::new("record run status");
    if lock_with_timeout(
        store,
        &lock,
        globals.lock_timeout.max(Duration::from_secs(5)),
    )
    .await
    .is_err()
    {
        printer.warn(
            "the state is locked; run statuses will be recorded by the next plan, apply or ps",
        );
        return;
    }
    let result = async {
        let snapshot = store.load().await?;
        let refreshed = crate::apply::refresh::refresh(&snapshot, backends, &|_| false, 10).await?;
        if !refreshed.changes.is_empty() {
            let step = Step {
                description: "record run statuses".into(),
                changes: refreshed.changes,
            };
            store
                .commit(snapshot.lineage.as_deref(), snapshot.serial, &step)
                .await?;
        }
        Ok::<_, crate::apply::ApplyError>(())
    }
    .await;
    let _ = store.lock_release(&lock.id).await;
    if let Err(error) = result {
        printer.warn(&format!("run statuses were not recorded: {error}"));
    }
}

pub fn run(args: &ApplyArgs, globals: &Globals, printer: &Printer) -> miette::Result<ExitStatus> {
    if args.planfile.is_some()
        && (!args.plan.files.is_empty()
            || !args.plan.targets.is_empty()
            || !args.plan.replace.is_empty()
            || !args.plan.vars.is_empty())
    {
        return Err(miette::miette!(
            help = "a saved plan already holds its decisions; apply it alone: `dstack apply FILE`",
            "planning flags (-f, --var, --target, --replace) cannot be used with a saved plan"
        ));
    }
    let _ = parse_addresses(&args.plan.targets)?;
    context::block_on(apply_flow(
        &args.plan,
        args.planfile.as_deref(),
        false,
        args,
        globals,
        printer,
    ))?
}
