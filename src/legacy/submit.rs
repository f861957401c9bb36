//! Submitting a workflow's run, recorded in state the way the executor records runs of run
//! resources (DESIGN §5).
//!
//! 1. Dependencies first, without the state lock: a `{workflow: W}` dependency that is still
//!    running is waited for by reading its status from its backend, so a long upstream run does
//!    not keep every other command out of the state.
//! 2. Under the lock: interrupted operations are resolved (as `apply` does), run statuses are
//!    refreshed and recorded, and the dependencies are resolved again (a new run of W may have
//!    started meanwhile: then the lock is released and step 1 starts over).
//! 3. A generated name is chosen; an intent carrying the run's record is committed *before* the
//!    backend call, and the run's record with the intent's removal after it. The request carries
//!    the intent's id as a label (`dstack.intent`), so a crash in between leaves an intent that
//!    the next `plan`, `apply` or `dstack state recover` resolves by finding the run.
//!
//! The run is recorded with `resource: None` and `workflow: Some(W)`, which is how `deps:
//! [{workflow: W}]` and `dstack ls W` find it, and with the same input digest parts as any run
//! (`spec`, `code`, `deps`; variables are part of the spec once interpolated).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value as Json;

use super::Workflow;
use crate::apply::ApplyError;
use crate::apply::executor::Interrupt;
use crate::apply::inputs::{DepState, resolve_dep};
use crate::artifacts::Store;
use crate::backend::{BackendError, Backends, ErrorKind, Request, labels};
use crate::config::project::Project;
use crate::model::env::EnvValue;
use crate::model::run::Dep;
use crate::model::{ConfigType, Kind, ResourceId, Spec};
use crate::plan::desired::{Context, resolve};
use crate::runner::cache::{CACHE_LABEL, WORKFLOW_LABEL};
use crate::state::{
    Change, Intent, IntentAction, LockInfo, Manifest, RunRecord, RunStatus, Snapshot, StateStore,
    Step, lock_with_timeout, new_lineage,
};

/// What happens while submitting, for the caller to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A note from resolving an interrupted operation.
    Recovered(String),
    /// Waiting for a dependency's run to end.
    Waiting { on: String },
}

/// Everything a submission needs.
pub struct Submission<'a> {
    pub store: &'a dyn StateStore,
    pub backends: &'a Backends,
    pub project: &'a Project,
    /// The local artifact store (dependencies' manifests).
    pub artifacts: Store,
    pub workflow: &'a Workflow,
    pub interrupt: &'a Interrupt,
    pub lock_timeout: Duration,
    pub progress: &'a (dyn Fn(Progress) + Send + Sync),
}

fn invalid(address: &str, message: String, hint: &str) -> ApplyError {
    ApplyError::backend(
        address,
        BackendError::new(ErrorKind::Invalid, message).with_hint(hint),
    )
}

/// Why a dependency cannot be used, as an error.
fn unavailable(workflow: &str, dep: &Dep, why: &str) -> ApplyError {
    match dep {
        Dep::Task(name) => invalid(
            &format!("workflow {workflow}"),
            format!("deps: the workflow `{name}` has no run that ended `done` ({why})"),
            &format!("run it first: `dstack run {name}`"),
        ),
        _ => invalid(
            &format!("workflow {workflow}"),
            format!("deps: {dep}: {why}"),
            "`dstack tags list` lists the tags; `dstack pull TAG` fetches pushed artifacts",
        ),
    }
}

/// What the dependencies resolve to in `snapshot`.
enum Deps {
    Ready(Vec<Manifest>),
    Pending(Box<RunRecord>),
}

fn resolve_deps(submission: &Submission<'_>, snapshot: &Snapshot) -> Result<Deps, ApplyError> {
    let lineage = snapshot.lineage.clone().unwrap_or_default();
    let Spec::Run(spec) = &submission.workflow.resource.spec else {
        return Ok(Deps::Ready(Vec::new()));
    };
    let mut manifests = Vec::new();
    for dep in &spec.common.deps {
        match resolve_dep(snapshot, Some(&submission.artifacts), &lineage, dep) {
            DepState::Ready { manifest, .. } => manifests.push(manifest),
            DepState::Pending { run } => return Ok(Deps::Pending(run)),
            DepState::Unavailable(why) => {
                return Err(unavailable(&submission.workflow.name, dep, &why));
            }
        }
    }
    Ok(Deps::Ready(manifests))
}

/// Wait until a run has ended, reading its status from its backend.
async fn wait_for_end(submission: &Submission<'_>, run: &RunRecord) -> Result<(), ApplyError> {
    (submission.progress)(Progress::Waiting {
        on: run.name.clone(),
    });
    let backend = submission
        .backends
        .get(&run.backend)
        .map_err(|e| ApplyError::backend(&run.name, e))?;
    loop {
        if submission.interrupt.count() > 0 {
            return Err(ApplyError::backend(
                format!("workflow {}", submission.workflow.name),
                BackendError::new(
                    ErrorKind::Invalid,
                    format!(
                        "interrupted while waiting for {} (deps); nothing was submitted",
                        run.name
                    ),
                ),
            ));
        }
        match backend.run_read(run).await {
            Ok(Some(observed)) if !observed.status.is_finished() => {}
            Ok(_) => return Ok(()),
            Err(e) if e.is_retryable() => {}
            Err(e) => return Err(ApplyError::backend(&run.name, e)),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Commit a step and apply it to the snapshot.
async fn commit(
    store: &dyn StateStore,
    snapshot: &mut Snapshot,
    step: Step,
) -> Result<(), ApplyError> {
    let committed = store
        .commit(snapshot.lineage.as_deref(), snapshot.serial, &step)
        .await?;
    snapshot.apply(&step);
    snapshot.lineage = Some(committed.lineage);
    snapshot.serial = committed.serial;
    Ok(())
}

/// Submit the workflow's run; returns its record as committed.
pub async fn submit(submission: &Submission<'_>) -> Result<RunRecord, ApplyError> {
    loop {
        // A dependency under way is waited for without the lock; its end is recorded under it.
        let snapshot = submission.store.load().await?;
        if let Deps::Pending(run) = resolve_deps(submission, &snapshot)? {
            wait_for_end(submission, &run).await?;
        }
        let lock = LockInfo::new("run");
        lock_with_timeout(submission.store, &lock, submission.lock_timeout).await?;
        let result = locked_submit(submission).await;
        let released = submission.store.lock_release(&lock.id).await;
        match result {
            // A new run of a dependency started while the lock was being taken.
            Ok(None) => {
                released?;
            }
            Ok(Some(run)) => {
                released?;
                return Ok(run);
            }
            Err(error) => return Err(error),
        }
    }
}

/// The steps under the lock; `None` when a dependency is under way again.
async fn locked_submit(submission: &Submission<'_>) -> Result<Option<RunRecord>, ApplyError> {
    let store = submission.store;
    let backends = submission.backends;
    let mut snapshot = store.load().await?;
    for note in crate::apply::recover::recover(store, &mut snapshot, backends).await? {
        (submission.progress)(Progress::Recovered(note));
    }
    let refreshed = crate::apply::refresh::refresh(&snapshot, backends, &|_| false, 10).await?;
    if !refreshed.changes.is_empty() {
        let step = Step {
            description: "refresh run statuses".into(),
            changes: refreshed.changes,
        };
        commit(store, &mut snapshot, step).await?;
    }
    let manifests = match resolve_deps(submission, &snapshot)? {
        Deps::Ready(manifests) => manifests,
        Deps::Pending(_) => return Ok(None),
    };
    let lineage = snapshot.lineage.clone().unwrap_or_else(new_lineage);
    snapshot.lineage = Some(lineage.clone());

    let workflow = submission.workflow;
    let resource = &workflow.resource;
    let resources = std::slice::from_ref(resource);
    let parts = crate::apply::inputs::run_parts(
        &submission.project.root,
        resources,
        &snapshot,
        Some(&submission.artifacts),
    )
    .map_err(|e| {
        ApplyError::backend(
            "code",
            BackendError::new(
                ErrorKind::Internal,
                format!(
                    "cannot read the project directory {}: {e}",
                    submission.project.root.display()
                ),
            ),
        )
    })?;
    let configured = backends.names().into_iter().collect();
    let desired = resolve(
        resources,
        &Context {
            configured: &configured,
            salt: &lineage,
            snapshot: &snapshot,
            run_parts: &parts,
        },
    )?
    .into_iter()
    .next()
    .ok_or_else(|| {
        ApplyError::backend(
            &workflow.name,
            BackendError::new(ErrorKind::Internal, "the workflow did not resolve"),
        )
    })?;

    let runs_dir = submission.project.dot_dir().join("runs");
    let (name, number) = super::names::generate(
        &snapshot,
        &|name| runs_dir.join(name).exists(),
        &mut super::names::random_index,
    );
    let inputs = desired.run_inputs.clone().unwrap_or_default();
    let intent_id = uuid::Uuid::new_v4().to_string();
    let mut run = RunRecord {
        name: name.clone(),
        resource: None,
        workflow: Some(workflow.name.clone()),
        number,
        run_type: ConfigType::Task,
        status: RunStatus::Submitted,
        backend: desired.backend.clone(),
        input_digest: inputs.digest,
        inputs: inputs.parts,
        spec: desired.spec.clone(),
        submitted_at: Utc::now(),
        finished_at: None,
        exit_code: None,
        message: None,
        job: BTreeMap::from([("intent".to_string(), Json::String(intent_id.clone()))]),
    };
    let id = ResourceId::new(Kind::Run, name.clone());
    let mut request_labels = labels(&submission.project.name, &lineage, &id, Some(&name));
    request_labels.insert("dstack.intent".into(), intent_id.clone());
    request_labels.insert(WORKFLOW_LABEL.into(), workflow.name.clone());
    if !workflow.cache.is_empty() {
        request_labels.insert(
            CACHE_LABEL.into(),
            serde_json::to_string(&workflow.cache).unwrap_or_default(),
        );
    }
    let intent = Intent {
        id: intent_id.clone(),
        action: IntentAction::Create,
        resource: id.clone(),
        backend: desired.backend.clone(),
        labels: request_labels.clone(),
        record: None,
        run: Some(Box::new(run.clone())),
        started_at: Utc::now(),
    };
    commit(
        store,
        &mut snapshot,
        Step::new(format!("intent run {name} (workflow {})", workflow.name))
            .with(Change::PutIntent(Box::new(intent))),
    )
    .await?;

    let env = match &resource.spec {
        Spec::Run(spec) => spec
            .common
            .env
            .0
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    EnvValue::Text(text) | EnvValue::FromLocal(text) => text.clone(),
                };
                (key.clone(), value)
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    let request = Request {
        id,
        spec: resource.spec.clone(),
        labels: request_labels,
        project: submission.project.name.clone(),
        project_dir: submission.project.root.clone(),
        lineage,
        run_name: Some(name.clone()),
        volumes: BTreeMap::new(),
        fleets: BTreeMap::new(),
        env,
        secrets: Vec::new(),
        deps: manifests,
    };
    let backend = backends
        .get(&desired.backend)
        .map_err(|e| ApplyError::backend(&name, e))?;
    let observed =
        match crate::backend::retry(|| backend.create(&request), &crate::backend::quietly).await {
            Ok(observed) => observed,
            Err(error) => {
                // The backend may or may not have made something: settle the intent now, the way
                // the next plan would (find the run by its intent label, or forget the intent).
                if let Ok(notes) =
                    crate::apply::recover::recover(store, &mut snapshot, backends).await
                {
                    for note in notes {
                        (submission.progress)(Progress::Recovered(note));
                    }
                }
                return Err(ApplyError::backend(format!("run {name}"), error));
            }
        };
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
    commit(
        store,
        &mut snapshot,
        Step::new(format!("run {name} (workflow {})", workflow.name))
            .with(Change::PutRun(Box::new(run.clone())))
            .with(Change::DeleteIntent(intent_id)),
    )
    .await?;
    Ok(Some(run))
}
