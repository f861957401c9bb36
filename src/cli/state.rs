//! `dstack state`: inspect and manage recorded state.

use clap::{Args, Subcommand};

use super::context::{self, Globals};
use super::printer::{ago, table};
use super::{ExitStatus, Printer};
use crate::state::{LockInfo, Snapshot, StateError, StateStore, lock_with_timeout};

#[derive(Debug, Args)]
pub struct StateArgs {
    #[command(subcommand)]
    pub command: StateCommand,
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// List recorded resources, pending intents and the lock.
    #[command(after_help = "Example:\n  dstack state list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one recorded resource (`KIND/NAME`, e.g. `volume/data`).
    #[command(after_help = "Example:\n  dstack state show volume/data")]
    Show {
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the whole state document (JSON) to stdout.
    #[command(after_help = "Example:\n  dstack state pull > state.json")]
    Pull,
    /// Replace the state with a document (checks lineage and serial unless `--force`).
    #[command(after_help = "Example:\n  dstack state push .dstack/errored-state.json")]
    Push {
        file: std::path::PathBuf,
        /// Skip the lineage and serial checks.
        #[arg(long)]
        force: bool,
    },
    /// Copy the state to another store, keeping lineage and serial.
    #[command(after_help = "Example:\n  dstack state migrate --to s3://my-bucket/team/state.json")]
    Migrate {
        /// The destination: `sqlite:PATH`, a path, or `s3://BUCKET/KEY`.
        #[arg(long, value_name = "URL")]
        to: String,
        /// Overwrite a destination that already holds a state.
        #[arg(long)]
        force: bool,
    },
    /// Release a lock left by an operation that is gone.
    #[command(after_help = "Example:\n  dstack state unlock 5b8c2a1e-...")]
    Unlock { lock_id: String },
    /// Resolve operations an interrupted apply left pending: adopt what they created, or forget
    /// them. Also lists orphans: volumes and fleets tagged with this state's lineage that it does
    /// not record, which `--adopt` records (when a configuration file declares them) or
    /// `--delete-orphans` deletes.
    #[command(
        after_help = "Examples:\n  dstack state recover\n  dstack state recover --adopt -f volumes.dstack.yml\n  dstack state recover --delete-orphans"
    )]
    Recover {
        /// Record the orphans that a configuration file declares (same kind, name and backend).
        #[arg(long, conflicts_with = "delete_orphans")]
        adopt: bool,
        /// Delete the orphans from their backends.
        #[arg(long)]
        delete_orphans: bool,
        /// The configuration files declaring what to adopt (default: the current directory's).
        #[arg(short = 'f', long = "file", value_name = "PATH", requires = "adopt")]
        files: Vec<String>,
        /// A variable for `${{ var.NAME }}` (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE", requires = "adopt")]
        vars: Vec<String>,
    },
}

pub fn run(args: &StateArgs, globals: &Globals, printer: &Printer) -> miette::Result<ExitStatus> {
    context::block_on(run_async(args, globals, printer))?
}

async fn run_async(
    args: &StateArgs,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    let cwd = context::current_dir()?;
    let project = context::project(&cwd)?;
    let store = context::open_state(globals, &project).await?;
    match &args.command {
        StateCommand::List { json } => list(store.as_ref(), *json, printer).await,
        StateCommand::Show { address, json } => show(store.as_ref(), address, *json, printer).await,
        StateCommand::Pull => {
            // Unchecked, so that a state with unsafe names can be pulled, fixed and pushed.
            let snapshot = store.load_unchecked().await?;
            printer.data_line(&serde_json::to_string_pretty(&snapshot).unwrap_or_default());
            Ok(ExitStatus::Success)
        }
        StateCommand::Push { file, force } => {
            push(store.as_ref(), file, *force, globals, printer).await
        }
        StateCommand::Migrate { to, force } => {
            let destination = crate::state::StateUrl::parse(
                &crate::config::project::StoreLocation {
                    url: to.clone(),
                    ..Default::default()
                },
                &project.root,
            )?;
            let target = context::open_state(
                &Globals {
                    state: Some(to.clone()),
                    ..globals.clone()
                },
                &project,
            )
            .await?;
            migrate(
                store.as_ref(),
                target.as_ref(),
                &destination.to_string(),
                *force,
                globals,
                printer,
            )
            .await
        }
        StateCommand::Recover {
            adopt,
            delete_orphans,
            files,
            vars,
        } => {
            let orphans = if *adopt {
                Orphans::Adopt {
                    files: files.clone(),
                    vars: vars.clone(),
                }
            } else if *delete_orphans {
                Orphans::Delete
            } else {
                Orphans::List
            };
            recover(&project, store.as_ref(), &orphans, globals, printer).await
        }
        StateCommand::Unlock { lock_id } => {
            store.lock_release(lock_id).await?;
            printer.message(&format!(
                "Released the lock `{lock_id}` of {}.",
                store.location()
            ));
            Ok(ExitStatus::Success)
        }
    }
}

async fn list(store: &dyn StateStore, json: bool, printer: &Printer) -> miette::Result<ExitStatus> {
    let snapshot = store.load().await?;
    let lock = store.lock_read().await?;
    if json {
        let resources: Vec<serde_json::Value> = snapshot
            .resources
            .values()
            .map(|r| {
                serde_json::json!({
                    "kind": r.kind, "name": r.name, "type": r.config_type, "status": r.status,
                    "source": r.source.file, "backend": r.backend, "updated_at": r.updated_at,
                })
            })
            .collect();
        let report = serde_json::json!({
            "location": store.location(),
            "lineage": snapshot.lineage,
            "serial": snapshot.serial,
            "resources": resources,
            "intents": snapshot.intents.values().collect::<Vec<_>>(),
            "lock": lock,
        });
        printer.data_line(&serde_json::to_string_pretty(&report).unwrap_or_default());
        return Ok(ExitStatus::Success);
    }
    let rows: Vec<Vec<String>> = snapshot
        .resources
        .values()
        .map(|r| {
            let source = if r.source.document > 0 {
                format!("{}#{}", r.source.file, r.source.document + 1)
            } else {
                r.source.file.clone()
            };
            vec![
                r.kind.to_string(),
                r.name.clone(),
                r.status.clone(),
                source,
                ago(r.updated_at),
            ]
        })
        .collect();
    if rows.is_empty() {
        printer.message(&format!("No resources recorded in {}.", store.location()));
    } else {
        printer.data(&table(
            &["KIND", "NAME", "STATUS", "SOURCE", "UPDATED"],
            rows,
        ));
    }
    if !snapshot.intents.is_empty() {
        printer.message(
            "\nUnresolved intents (operations interrupted before their result was recorded):",
        );
        let rows = snapshot
            .intents
            .values()
            .map(|i| {
                vec![
                    i.id.clone(),
                    i.action.to_string(),
                    i.resource.to_string(),
                    i.backend.clone(),
                    ago(i.started_at),
                ]
            })
            .collect();
        printer.message(&table(
            &["ID", "ACTION", "RESOURCE", "BACKEND", "STARTED"],
            rows,
        ));
        printer.message(
            "The next `plan` or `apply` resolves them; `dstack state recover` does it now.",
        );
    }
    if let Some(lock) = lock {
        let stale = if lock.is_stale() {
            " (stale: the process is gone)"
        } else {
            ""
        };
        printer.message(&format!("\nLocked by {lock}{stale}."));
    }
    Ok(ExitStatus::Success)
}

async fn show(
    store: &dyn StateStore,
    address: &str,
    json: bool,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    let id = crate::model::ResourceId::parse(address).ok_or_else(|| {
        miette::miette!(
            help = "write `KIND/NAME`, e.g. `volume/data` or `run/train`",
            "invalid address `{address}`"
        )
    })?;
    let snapshot = store.load().await?;
    let Some(record) = snapshot.resource(&id) else {
        return Err(miette::miette!(
            help = "`dstack state list` shows what is recorded",
            "`{id}` is not recorded in {}",
            store.location()
        ));
    };
    if json {
        printer.data_line(&serde_json::to_string_pretty(record).unwrap_or_default());
    } else {
        printer.data(&serde_saphyr::to_string(record).unwrap_or_default());
    }
    Ok(ExitStatus::Success)
}

/// Read a state document from a file, checking its format.
pub fn read_document(path: &std::path::Path) -> miette::Result<Snapshot> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| miette::miette!("cannot read `{}`: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        miette::Report::new(StateError::Corrupt {
            location: path.display().to_string(),
            reason: format!("not JSON: {e}"),
        })
    })?;
    let format = value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| {
            miette::Report::new(StateError::Corrupt {
                location: path.display().to_string(),
                reason: "it has no `format_version`".into(),
            })
        })?;
    crate::state::check_format(&path.display().to_string(), format)?;
    serde_json::from_value(value).map_err(|e| {
        miette::Report::new(StateError::Corrupt {
            location: path.display().to_string(),
            reason: e.to_string(),
        })
    })
}

async fn push(
    store: &dyn StateStore,
    file: &std::path::Path,
    force: bool,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    let snapshot = read_document(file)?;
    let problems = snapshot.unsafe_records();
    if !problems.is_empty() {
        return Err(miette::miette!(
            help = format!(
                "fix or remove those records in `{}`, then push it again",
                file.display()
            ),
            "`{}` holds names that are not safe to use (they become paths); nothing was pushed:\n{}",
            file.display(),
            crate::state::indented(&problems)
        ));
    }
    let lock = LockInfo::new("state push");
    lock_with_timeout(store, &lock, globals.lock_timeout).await?;
    let result = async {
        // Unchecked: a state with unsafe names is what a push repairs.
        let current = store.load_unchecked().await?;
        if !force {
            if let (Some(current), Some(pushed)) = (&current.lineage, &snapshot.lineage)
                && current != pushed
            {
                return Err(miette::miette!(
                    help = "push it with `--force` if you are sure it should replace this state",
                    "`{}` belongs to lineage {pushed}, but {} has lineage {current}",
                    file.display(),
                    store.location()
                ));
            }
            if snapshot.serial < current.serial || (snapshot.serial == current.serial && snapshot != current) {
                return Err(miette::miette!(
                    help = "it is older than the state it would replace; push it with `--force` if you are sure",
                    "`{}` has serial {}, but {} is at serial {}",
                    file.display(),
                    snapshot.serial,
                    store.location(),
                    current.serial
                ));
            }
        }
        store.replace(&snapshot).await?;
        Ok(())
    }
    .await;
    store.lock_release(&lock.id).await?;
    result?;
    printer.message(&format!(
        "Pushed `{}` (serial {}) to {}.",
        file.display(),
        snapshot.serial,
        store.location()
    ));
    Ok(ExitStatus::Success)
}

async fn migrate(
    source: &dyn StateStore,
    target: &dyn StateStore,
    target_url: &str,
    force: bool,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    if source.location() == target.location() {
        return Err(miette::miette!(
            "the destination is the current state ({})",
            source.location()
        ));
    }
    let lock = LockInfo::new("state migrate");
    lock_with_timeout(source, &lock, globals.lock_timeout).await?;
    let result = async {
        lock_with_timeout(target, &lock, globals.lock_timeout).await?;
        let inner = async {
            let snapshot = source.load().await?;
            // Only its lineage is read: it is about to be replaced.
            let existing = target.load_unchecked().await?;
            if existing.lineage.is_some() && !force {
                return Err(miette::miette!(
                    help = "pass `--force` to overwrite it",
                    "{target_url} already holds a state (lineage {}, serial {})",
                    existing.lineage.unwrap_or_default(),
                    existing.serial
                ));
            }
            target.replace(&snapshot).await?;
            Ok(snapshot)
        }
        .await;
        target.lock_release(&lock.id).await?;
        inner
    }
    .await;
    source.lock_release(&lock.id).await?;
    let snapshot = result?;
    printer.message(&format!(
        "Copied the state (lineage {}, serial {}) from {} to {target_url}.\nUse it with `--state {target_url}`, DSTACK_STATE, or `state: {target_url}` in .dstack/config.yml.",
        snapshot.lineage.unwrap_or_default(),
        snapshot.serial,
        source.location()
    ));
    Ok(ExitStatus::Success)
}

/// What `state recover` does with orphans.
enum Orphans {
    List,
    Adopt {
        files: Vec<String>,
        vars: Vec<String>,
    },
    Delete,
}

async fn recover(
    project: &crate::config::project::Project,
    store: &dyn StateStore,
    orphans: &Orphans,
    globals: &Globals,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    let backends =
        crate::backend::for_project(project, &context::env_var, context::fake_backend_enabled());
    // Load what adopting needs before taking the lock: a configuration error loses nothing.
    let adopt = match orphans {
        Orphans::Adopt { files, vars } => {
            let prepared = super::plan::prepare(
                &super::plan::PlanArgs {
                    files: files.clone(),
                    vars: vars.clone(),
                    refresh: false,
                    targets: Vec::new(),
                    replace: Vec::new(),
                    run_args: Vec::new(),
                },
                globals,
            )
            .await?;
            Some(prepared)
        }
        _ => None,
    };
    let lock = LockInfo::new("state recover");
    lock_with_timeout(store, &lock, globals.lock_timeout).await?;
    let result = recover_locked(store, &backends, orphans, adopt.as_ref(), printer).await;
    store.lock_release(&lock.id).await?;
    result
}

async fn recover_locked(
    store: &dyn StateStore,
    backends: &crate::backend::Backends,
    orphans: &Orphans,
    adopt: Option<&super::plan::Prepared>,
    printer: &Printer,
) -> miette::Result<ExitStatus> {
    use crate::backend::aws::orphans::orphan_record;
    let mut snapshot = store.load().await?;
    let notes = crate::apply::recover::recover(store, &mut snapshot, backends)
        .await
        .map_err(miette::Report::new)?;
    for note in &notes {
        printer.message(&format!("{note}."));
    }
    let (found, problems) = crate::apply::pipeline::find_orphans(&snapshot, backends).await;
    for problem in &problems {
        printer.warn(&format!("{problem}."));
    }
    if notes.is_empty() && found.is_empty() {
        printer.message("Nothing to recover.");
        return Ok(ExitStatus::Success);
    }
    let targets = match adopt {
        Some(prepared) => {
            let configured = backends.names().into_iter().collect();
            let lineage = snapshot.lineage.clone().unwrap_or_default();
            let resources: Vec<_> = prepared.loaded.resources().cloned().collect();
            crate::apply::pipeline::resolve_all(
                &resources,
                &configured,
                &lineage,
                &snapshot,
                &std::collections::BTreeMap::new(),
            )
            .map_err(miette::Report::new)?
            .1
        }
        None => std::collections::BTreeMap::new(),
    };
    let mut left = 0;
    for (backend_name, observed) in &found {
        let Some(record) = orphan_record(observed, backend_name) else {
            continue;
        };
        let address = format!("{}/{}", record.kind, record.name);
        let object = format!(
            "{address} ({}) on {backend_name}",
            record.backend_id.as_deref().unwrap_or("?")
        );
        match orphans {
            Orphans::List => {
                printer.message(&format!("Orphaned: {object}."));
                left += 1;
            }
            Orphans::Delete => {
                let backend = backends.get(backend_name).map_err(miette::Report::new)?;
                backend
                    .delete(&record)
                    .await
                    .map_err(|e| miette::miette!("cannot delete {object}: {}", e.message))?;
                printer.message(&format!("Deleted {object}."));
            }
            Orphans::Adopt { .. } => {
                let declared = targets
                    .get(&record.id())
                    .filter(|t| t.desired.backend == *backend_name);
                let Some(target) = declared else {
                    printer.message(&format!(
                        "Not adopted: {object}: no loaded file declares {address} on {backend_name}."
                    ));
                    left += 1;
                    continue;
                };
                if let Some(existing) = snapshot.resources.get(&record.id().to_string()) {
                    printer.message(&format!(
                        "Not adopted: {object}: state already records {address} as {}.",
                        existing.backend_id.as_deref().unwrap_or("?")
                    ));
                    left += 1;
                    continue;
                }
                let adopted =
                    crate::apply::executor::Executor::record_for(target, observed, None, None);
                let step = crate::state::Step {
                    description: format!("adopt {address}"),
                    changes: vec![crate::state::Change::PutResource(Box::new(adopted.clone()))],
                };
                let committed = store
                    .commit(snapshot.lineage.as_deref(), snapshot.serial, &step)
                    .await?;
                snapshot.apply(&step);
                snapshot.serial = committed.serial;
                printer.message(&format!("Adopted {object}."));
            }
        }
    }
    if left > 0 {
        printer.message(&format!(
            "{left} orphan(s) left: `dstack state recover --adopt -f FILE` records those a file declares, `--delete-orphans` deletes them."
        ));
    }
    Ok(ExitStatus::Success)
}
