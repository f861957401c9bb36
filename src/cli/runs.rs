//! Run commands: `dstack ps`, `logs`, `stop`, `attach`, and the hidden `runner`.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;

use super::context::{self, Globals};
use super::printer::{ago, table};
use super::{ExitStatus, Printer};
use crate::backend::Backends;
use crate::state::{LockInfo, RunRecord, RunStatus, Snapshot, StateStore, Step};

/// Refuse a run, run resource or tag name from the command line that breaks the naming rules,
/// before it is looked up or used: such names become paths (`.dstack/runs/NAME`).
pub fn check_name_argument(name: &str) -> miette::Result<()> {
    if crate::model::is_valid_run_name(name) {
        return Ok(());
    }
    Err(miette::miette!(
        help = "names are a lowercase letter, then lowercase letters, digits or `-` (`train`, `train-3`, `best`); `dstack ps -a` lists the runs, `dstack tags list` the tags",
        "`{}` is not a valid run or tag name",
        name.escape_debug()
    ))
}

/// Find a run by name: a run (`train-3`), or a run resource meaning its latest run (`train`).
pub fn resolve_run(snapshot: &Snapshot, name: &str) -> miette::Result<RunRecord> {
    check_name_argument(name)?;
    if let Some(run) = snapshot.runs.get(name) {
        return Ok(run.clone());
    }
    snapshot
        .runs
        .values()
        .filter(|r| r.resource.as_deref() == Some(name))
        .max_by_key(|r| r.number)
        .cloned()
        .ok_or_else(|| {
            miette::miette!(
                help = "`dstack ps -a` lists the runs",
                "there is no run `{name}`"
            )
        })
}

/// Refresh run statuses and record them if the lock can be had at once.
pub async fn refreshed_snapshot(
    store: &dyn StateStore,
    backends: &Backends,
) -> miette::Result<Snapshot> {
    let mut snapshot = store.load().await?;
    let refreshed = crate::apply::refresh::refresh(&snapshot, backends, &|_| false, 10).await?;
    if refreshed.changes.is_empty() {
        return Ok(snapshot);
    }
    let step = Step {
        description: "refresh run statuses".into(),
        changes: refreshed.changes,
    };
    let lock = LockInfo::new("refresh");
    if store.lock_acquire(&lock).await.is_ok() {
        let result = store
            .commit(snapshot.lineage.as_deref(), snapshot.serial, &step)
            .await;
        store.lock_release(&lock.id).await?;
        if let Ok(committed) = result {
            snapshot.serial = committed.serial;
        }
    }
    snapshot.apply(&step);
    Ok(snapshot)
}

struct Session {
    store: Box<dyn StateStore>,
    backends: Backends,
}

async fn session(globals: &Globals) -> miette::Result<Session> {
    let cwd = context::current_dir()?;
    let project = context::project(&cwd)?;
    let store = context::open_state(globals, &project).await?;
    let backends =
        crate::backend::for_project(&project, &context::env_var, context::fake_backend_enabled());
    Ok(Session { store, backends })
}

/// How a run's status reads in `ps`: `exited (N)` for a failed run with an exit code.
pub fn status_text(run: &RunRecord) -> String {
    match (run.status, run.exit_code) {
        (RunStatus::Failed, Some(code)) => format!("exited ({code})"),
        (status, _) => status.to_string(),
    }
}

fn backend_text(run: &RunRecord) -> String {
    match run.job.get("runtime").and_then(serde_json::Value::as_str) {
        Some(runtime) => format!("{} ({runtime})", run.backend),
        None => run.backend.clone(),
    }
}

fn gpu_text(run: &RunRecord) -> String {
    run.spec
        .get("resources")
        .and_then(|r| r.get("gpu"))
        .map_or_else(
            || "-".into(),
            |g| g.as_str().map_or_else(|| g.to_string(), str::to_string),
        )
}

fn resources_text(run: &RunRecord) -> String {
    let resources: crate::model::resources::Resources = run
        .spec
        .get("resources")
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default();
    resources.pretty()
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Every run, not only the active ones and the latest of each resource.
    #[arg(short, long)]
    pub all: bool,
    #[arg(long)]
    pub json: bool,
}

/// `dstack ps`; `verbose` (the global `-v`) adds the RESOURCES column.
pub fn ps(
    args: &PsArgs,
    verbose: bool,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    context::block_on(async {
        let session = session(globals).await?;
        let snapshot = refreshed_snapshot(session.store.as_ref(), &session.backends).await?;
        let mut runs: Vec<&RunRecord> = snapshot.runs.values().collect();
        runs.sort_by(|a, b| {
            b.submitted_at
                .cmp(&a.submitted_at)
                .then_with(|| a.name.cmp(&b.name))
        });
        if !args.all {
            runs.retain(|run| {
                !run.status.is_finished()
                    || snapshot
                        .runs
                        .values()
                        .filter(|r| r.resource == run.resource)
                        .max_by_key(|r| r.number)
                        .is_some_and(|latest| latest.name == run.name)
            });
        }
        if args.json {
            printer.data_line(&serde_json::to_string_pretty(&runs).unwrap_or_default());
            return Ok(ExitStatus::Success);
        }
        if runs.is_empty() {
            printer.message("No runs.");
            return Ok(ExitStatus::Success);
        }
        let mut headers = vec!["NAME", "BACKEND", "GPU", "PRICE", "STATUS", "SUBMITTED"];
        if verbose {
            headers.insert(2, "RESOURCES");
        }
        let rows = runs
            .iter()
            .map(|run| {
                let mut row = vec![
                    run.name.clone(),
                    backend_text(run),
                    gpu_text(run),
                    price_text(run),
                    status_text(run),
                    ago(run.submitted_at),
                ];
                if verbose {
                    row.insert(2, resources_text(run));
                }
                row
            })
            .collect();
        printer.data(&table(&headers, rows));
        Ok(ExitStatus::Success)
    })?
}

/// The price per hour a backend recorded for the run's machine (`$0` on this machine).
fn price_text(run: &RunRecord) -> String {
    match run.job.get("price").and_then(serde_json::Value::as_f64) {
        Some(price) if price > 0.0 => format!("${}", (price * 10_000.0).round() / 10_000.0),
        _ => "$0".into(),
    }
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A run (`train-3`), or a run resource for its latest run (`train`).
    pub run: String,
    /// Keep printing until the run ends.
    #[arg(short, long)]
    pub follow: bool,
}

/// Print a run's log from `offset`; returns the new offset.
pub async fn print_logs(
    backends: &Backends,
    run: &RunRecord,
    offset: u64,
    prefix: Option<&str>,
    printer: &Printer,
) -> miette::Result<u64> {
    let backend = backends.get(&run.backend)?;
    let (bytes, next) = backend.run_logs(run, offset).await?;
    if !bytes.is_empty() {
        let text = String::from_utf8_lossy(&bytes);
        match prefix {
            Some(prefix) => printer.data(&crate::runner::prefix_lines(&text, prefix)),
            None => printer.data(&text),
        }
    }
    Ok(next)
}

pub fn logs(args: &LogsArgs, globals: &Globals, printer: &Printer) -> miette::Result<ExitStatus> {
    context::block_on(async {
        let session = session(globals).await?;
        let snapshot = session.store.load().await?;
        let mut run = resolve_run(&snapshot, &args.run)?;
        let backend = session.backends.get(&run.backend)?;
        let mut offset = print_logs(&session.backends, &run, 0, None, printer).await?;
        while args.follow && !run.status.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            offset = print_logs(&session.backends, &run, offset, None, printer).await?;
            match backend.run_read(&run).await? {
                Some(observed) => run.status = observed.status,
                None => break,
            }
        }
        print_logs(&session.backends, &run, offset, None, printer).await?;
        Ok(ExitStatus::Success)
    })?
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// A run (`train-3`), or a run resource for its latest run (`train`).
    pub run: String,
    /// Abort: kill at once; artifacts are not saved.
    #[arg(short = 'x', long)]
    pub abort: bool,
}

pub fn stop(args: &StopArgs, globals: &Globals, printer: &Printer) -> miette::Result<ExitStatus> {
    context::block_on(async {
        let session = session(globals).await?;
        let snapshot = session.store.load().await?;
        let run = resolve_run(&snapshot, &args.run)?;
        if run.status.is_finished() {
            printer.message(&format!("{} has already ended ({}).", run.name, run.status));
            return Ok(ExitStatus::Success);
        }
        let backend = session.backends.get(&run.backend)?;
        backend.run_stop(&run, args.abort).await?;
        let stop_duration = run
            .spec
            .get("stop_duration")
            .and_then(serde_json::Value::as_str)
            .and_then(|d| crate::model::quantity::Duration::parse(d).ok())
            .map_or(300, |d| d.0.max(0) as u64);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(stop_duration + 30);
        let mut status = run.status;
        while tokio::time::Instant::now() < deadline {
            match backend.run_read(&run).await? {
                Some(observed) if observed.status.is_finished() => {
                    status = observed.status;
                    break;
                }
                None => {
                    status = RunStatus::Aborted;
                    break;
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        refreshed_snapshot(session.store.as_ref(), &session.backends).await?;
        if status.is_finished() {
            printer.message(&format!("{}: {status}", run.name));
            Ok(ExitStatus::Success)
        } else {
            Err(miette::miette!(
                help = "`dstack ps` shows it; `dstack stop -x` aborts it",
                "{} did not stop in time",
                run.name
            ))
        }
    })?
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// A running run (`dev-1`), or a run resource for its latest run (`dev`).
    pub run: String,
    /// A command to run instead of an interactive shell.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub fn attach(
    args: &AttachArgs,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    let shell = context::block_on(async {
        let session = session(globals).await?;
        let snapshot = refreshed_snapshot(session.store.as_ref(), &session.backends).await?;
        let run = resolve_run(&snapshot, &args.run)?;
        let backend = session.backends.get(&run.backend)?;
        backend.run_shell(&run).await.map_err(miette::Report::new)
    })??;
    let interactive = args.command.is_empty();
    let status = if let Some(dir) = shell.first().and_then(|s| s.strip_prefix("cd:")) {
        let mut command = if interactive {
            std::process::Command::new(
                context::env_var("SHELL").unwrap_or_else(|| "/bin/sh".into()),
            )
        } else {
            let mut command = std::process::Command::new(&args.command[0]);
            command.args(&args.command[1..]);
            command
        };
        command.current_dir(dir).status()
    } else {
        let mut command = std::process::Command::new(&shell[0]);
        command.args(&shell[1..shell.len() - 1]);
        if interactive && std::io::stdin().is_terminal() {
            command.arg("-it");
        } else if interactive {
            command.arg("-i");
        }
        command.arg(&shell[shell.len() - 1]);
        if interactive {
            command.arg("/bin/sh");
        } else {
            command.args(&args.command);
        }
        command.status()
    };
    match status {
        Ok(status) if status.success() => Ok(ExitStatus::Success),
        Ok(status) => {
            printer.message(&format!("the command exited with {status}"));
            Ok(ExitStatus::Failure)
        }
        Err(error) => Err(miette::miette!(
            help = "`dstack attach` needs the `docker` command for Docker runs",
            "cannot attach: {error}"
        )),
    }
}

#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// The run's job store on this machine (`.dstack/runs/RUN`).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["job", "pool"])]
    pub job_dir: Option<std::path::PathBuf>,
    /// A job in a remote store: `s3://BUCKET/PREFIX/jobs/LINEAGE/RUN` (what user-data starts).
    #[arg(long, value_name = "URL", conflicts_with = "pool")]
    pub job: Option<String>,
    /// Serve a runner pool: claim and run the jobs queued in `s3://BUCKET/PREFIX`.
    #[arg(long, value_name = "URL", conflicts_with = "node")]
    pub pool: Option<String>,
    /// Be the agent of a fleet node: run the jobs queued for `--instance-id` in
    /// `s3://BUCKET/PREFIX` (what a fleet node's user-data starts).
    #[arg(long, value_name = "URL", requires = "instance_id", conflicts_with_all = ["job", "job_dir"])]
    pub node: Option<String>,
    /// With `--node`: the EC2 instance id of this machine.
    #[arg(long, value_name = "ID", requires = "node")]
    pub instance_id: Option<String>,
    /// Where remote jobs are unpacked and run (default ~/.dstack/runner).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<std::path::PathBuf>,
    /// The S3 endpoint (S3-compatible stores, tests); otherwise the standard AWS settings.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    /// With `--pool` or `--node`: exit after this long without a job (`30s`, `10m`).
    #[arg(long, value_name = "DURATION", value_parser = context::parse_duration)]
    pub idle_exit: Option<Duration>,
}

pub fn runner(args: &RunnerArgs) -> miette::Result<ExitStatus> {
    if let Some(dir) = &args.job_dir {
        context::block_on(crate::runner::run(crate::runner::job::JobStore {
            dir: dir.clone(),
        }))?;
        return Ok(ExitStatus::Success);
    }
    let connection = crate::aws::Connection {
        region: args.region.clone(),
        profile: None,
        endpoint_url: args.endpoint_url.clone(),
    };
    let work = args.work_dir.clone().unwrap_or_else(|| {
        context::home_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join(".dstack")
            .join("runner")
    });
    context::block_on(async {
        if let Some(url) = &args.job {
            let (store, job) = crate::runner::remote::parse_job_url(url)?;
            let jobs = crate::runner::remote::RemoteJobs::open(&store, &connection).await?;
            Box::pin(crate::runner::remote::run_job(
                &jobs,
                &connection,
                &job,
                &work,
            ))
            .await?;
            Ok(ExitStatus::Success)
        } else if let Some(url) = args.pool.as_ref().or(args.node.as_ref()) {
            let mut jobs = crate::runner::remote::RemoteJobs::open(url, &connection).await?;
            if let Some(instance) = &args.instance_id {
                jobs = jobs.on_node(instance)?;
            }
            let served = Box::pin(crate::runner::remote::serve_pool(
                &jobs,
                &connection,
                &work,
                args.idle_exit,
            ))
            .await?;
            tracing::info!("served {served} job(s)");
            Ok(ExitStatus::Success)
        } else {
            Err(miette::miette!(
                help = "`dstack runner --pool s3://BUCKET/PREFIX` serves a runner pool",
                "the runner needs --job-dir, --job, --pool or --node"
            ))
        }
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_shows_what_the_backend_recorded() {
        let mut run: RunRecord = serde_json::from_value(serde_json::json!({
            "name": "train-1", "resource": "train", "number": 1, "type": "task",
            "status": "running", "backend": "aws", "input_digest": "", "spec": null,
            "submitted_at": "2026-01-01T00:00:00Z"
        }))
        .expect("record");
        assert_eq!(price_text(&run), "$0");
        run.job
            .insert("price".into(), serde_json::json!(0.041_600_01));
        assert_eq!(price_text(&run), "$0.0416");
    }
}
