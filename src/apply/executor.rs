//! The executor: carries out a plan, recording every step as it happens.
//!
//! Order: deletions first (a resource only after everything that depends on it), then creations,
//! updates and replacements (a resource only after what it depends on). Each phase runs in
//! waves of independent steps, `parallelism` at a time.
//!
//! Recording: the intents of a wave's creates and deletes are committed together *before* any of
//! their backend calls starts; each call's result (the record, the intent's removal) is committed
//! as soon as the call returns. A crash at any point leaves either an intent (resolved by the next
//! plan) or a result — never an object nobody knows about.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures_util::stream::{self, StreamExt};
use serde_json::Value as Json;

use super::ApplyError;
use crate::backend::{BackendError, Backends, ErrorKind, Observed, Request, labels};
use crate::model::env::EnvValue;
use crate::model::graph::{Graph, run_resource_of};
use crate::model::mounts::MountPoint;
use crate::model::{Kind, Resource, ResourceId, Spec};
use crate::plan::diff::Desired;
use crate::plan::{ChangeKind, Plan, ResourceChange};
use crate::state::{
    Change, Intent, IntentAction, ResourceRecord, RunRecord, RunStatus, Snapshot, StateError,
    StateStore, Step, TagRecord,
};

/// A desired resource: typed (real values, for the backend) and resolved (masked, for state).
#[derive(Clone, Debug)]
pub struct Target {
    pub resource: Resource,
    pub desired: Desired,
}

/// Looks up environment variables.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How to execute.
pub struct Options {
    pub parallelism: usize,
    pub project: String,
    pub project_dir: PathBuf,
    /// Environment lookups, for `env` values taken from the local environment.
    pub env: EnvLookup,
    /// The local artifact store: refs follow the runs and tags this plan deletes.
    pub artifacts: Option<crate::artifacts::Store>,
}

/// Ctrl-C presses so far (the first stops new steps, the second abandons in-flight ones).
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicUsize>);

impl Interrupt {
    pub fn press(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// What happened to one step.
#[derive(Clone, Debug)]
pub enum Event {
    Started {
        address: String,
        change: ChangeKind,
    },
    Finished {
        address: String,
        change: ChangeKind,
        detail: Option<String>,
        seconds: f64,
    },
    Failed {
        address: String,
        message: String,
    },
    Retrying {
        address: String,
        attempt: u32,
        message: String,
    },
    /// A run waits for the runs it depends on to end.
    Waiting {
        address: String,
        on: String,
    },
}

/// The result of an execution.
#[derive(Debug, Default)]
pub struct Outcome {
    pub applied: Vec<(String, ChangeKind)>,
    pub failed: Vec<(String, ApplyError)>,
    pub skipped: Vec<String>,
    pub interrupted: bool,
    /// Runs submitted, by name.
    pub runs: Vec<String>,
    pub snapshot: Snapshot,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.failed.is_empty() && !self.interrupted && self.skipped.is_empty()
    }
}

/// The executor of one plan.
pub struct Executor<'a> {
    store: &'a dyn StateStore,
    state: tokio::sync::Mutex<Snapshot>,
    backends: &'a Backends,
    targets: &'a BTreeMap<ResourceId, Target>,
    options: &'a Options,
    interrupt: Interrupt,
    failed: AtomicBool,
    progress: &'a (dyn Fn(Event) + Send + Sync),
}

impl<'a> Executor<'a> {
    pub fn new(
        store: &'a dyn StateStore,
        snapshot: Snapshot,
        backends: &'a Backends,
        targets: &'a BTreeMap<ResourceId, Target>,
        options: &'a Options,
        interrupt: Interrupt,
        progress: &'a (dyn Fn(Event) + Send + Sync),
    ) -> Self {
        Self {
            store,
            state: tokio::sync::Mutex::new(snapshot),
            backends,
            targets,
            options,
            interrupt,
            failed: AtomicBool::new(false),
            progress,
        }
    }

    fn stopping(&self) -> bool {
        self.failed.load(Ordering::SeqCst) || self.interrupt.count() > 0
    }

    /// Commit a step against the current serial and apply it to the in-memory snapshot.
    async fn commit(&self, step: Step) -> Result<(), StateError> {
        let mut state = self.state.lock().await;
        let committed = self
            .store
            .commit(state.lineage.as_deref(), state.serial, &step)
            .await?;
        state.apply(&step);
        state.lineage = Some(committed.lineage);
        state.serial = committed.serial;
        Ok(())
    }

    /// Let the artifact store follow a deletion (best effort: a failure leaves unreferenced
    /// blobs, which the next collection removes, and is logged).
    async fn release(
        &self,
        release: impl FnOnce(
            &Snapshot,
            &crate::artifacts::Store,
            &str,
        ) -> Result<usize, crate::artifacts::refs::ArtifactError>,
    ) {
        if let Some(artifacts) = &self.options.artifacts {
            let state = self.state.lock().await;
            let lineage = state.lineage.clone().unwrap_or_default();
            if let Err(error) = release(&state, artifacts, &lineage) {
                tracing::warn!("{error}");
            }
        }
    }

    /// Execute the plan's changes.
    pub async fn execute(self, plan: &Plan) -> Outcome {
        let mut outcome = self.run(plan).await;
        outcome.snapshot = self.state.into_inner();
        outcome
    }

    async fn run(&self, plan: &Plan) -> Outcome {
        let changes: Vec<&ResourceChange> = plan.actionable().collect();
        let mut outcome = Outcome::default();
        let waves = waves(&changes);
        for wave in waves {
            if self.stopping() {
                outcome
                    .skipped
                    .extend(wave.iter().map(|c| c.address.clone()));
                continue;
            }
            // The intents of this wave's creates and deletes, before any of their calls.
            let mut intents = BTreeMap::new();
            let mut step = Step::new("record intents");
            for change in &wave {
                if let Some(intent) = self.intent_for(change).await {
                    intents.insert(change.address.clone(), intent.id.clone());
                    step.changes.push(Change::PutIntent(Box::new(intent)));
                }
            }
            if !step.changes.is_empty()
                && let Err(error) = self.commit(step).await
            {
                for change in &wave {
                    outcome.skipped.push(change.address.clone());
                }
                outcome
                    .failed
                    .push(("state".into(), ApplyError::State(error)));
                self.failed.store(true, Ordering::SeqCst);
                continue;
            }
            let runs = stream::iter(wave.iter().map(|change| {
                let intent = intents.get(&change.address).cloned();
                async move {
                    if self.stopping() {
                        return (change, None);
                    }
                    (self.progress)(Event::Started {
                        address: change.address.clone(),
                        change: change.change,
                    });
                    let started = std::time::Instant::now();
                    let result = self.apply_one(change, intent).await;
                    let seconds = started.elapsed().as_secs_f64();
                    match &result {
                        Ok(detail) => (self.progress)(Event::Finished {
                            address: change.address.clone(),
                            change: change.change,
                            detail: detail.clone(),
                            seconds,
                        }),
                        Err(error) => {
                            self.failed.store(true, Ordering::SeqCst);
                            (self.progress)(Event::Failed {
                                address: change.address.clone(),
                                message: error.to_string(),
                            });
                        }
                    }
                    (change, Some(result))
                }
            }))
            .buffer_unordered(self.options.parallelism.max(1));
            let mut runs = std::pin::pin!(runs);
            loop {
                let next = tokio::select! {
                    next = runs.next() => next,
                    () = wait_for_second_interrupt(&self.interrupt) => {
                        outcome.interrupted = true;
                        break;
                    }
                };
                let Some((change, result)) = next else { break };
                match result {
                    None => outcome.skipped.push(change.address.clone()),
                    Some(Ok(detail)) => {
                        outcome
                            .applied
                            .push((change.address.clone(), change.change));
                        if change.kind == Kind::Run
                            && change.change != ChangeKind::Delete
                            && let Some(run) =
                                detail.and_then(|d| d.strip_prefix("run ").map(str::to_string))
                        {
                            outcome.runs.push(run);
                        }
                    }
                    Some(Err(error)) => outcome.failed.push((change.address.clone(), error)),
                }
            }
            // Steps that never started made no call: their intents can go now.
            let unstarted: Vec<Change> = wave
                .iter()
                .filter(|c| outcome.skipped.contains(&c.address))
                .filter_map(|c| intents.get(&c.address))
                .map(|id| Change::DeleteIntent(id.clone()))
                .collect();
            if !unstarted.is_empty() && !outcome.interrupted {
                let _ = self
                    .commit(Step {
                        description: "forget intents of steps not started".into(),
                        changes: unstarted,
                    })
                    .await;
            }
            if outcome.interrupted {
                break;
            }
        }
        outcome.interrupted |= self.interrupt.count() > 0;
        outcome
    }

    async fn intent_for(&self, change: &ResourceChange) -> Option<Intent> {
        let id = change.id();
        let action = match change.change {
            ChangeKind::Create => IntentAction::Create,
            ChangeKind::Delete => IntentAction::Delete,
            _ => return None,
        };
        if change.backend == "state" {
            return None;
        }
        let state = self.state.lock().await;
        let intent_id = uuid::Uuid::new_v4().to_string();
        let (record, run) = match action {
            IntentAction::Create => {
                let target = self.targets.get(&id)?;
                let run =
                    (id.kind == Kind::Run).then(|| Self::next_run(&state, target, &intent_id));
                let record = Self::record_for(
                    target,
                    &Observed::default(),
                    run.as_ref().map(|r| r.name.as_str()),
                    None,
                );
                (Some(record), run.map(Box::new))
            }
            _ => (None, None),
        };
        let lineage = state.lineage.clone().unwrap_or_default();
        let mut labels = labels(
            &self.options.project,
            &lineage,
            &id,
            run.as_ref().map(|r| r.name.as_str()),
        );
        labels.insert("dstack.intent".into(), intent_id.clone());
        Some(Intent {
            id: intent_id,
            action,
            resource: id,
            backend: change.backend.clone(),
            labels,
            record,
            run,
            started_at: Utc::now(),
        })
    }

    /// The next run of a run resource: `NAME-N`, N one more than any run recorded.
    fn next_run(state: &Snapshot, target: &Target, intent_id: &str) -> RunRecord {
        let name = &target.resource.id.name;
        let number = state
            .runs
            .values()
            .filter(|r| r.resource.as_deref() == Some(name.as_str()))
            .map(|r| r.number)
            .max()
            .unwrap_or(0)
            + 1;
        let inputs = target.desired.run_inputs.clone().unwrap_or_default();
        RunRecord {
            name: format!("{name}-{number}"),
            workflow: None,
            resource: Some(name.clone()),
            number,
            run_type: target.desired.config_type,
            status: RunStatus::Submitted,
            backend: target.desired.backend.clone(),
            input_digest: inputs.digest,
            inputs: inputs.parts,
            spec: target.desired.spec.clone(),
            submitted_at: Utc::now(),
            finished_at: None,
            exit_code: None,
            message: None,
            job: BTreeMap::from([("intent".to_string(), Json::String(intent_id.to_string()))]),
        }
    }

    /// The record of `target` once its backend object is `observed`.
    pub(crate) fn record_for(
        target: &Target,
        observed: &Observed,
        run: Option<&str>,
        previous: Option<&ResourceRecord>,
    ) -> ResourceRecord {
        let now = Utc::now();
        let desired = &target.desired;
        let mut attributes = observed.attributes.clone();
        if !desired.depends_on.is_empty() {
            attributes.insert(
                "depends_on".into(),
                Json::Array(
                    desired
                        .depends_on
                        .iter()
                        .map(|d| Json::String(d.to_string()))
                        .collect(),
                ),
            );
        }
        if let Some(run) = run {
            attributes.insert("run".into(), Json::String(run.to_string()));
        }
        ResourceRecord {
            kind: desired.id.kind,
            name: desired.id.name.clone(),
            config_type: desired.config_type,
            source: desired.source.clone(),
            spec: desired.spec.clone(),
            digest: desired.digest.clone(),
            backend: desired.backend.clone(),
            backend_id: observed
                .backend_id
                .clone()
                .or_else(|| run.map(str::to_string)),
            attributes,
            status: if observed.status.is_empty() {
                "pending".into()
            } else {
                observed.status.clone()
            },
            external: desired.external,
            created_at: previous.map_or(now, |p| p.created_at),
            updated_at: now,
        }
    }

    /// Build a backend request for a target.
    async fn request(
        &self,
        target: &Target,
        intent: Option<&str>,
        run: Option<&RunRecord>,
    ) -> Result<Request, ApplyError> {
        let state = self.state.lock().await;
        let lineage = state.lineage.clone().unwrap_or_default();
        let id = &target.resource.id;
        let mut request_labels = labels(
            &self.options.project,
            &lineage,
            id,
            run.map(|r| r.name.as_str()),
        );
        if let Some(intent) = intent {
            request_labels.insert("dstack.intent".into(), intent.to_string());
        }
        let mut volumes = BTreeMap::new();
        let mut fleets = BTreeMap::new();
        let mut env = BTreeMap::new();
        if let Spec::Run(spec) = &target.resource.spec {
            for fleet in spec.common.fleets.iter().flatten() {
                if let Some(record) =
                    state.resource(&ResourceId::new(Kind::Fleet, fleet.name.clone()))
                {
                    fleets.insert(fleet.name.clone(), record.clone());
                }
            }
            for mount in &spec.common.volumes {
                if let MountPoint::Volume { names, .. } = mount {
                    for name in names {
                        if let Some(record) =
                            state.resource(&ResourceId::new(Kind::Volume, name.clone()))
                        {
                            volumes.insert(name.clone(), record.clone());
                        }
                    }
                }
            }
            for (key, value) in &spec.common.env.0 {
                let value = match value {
                    EnvValue::Text(text) => text.clone(),
                    EnvValue::FromLocal(name) => (self.options.env)(name).ok_or_else(|| {
                        ApplyError::backend(
                            id.to_string(),
                            BackendError::new(ErrorKind::Invalid, format!("`env` takes `{key}` from the environment variable `{name}`, which is not set"))
                                .with_hint(format!("export {name}=... before running dstack")),
                        )
                    })?,
                };
                env.insert(key.clone(), value);
            }
        }
        let mut secrets = target.resource.sensitive.clone();
        if let Spec::Run(spec) = &target.resource.spec {
            for (key, value) in &spec.common.env.0 {
                if matches!(value, EnvValue::FromLocal(_)) {
                    secrets.extend(env.get(key).cloned());
                }
            }
        }
        Ok(Request {
            id: id.clone(),
            spec: target.resource.spec.clone(),
            labels: request_labels,
            project: self.options.project.clone(),
            project_dir: self.options.project_dir.clone(),
            lineage,
            run_name: run.map(|r| r.name.clone()),
            volumes,
            fleets,
            env,
            secrets,
            deps: Vec::new(),
        })
    }

    /// Call the backend, retrying transient errors (see [`crate::backend::retry`]).
    async fn with_retries<T, F, Fut>(&self, address: &str, call: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let report = |attempt: u32, error: &BackendError| {
            (self.progress)(Event::Retrying {
                address: address.to_string(),
                attempt,
                message: error.message.clone(),
            });
        };
        crate::backend::retry(call, &report).await
    }

    /// Apply one change; returns a short detail (`run train-3`, an object id).
    async fn apply_one(
        &self,
        change: &ResourceChange,
        intent: Option<String>,
    ) -> Result<Option<String>, ApplyError> {
        let id = change.id();
        let address = change.address.clone();
        let record = self.state.lock().await.resource(&id).cloned();
        match change.change {
            ChangeKind::NoOp => Ok(None),
            ChangeKind::Delete => {
                let Some(record) = record else {
                    return Ok(None);
                };
                self.delete(&record, intent).await?;
                Ok(None)
            }
            ChangeKind::Create => {
                let target = self.target(&id)?;
                self.create(target, intent, None).await
            }
            ChangeKind::Update => {
                let target = self.target(&id)?;
                let record = record.ok_or_else(|| {
                    ApplyError::backend(&address, BackendError::not_found("it is not recorded"))
                })?;
                if id.kind == Kind::Tag || change.backend == "state" {
                    return self.create(target, None, Some(&record)).await;
                }
                let backend = self
                    .backends
                    .get(&change.backend)
                    .map_err(|e| ApplyError::backend(&address, e))?;
                let request = self.request(target, None, None).await?;
                let observed = self
                    .with_retries(&address, || backend.update(&request, &record))
                    .await
                    .map_err(|e| ApplyError::backend(&address, e))?;
                let updated = Self::record_for(target, &observed, None, Some(&record));
                self.commit(
                    Step::new(format!("update {address}"))
                        .with(Change::PutResource(Box::new(updated))),
                )
                .await?;
                Ok(observed.backend_id)
            }
            ChangeKind::Replace => {
                let target = self.target(&id)?;
                if let Some(record) = &record {
                    if id.kind == Kind::Run {
                        self.stop_runs_of(&record.name, false).await?;
                    } else {
                        let intent = self
                            .intent_for(&ResourceChange {
                                change: ChangeKind::Delete,
                                ..change.clone()
                            })
                            .await;
                        let intent_id = intent.as_ref().map(|i| i.id.clone());
                        if let Some(intent) = intent {
                            self.commit(
                                Step::new(format!("intent delete {address}"))
                                    .with(Change::PutIntent(Box::new(intent))),
                            )
                            .await?;
                        }
                        self.delete(record, intent_id).await?;
                    }
                }
                let intent = self
                    .intent_for(&ResourceChange {
                        change: ChangeKind::Create,
                        ..change.clone()
                    })
                    .await;
                let intent_id = intent.as_ref().map(|i| i.id.clone());
                if let Some(intent) = intent {
                    self.commit(
                        Step::new(format!("intent create {address}"))
                            .with(Change::PutIntent(Box::new(intent))),
                    )
                    .await?;
                }
                self.create(target, intent_id, None).await
            }
        }
    }

    /// Wait until every dependency of a run has ended, recording each end as it comes; then
    /// return their manifests and the `deps` input part.
    async fn await_deps(
        &self,
        address: &str,
        deps: &[crate::model::run::Dep],
    ) -> Result<(Vec<crate::state::Manifest>, String), ApplyError> {
        use crate::apply::inputs::{DepState, deps_part, resolve_dep};
        let store = self.options.artifacts.as_ref();
        loop {
            let pending = {
                let state = self.state.lock().await;
                let lineage = state.lineage.clone().unwrap_or_default();
                let mut manifests = Vec::new();
                let mut pending = None;
                for dep in deps {
                    match resolve_dep(&state, store, &lineage, dep) {
                        DepState::Ready { manifest, .. } => manifests.push(manifest),
                        DepState::Pending { run } => {
                            pending = Some(run);
                            break;
                        }
                        DepState::Unavailable(why) => {
                            return Err(ApplyError::backend(
                                address,
                                BackendError::new(ErrorKind::Invalid, format!("deps: {dep}: {why}"))
                                    .with_hint(match dep {
                                        crate::model::run::Dep::Tag(_) => "`dstack tags list` lists the tags; `dstack pull TAG` fetches pushed artifacts",
                                        _ => "apply the dependency until it ends `done`, or `dstack pull` its artifacts",
                                    }),
                            ));
                        }
                    }
                }
                match pending {
                    None => return Ok((manifests, deps_part(&state, store, &lineage, deps))),
                    Some(run) => run,
                }
            };
            (self.progress)(Event::Waiting {
                address: address.to_string(),
                on: pending.name.clone(),
            });
            let backend = self
                .backends
                .get(&pending.backend)
                .map_err(|e| ApplyError::backend(address, e))?;
            loop {
                if self.stopping() {
                    return Err(ApplyError::backend(
                        address,
                        BackendError::new(
                            ErrorKind::Invalid,
                            format!("interrupted while waiting for {}", pending.name),
                        ),
                    ));
                }
                let observed = match backend.run_read(&pending).await {
                    Ok(observed) => observed,
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => return Err(ApplyError::backend(&pending.name, e)),
                };
                let mut ended = pending.clone();
                let mut changes = Vec::new();
                match observed {
                    Some(o) if !o.status.is_finished() => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                    Some(o) => {
                        ended.status = o.status;
                        ended.exit_code = o.exit_code.or(ended.exit_code);
                        ended.message = o.message.or(ended.message);
                        ended.finished_at = o.finished_at.or(Some(Utc::now()));
                        if let Some(manifest) = o.manifest {
                            let state = self.state.lock().await;
                            changes.extend(crate::apply::refresh::manifest_changes(
                                &state,
                                &ended.name,
                                manifest,
                            ));
                        }
                    }
                    None => {
                        ended.status = RunStatus::Aborted;
                        ended.finished_at = Some(Utc::now());
                        ended.message = Some("the backend has no trace of the run".into());
                    }
                }
                changes.push(Change::PutRun(ended));
                let changes = {
                    let state = self.state.lock().await;
                    crate::apply::refresh::with_resource_status(&state, changes)
                };
                self.commit(Step {
                    description: format!("record the end of {}", pending.name),
                    changes,
                })
                .await?;
                break;
            }
        }
    }

    fn target(&self, id: &ResourceId) -> Result<&Target, ApplyError> {
        self.targets.get(id).ok_or_else(|| {
            ApplyError::backend(
                id.to_string(),
                BackendError::new(ErrorKind::Internal, "its configuration was not loaded"),
            )
        })
    }

    async fn create(
        &self,
        target: &Target,
        intent: Option<String>,
        previous: Option<&ResourceRecord>,
    ) -> Result<Option<String>, ApplyError> {
        let id = &target.resource.id;
        let address = id.to_string();
        if let Spec::Tag(tag) = &target.resource.spec {
            return self.create_tag(target, &tag.run, previous).await;
        }
        let backend = self
            .backends
            .get(&target.desired.backend)
            .map_err(|e| ApplyError::backend(&address, e))?;
        let mut run = None;
        if id.kind == Kind::Run {
            let state = self.state.lock().await;
            // The run recorded in the intent, so recovery adopts the same name.
            let from_intent = intent
                .as_ref()
                .and_then(|i| state.intents.get(i))
                .and_then(|i| i.run.clone());
            run = Some(from_intent.map_or_else(
                || Self::next_run(&state, target, intent.as_deref().unwrap_or_default()),
                |r| *r,
            ));
        }
        let mut request = self
            .request(target, intent.as_deref(), run.as_ref())
            .await?;
        if let (Some(run), Spec::Run(spec)) = (run.as_mut(), &target.resource.spec)
            && !spec.common.deps.is_empty()
        {
            let (manifests, part) = self.await_deps(&address, &spec.common.deps).await?;
            request.deps = manifests;
            // What the run really gets, which the next plan computes the same way.
            let mut parts = run.inputs.clone();
            parts.insert("deps".into(), part);
            let inputs = crate::plan::diff::RunInputs::from_parts(parts);
            run.input_digest = inputs.digest;
            run.inputs = inputs.parts;
        }
        let observed = self
            .with_retries(&address, || backend.create(&request))
            .await
            .map_err(|e| ApplyError::backend(&address, e))?;
        let record = Self::record_for(
            target,
            &observed,
            run.as_ref().map(|r| r.name.as_str()),
            previous,
        );
        let mut step =
            Step::new(format!("create {address}")).with(Change::PutResource(Box::new(record)));
        if let Some(intent) = &intent {
            step.changes.push(Change::DeleteIntent(intent.clone()));
        }
        let detail = if let Some(mut run) = run {
            if let Some(backend_id) = &observed.backend_id {
                run.job
                    .insert("backend_id".into(), Json::String(backend_id.clone()));
            }
            run.job.remove("intent");
            run.job.extend(
                observed
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            run.status = match observed.status.as_str() {
                "running" => RunStatus::Running,
                "provisioning" => RunStatus::Provisioning,
                _ => RunStatus::Submitted,
            };
            let name = run.name.clone();
            step.changes.push(Change::PutRun(Box::new(run)));
            Some(format!("run {name}"))
        } else {
            observed.backend_id.clone()
        };
        self.commit(step).await?;
        Ok(detail)
    }

    async fn create_tag(
        &self,
        target: &Target,
        run: &str,
        previous: Option<&ResourceRecord>,
    ) -> Result<Option<String>, ApplyError> {
        let address = target.resource.id.to_string();
        let (resolved, manifest) = {
            let state = self.state.lock().await;
            let resolved = if state.runs.contains_key(run) {
                Some(run.to_string())
            } else {
                let resource =
                    run_resource_of(run, &|n| state.resources.contains_key(&format!("run/{n}")));
                state
                    .runs
                    .values()
                    .filter(|r| r.resource.as_deref() == Some(resource))
                    .max_by_key(|r| r.number)
                    .map(|r| r.name.clone())
            };
            let manifest = resolved
                .as_ref()
                .filter(|r| state.manifests.contains_key(*r))
                .cloned();
            (resolved, manifest)
        };
        let resolved = resolved.ok_or_else(|| {
            ApplyError::backend(
                &address,
                BackendError::new(
                    ErrorKind::Invalid,
                    format!("there is no run `{run}` to tag"),
                )
                .with_hint("apply the run first; a tag names a run or a run resource"),
            )
        })?;
        let observed = Observed {
            backend_id: Some(resolved.clone()),
            status: "active".into(),
            ..Observed::default()
        };
        let record = Self::record_for(target, &observed, None, previous);
        let tag = TagRecord {
            name: target.resource.id.name.clone(),
            run: resolved.clone(),
            manifest,
            created_at: Utc::now(),
        };
        self.commit(
            Step::new(format!("tag {address}"))
                .with(Change::PutTag(tag))
                .with(Change::PutResource(Box::new(record))),
        )
        .await?;
        if let Some(artifacts) = &self.options.artifacts {
            let state = self.state.lock().await;
            let lineage = state.lineage.clone().unwrap_or_default();
            crate::artifacts::refs::keep_tag(&state, artifacts, &lineage, &target.resource.id.name)
                .map_err(|e| {
                    ApplyError::backend(
                        &address,
                        BackendError::new(ErrorKind::Internal, e.to_string()),
                    )
                })?;
        }
        Ok(Some(resolved))
    }

    async fn stop_runs_of(&self, resource: &str, remove: bool) -> Result<(), ApplyError> {
        let mut runs: Vec<RunRecord> = self
            .state
            .lock()
            .await
            .runs
            .values()
            .filter(|r| r.resource.as_deref() == Some(resource))
            .cloned()
            .collect();
        // Oldest first (`NAME-10` sorts before `NAME-2` by name): the run the resource record
        // names goes last, so a delete interrupted half-way leaves a resource whose run is
        // still recorded.
        runs.sort_by_key(|r| r.number);
        for run in runs {
            let backend = self
                .backends
                .get(&run.backend)
                .map_err(|e| ApplyError::backend(&run.name, e))?;
            let mut step = Step::new(format!("stop {}", run.name));
            if !run.status.is_finished() {
                self.with_retries(&run.name, || backend.run_stop(&run, false))
                    .await
                    .map_err(|e| ApplyError::backend(&run.name, e))?;
                let mut stopped = run.clone();
                stopped.status = RunStatus::Stopped;
                stopped.finished_at = Some(Utc::now());
                step.changes.push(Change::PutRun(Box::new(stopped)));
            }
            if remove {
                match self
                    .with_retries(&run.name, || backend.run_remove(&run))
                    .await
                {
                    Ok(()) => {}
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Err(ApplyError::backend(&run.name, e)),
                }
                step.changes.retain(|c| !matches!(c, Change::PutRun(_)));
                let forget =
                    crate::artifacts::refs::forget_run(&*self.state.lock().await, &run.name);
                step.changes.extend(forget);
            }
            if !step.changes.is_empty() {
                self.commit(step).await?;
            }
            if remove {
                self.release(|state, store, lineage| {
                    crate::artifacts::refs::release_run(state, store, lineage, &run.name)
                })
                .await;
            }
        }
        Ok(())
    }

    async fn delete(
        &self,
        record: &ResourceRecord,
        intent: Option<String>,
    ) -> Result<(), ApplyError> {
        let address = record.id().to_string();
        let mut step = Step::new(format!("delete {address}"));
        match record.kind {
            Kind::Tag => step.changes.extend(crate::artifacts::refs::forget_tag(
                &*self.state.lock().await,
                &record.name,
            )),
            Kind::Run => self.stop_runs_of(&record.name, true).await?,
            Kind::Volume | Kind::Fleet if record.external => {}
            Kind::Volume | Kind::Fleet => {
                let backend = self
                    .backends
                    .get(&record.backend)
                    .map_err(|e| ApplyError::backend(&address, e))?;
                match self.with_retries(&address, || backend.delete(record)).await {
                    Ok(()) => {}
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Err(ApplyError::backend(&address, e)),
                }
            }
        }
        step.changes.push(Change::DeleteResource(record.id()));
        if let Some(intent) = intent {
            step.changes.push(Change::DeleteIntent(intent));
        }
        self.commit(step).await?;
        if record.kind == Kind::Tag {
            self.release(|_, store, lineage| {
                crate::artifacts::refs::release_tag(store, lineage, &record.name)
            })
            .await;
        }
        Ok(())
    }
}

async fn wait_for_second_interrupt(interrupt: &Interrupt) {
    while interrupt.count() < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Group changes into waves: within a phase (deletions, then the rest), a change comes after the
/// changes it must follow; changes of one wave are independent.
fn waves<'c>(changes: &[&'c ResourceChange]) -> Vec<Vec<&'c ResourceChange>> {
    let by_id: BTreeMap<ResourceId, &ResourceChange> =
        changes.iter().map(|c| (c.id(), *c)).collect();
    let mut result = Vec::new();
    for deleting in [true, false] {
        let mut graph = Graph::default();
        let members: BTreeSet<ResourceId> = changes
            .iter()
            .filter(|c| (c.change == ChangeKind::Delete) == deleting)
            .map(|c| c.id())
            .collect();
        for id in &members {
            graph.add_node(id.clone());
            let change = by_id[id];
            for dep in change
                .depends_on
                .iter()
                .filter_map(|d| ResourceId::parse(d))
            {
                if members.contains(&dep) {
                    if deleting {
                        // Delete the dependent first: the dependency waits for it.
                        graph.add_edge(dep, id.clone());
                    } else {
                        graph.add_edge(id.clone(), dep);
                    }
                }
            }
        }
        // The planner already rejected cycles; fall back to plan order if one slipped through.
        match graph.waves() {
            Ok(waves) => result.extend(waves.into_iter().map(|w| {
                w.iter()
                    .filter_map(|id| by_id.get(id).copied())
                    .collect::<Vec<_>>()
            })),
            Err(_) => result.extend(
                changes
                    .iter()
                    .filter(|c| (c.change == ChangeKind::Delete) == deleting)
                    .map(|c| vec![*c]),
            ),
        }
    }
    result.retain(|w| !w.is_empty());
    result
}
