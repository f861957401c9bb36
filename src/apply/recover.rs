//! Resolving intents left by an interrupted apply.
//!
//! An intent is recorded before every backend call that creates or deletes, and removed with the
//! call's result. One that is still there means the process died in between. Objects carry the
//! intent's id as a label (`dstack.intent`), so the object a create made — if it made one — is
//! found exactly and adopted; if there is none, the intent is forgotten. A delete is settled by
//! looking for the object: gone means the resource is forgotten, present means it stays. A run
//! resource has one object per run: each run whose object is gone is forgotten, and the resource
//! goes only when none is left (a surviving run stays recorded, so the next plan deletes it).

use std::collections::BTreeMap;

use super::ApplyError;
use crate::backend::Backends;
use crate::model::Kind;
use crate::state::{Change, IntentAction, Snapshot, StateStore, Step};

/// Resolve every intent of `snapshot`, commit the result, and say what was done.
pub async fn recover(
    store: &dyn StateStore,
    snapshot: &mut Snapshot,
    backends: &Backends,
) -> Result<Vec<String>, ApplyError> {
    if snapshot.intents.is_empty() {
        return Ok(Vec::new());
    }
    let mut step = Step::new("recover interrupted operations");
    let mut notes = Vec::new();
    for intent in snapshot.intents.values() {
        let backend = match backends.get(&intent.backend) {
            Ok(backend) => backend,
            Err(error) => {
                notes.push(format!(
                    "cannot resolve the interrupted {} of {}: {error}",
                    intent.action, intent.resource
                ));
                continue;
            }
        };
        let address = intent.resource.to_string();
        match intent.action {
            IntentAction::Create | IntentAction::Update => {
                let labels = BTreeMap::from([("dstack.intent".to_string(), intent.id.clone())]);
                let found =
                    crate::backend::retry(|| backend.find(&labels), &crate::backend::quietly)
                        .await
                        .map_err(|e| ApplyError::backend(&address, e))?;
                match (found.into_iter().next(), &intent.record) {
                    (Some(observed), Some(record)) => {
                        let mut record = record.clone();
                        record.backend_id = observed.backend_id.clone().or(record.backend_id);
                        for (key, value) in &observed.attributes {
                            record.attributes.insert(key.clone(), value.clone());
                        }
                        record.status = observed.status;
                        step.changes.push(Change::PutResource(Box::new(record)));
                        if let Some(run) = &intent.run {
                            let mut run = (**run).clone();
                            if let Some(id) = observed.backend_id {
                                run.job.insert("backend_id".into(), id.into());
                            }
                            // What the backend says of the run (its instance, its fleet node),
                            // as a create that finished records it.
                            run.job.remove("intent");
                            run.job.extend(observed.attributes);
                            step.changes.push(Change::PutRun(Box::new(run)));
                        }
                        notes.push(format!(
                            "adopted {address}, created by an interrupted apply"
                        ));
                    }
                    _ => notes.push(format!(
                        "forgot the interrupted {} of {address}: nothing was created",
                        intent.action
                    )),
                }
            }
            IntentAction::Delete => {
                let Some(record) = snapshot.resources.get(&address).cloned() else {
                    notes.push(format!(
                        "forgot the interrupted delete of {address}: it is no longer recorded"
                    ));
                    step.changes.push(Change::DeleteIntent(intent.id.clone()));
                    continue;
                };
                let gone = match record.kind {
                    // Tags live in the state only.
                    Kind::Tag => true,
                    // A run resource has no object of its own: its runs do. Deleting it removes
                    // them one by one, forgetting each as it goes, so the interrupted delete may
                    // have removed some, all or none of them.
                    Kind::Run => {
                        let (survivors, changes) =
                            settle_runs(snapshot, backends, &record.name).await?;
                        step.changes.extend(changes);
                        survivors == 0
                    }
                    Kind::Volume | Kind::Fleet => {
                        crate::backend::retry(|| backend.read(&record), &crate::backend::quietly)
                            .await
                            .map_err(|e| ApplyError::backend(&address, e))?
                            .is_none()
                    }
                };
                if gone {
                    step.changes
                        .push(Change::DeleteResource(intent.resource.clone()));
                    notes.push(format!(
                        "{address} was deleted by an interrupted apply; forgot it"
                    ));
                } else {
                    notes.push(format!(
                        "{address} survived an interrupted delete; it is kept"
                    ));
                }
            }
        }
        step.changes.push(Change::DeleteIntent(intent.id.clone()));
    }
    if !step.changes.is_empty() {
        let committed = store
            .commit(snapshot.lineage.as_deref(), snapshot.serial, &step)
            .await?;
        snapshot.apply(&step);
        snapshot.lineage = Some(committed.lineage);
        snapshot.serial = committed.serial;
    }
    Ok(notes)
}

/// Look for the object of every run recorded for the run resource `resource`: the runs whose
/// object is gone were removed by the interrupted delete and are forgotten; the others stay
/// recorded, so the next plan deletes them again instead of leaking them. Returns how many stay,
/// and the changes that forget the rest.
async fn settle_runs(
    snapshot: &Snapshot,
    backends: &Backends,
    resource: &str,
) -> Result<(usize, Vec<Change>), ApplyError> {
    let mut survivors = 0;
    let mut changes = Vec::new();
    for run in snapshot
        .runs
        .values()
        .filter(|r| r.resource.as_deref() == Some(resource))
    {
        if super::refresh::read_run(backends, run).await?.is_some() {
            survivors += 1;
        } else {
            changes.extend(crate::artifacts::refs::forget_run(snapshot, &run.name));
        }
    }
    Ok((survivors, changes))
}
