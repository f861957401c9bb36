//! From loaded resources to [`Desired`] entries: the backend of each resource (DESIGN §3), its
//! canonical spec with sensitive values masked, its digest, its dependencies.
//!
//! Backend of a resource: a volume names its `backend`. A run or fleet uses the first configured
//! backend in its `backends` list; without one, the backend of the fleet it targets, else of the
//! volumes it mounts, else `local`. Contradictions — a local run mounting an aws volume — are
//! errors here, before anything is created.

use std::collections::{BTreeMap, BTreeSet};

use super::PlanError;
use super::diff::{Desired, RunInputs};
use super::sensitive::{mask, value_digest};
use crate::model::graph::dependencies_of;
use crate::model::mounts::MountPoint;
use crate::model::profile::BackendType;
use crate::model::{Kind, Resource, ResourceId, Spec};
use crate::state::Snapshot;

/// What the resolver needs to know besides the resources.
pub struct Context<'a> {
    /// Backends available to this command (`local` always; `aws` when configured; `fake` in tests).
    pub configured: &'a BTreeSet<String>,
    /// The salt of sensitive digests (the state's lineage).
    pub salt: &'a str,
    /// Recorded state, for fleets and volumes declared in other files.
    pub snapshot: &'a Snapshot,
    /// Digests of run inputs other than the spec (`code`, `deps`, ...), by resource name.
    pub run_parts: &'a BTreeMap<String, BTreeMap<String, String>>,
}

fn invalid(id: &ResourceId, message: impl Into<String>, hint: Option<String>) -> PlanError {
    PlanError::Invalid {
        address: id.to_string(),
        message: message.into(),
        hint,
    }
}

fn volume_backend(
    name: &str,
    resources: &BTreeMap<&ResourceId, &Resource>,
    snapshot: &Snapshot,
) -> Option<String> {
    let id = ResourceId::new(Kind::Volume, name);
    if let Some(resource) = resources.get(&id)
        && let Spec::Volume(volume) = &resource.spec
    {
        return Some(volume.backend.as_str().to_string());
    }
    snapshot.resource(&id).map(|r| r.backend.clone())
}

fn fleet_backend(
    name: &str,
    resources: &BTreeMap<&ResourceId, &Resource>,
    snapshot: &Snapshot,
    configured: &BTreeSet<String>,
) -> Option<String> {
    let id = ResourceId::new(Kind::Fleet, name);
    if let Some(resource) = resources.get(&id)
        && let Spec::Fleet(fleet) = &resource.spec
    {
        return Some(
            first_configured(fleet.backends.as_deref(), configured)
                .unwrap_or_else(|| "local".into()),
        );
    }
    snapshot.resource(&id).map(|r| r.backend.clone())
}

fn first_configured(
    backends: Option<&[BackendType]>,
    configured: &BTreeSet<String>,
) -> Option<String> {
    backends?
        .iter()
        .map(ToString::to_string)
        .find(|b| configured.contains(b))
}

/// Resolve every resource.
pub fn resolve(resources: &[Resource], context: &Context<'_>) -> Result<Vec<Desired>, PlanError> {
    let by_id: BTreeMap<&ResourceId, &Resource> = resources.iter().map(|r| (&r.id, r)).collect();
    let run_resources: BTreeSet<&str> = resources
        .iter()
        .filter(|r| r.id.kind == Kind::Run)
        .map(|r| r.id.name.as_str())
        .chain(
            context
                .snapshot
                .resources
                .values()
                .filter(|r| r.kind == Kind::Run)
                .map(|r| r.name.as_str()),
        )
        .collect();
    let is_run_resource = |name: &str| run_resources.contains(name);
    let mut desired = Vec::with_capacity(resources.len());
    for resource in resources {
        let id = &resource.id;
        let backend = match &resource.spec {
            Spec::Volume(volume) => {
                let name = volume.backend.as_str().to_string();
                if !matches!(name.as_str(), "local" | "aws" | "fake") {
                    return Err(invalid(
                        id,
                        format!("backend `{name}` is not supported"),
                        Some("volumes can live on `local` (Docker) or `aws` (EBS)".into()),
                    ));
                }
                if !context.configured.contains(&name) {
                    return Err(invalid(
                        id,
                        format!("backend `{name}` is not configured"),
                        Some(configure_hint(&name)),
                    ));
                }
                name
            }
            Spec::Fleet(fleet) => match &fleet.backends {
                Some(list) if !list.is_empty() => first_configured(Some(list), context.configured)
                    .ok_or_else(|| {
                        let names: Vec<String> = list.iter().map(ToString::to_string).collect();
                        invalid(
                            id,
                            format!("none of its backends ({}) is configured", names.join(", ")),
                            Some(configure_hint(&names[0])),
                        )
                    })?,
                _ => "local".to_string(),
            },
            Spec::Run(run) => {
                let mut chosen = match &run.common.backends {
                    Some(list) if !list.is_empty() => Some(
                        first_configured(Some(list), context.configured).ok_or_else(|| {
                            let names: Vec<String> = list.iter().map(ToString::to_string).collect();
                            invalid(
                                id,
                                format!(
                                    "none of its backends ({}) is configured",
                                    names.join(", ")
                                ),
                                Some(configure_hint(&names[0])),
                            )
                        })?,
                    ),
                    _ => None,
                };
                if chosen.is_none() {
                    chosen = run
                        .common
                        .fleets
                        .iter()
                        .flatten()
                        .filter(|f| f.project.is_none())
                        .find_map(|f| {
                            fleet_backend(&f.name, &by_id, context.snapshot, context.configured)
                        });
                }
                if chosen.is_none() {
                    chosen = run.common.volumes.iter().find_map(|m| match m {
                        MountPoint::Volume { names, .. } => names
                            .iter()
                            .find_map(|n| volume_backend(n, &by_id, context.snapshot)),
                        MountPoint::Instance { .. } => None,
                    });
                }
                let backend = chosen.unwrap_or_else(|| "local".to_string());
                // Every mounted volume needs a candidate on the run's backend.
                for mount in &run.common.volumes {
                    if let MountPoint::Volume { names, path } = mount {
                        let known: Vec<(String, String)> = names
                            .iter()
                            .filter(|n| !n.contains("${{"))
                            .filter_map(|n| {
                                volume_backend(n, &by_id, context.snapshot).map(|b| (n.clone(), b))
                            })
                            .collect();
                        if !known.is_empty() && !known.iter().any(|(_, b)| *b == backend) {
                            let described: Vec<String> = known
                                .iter()
                                .map(|(n, b)| format!("`{n}` is on `{b}`"))
                                .collect();
                            return Err(invalid(
                                id,
                                format!("the run goes to backend `{backend}`, but the volume for `{path}` is not there: {}", described.join(", ")),
                                Some("mount a volume of the run's backend, or set the run's `backends`".into()),
                            ));
                        }
                    }
                }
                if !context.configured.contains(&backend) {
                    return Err(invalid(
                        id,
                        format!("backend `{backend}` is not configured"),
                        Some(configure_hint(&backend)),
                    ));
                }
                backend
            }
            Spec::Tag(_) => "state".to_string(),
        };
        let spec = mask(&resource.spec.to_json(), &resource.sensitive, context.salt);
        let digest = value_digest(&spec);
        let run_inputs = (id.kind == Kind::Run).then(|| {
            let mut parts = context.run_parts.get(&id.name).cloned().unwrap_or_default();
            parts.insert("spec".into(), digest.clone());
            RunInputs::from_parts(parts)
        });
        let external = matches!(&resource.spec, Spec::Volume(v) if v.external_id().is_some());
        desired.push(Desired {
            id: id.clone(),
            config_type: resource.spec.config_type(),
            spec,
            digest,
            source: resource.source.clone(),
            backend,
            depends_on: dependencies_of(resource, &is_run_resource),
            external,
            run_inputs,
        });
    }
    Ok(desired)
}

fn configure_hint(backend: &str) -> String {
    match backend {
        "fake" => "the fake backend is for tests: set DSTACK_FAKE_BACKEND=1".into(),
        "aws" => {
            "add `- type: aws` with `regions: [...]` under `backends:` in .dstack/config.yml".into()
        }
        "local" => "the local backend is always available".into(),
        "pool" => "the runner pool serves jobs from the remote artifact store: set `artifacts: s3://BUCKET/PREFIX` in .dstack/config.yml".into(),
        other => format!("backend `{other}` is not supported by this tool; use `local` or `aws`"),
    }
}

/// Digest of a whole configuration set: what `apply PLANFILE` compares to detect edits.
pub fn config_digest(desired: &[Desired]) -> String {
    let entries: Vec<serde_json::Value> = desired
        .iter()
        .map(|d| serde_json::json!({"address": d.id.to_string(), "digest": d.digest, "source": d.source, "backend": d.backend}))
        .collect();
    value_digest(&serde_json::Value::Array(entries))
}
