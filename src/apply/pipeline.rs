//! From loaded files to a plan: recover, refresh, resolve, diff.
//!
//! Shared by `plan`, `apply` and `delete`, so all three see the same plan for the same inputs.

use std::collections::{BTreeMap, BTreeSet};

use super::ApplyError;
use super::executor::Target;
use super::recover::recover;
use super::refresh::refresh;
use crate::backend::Backends;
use crate::config::load::Loaded;
use crate::model::{Resource, ResourceId};
use crate::plan::desired::{Context, config_digest, resolve};
use crate::plan::diff::{self, Desired, Request};
use crate::plan::{Plan, PlanInputs};
use crate::state::{Snapshot, StateStore, Step, new_lineage};

/// What to plan.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Read every recorded object from its backend first.
    pub refresh: bool,
    pub targets: Vec<ResourceId>,
    pub replace: Vec<ResourceId>,
    /// `dstack delete`.
    pub destroy: bool,
    pub parallelism: usize,
    /// What the plan is computed from, recorded in it (`files`, `vars`, `cwd`, `run_args`).
    pub inputs: PlanInputs,
    /// The state lock is held: recovery and refresh results may be committed.
    pub locked: bool,
    /// The project directory, whose snapshot is an input of runs (`None`: no `code` part).
    pub code_root: Option<std::path::PathBuf>,
    /// The local artifact store, for the manifests of dependencies.
    pub artifacts: Option<crate::artifacts::Store>,
}

/// The `code` and `deps` digest parts of the runs among `resources` (see [`super::inputs`]).
pub fn run_parts(
    options: &PlanOptions,
    resources: &[Resource],
    snapshot: &Snapshot,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, ApplyError> {
    let Some(root) = &options.code_root else {
        return Ok(BTreeMap::new());
    };
    super::inputs::run_parts(root, resources, snapshot, options.artifacts.as_ref()).map_err(|e| {
        ApplyError::backend(
            "code",
            crate::backend::BackendError::new(
                crate::backend::ErrorKind::Internal,
                format!("cannot read the project directory {}: {e}", root.display()),
            ),
        )
    })
}

/// A plan with everything needed to apply it.
#[derive(Debug)]
pub struct Planned {
    pub plan: Plan,
    pub snapshot: Snapshot,
    /// Desired resources by id, typed and resolved.
    pub targets: BTreeMap<ResourceId, Target>,
    /// Objects read by refresh.
    pub refreshed: usize,
}

/// The desired resources of a load, resolved against the state.
pub fn resolve_all(
    resources: &[Resource],
    configured: &BTreeSet<String>,
    salt: &str,
    snapshot: &Snapshot,
    run_parts: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<(Vec<Desired>, BTreeMap<ResourceId, Target>), ApplyError> {
    let context = Context {
        configured,
        salt,
        snapshot,
        run_parts,
    };
    let desired = resolve(resources, &context)?;
    let targets = resources
        .iter()
        .zip(&desired)
        .map(|(resource, desired)| {
            (
                resource.id.clone(),
                Target {
                    resource: resource.clone(),
                    desired: desired.clone(),
                },
            )
        })
        .collect();
    Ok((desired, targets))
}

/// Objects of every backend that carry this state's lineage but are not recorded.
/// The orphans of every configured backend that keeps volumes or fleets, by backend name. A
/// backend that cannot be asked does not fail the plan: the second list says which and why.
pub async fn find_orphans(
    snapshot: &Snapshot,
    backends: &Backends,
) -> (Vec<(String, crate::backend::Observed)>, Vec<String>) {
    let mut found = Vec::new();
    let mut notes = Vec::new();
    if snapshot.lineage.is_none() {
        return (found, notes);
    }
    for name in backends.names() {
        let Ok(backend) = backends.get(&name) else {
            continue;
        };
        let capabilities = backend.capabilities();
        if !(capabilities.volumes || capabilities.fleets) {
            continue;
        }
        match crate::backend::aws::orphans::orphans(backend.as_ref(), snapshot).await {
            Ok(orphans) => found.extend(orphans.into_iter().map(|o| (name.clone(), o))),
            Err(error) => notes.push(format!(
                "could not look for orphaned objects on {name}: {}",
                error.message
            )),
        }
    }
    (found, notes)
}

/// Recover, refresh and plan.
pub async fn make_plan(
    store: &dyn StateStore,
    backends: &Backends,
    loaded: &Loaded,
    options: &PlanOptions,
) -> Result<Planned, ApplyError> {
    let mut snapshot = store.load().await?;
    let mut notes = Vec::new();
    if options.locked {
        notes.extend(recover(store, &mut snapshot, backends).await?);
    } else if !snapshot.intents.is_empty() {
        notes.push(format!(
            "{} interrupted operation(s) are pending; `apply` or `dstack state recover` resolves them",
            snapshot.intents.len()
        ));
    }
    let resources: Vec<Resource> = loaded.resources().cloned().collect();
    let declared: BTreeSet<ResourceId> = resources.iter().map(|r| r.id.clone()).collect();
    let mut refreshed = 0;
    let mut observed = BTreeMap::new();
    if options.refresh {
        let include = |record: &crate::state::ResourceRecord| {
            declared.contains(&record.id()) || loaded.covers(&record.source.file)
        };
        let result = refresh(&snapshot, backends, &include, options.parallelism).await?;
        refreshed = result.count;
        observed = result.observed;
        if !result.changes.is_empty() {
            let step = Step {
                description: "refresh run statuses".into(),
                changes: result.changes,
            };
            if options.locked {
                let committed = store
                    .commit(snapshot.lineage.as_deref(), snapshot.serial, &step)
                    .await?;
                snapshot.apply(&step);
                snapshot.lineage = Some(committed.lineage);
                snapshot.serial = committed.serial;
            } else {
                // Not ours to write without the lock; plan with what refresh saw.
                snapshot.apply(&step);
            }
        }
    }
    let orphans = if options.refresh {
        let (orphans, orphan_notes) = find_orphans(&snapshot, backends).await;
        notes.extend(orphan_notes);
        orphans
    } else {
        Vec::new()
    };
    let lineage = snapshot.lineage.clone().unwrap_or_else(new_lineage);
    let configured: BTreeSet<String> = backends.names().into_iter().collect();
    let parts = run_parts(options, &resources, &snapshot)?;
    let (desired, targets) = resolve_all(&resources, &configured, &lineage, &snapshot, &parts)?;
    let mut inputs = options.inputs.clone();
    inputs.lineage = lineage;
    inputs.serial = snapshot.serial;
    inputs.config_digest = config_digest(&desired);
    inputs.targets = options.targets.iter().map(ToString::to_string).collect();
    inputs.replace = options.replace.iter().map(ToString::to_string).collect();
    inputs.destroy = options.destroy;
    let in_scope = |source: &crate::model::SourceRef| loaded.covers(&source.file);
    let mut plan = diff::plan(&Request {
        desired: &desired,
        snapshot: &snapshot,
        observed: &observed,
        in_scope: &in_scope,
        targets: &options.targets,
        replace: &options.replace,
        destroy: options.destroy,
        inputs,
    })?;
    plan.notes = notes;
    for (backend, orphan) in orphans {
        let kind = orphan
            .labels
            .get("dstack.kind")
            .cloned()
            .unwrap_or_else(|| "object".into());
        let name = orphan
            .labels
            .get("dstack.name")
            .cloned()
            .unwrap_or_default();
        let mut after = serde_json::Map::new();
        after.insert("backend".into(), backend.clone().into());
        after.insert(
            "backend_id".into(),
            orphan.backend_id.clone().unwrap_or_default().into(),
        );
        after.extend(orphan.attributes.clone());
        plan.drift.push(crate::plan::Drift {
            address: format!("{kind}/{name}"),
            kind: crate::plan::DriftKind::Orphaned,
            before: None,
            after: Some(serde_json::Value::Object(after)),
        });
        plan.notes.push(format!(
            "{kind}/{name} ({}) on {backend} carries this state's tags but is not recorded: `dstack state recover --adopt` records it (if a file declares it), `--delete-orphans` deletes it",
            orphan.backend_id.as_deref().unwrap_or("?")
        ));
    }
    Ok(Planned {
        plan,
        snapshot,
        targets,
        refreshed,
    })
}
