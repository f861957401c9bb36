//! Artifact commands: `dstack ls`, `dstack tags add|list|delete`, `dstack rm`.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};

use super::apply::confirm;
use super::context::{self, Globals};
use super::printer::{ago, table};
use super::runs::check_name_argument;
use super::{ExitStatus, Printer};
use crate::artifacts::refs::{self, Resolved, Source};
use crate::artifacts::{Store, human_size};
use crate::backend::Backends;
use crate::config::project::Project;
use crate::model::{Kind, ResourceId};
use crate::state::{
    Change, LockInfo, RunStatus, Snapshot, StateStore, Step, TagRecord, lock_with_timeout,
};

/// What every artifact command works with.
pub struct Session {
    pub project: Project,
    pub store: Box<dyn StateStore>,
    pub backends: Backends,
    pub artifacts: Store,
    pub lock_timeout: std::time::Duration,
}

pub async fn session(globals: &Globals) -> miette::Result<Session> {
    let cwd = context::current_dir()?;
    let project = context::project(&cwd)?;
    let store = context::open_state(globals, &project).await?;
    let backends =
        crate::backend::for_project(&project, &context::env_var, context::fake_backend_enabled());
    let artifacts = Store::new(crate::backend::artifact_root(&project, &context::env_var));
    Ok(Session {
        project,
        store,
        backends,
        artifacts,
        lock_timeout: globals.lock_timeout,
    })
}

impl Session {
    /// State with run statuses (and manifests) refreshed; recorded if the lock is free.
    pub async fn snapshot(&self) -> miette::Result<Snapshot> {
        super::runs::refreshed_snapshot(self.store.as_ref(), &self.backends).await
    }

    /// Take the lock, compute changes from the current state, commit them; returns the state
    /// after the changes.
    pub async fn write(
        &self,
        operation: &str,
        changes: impl FnOnce(&Snapshot) -> miette::Result<Vec<Change>>,
    ) -> miette::Result<Snapshot> {
        let lock = LockInfo::new(operation);
        lock_with_timeout(self.store.as_ref(), &lock, self.lock_timeout).await?;
        let result = async {
            let mut snapshot = self.store.load().await?;
            let changes = changes(&snapshot)?;
            if !changes.is_empty() {
                let step = Step {
                    description: operation.to_string(),
                    changes,
                };
                let committed = self
                    .store
                    .commit(snapshot.lineage.as_deref(), snapshot.serial, &step)
                    .await?;
                snapshot.apply(&step);
                snapshot.lineage = Some(committed.lineage);
                snapshot.serial = committed.serial;
            }
            Ok::<_, miette::Report>(snapshot)
        }
        .await;
        self.store.lock_release(&lock.id).await?;
        result
    }
}

/// The lineage artifacts of this project are filed under (state that does not exist yet has
/// no artifacts).
fn lineage(snapshot: &Snapshot) -> &str {
    snapshot.lineage.as_deref().unwrap_or("-")
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// A run (`hello-txt-1`), a run resource for its latest run (`hello-txt`), or a tag.
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

/// The `PATH FILE SIZE` table of seed 000, grouped by artifact path.
fn ls_table(resolved: &Resolved) -> String {
    let mut rows = Vec::new();
    let mut previous: Option<&str> = None;
    for file in &resolved.manifest.files {
        let path = if previous == Some(file.artifact.as_str()) {
            String::new()
        } else {
            file.artifact.clone()
        };
        previous = Some(&file.artifact);
        rows.push(vec![path, file.path.clone(), human_size(file.size)]);
    }
    table(&["PATH", "FILE", "SIZE"], rows)
}

fn resolved_json(resolved: &Resolved) -> serde_json::Value {
    let tag = match &resolved.source {
        Source::Tag { tag, .. } => Some(tag.clone()),
        Source::Run(_) => None,
    };
    serde_json::json!({
        "name": resolved.name,
        "run": resolved.run(),
        "tag": tag,
        "files": resolved.manifest.files,
        "size": resolved.manifest.files.iter().map(|f| f.size).sum::<u64>(),
    })
}

pub fn ls(args: &LsArgs, globals: &Globals, printer: &Printer) -> miette::Result<ExitStatus> {
    check_name_argument(&args.name)?;
    context::block_on(async {
        let session = session(globals).await?;
        let snapshot = session.snapshot().await?;
        let resolved = refs::resolve(
            &snapshot,
            &session.artifacts,
            lineage(&snapshot),
            &args.name,
        )?;
        if args.json {
            printer.data_line(
                &serde_json::to_string_pretty(&resolved_json(&resolved)).unwrap_or_default(),
            );
        } else if resolved.manifest.files.is_empty() {
            printer.message(&format!("{} has no artifacts.", resolved.run()));
        } else {
            printer.data(&ls_table(&resolved));
        }
        Ok(ExitStatus::Success)
    })?
}

#[derive(Debug, Args)]
pub struct TagsArgs {
    #[command(subcommand)]
    pub command: TagsCommand,
}

#[derive(Debug, Subcommand)]
pub enum TagsCommand {
    /// Name a run's artifacts: the tag keeps them after the run is deleted.
    #[command(after_help = "Example:\n  dstack tags add hello-txt-1 awesome-tag")]
    Add {
        /// A run (`train-3`), or a run resource for its latest run (`train`).
        run: String,
        tag: String,
    },
    /// List tags.
    #[command(after_help = "Example:\n  dstack tags list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a tag (its artifacts go when nothing else refers to them).
    #[command(after_help = "Example:\n  dstack tags delete awesome-tag")]
    Delete { tag: String },
}

pub fn tags(args: &TagsArgs, globals: &Globals, printer: &Printer) -> miette::Result<ExitStatus> {
    context::block_on(async {
        let session = session(globals).await?;
        match &args.command {
            TagsCommand::Add { run, tag } => tags_add(&session, run, tag, printer).await,
            TagsCommand::List { json } => tags_list(&session, *json, printer).await,
            TagsCommand::Delete { tag } => tags_delete(&session, tag, printer).await,
        }
    })?
}

/// Why `name` cannot be a new tag, if it cannot.
fn check_new_tag(snapshot: &Snapshot, name: &str) -> miette::Result<()> {
    if !crate::model::is_valid_name(name) {
        return Err(miette::miette!(
            help = format!(
                "tag names match {}: lowercase letters, digits and dashes",
                crate::model::NAME_PATTERN
            ),
            "`{name}` is not a valid tag name"
        ));
    }
    if snapshot.tags.contains_key(name) {
        return Err(miette::miette!(
            help = "`dstack tags delete {name}` first, or choose another name",
            "the tag `{name}` already exists"
        ));
    }
    let run_resource = snapshot
        .resource(&ResourceId::new(Kind::Run, name))
        .is_some();
    if run_resource || refs::find_run(snapshot, name).is_some() {
        return Err(miette::miette!(
            help = "run and tag names share one namespace; choose another tag name",
            "`{name}` already names a run"
        ));
    }
    Ok(())
}

async fn tags_add(
    session: &Session,
    run: &str,
    tag: &str,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    check_name_argument(run)?;
    // Refresh first, so a run that just ended has its manifest recorded.
    session.snapshot().await?;
    let snapshot = session
        .write(&format!("tags add {tag}"), |snapshot| {
            check_new_tag(snapshot, tag)?;
            let record = refs::find_run(snapshot, run).ok_or_else(|| {
                miette::miette!(
                    help = "`dstack ps -a` lists the runs",
                    "there is no run `{run}`"
                )
            })?;
            if matches!(record.status, RunStatus::Failed | RunStatus::Aborted) {
                return Err(miette::miette!(
                    help = "only runs that end `done` or `stopped` have artifacts to tag",
                    "{} ended {}, so it has no artifacts",
                    record.name,
                    record.status
                ));
            }
            let manifest = snapshot
                .manifests
                .contains_key(&record.name)
                .then(|| record.name.clone());
            Ok(vec![Change::PutTag(TagRecord {
                name: tag.to_string(),
                run: record.name.clone(),
                manifest,
                created_at: chrono::Utc::now(),
            })])
        })
        .await?;
    refs::keep_tag(&snapshot, &session.artifacts, lineage(&snapshot), tag)?;
    let run = &snapshot.tags[tag].run;
    printer.message(&format!("Tagged {run} as {tag}."));
    Ok(ExitStatus::Success)
}

async fn tags_list(session: &Session, json: bool, printer: &Printer) -> miette::Result<ExitStatus> {
    let snapshot = session.snapshot().await?;
    let declared = |name: &str| {
        snapshot
            .resource(&ResourceId::new(Kind::Tag, name))
            .map(|r| r.source.file.clone())
    };
    let files = |tag: &TagRecord| {
        refs::resolve(&snapshot, &session.artifacts, lineage(&snapshot), &tag.name)
            .ok()
            .map(|r| r.manifest.files)
    };
    if json {
        let list: Vec<serde_json::Value> = snapshot
            .tags
            .values()
            .map(|t| {
                let files = files(t);
                serde_json::json!({
                    "name": t.name,
                    "run": t.run,
                    "files": files.as_ref().map(Vec::len),
                    "size": files.as_ref().map(|f| f.iter().map(|f| f.size).sum::<u64>()),
                    "declared_in": declared(&t.name),
                    "created_at": t.created_at,
                })
            })
            .collect();
        printer.data_line(&serde_json::to_string_pretty(&list).unwrap_or_default());
        return Ok(ExitStatus::Success);
    }
    if snapshot.tags.is_empty() {
        printer.message("No tags. `dstack tags add RUN TAG` makes one.");
        return Ok(ExitStatus::Success);
    }
    let rows = snapshot
        .tags
        .values()
        .map(|t| {
            let files = files(t);
            vec![
                t.name.clone(),
                t.run.clone(),
                files
                    .as_ref()
                    .map_or_else(|| "-".into(), |f| f.len().to_string()),
                files.as_ref().map_or_else(
                    || "-".into(),
                    |f| human_size(f.iter().map(|f| f.size).sum()),
                ),
                declared(&t.name).unwrap_or_else(|| "dstack tags add".into()),
                ago(t.created_at),
            ]
        })
        .collect();
    printer.data(&table(
        &["TAG", "RUN", "FILES", "SIZE", "SOURCE", "CREATED"],
        rows,
    ));
    Ok(ExitStatus::Success)
}

async fn tags_delete(
    session: &Session,
    tag: &str,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    check_name_argument(tag)?;
    let snapshot = session
        .write(&format!("tags delete {tag}"), |snapshot| {
            if !snapshot.tags.contains_key(tag) {
                return Err(miette::miette!(
                    help = "`dstack tags list` lists the tags",
                    "there is no tag `{tag}`"
                ));
            }
            if let Some(record) = snapshot.resource(&ResourceId::new(Kind::Tag, tag)) {
                return Err(miette::miette!(
                    help = format!(
                        "remove it from {} and `dstack apply`, or `dstack delete -f {}`",
                        record.source.file, record.source.file
                    ),
                    "tag/{tag} is declared in {}",
                    record.source.file
                ));
            }
            Ok(refs::forget_tag(snapshot, tag))
        })
        .await?;
    let collected = refs::release_tag(&session.artifacts, lineage(&snapshot), tag)?;
    printer.message(&format!(
        "Deleted the tag {tag}{}.",
        collected_note(collected)
    ));
    Ok(ExitStatus::Success)
}

fn collected_note(collected: usize) -> String {
    if collected == 0 {
        String::new()
    } else {
        format!("; {collected} unreferenced file(s) removed from the artifact store")
    }
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    /// A run (`hello-txt-1`), a run resource for its latest run (`hello-txt`), or a tag.
    pub name: String,
}

/// The remote artifact store of the project, or an error saying how to configure one.
async fn remote(session: &Session) -> miette::Result<crate::artifacts::remote::Remote> {
    let stores = session
        .project
        .config
        .artifacts
        .as_ref()
        .map(crate::config::project::ArtifactsSetting::stores)
        .unwrap_or_default();
    let Some(url) = stores.remote else {
        return Err(miette::miette!(
            help = "set `artifacts: s3://BUCKET/PREFIX` in .dstack/config.yml (or `dstack config --artifacts s3://...`)",
            "no remote artifact store is configured"
        ));
    };
    let connection = crate::aws::Connection {
        region: stores.region,
        profile: stores.profile,
        endpoint_url: stores.endpoint_url,
    };
    Ok(crate::artifacts::remote::Remote::open(&url, &connection).await?)
}

fn transfer_note(report: &crate::artifacts::remote::TransferReport) -> String {
    format!(
        "{} of {} file(s), {} transferred; {} already there",
        report.blobs_transferred,
        report.blobs_total,
        human_size(report.bytes_transferred),
        report.blobs_skipped
    )
}

/// `dstack push NAME`: upload a run's or tag's artifacts to the remote store.
pub fn push(
    args: &TransferArgs,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    use crate::artifacts::remote::{Progress, RefKind};
    check_name_argument(&args.name)?;
    context::block_on(async {
        let session = session(globals).await?;
        let snapshot = session.snapshot().await?;
        let lineage = lineage(&snapshot).to_string();
        let resolved = refs::resolve(&snapshot, &session.artifacts, &lineage, &args.name)?;
        let remote = remote(&session).await?;
        let (kind, name) = match &resolved.source {
            Source::Tag { tag, .. } => (RefKind::Tag, tag.clone()),
            Source::Run(run) => (RefKind::Run, run.clone()),
        };
        let progress = Progress::new(format!("push {name}"));
        let report = remote
            .push(
                &session.artifacts,
                &lineage,
                kind,
                &name,
                &resolved.manifest,
                &progress,
            )
            .await;
        progress.finish();
        let report = report?;
        printer.message(&format!(
            "Pushed {name} to {}: {}.",
            remote.url(),
            transfer_note(&report)
        ));
        Ok(ExitStatus::Success)
    })?
}

/// `dstack pull NAME`: download a run's or tag's artifacts into the local store.
pub fn pull(
    args: &TransferArgs,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    use crate::artifacts::remote::{Progress, RefKind};
    check_name_argument(&args.name)?;
    context::block_on(async {
        let session = session(globals).await?;
        let snapshot = session.snapshot().await?;
        let lineage = lineage(&snapshot).to_string();
        let (kind, name) = if snapshot.tags.contains_key(&args.name) {
            (RefKind::Tag, args.name.clone())
        } else {
            let run = refs::find_run(&snapshot, &args.name)
                .map_or_else(|| args.name.clone(), |r| r.name.clone());
            (RefKind::Run, run)
        };
        let remote = remote(&session).await?;
        let progress = Progress::new(format!("pull {name}"));
        let result = remote
            .pull(&session.artifacts, &lineage, kind, &name, &progress)
            .await;
        progress.finish();
        let (manifest, report) = result?;
        // A run this state records but whose manifest it lacks gets it now.
        if kind == RefKind::Run
            && snapshot.runs.contains_key(&name)
            && !snapshot.manifests.contains_key(&name)
        {
            session
                .write(&format!("pull {name}"), |snapshot| {
                    Ok(crate::apply::refresh::manifest_changes(
                        snapshot,
                        &name,
                        manifest.clone(),
                    ))
                })
                .await?;
        }
        printer.message(&format!(
            "Pulled {name} from {}: {}.",
            remote.url(),
            transfer_note(&report)
        ));
        Ok(ExitStatus::Success)
    })?
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Finished runs to delete (`hello-txt-1`), with their artifacts unless a tag keeps them.
    #[arg(required = true)]
    pub runs: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
}

pub fn rm(args: &RmArgs, globals: &Globals, printer: &Printer) -> miette::Result<ExitStatus> {
    for name in &args.runs {
        check_name_argument(name)?;
    }
    context::block_on(async {
        let session = session(globals).await?;
        let snapshot = session.snapshot().await?;
        let mut names = Vec::new();
        for name in &args.runs {
            let Some(run) = snapshot.runs.get(name) else {
                return Err(miette::miette!(
                    help = "`dstack ps -a` lists the runs by name (`train-3`)",
                    "there is no run `{name}`"
                ));
            };
            if !run.status.is_finished() {
                return Err(miette::miette!(
                    help = "stop it first: `dstack stop {name}`",
                    "{name} is {}; only finished runs can be deleted",
                    run.status
                ));
            }
            if let Some(resource) = &run.resource
                && let Some(record) = snapshot.resource(&ResourceId::new(Kind::Run, resource))
                && record
                    .attributes
                    .get("run")
                    .and_then(serde_json::Value::as_str)
                    == Some(name.as_str())
            {
                return Err(miette::miette!(
                    help = format!(
                        "`dstack delete -f {}` deletes the resource and its runs",
                        record.source.file
                    ),
                    "{name} is the current run of run/{resource}, declared in {}",
                    record.source.file
                ));
            }
            names.push(name.clone());
        }
        let question = format!("Delete {} and their artifacts?", names.join(", "));
        if !confirm(&question, args.yes, printer)? {
            return Ok(ExitStatus::Failure);
        }
        let runs: BTreeMap<String, crate::state::RunRecord> = names
            .iter()
            .map(|n| (n.clone(), snapshot.runs[n].clone()))
            .collect();
        for run in runs.values() {
            let backend = session.backends.get(&run.backend)?;
            match backend.run_remove(run).await {
                Ok(()) => {}
                Err(e) if e.kind == crate::backend::ErrorKind::NotFound => {}
                Err(e) => return Err(miette::Report::new(e)),
            }
        }
        let after = session
            .write(&format!("rm {}", names.join(" ")), |snapshot| {
                let mut changes = Vec::new();
                let mut view = snapshot.clone();
                for name in &names {
                    let forget = refs::forget_run(&view, name);
                    view.apply(&Step {
                        description: String::new(),
                        changes: forget.clone(),
                    });
                    changes.extend(forget);
                }
                Ok(changes)
            })
            .await?;
        let mut collected = 0;
        for name in &names {
            collected += refs::release_run(&after, &session.artifacts, lineage(&after), name)?;
        }
        printer.message(&format!(
            "Deleted {}{}.",
            names.join(", "),
            collected_note(collected)
        ));
        Ok(ExitStatus::Success)
    })?
}
