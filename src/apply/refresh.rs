//! Refresh: read every recorded object from its backend.
//!
//! Objects deleted or changed outside dstack become [`Observation`]s for the planner, which shows
//! them as drift and plans them back. Run status changes become state changes, recorded at the
//! next commit (status reaches state at refresh, as DESIGN §8 says).

use std::collections::BTreeMap;

use chrono::Utc;
use futures_util::stream::{self, StreamExt};

use super::ApplyError;
use crate::backend::Backends;
use crate::model::{Kind, ResourceId};
use crate::plan::diff::Observation;
use crate::state::{Change, Manifest, ResourceRecord, RunStatus, Snapshot};

/// What refresh found.
#[derive(Debug, Default)]
pub struct Refreshed {
    pub observed: BTreeMap<ResourceId, Observation>,
    /// Run status updates to record.
    pub changes: Vec<Change>,
    /// How many objects were read.
    pub count: usize,
}

/// Read the recorded objects that `include` selects, and every unfinished run.
pub async fn refresh(
    snapshot: &Snapshot,
    backends: &Backends,
    include: &dyn Fn(&ResourceRecord) -> bool,
    parallelism: usize,
) -> Result<Refreshed, ApplyError> {
    let records: Vec<&ResourceRecord> = snapshot
        .resources
        .values()
        .filter(|r| matches!(r.kind, Kind::Volume | Kind::Fleet) && include(r))
        .collect();
    let mut refreshed = Refreshed::default();
    let reads = stream::iter(records.into_iter().map(|record| async move {
        let backend = backends.get(&record.backend).map_err(|e| {
            let mut error = e;
            error.hint = Some("plan with `--refresh=false` to skip reading it".into());
            ApplyError::backend(record.id().to_string(), error)
        })?;
        let observed = crate::backend::retry(|| backend.read(record), &crate::backend::quietly)
            .await
            .map_err(|e| ApplyError::backend(record.id().to_string(), e))?;
        Ok::<_, ApplyError>((record.id(), observed))
    }))
    .buffer_unordered(parallelism.max(1))
    .collect::<Vec<_>>()
    .await;
    for read in reads {
        let (id, observed) = read?;
        refreshed.count += 1;
        refreshed.observed.insert(
            id,
            observed.map_or(Observation::Missing, |o| Observation::Present(o.attributes)),
        );
    }
    let runs: Vec<_> = snapshot
        .runs
        .values()
        .filter(|r| !r.status.is_finished())
        .collect();
    let reads = stream::iter(
        runs.into_iter()
            .map(|run| async move { Ok::<_, ApplyError>((run, read_run(backends, run).await?)) }),
    )
    .buffer_unordered(parallelism.max(1))
    .collect::<Vec<_>>()
    .await;
    for read in reads {
        let (run, observed) = read?;
        refreshed.count += 1;
        let mut updated = run.clone();
        if let Some(manifest) = observed.as_ref().and_then(|o| o.manifest.clone())
            && snapshot.manifests.get(&run.name) != Some(&manifest)
        {
            refreshed
                .changes
                .extend(manifest_changes(snapshot, &run.name, manifest));
        }
        if let Some(observed) = observed {
            updated.status = observed.status;
            updated.exit_code = observed.exit_code.or(updated.exit_code);
            updated.message = observed.message.or(updated.message);
            if observed.status.is_finished() {
                updated.finished_at = observed.finished_at.or(Some(Utc::now()));
            }
        } else {
            updated.status = RunStatus::Aborted;
            updated.finished_at = Some(Utc::now());
            updated.message =
                Some("the backend has no trace of the run (removed outside dstack?)".into());
        }
        if updated != *run {
            refreshed.changes.push(Change::PutRun(Box::new(updated)));
        }
    }
    refreshed.changes = with_resource_status(snapshot, std::mem::take(&mut refreshed.changes));
    Ok(refreshed)
}

/// Record a run's manifest, and bind the tags made of the run before its artifacts were saved.
pub fn manifest_changes(snapshot: &Snapshot, run: &str, manifest: Manifest) -> Vec<Change> {
    let mut changes: Vec<Change> = snapshot
        .tags
        .values()
        .filter(|t| t.run == run && t.manifest.as_deref() != Some(run))
        .map(|t| {
            let mut tag = t.clone();
            tag.manifest = Some(run.to_string());
            Change::PutTag(tag)
        })
        .collect();
    changes.insert(0, Change::PutManifest(run.to_string(), Box::new(manifest)));
    changes
}

/// Run status changes, plus the matching status of each run's resource record (a run resource
/// shows the status of its current run).
pub fn with_resource_status(snapshot: &Snapshot, changes: Vec<Change>) -> Vec<Change> {
    let mut all = Vec::with_capacity(changes.len() * 2);
    for change in changes {
        if let Change::PutRun(run) = &change {
            let current = run
                .resource
                .as_ref()
                .and_then(|name| snapshot.resource(&ResourceId::new(Kind::Run, name.clone())));
            if let Some(record) = current.filter(|r| {
                r.attributes.get("run").and_then(serde_json::Value::as_str)
                    == Some(run.name.as_str())
            }) {
                let mut record = record.clone();
                record.status = run.status.to_string();
                record.updated_at = Utc::now();
                all.push(Change::PutResource(Box::new(record)));
            }
        }
        all.push(change);
    }
    all
}

/// Read a run from its backend, retrying transient errors.
pub(crate) async fn read_run(
    backends: &Backends,
    run: &crate::state::RunRecord,
) -> Result<Option<crate::backend::RunObserved>, ApplyError> {
    let backend = backends
        .get(&run.backend)
        .map_err(|e| ApplyError::backend(&run.name, e))?;
    crate::backend::retry(|| backend.run_read(run), &crate::backend::quietly)
        .await
        .map_err(|e| ApplyError::backend(&run.name, e))
}
