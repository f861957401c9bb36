//! The planner: `(desired, recorded, observed) → Plan`. Pure and deterministic.
//!
//! Rules:
//! - a desired resource without a record is created; one whose object was deleted outside
//!   dstack is created again (and the drift is shown);
//! - a changed spec is updated in place or replaced, field by field ([`super::fields`]);
//!   a refused change (a shrinking volume) is an error;
//! - a run is replaced when its inputs changed, when its last run failed or was aborted, or on
//!   `--replace`; otherwise re-applying is a no-op;
//! - a recorded resource whose file is in scope but no longer declares it is deleted; resources
//!   of other files are left alone;
//! - deleting or replacing a volume created by dstack is flagged as data loss.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use super::fields::{Effect, effect};
use super::{
    ChangeKind, Drift, DriftKind, Plan, PlanError, PlanInputs, Reason, ResourceChange, Summary,
};
use crate::model::graph::Graph;
use crate::model::{ConfigType, Kind, ResourceId, SourceRef};
use crate::state::{ResourceRecord, RunStatus, Snapshot};

/// A desired resource, ready to be compared with its record.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub id: ResourceId,
    pub config_type: ConfigType,
    /// The canonical spec, sensitive values masked.
    pub spec: Json,
    pub digest: String,
    pub source: SourceRef,
    pub backend: String,
    pub depends_on: Vec<ResourceId>,
    /// A volume registered by id: never destroyed.
    pub external: bool,
    /// For runs: what the result depends on.
    pub run_inputs: Option<RunInputs>,
}

/// The inputs of a run: a digest and the parts it is made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunInputs {
    pub digest: String,
    /// `spec`, `code`, `deps`, `vars` → digest of each.
    pub parts: BTreeMap<String, String>,
}

impl RunInputs {
    /// The inputs made of these parts.
    pub fn from_parts(parts: BTreeMap<String, String>) -> Self {
        let digest =
            super::sensitive::value_digest(&serde_json::to_value(&parts).unwrap_or_default());
        Self { digest, parts }
    }
}

/// What refresh saw of a recorded resource.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// The object exists; these are its attributes as the backend reports them.
    Present(BTreeMap<String, Json>),
    /// The object is gone.
    Missing,
}

/// Everything the planner needs.
pub struct Request<'a> {
    pub desired: &'a [Desired],
    pub snapshot: &'a Snapshot,
    /// Refresh results by resource; resources not refreshed are absent.
    pub observed: &'a BTreeMap<ResourceId, Observation>,
    /// Whether a recorded resource's source file is in scope of this plan.
    pub in_scope: &'a dyn Fn(&SourceRef) -> bool,
    pub targets: &'a [ResourceId],
    pub replace: &'a [ResourceId],
    /// `dstack delete`: delete the desired (declared) resources instead of creating them.
    pub destroy: bool,
    pub inputs: PlanInputs,
}

fn top_level_changes(before: &Json, after: &Json) -> Vec<String> {
    let empty = serde_json::Map::new();
    let before = before.as_object().unwrap_or(&empty);
    let after = after.as_object().unwrap_or(&empty);
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect()
}

fn latest_run<'s>(snapshot: &'s Snapshot, resource: &str) -> Option<&'s crate::state::RunRecord> {
    snapshot
        .runs
        .values()
        .filter(|r| r.resource.as_deref() == Some(resource))
        .max_by_key(|r| r.number)
}

fn latest_done<'s>(snapshot: &'s Snapshot, resource: &str) -> Option<&'s crate::state::RunRecord> {
    snapshot
        .runs
        .values()
        .filter(|r| r.resource.as_deref() == Some(resource) && r.status == RunStatus::Done)
        .max_by_key(|r| r.number)
}

/// `task` dependencies of a run spec (`deps: [{task: NAME}]`).
fn task_deps(spec: &Json) -> Vec<&str> {
    spec.get("deps")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("task").and_then(Json::as_str))
        .collect()
}

/// Runs that use other runs' artifacts follow them. A `task` dependency with no `done` run (and
/// none under way) is submitted again first; a run whose dependency is submitted in this plan is
/// replaced too, since its inputs will change.
fn follow_run_dependencies(
    changes: &mut BTreeMap<ResourceId, ResourceChange>,
    desired: &[Desired],
    snapshot: &Snapshot,
) {
    for d in desired.iter().filter(|d| d.id.kind == Kind::Run) {
        for task in task_deps(&d.spec) {
            let id = ResourceId::new(Kind::Run, task);
            let under_way = latest_run(snapshot, task).is_some_and(|r| !r.status.is_finished());
            if latest_done(snapshot, task).is_some() || under_way {
                continue;
            }
            if let Some(change) = changes
                .get_mut(&id)
                .filter(|c| c.change == ChangeKind::NoOp)
            {
                set_kind(change, ChangeKind::Replace);
                change.reason = Some(Reason::ReplaceBecauseNeeded);
                change.detail = Some(format!(
                    "{} depends on it (`deps`) and it has no done run",
                    d.id
                ));
            }
        }
    }
    // Propagate along dependencies until nothing changes (the graph is acyclic).
    loop {
        let submitted: BTreeSet<ResourceId> = changes
            .iter()
            .filter(|(id, c)| {
                (id.kind == Kind::Run
                    && matches!(c.change, ChangeKind::Create | ChangeKind::Replace))
                    || (id.kind == Kind::Tag && c.change != ChangeKind::NoOp)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut progressed = false;
        for (id, change) in changes.iter_mut() {
            if change.change != ChangeKind::NoOp {
                continue;
            }
            let Some(dependency) = change
                .depends_on
                .iter()
                .filter_map(|d| ResourceId::parse(d))
                .find(|d| submitted.contains(d))
            else {
                continue;
            };
            match id.kind {
                Kind::Run => {
                    set_kind(change, ChangeKind::Replace);
                    change.reason = Some(Reason::ReplaceBecauseInputsChanged);
                    change.detail = Some(format!(
                        "its dependency {dependency} is submitted again: deps"
                    ));
                }
                // A tag of a run resource (not of one exact run) follows its new run.
                Kind::Tag
                    if change
                        .after
                        .as_ref()
                        .and_then(|a| a.get("run"))
                        .and_then(Json::as_str)
                        == Some(dependency.name.as_str()) =>
                {
                    set_kind(change, ChangeKind::Update);
                    change.detail = Some(format!("{dependency} is submitted again"));
                }
                _ => continue,
            }
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
}

fn record_depends_on(record: &ResourceRecord) -> Vec<ResourceId> {
    record
        .attributes
        .get("depends_on")
        .and_then(Json::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Json::as_str)
                .filter_map(ResourceId::parse)
                .collect()
        })
        .unwrap_or_default()
}

fn new_change(
    id: &ResourceId,
    config_type: ConfigType,
    change: ChangeKind,
    backend: &str,
) -> ResourceChange {
    ResourceChange {
        address: id.to_string(),
        kind: id.kind,
        name: id.name.clone(),
        config_type,
        change,
        actions: change.actions(),
        before: None,
        after: None,
        replace_paths: Vec::new(),
        changed_paths: Vec::new(),
        reason: None,
        detail: None,
        data_loss: false,
        external: false,
        backend: backend.to_string(),
        source: None,
        depends_on: Vec::new(),
    }
}

fn set_kind(change: &mut ResourceChange, kind: ChangeKind) {
    change.change = kind;
    change.actions = kind.actions();
}

/// The attribute of a fleet listing its nodes idle past `idle_duration`.
const IDLE_EXPIRED: &str = "idle_expired";

/// Compute the plan.
pub fn plan(request: &Request<'_>) -> Result<Plan, PlanError> {
    let snapshot = request.snapshot;
    let mut changes: BTreeMap<ResourceId, ResourceChange> = BTreeMap::new();
    let mut drift = Vec::new();
    let desired: BTreeMap<&ResourceId, &Desired> =
        request.desired.iter().map(|d| (&d.id, d)).collect();

    if request.destroy {
        for d in request.desired {
            let Some(record) = snapshot.resource(&d.id) else {
                continue;
            };
            let mut change = new_change(
                &d.id,
                record.config_type,
                ChangeKind::Delete,
                &record.backend,
            );
            change.before = Some(record.spec.clone());
            change.reason = Some(Reason::DeleteByRequest);
            change.source = Some(record.source.clone());
            change.external = record.external;
            change.depends_on = record_depends_on(record)
                .iter()
                .map(ToString::to_string)
                .collect();
            if matches!(request.observed.get(&d.id), Some(Observation::Missing)) {
                change.detail = Some("already deleted outside dstack; it is only forgotten".into());
            }
            changes.insert(d.id.clone(), change);
        }
    } else {
        for d in request.desired {
            let record = snapshot.resource(&d.id);
            let observation = request.observed.get(&d.id);
            let mut change = new_change(&d.id, d.config_type, ChangeKind::NoOp, &d.backend);
            change.after = Some(d.spec.clone());
            change.source = Some(d.source.clone());
            change.external = d.external;
            change.depends_on = d.depends_on.iter().map(ToString::to_string).collect();
            let Some(record) = record else {
                set_kind(&mut change, ChangeKind::Create);
                changes.insert(d.id.clone(), change);
                continue;
            };
            change.before = Some(record.spec.clone());
            if matches!(observation, Some(Observation::Missing))
                && d.id.kind != Kind::Run
                && d.id.kind != Kind::Tag
            {
                drift.push(Drift {
                    address: d.id.to_string(),
                    kind: DriftKind::Deleted,
                    before: Some(Json::Object(
                        record.attributes.clone().into_iter().collect(),
                    )),
                    after: None,
                });
                set_kind(&mut change, ChangeKind::Create);
                change.before = None;
                change.reason = Some(Reason::CreateBecauseDeletedOutside);
                change.detail = Some("it was deleted outside dstack".into());
                changes.insert(d.id.clone(), change);
                continue;
            }
            let changed_fields = top_level_changes(&record.spec, &d.spec);
            let type_changed = record.config_type != d.config_type;
            let mut replace_paths = Vec::new();
            for field in &changed_fields {
                match effect(
                    d.config_type,
                    field,
                    record.spec.get(field),
                    d.spec.get(field),
                ) {
                    Effect::InPlace => {}
                    Effect::Replace => replace_paths.push(vec![field.clone()]),
                    Effect::Refused(message) => {
                        return Err(PlanError::Invalid {
                            address: d.id.to_string(),
                            message: format!("`{field}`: {message}"),
                            hint: None,
                        });
                    }
                }
            }
            change.changed_paths = changed_fields.iter().map(|f| vec![f.clone()]).collect();
            if request.replace.contains(&d.id) {
                set_kind(&mut change, ChangeKind::Replace);
                change.reason = Some(Reason::ReplaceByRequest);
                change.detail = Some("replacement requested with --replace".into());
            } else if type_changed || !replace_paths.is_empty() {
                set_kind(&mut change, ChangeKind::Replace);
                change.reason = Some(Reason::ReplaceBecauseCannotUpdate);
                change.replace_paths = if type_changed {
                    vec![vec!["type".into()]]
                } else {
                    replace_paths
                };
            } else if !changed_fields.is_empty() {
                set_kind(&mut change, ChangeKind::Update);
            } else if d.id.kind == Kind::Run {
                let latest = latest_run(snapshot, &d.id.name);
                if let (Some(inputs), Some(run)) = (&d.run_inputs, latest) {
                    if run.input_digest != inputs.digest {
                        let changed_parts: Vec<&String> = inputs
                            .parts
                            .iter()
                            .filter(|(part, digest)| run.inputs.get(*part) != Some(*digest))
                            .map(|(part, _)| part)
                            .collect();
                        set_kind(&mut change, ChangeKind::Replace);
                        change.reason = Some(Reason::ReplaceBecauseInputsChanged);
                        let list: Vec<&str> = changed_parts.iter().map(|s| s.as_str()).collect();
                        change.detail = Some(if list.is_empty() {
                            format!("the inputs of {} changed", run.name)
                        } else {
                            format!("the inputs of {} changed: {}", run.name, list.join(", "))
                        });
                    } else if matches!(run.status, RunStatus::Failed | RunStatus::Aborted) {
                        set_kind(&mut change, ChangeKind::Replace);
                        change.reason = Some(Reason::ReplaceBecauseRunFailed);
                        change.detail = Some(format!(
                            "the last run {} {}",
                            run.name,
                            if run.status == RunStatus::Failed {
                                "failed"
                            } else {
                                "was aborted"
                            }
                        ));
                    }
                }
            } else if let Some(Observation::Present(attributes)) = observation {
                // Attributes the backend reports that differ from what was recorded. Idle
                // fleet nodes are not a change made outside dstack: they are due to go.
                let drifted: Vec<&String> = attributes
                    .iter()
                    .filter(|(k, _)| *k != IDLE_EXPIRED)
                    .filter(|(k, v)| record.attributes.get(*k).is_some_and(|r| r != *v))
                    .map(|(k, _)| k)
                    .collect();
                let idle: Vec<&str> = attributes
                    .get(IDLE_EXPIRED)
                    .and_then(Json::as_array)
                    .map(|a| a.iter().filter_map(Json::as_str).collect())
                    .unwrap_or_default();
                if !idle.is_empty() {
                    set_kind(&mut change, ChangeKind::Update);
                    change.reason = Some(Reason::UpdateBecauseIdle);
                    change.detail = Some(format!(
                        "{} idle longer than its idle_duration: {} (terminated by apply)",
                        if idle.len() == 1 {
                            "1 node is".to_string()
                        } else {
                            format!("{} nodes are", idle.len())
                        },
                        idle.join(", ")
                    ));
                }
                if !drifted.is_empty() {
                    drift.push(Drift {
                        address: d.id.to_string(),
                        kind: DriftKind::Changed,
                        before: Some(Json::Object(
                            drifted
                                .iter()
                                .map(|k| ((*k).clone(), record.attributes[*k].clone()))
                                .collect(),
                        )),
                        after: Some(Json::Object(
                            drifted
                                .iter()
                                .map(|k| ((*k).clone(), attributes[*k].clone()))
                                .collect(),
                        )),
                    });
                    set_kind(&mut change, ChangeKind::Update);
                    change.reason = Some(Reason::UpdateBecauseChangedOutside);
                    change.detail = Some(format!(
                        "changed outside dstack: {}",
                        drifted
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            changes.insert(d.id.clone(), change);
        }
        for record in snapshot.resources.values() {
            let id = record.id();
            if desired.contains_key(&id) || !(request.in_scope)(&record.source) {
                continue;
            }
            let mut change =
                new_change(&id, record.config_type, ChangeKind::Delete, &record.backend);
            change.before = Some(record.spec.clone());
            change.reason = Some(Reason::DeleteBecauseNoConfiguration);
            change.source = Some(record.source.clone());
            change.external = record.external;
            change.depends_on = record_depends_on(record)
                .iter()
                .map(ToString::to_string)
                .collect();
            if matches!(request.observed.get(&id), Some(Observation::Missing)) {
                change.detail = Some("already deleted outside dstack; it is only forgotten".into());
            }
            changes.insert(id, change);
        }
    }

    follow_run_dependencies(&mut changes, request.desired, snapshot);

    // Data loss: destroying a volume dstack created, while it still exists.
    for change in changes.values_mut() {
        let destroys = matches!(change.change, ChangeKind::Delete | ChangeKind::Replace);
        let gone = matches!(
            request.observed.get(&change.id()),
            Some(Observation::Missing)
        );
        change.data_loss = destroys
            && change.kind == Kind::Volume
            && !change.external
            && !gone
            && snapshot.resource(&change.id()).is_some_and(|r| !r.external);
    }

    // Targets: the targeted resources and what they depend on.
    let complete = request.targets.is_empty();
    if !complete {
        let mut keep: BTreeSet<ResourceId> = BTreeSet::new();
        let mut queue: Vec<ResourceId> = request.targets.to_vec();
        while let Some(id) = queue.pop() {
            if !keep.insert(id.clone()) {
                continue;
            }
            if let Some(change) = changes.get(&id) {
                queue.extend(
                    change
                        .depends_on
                        .iter()
                        .filter_map(|d| ResourceId::parse(d)),
                );
            }
        }
        changes.retain(|id, _| keep.contains(id));
        drift.retain(|d| ResourceId::parse(&d.address).is_some_and(|id| keep.contains(&id)));
    }

    // Order: deletions first (dependents before their dependencies), then everything else
    // (dependencies first).
    let mut deletions = Graph::default();
    let mut creations = Graph::default();
    for (id, change) in &changes {
        let graph = if change.change == ChangeKind::Delete {
            &mut deletions
        } else {
            &mut creations
        };
        graph.add_node(id.clone());
        for dep in change
            .depends_on
            .iter()
            .filter_map(|d| ResourceId::parse(d))
        {
            if changes.get(&dep).is_some_and(|c| {
                (c.change == ChangeKind::Delete) == (change.change == ChangeKind::Delete)
            }) {
                graph.add_edge(id.clone(), dep);
            }
        }
    }
    let mut ordered = Vec::with_capacity(changes.len());
    let mut deletion_order = deletions.order()?;
    deletion_order.reverse();
    for id in deletion_order.into_iter().chain(creations.order()?) {
        if let Some(change) = changes.remove(&id) {
            ordered.push(change);
        }
    }

    let mut summary = Summary::default();
    for change in &ordered {
        match change.change {
            ChangeKind::Create => summary.add += 1,
            ChangeKind::Update => summary.change += 1,
            ChangeKind::Replace => summary.replace += 1,
            ChangeKind::Delete => summary.destroy += 1,
            ChangeKind::NoOp => {}
        }
    }
    Ok(Plan {
        format_version: super::FORMAT_VERSION.into(),
        dstack_version: env!("CARGO_PKG_VERSION").into(),
        inputs: request.inputs.clone(),
        resource_changes: ordered,
        drift,
        summary,
        complete,
        notes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::contract::record;
    use serde_json::json;

    fn desired(id: &str, spec: Json) -> Desired {
        let id = ResourceId::parse(id).expect("id");
        let config_type = match id.kind {
            Kind::Volume => ConfigType::Volume,
            Kind::Run => ConfigType::Task,
            Kind::Fleet => ConfigType::Fleet,
            Kind::Tag => ConfigType::Tag,
        };
        Desired {
            digest: super::super::sensitive::value_digest(&spec),
            id,
            config_type,
            spec,
            source: SourceRef {
                file: "vol.dstack.yml".into(),
                document: 0,
            },
            backend: "fake".into(),
            depends_on: Vec::new(),
            external: false,
            run_inputs: None,
        }
    }

    fn recorded(snapshot: &mut Snapshot, d: &Desired) {
        let mut r = record(&d.id.name, "active");
        r.kind = d.id.kind;
        r.config_type = d.config_type;
        r.spec = d.spec.clone();
        r.digest = d.digest.clone();
        snapshot.resources.insert(d.id.to_string(), r);
    }

    fn run_plan(
        desired: &[Desired],
        snapshot: &Snapshot,
        observed: &BTreeMap<ResourceId, Observation>,
    ) -> Result<Plan, PlanError> {
        plan(&Request {
            desired,
            snapshot,
            observed,
            in_scope: &|source| source.file == "vol.dstack.yml",
            targets: &[],
            replace: &[],
            destroy: false,
            inputs: PlanInputs::default(),
        })
    }

    fn kinds(plan: &Plan) -> Vec<(String, ChangeKind)> {
        plan.resource_changes
            .iter()
            .map(|c| (c.address.clone(), c.change))
            .collect()
    }

    #[test]
    fn create_noop_update_replace_delete() {
        let data = desired(
            "volume/data",
            json!({"type": "volume", "backend": "fake", "size": "10GB"}),
        );
        let mut snapshot = Snapshot::empty();
        let observed = BTreeMap::new();
        let plan = run_plan(std::slice::from_ref(&data), &snapshot, &observed).expect("plan");
        assert_eq!(kinds(&plan), [("volume/data".into(), ChangeKind::Create)]);
        assert_eq!(plan.summary.add, 1);

        recorded(&mut snapshot, &data);
        let plan = run_plan(std::slice::from_ref(&data), &snapshot, &observed).expect("plan");
        assert_eq!(kinds(&plan), [("volume/data".into(), ChangeKind::NoOp)]);
        assert!(!plan.has_changes());

        let bigger = desired(
            "volume/data",
            json!({"type": "volume", "backend": "fake", "size": "20GB"}),
        );
        let plan = run_plan(std::slice::from_ref(&bigger), &snapshot, &observed).expect("plan");
        assert_eq!(kinds(&plan), [("volume/data".into(), ChangeKind::Update)]);
        assert!(!plan.resource_changes[0].data_loss);

        let smaller = desired(
            "volume/data",
            json!({"type": "volume", "backend": "fake", "size": "5GB"}),
        );
        let error =
            run_plan(std::slice::from_ref(&smaller), &snapshot, &observed).expect_err("refused");
        assert!(error.to_string().contains("cannot shrink"), "{error}");

        let moved = desired(
            "volume/data",
            json!({"type": "volume", "backend": "fake", "size": "10GB", "region": "eu"}),
        );
        let plan = run_plan(std::slice::from_ref(&moved), &snapshot, &observed).expect("plan");
        assert_eq!(kinds(&plan), [("volume/data".into(), ChangeKind::Replace)]);
        assert_eq!(
            plan.resource_changes[0].replace_paths,
            [vec!["region".to_string()]]
        );
        assert!(
            plan.resource_changes[0].data_loss,
            "replacing a volume destroys its data"
        );

        let plan = run_plan(&[], &snapshot, &observed).expect("plan");
        assert_eq!(kinds(&plan), [("volume/data".into(), ChangeKind::Delete)]);
        assert!(plan.resource_changes[0].data_loss);
        assert_eq!(
            plan.resource_changes[0].reason,
            Some(Reason::DeleteBecauseNoConfiguration)
        );
    }

    #[test]
    fn other_files_are_left_alone() {
        let mut snapshot = Snapshot::empty();
        let mut other = record("other", "active");
        other.source.file = "other.dstack.yml".into();
        snapshot.resources.insert("volume/other".into(), other);
        let plan = run_plan(&[], &snapshot, &BTreeMap::new()).expect("plan");
        assert!(plan.resource_changes.is_empty());
    }

    #[test]
    fn drift_is_planned_back() {
        let data = desired(
            "volume/data",
            json!({"type": "volume", "backend": "fake", "size": "10GB"}),
        );
        let mut snapshot = Snapshot::empty();
        recorded(&mut snapshot, &data);
        let observed = BTreeMap::from([(data.id.clone(), Observation::Missing)]);
        let plan = run_plan(std::slice::from_ref(&data), &snapshot, &observed).expect("plan");
        assert_eq!(kinds(&plan), [("volume/data".into(), ChangeKind::Create)]);
        assert_eq!(
            plan.resource_changes[0].reason,
            Some(Reason::CreateBecauseDeletedOutside)
        );
        assert_eq!(plan.drift.len(), 1);
        assert_eq!(plan.drift[0].kind, DriftKind::Deleted);
    }

    #[test]
    fn idle_fleet_nodes_plan_an_update_that_is_not_drift() {
        let fleet = desired(
            "fleet/workers",
            json!({"type": "fleet", "backends": ["aws"], "nodes": {"min": 0, "target": 2}}),
        );
        let mut snapshot = Snapshot::empty();
        recorded(&mut snapshot, &fleet);
        let attributes = |idle: Json| {
            BTreeMap::from([
                ("nodes".to_string(), json!(2)),
                ("idle_expired".to_string(), idle),
            ])
        };
        // Recorded before fleets recorded idle nodes: still seen.
        let observed = BTreeMap::from([(
            fleet.id.clone(),
            Observation::Present(attributes(json!(["i-1", "i-2"]))),
        )]);
        let plan = run_plan(std::slice::from_ref(&fleet), &snapshot, &observed).expect("plan");
        assert_eq!(kinds(&plan), [("fleet/workers".into(), ChangeKind::Update)]);
        let change = &plan.resource_changes[0];
        assert_eq!(change.reason, Some(Reason::UpdateBecauseIdle));
        assert_eq!(
            change.detail.as_deref(),
            Some("2 nodes are idle longer than its idle_duration: i-1, i-2 (terminated by apply)")
        );
        assert!(plan.drift.is_empty(), "{:?}", plan.drift);
        // Nothing idle: nothing to do.
        let observed = BTreeMap::from([(
            fleet.id.clone(),
            Observation::Present(attributes(json!([]))),
        )]);
        let plan = run_plan(std::slice::from_ref(&fleet), &snapshot, &observed).expect("plan");
        assert_eq!(kinds(&plan), [("fleet/workers".into(), ChangeKind::NoOp)]);
    }

    #[test]
    fn deletions_come_first_in_reverse_dependency_order_and_creations_follow_dependencies() {
        let mut snapshot = Snapshot::empty();
        let old_volume = desired("volume/old", json!({"type": "volume"}));
        recorded(&mut snapshot, &old_volume);
        let mut old_run = record("old-run", "done");
        old_run.kind = Kind::Run;
        old_run.config_type = ConfigType::Task;
        old_run
            .attributes
            .insert("depends_on".into(), json!(["volume/old"]));
        snapshot.resources.insert("run/old-run".into(), old_run);
        let volume = desired("volume/data", json!({"type": "volume"}));
        let mut run = desired("run/train", json!({"type": "task"}));
        run.depends_on = vec![volume.id.clone()];
        let plan = run_plan(&[run, volume], &snapshot, &BTreeMap::new()).expect("plan");
        let order: Vec<&str> = plan
            .resource_changes
            .iter()
            .map(|c| c.address.as_str())
            .collect();
        assert_eq!(
            order,
            ["run/old-run", "volume/old", "volume/data", "run/train"]
        );
    }

    #[test]
    fn runs_replace_on_changed_inputs_or_failure_and_on_request() {
        let mut run = desired("run/train", json!({"type": "task", "commands": ["x"]}));
        run.run_inputs = Some(RunInputs {
            digest: "sha256:new".into(),
            parts: BTreeMap::from([("code".into(), "c2".into()), ("spec".into(), "s1".into())]),
        });
        let mut snapshot = Snapshot::empty();
        recorded(&mut snapshot, &run);
        let now = chrono::Utc::now();
        let mut last = crate::state::RunRecord {
            name: "train-1".into(),
            workflow: None,
            resource: Some("train".into()),
            number: 1,
            run_type: ConfigType::Task,
            status: RunStatus::Done,
            backend: "fake".into(),
            input_digest: "sha256:old".into(),
            inputs: BTreeMap::from([("code".into(), "c1".into()), ("spec".into(), "s1".into())]),
            spec: json!({}),
            submitted_at: now,
            finished_at: Some(now),
            exit_code: Some(0),
            message: None,
            job: BTreeMap::new(),
        };
        snapshot.runs.insert("train-1".into(), last.clone());
        let plan = run_plan(std::slice::from_ref(&run), &snapshot, &BTreeMap::new()).expect("plan");
        assert_eq!(kinds(&plan), [("run/train".into(), ChangeKind::Replace)]);
        assert_eq!(
            plan.resource_changes[0].detail.as_deref(),
            Some("the inputs of train-1 changed: code")
        );

        last.input_digest = "sha256:new".into();
        last.inputs = run.run_inputs.as_ref().expect("inputs").parts.clone();
        snapshot.runs.insert("train-1".into(), last.clone());
        let plan = run_plan(std::slice::from_ref(&run), &snapshot, &BTreeMap::new()).expect("plan");
        assert_eq!(
            kinds(&plan),
            [("run/train".into(), ChangeKind::NoOp)],
            "unchanged inputs over a done run"
        );

        last.status = RunStatus::Failed;
        snapshot.runs.insert("train-1".into(), last);
        let plan = run_plan(std::slice::from_ref(&run), &snapshot, &BTreeMap::new()).expect("plan");
        assert_eq!(
            plan.resource_changes[0].reason,
            Some(Reason::ReplaceBecauseRunFailed)
        );

        let replace = [run.id.clone()];
        let plan = plan_with(std::slice::from_ref(&run), &snapshot, &[], &replace);
        assert_eq!(
            plan.resource_changes[0].reason,
            Some(Reason::ReplaceByRequest)
        );
    }

    fn plan_with(
        desired: &[Desired],
        snapshot: &Snapshot,
        targets: &[ResourceId],
        replace: &[ResourceId],
    ) -> Plan {
        plan(&Request {
            desired,
            snapshot,
            observed: &BTreeMap::new(),
            in_scope: &|_| true,
            targets,
            replace,
            destroy: false,
            inputs: PlanInputs::default(),
        })
        .expect("plan")
    }

    #[test]
    fn targets_keep_their_dependencies_and_mark_the_plan_incomplete() {
        let volume = desired("volume/data", json!({"type": "volume"}));
        let other = desired("volume/other", json!({"type": "volume"}));
        let mut run = desired("run/train", json!({"type": "task"}));
        run.depends_on = vec![volume.id.clone()];
        let plan = plan_with(
            &[run.clone(), volume, other],
            &Snapshot::empty(),
            &[run.id.clone()],
            &[],
        );
        assert!(!plan.complete);
        let order: Vec<&str> = plan
            .resource_changes
            .iter()
            .map(|c| c.address.as_str())
            .collect();
        assert_eq!(order, ["volume/data", "run/train"]);
    }

    #[test]
    fn cycles_are_errors() {
        let mut a = desired("run/a", json!({}));
        let mut b = desired("run/b", json!({}));
        a.depends_on = vec![b.id.clone()];
        b.depends_on = vec![a.id.clone()];
        let error = run_plan(&[a, b], &Snapshot::empty(), &BTreeMap::new()).expect_err("cycle");
        assert!(
            error.to_string().contains("run/a -> run/b -> run/a"),
            "{error}"
        );
    }

    #[test]
    fn destroy_deletes_what_is_declared_and_recorded() {
        let data = desired("volume/data", json!({"type": "volume"}));
        let never = desired("volume/never-applied", json!({"type": "volume"}));
        let mut snapshot = Snapshot::empty();
        recorded(&mut snapshot, &data);
        let plan = plan(&Request {
            desired: &[data, never],
            snapshot: &snapshot,
            observed: &BTreeMap::new(),
            in_scope: &|_| true,
            targets: &[],
            replace: &[],
            destroy: true,
            inputs: PlanInputs::default(),
        })
        .expect("plan");
        assert_eq!(kinds(&plan), [("volume/data".into(), ChangeKind::Delete)]);
        assert_eq!(
            plan.resource_changes[0].reason,
            Some(Reason::DeleteByRequest)
        );
    }
}
