//! `dstack volume list | delete`: the recorded volumes of every backend, read afresh.
//!
//! `list` reads each recorded volume from its backend (nothing is written: drift is for `plan`).
//! `delete NAME` deletes one recorded volume through the executor — an intent is recorded
//! before the backend call, the record removed after it — exactly as `dstack delete` would, and
//! refuses while a configuration file still declares the volume (the next `apply` would create it
//! again) or a run that mounts it is not finished. A registered volume (`volume_id`) is only
//! forgotten. The same engine serves `dstack fleet delete`.

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::{Args, Subcommand};
use futures_util::stream::{self, StreamExt};
use serde_json::{Value as Json, json};

use super::context::{self, ConfigArgs, Globals};
use super::printer::{ago, table};
use super::{ExitStatus, Printer};
use crate::apply::executor::{Event, Executor, Options};
use crate::backend::{Backends, Observed};
use crate::model::{Kind, ResourceId};
use crate::plan::{ChangeKind, Plan, PlanInputs, Reason, ResourceChange, Summary};
use crate::state::{LockInfo, ResourceRecord, Snapshot, lock_with_timeout};

#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    pub command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// List the recorded volumes of every backend, read afresh (`-v` adds REGION and ATTACHED).
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  dstack volume list\n  dstack volume list -v --json"
    )]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a recorded volume (a registered one is only forgotten).
    #[command(
        visible_alias = "rm",
        after_help = "Example:\n  dstack volume delete my-data -y"
    )]
    Delete {
        name: String,
        /// Do not ask for confirmation (needed without a terminal).
        #[arg(short = 'y', long)]
        yes: bool,
    },
}

pub fn run(
    args: &VolumeArgs,
    verbose: bool,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    context::block_on(async {
        match &args.command {
            VolumeCommand::List { json } => list(*json, verbose, globals, printer).await,
            VolumeCommand::Delete { name, yes } => {
                delete_recorded(Kind::Volume, name, *yes, globals, printer).await
            }
        }
    })?
}

/// What reading a recorded object found.
#[derive(Clone, Debug)]
pub enum Read {
    Present(Observed),
    /// Deleted outside dstack.
    Missing,
    /// The backend could not be asked (not configured, unreachable, ...).
    Failed(String),
}

impl Read {
    pub fn status(&self, record: &ResourceRecord) -> String {
        match self {
            Self::Present(observed) if !observed.status.is_empty() => observed.status.clone(),
            Self::Present(_) | Self::Failed(_) => record.status.clone(),
            Self::Missing => "deleted outside dstack".into(),
        }
    }

    /// An attribute as read, else as recorded.
    pub fn attribute<'a>(&'a self, record: &'a ResourceRecord, key: &str) -> Option<&'a Json> {
        match self {
            Self::Present(observed) => observed.attributes.get(key),
            _ => None,
        }
        .or_else(|| record.attributes.get(key))
    }
}

/// The state and backends of the current project.
pub struct Opened {
    pub project: crate::config::project::Project,
    pub store: Box<dyn crate::state::StateStore>,
    pub backends: Backends,
}

pub async fn open(globals: &Globals) -> miette::Result<Opened> {
    let cwd = context::current_dir()?;
    let project = context::project(&cwd)?;
    let store = context::open_state(globals, &project).await?;
    let backends =
        crate::backend::for_project(&project, &context::env_var, context::fake_backend_enabled());
    Ok(Opened {
        project,
        store,
        backends,
    })
}

/// Read every recorded object of `kind` from its backend, in parallel.
pub async fn read_all(
    snapshot: &Snapshot,
    backends: &Backends,
    kind: Kind,
    printer: &Printer,
) -> Vec<(ResourceRecord, Read)> {
    let records: Vec<ResourceRecord> = snapshot
        .resources
        .values()
        .filter(|r| r.kind == kind)
        .cloned()
        .collect();
    let mut read: Vec<(ResourceRecord, Read)> =
        stream::iter(records.into_iter().map(|record| async move {
            let result = match backends.get(&record.backend) {
                Err(error) => Read::Failed(error.to_string()),
                Ok(backend) => {
                    match crate::backend::retry(|| backend.read(&record), &crate::backend::quietly)
                        .await
                    {
                        Ok(Some(observed)) => Read::Present(observed),
                        Ok(None) => Read::Missing,
                        Err(error) => Read::Failed(error.to_string()),
                    }
                }
            };
            (record, result)
        }))
        .buffer_unordered(10)
        .collect()
        .await;
    read.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    for (record, result) in &read {
        if let Read::Failed(error) = result {
            printer.warn(&format!(
                "cannot read {} from `{}`; showing what was recorded: {error}",
                record.id(),
                record.backend
            ));
        }
    }
    read
}

fn text(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(s) if !s.is_empty() => Some(s.clone()),
        Json::Array(items) if !items.is_empty() => Some(
            items
                .iter()
                .filter_map(Json::as_str)
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    }
}

/// `aws (us-east-1)`, or the backend's name when it has no region.
pub fn backend_column(record: &ResourceRecord, read: &Read) -> String {
    let region = text(read.attribute(record, "region"))
        .or_else(|| text(read.attribute(record, "regions")))
        .or_else(|| text(record.spec.get("region")));
    match region {
        Some(region) if record.backend != "local" => format!("{} ({region})", record.backend),
        _ => record.backend.clone(),
    }
}

/// Which fleet an instance belongs to, from the recorded fleets.
fn instance_owners(snapshot: &Snapshot) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for fleet in snapshot
        .resources
        .values()
        .filter(|r| r.kind == Kind::Fleet)
    {
        for instance in fleet
            .attributes
            .get("instances")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
        {
            owners.insert(instance.to_string(), fleet.name.clone());
        }
    }
    owners
}

async fn list(
    json: bool,
    verbose: bool,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    let opened = open(globals).await?;
    let snapshot = opened.store.load().await?;
    let read = read_all(&snapshot, &opened.backends, Kind::Volume, printer).await;
    let owners = instance_owners(&snapshot);
    let attached = |record: &ResourceRecord, read: &Read| -> Vec<String> {
        read.attribute(record, "attachments")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .map(|id| owners.get(id).cloned().unwrap_or_else(|| id.to_string()))
            .collect()
    };
    if json {
        let volumes: Vec<Json> = read
            .iter()
            .map(|(record, result)| {
                json!({
                    "name": record.name,
                    "backend": record.backend,
                    "backend_id": record.backend_id,
                    "region": text(result.attribute(record, "region")),
                    "availability_zone": text(result.attribute(record, "availability_zone")),
                    "size": text(result.attribute(record, "size")),
                    "status": result.status(record),
                    "attached": attached(record, result),
                    "external": record.external,
                    "source": record.source.file,
                    "created_at": record.created_at,
                })
            })
            .collect();
        printer.data_line(&serde_json::to_string_pretty(&volumes).unwrap_or_default());
        return Ok(ExitStatus::Success);
    }
    if read.is_empty() {
        printer.message("No volumes recorded.");
        return Ok(ExitStatus::Success);
    }
    let rows: Vec<Vec<String>> = read
        .iter()
        .map(|(record, result)| {
            let status = result.status(record);
            let created = ago(record.created_at);
            if verbose {
                let region = text(result.attribute(record, "region")).map_or_else(
                    || "-".to_string(),
                    |region| match text(result.attribute(record, "availability_zone")) {
                        Some(zone) => format!("{region} ({zone})"),
                        None => region,
                    },
                );
                let attached = attached(record, result);
                vec![
                    record.name.clone(),
                    record.backend.clone(),
                    region,
                    status,
                    if attached.is_empty() {
                        "-".into()
                    } else {
                        attached.join(", ")
                    },
                    created,
                ]
            } else {
                vec![
                    record.name.clone(),
                    backend_column(record, result),
                    status,
                    created,
                ]
            }
        })
        .collect();
    let headers: &[&str] = if verbose {
        &["NAME", "BACKEND", "REGION", "STATUS", "ATTACHED", "CREATED"]
    } else {
        &["NAME", "BACKEND", "STATUS", "CREATED"]
    };
    printer.data(&table(headers, rows));
    Ok(ExitStatus::Success)
}

/// A refusal: a configuration file still declares the resource.
fn still_declared(
    record: &ResourceRecord,
    project: &crate::config::project::Project,
    printer: &Printer,
) -> miette::Result<()> {
    let file = &record.source.file;
    if file.is_empty() || file == "<stdin>" || !project.root.join(file).is_file() {
        return Ok(());
    }
    let loaded = match context::load_configs(
        &project.root,
        project,
        &ConfigArgs {
            files: vec![file.clone()],
            ..ConfigArgs::default()
        },
    ) {
        Ok(loaded) => loaded,
        Err(error) => {
            printer.warn(&format!(
                "cannot tell whether `{file}` still declares {}: {error}",
                record.id()
            ));
            return Ok(());
        }
    };
    if loaded.resources().any(|r| r.id == record.id()) {
        return Err(miette::miette!(
            help = format!(
                "remove it from `{file}` and run `dstack apply`, or delete it with `dstack delete -f {file} --target {}`",
                record.id()
            ),
            "{} is still declared in `{file}`: the next `dstack apply` would create it again",
            record.id()
        ));
    }
    Ok(())
}

/// A refusal: an unfinished run uses the resource.
fn in_use(snapshot: &Snapshot, id: &ResourceId) -> miette::Result<()> {
    let address = id.to_string();
    let users: Vec<String> = snapshot
        .resources
        .values()
        .filter(|r| r.kind == Kind::Run)
        .filter(|r| {
            r.attributes
                .get("depends_on")
                .and_then(Json::as_array)
                .is_some_and(|d| d.iter().any(|a| a.as_str() == Some(address.as_str())))
        })
        .flat_map(|r| {
            snapshot
                .runs
                .values()
                .filter(|run| run.resource.as_deref() == Some(r.name.as_str()))
                .filter(|run| !run.status.is_finished())
                .map(|run| run.name.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    Err(miette::miette!(
        help = format!(
            "stop it first: `dstack stop {}`",
            users.first().map_or("RUN", String::as_str)
        ),
        "{address} is in use by the run {}",
        users.join(", ")
    ))
}

/// The one-change plan that deletes a record.
fn deletion_plan(record: &ResourceRecord, snapshot: &Snapshot) -> Plan {
    let change = ResourceChange {
        address: record.id().to_string(),
        kind: record.kind,
        name: record.name.clone(),
        config_type: record.config_type,
        change: ChangeKind::Delete,
        actions: ChangeKind::Delete.actions(),
        before: Some(record.spec.clone()),
        after: None,
        replace_paths: Vec::new(),
        changed_paths: Vec::new(),
        reason: Some(Reason::DeleteByRequest),
        detail: None,
        data_loss: record.kind == Kind::Volume && !record.external,
        external: record.external,
        backend: record.backend.clone(),
        source: Some(record.source.clone()),
        depends_on: Vec::new(),
    };
    Plan {
        format_version: crate::plan::FORMAT_VERSION.into(),
        dstack_version: env!("CARGO_PKG_VERSION").into(),
        inputs: PlanInputs {
            lineage: snapshot.lineage.clone().unwrap_or_default(),
            serial: snapshot.serial,
            destroy: true,
            targets: vec![record.id().to_string()],
            ..PlanInputs::default()
        },
        resource_changes: vec![change],
        drift: Vec::new(),
        summary: Summary {
            destroy: 1,
            ..Summary::default()
        },
        complete: false,
        notes: Vec::new(),
    }
}

/// Delete one recorded volume or fleet through the executor, under the state lock.
pub async fn delete_recorded(
    kind: Kind,
    name: &str,
    yes: bool,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    let opened = open(globals).await?;
    let store = opened.store.as_ref();
    let lock = LockInfo::new(&format!("{kind} delete"));
    lock_with_timeout(store, &lock, globals.lock_timeout).await?;
    let result = locked_delete(&opened, kind, name, yes, printer).await;
    let released = store.lock_release(&lock.id).await;
    let status = result?;
    released?;
    Ok(status)
}

async fn locked_delete(
    opened: &Opened,
    kind: Kind,
    name: &str,
    yes: bool,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    let store = opened.store.as_ref();
    let mut snapshot = store.load().await?;
    for note in crate::apply::recover::recover(store, &mut snapshot, &opened.backends).await? {
        printer.message(&format!("{note}."));
    }
    let id = ResourceId::new(kind, name);
    let record = snapshot.resource(&id).cloned().ok_or_else(|| {
        miette::miette!(
            help = format!("`dstack {kind} list` lists the recorded ones"),
            "no {kind} named `{name}` is recorded"
        )
    })?;
    still_declared(&record, &opened.project, printer)?;
    in_use(&snapshot, &id)?;
    let object = record
        .backend_id
        .as_ref()
        .map(|b| format!(", {b}"))
        .unwrap_or_default();
    let question = if record.external {
        format!(
            "Forget {id} ({}{object})? It was registered, so the {kind} itself is kept.",
            record.backend
        )
    } else if kind == Kind::Volume {
        format!(
            "Delete {id} ({}{object}), destroying its data?",
            record.backend
        )
    } else {
        format!(
            "Delete {id} ({}{object}), terminating its instances?",
            record.backend
        )
    };
    if !super::apply::confirm(&question, yes, printer)? {
        printer.message("Cancelled; nothing was changed.");
        return Ok(ExitStatus::Failure);
    }
    let plan = deletion_plan(&record, &snapshot);
    let options = Options {
        parallelism: 1,
        project: opened.project.name.clone(),
        project_dir: opened.project.root.clone(),
        env: Arc::new(context::env_var),
        artifacts: None,
    };
    let targets = BTreeMap::new();
    let report = {
        let printer = printer.clone();
        move |event: Event| match event {
            Event::Started { address, .. } => printer.message(&format!("{address}: destroying...")),
            Event::Finished {
                address, seconds, ..
            } => printer.message(&format!("{address}: destroyed [{seconds:.1}s]")),
            Event::Retrying {
                address,
                attempt,
                message,
            } => printer.message(&format!(
                "{address}: retrying (attempt {attempt}): {message}"
            )),
            Event::Failed { .. } | Event::Waiting { .. } => {}
        }
    };
    let interrupt = super::apply::listen_for_interrupts(printer);
    let executor = Executor::new(
        store,
        snapshot,
        &opened.backends,
        &targets,
        &options,
        interrupt,
        &report,
    );
    let outcome = executor.execute(&plan).await;
    if let Some((_, error)) = outcome.failed.into_iter().next() {
        return Err(miette::Report::new(error));
    }
    if outcome.interrupted {
        printer.message("Interrupted; `dstack state recover` settles what was under way.");
        return Ok(ExitStatus::Interrupted);
    }
    printer.message(&if record.external {
        format!("Forgot {id}.")
    } else {
        format!("Deleted {id}.")
    });
    Ok(ExitStatus::Success)
}
