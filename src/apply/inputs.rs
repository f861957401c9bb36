//! The inputs of a run besides its spec: the code snapshot it gets at `/workflow`, and the
//! artifacts of the runs it depends on (`deps`). Each becomes a digest part (`code`, `deps`); the
//! planner replaces a finished run when a part changed and names the part in the reason.
//!
//! Variables need no part of their own: they are interpolated into the spec. Dev environments
//! have no `code` part: they are interactive, and editing the project must not replace one.

use std::collections::BTreeMap;
use std::path::Path;

use crate::artifacts::Store;
use crate::artifacts::refs::{find_run, latest_done};
use crate::model::run::Dep;
use crate::model::{ConfigType, Resource, Spec};
use crate::plan::sensitive::value_digest;
use crate::runner::code::{CodeIndex, artifact_exclusions};
use crate::state::{Manifest, RunRecord, RunStatus, Snapshot};

/// What a dependency resolves to now.
#[derive(Clone, Debug, PartialEq)]
pub enum DepState {
    /// A finished run with saved artifacts.
    Ready { run: String, manifest: Manifest },
    /// A run that has not ended yet: wait for it.
    Pending { run: Box<RunRecord> },
    /// Nothing usable, and why.
    Unavailable(String),
}

/// The manifest of a run: recorded in state, else the store's ref.
fn manifest_of(
    snapshot: &Snapshot,
    store: Option<&Store>,
    lineage: &str,
    run: &str,
) -> Option<Manifest> {
    snapshot
        .manifests
        .get(run)
        .cloned()
        .or_else(|| store.and_then(|s| s.manifest(lineage, run)))
}

fn ready_or_not(
    snapshot: &Snapshot,
    store: Option<&Store>,
    lineage: &str,
    run: &RunRecord,
) -> DepState {
    if !run.status.is_finished() {
        return DepState::Pending {
            run: Box::new(run.clone()),
        };
    }
    if run.status != RunStatus::Done {
        return DepState::Unavailable(format!("{} ended {}", run.name, run.status));
    }
    match manifest_of(snapshot, store, lineage, &run.name) {
        Some(manifest) => DepState::Ready {
            run: run.name.clone(),
            manifest,
        },
        None if run
            .spec
            .get("artifacts")
            .and_then(serde_json::Value::as_array)
            .is_none_or(Vec::is_empty) =>
        {
            DepState::Ready {
                run: run.name.clone(),
                manifest: Manifest {
                    run: run.name.clone(),
                    files: Vec::new(),
                    created_at: run.finished_at.unwrap_or(run.submitted_at),
                },
            }
        }
        None => DepState::Unavailable(format!(
            "the artifacts of {} are not in this machine's artifact store",
            run.name
        )),
    }
}

/// Resolve a dependency: `run` is that run or a resource's latest run; `task` is the task's
/// latest `done` run (its latest run while that is under way); `tag` is the tagged run.
pub fn resolve_dep(
    snapshot: &Snapshot,
    store: Option<&Store>,
    lineage: &str,
    dep: &Dep,
) -> DepState {
    match dep {
        Dep::Run(name) => match find_run(snapshot, name) {
            Some(run) => ready_or_not(snapshot, store, lineage, run),
            None => DepState::Unavailable(format!("there is no run `{name}`")),
        },
        Dep::Task(name) => {
            if let Some(latest) = find_run(snapshot, name).filter(|r| !r.status.is_finished()) {
                return DepState::Pending {
                    run: Box::new(latest.clone()),
                };
            }
            match latest_done(snapshot, name) {
                Some(run) => ready_or_not(snapshot, store, lineage, run),
                None => DepState::Unavailable(format!("the task `{name}` has no done run")),
            }
        }
        Dep::Tag(name) => {
            let Some(tag) = snapshot.tags.get(name) else {
                return DepState::Unavailable(format!("there is no tag `{name}`"));
            };
            let key = tag.manifest.as_deref().unwrap_or(&tag.run);
            if let Some(manifest) = snapshot
                .manifests
                .get(key)
                .cloned()
                .or_else(|| store.and_then(|s| s.tag(lineage, name)))
            {
                return DepState::Ready {
                    run: tag.run.clone(),
                    manifest,
                };
            }
            match snapshot.runs.get(&tag.run) {
                Some(run) => ready_or_not(snapshot, store, lineage, run),
                None => DepState::Unavailable(format!(
                    "the artifacts of tag `{name}` are not in this machine's artifact store"
                )),
            }
        }
    }
}

/// The digest of what a manifest holds (not when it was made).
fn manifest_digest(manifest: &Manifest) -> String {
    value_digest(&serde_json::to_value(&manifest.files).unwrap_or_default())
}

/// The `deps` part: which run each dependency resolves to and what its artifacts are.
pub fn deps_part(
    snapshot: &Snapshot,
    store: Option<&Store>,
    lineage: &str,
    deps: &[Dep],
) -> String {
    let entries: Vec<String> = deps
        .iter()
        .map(|dep| match resolve_dep(snapshot, store, lineage, dep) {
            DepState::Ready { run, manifest } => {
                format!("{dep}={run}:{}", manifest_digest(&manifest))
            }
            DepState::Pending { run } => format!("{dep}={}:pending", run.name),
            DepState::Unavailable(_) => format!("{dep}=unavailable"),
        })
        .collect();
    value_digest(&serde_json::json!(entries))
}

/// Digest parts other than the spec, by run resource name.
pub fn run_parts(
    project_root: &Path,
    resources: &[Resource],
    snapshot: &Snapshot,
    store: Option<&Store>,
) -> std::io::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let runs: Vec<&Resource> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::Run(_)))
        .collect();
    if runs.is_empty() {
        return Ok(BTreeMap::new());
    }
    let needs_code = runs
        .iter()
        .any(|r| r.spec.config_type() != ConfigType::DevEnvironment);
    let index = if needs_code {
        let cache = project_root.join(".dstack").join("cache").join("code.json");
        CodeIndex::build(project_root, Some(&cache))?
    } else {
        CodeIndex::default()
    };
    let lineage = snapshot.lineage.as_deref().unwrap_or_default();
    let mut parts = BTreeMap::new();
    for resource in runs {
        let Spec::Run(run) = &resource.spec else {
            continue;
        };
        let mut own = BTreeMap::new();
        if resource.spec.config_type() != ConfigType::DevEnvironment {
            let artifacts: Vec<String> = run
                .common
                .artifacts
                .iter()
                .map(|a| a.path.clone())
                .collect();
            let excluded = artifact_exclusions(run.common.working_dir.as_deref(), &artifacts);
            own.insert("code".to_string(), index.digest(&excluded));
        }
        if !run.common.deps.is_empty() {
            own.insert(
                "deps".to_string(),
                deps_part(snapshot, store, lineage, &run.common.deps),
            );
        }
        parts.insert(resource.id.name.clone(), own);
    }
    Ok(parts)
}
