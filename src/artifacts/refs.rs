//! What names mean to the artifact commands, and how refs follow runs and tags.
//!
//! A name is a tag or a run (`train-3`, or a run resource `train` meaning its latest run): run
//! and tag names share one namespace (DESIGN §3), so it is never ambiguous. A run's manifest is
//! recorded in state when its end is; until then (or when state lost it) the store's ref is read.
//!
//! Deleting a run removes its ref; a tag made of it first gets a ref of its own, so the tag keeps
//! the manifest and its blobs. Blobs are collected when no ref of any project points to them.

use super::Store;
use crate::state::{Change, Manifest, RunRecord, RunStatus, Snapshot};

/// Errors of the artifact commands.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ArtifactError {
    #[error("there is no run or tag `{0}`")]
    #[diagnostic(help("`dstack ps -a` lists the runs, `dstack tags list` the tags"))]
    UnknownName(String),

    #[error("{run} is {status}: its artifacts are saved when it ends")]
    #[diagnostic(help(
        "wait for it (`dstack logs {run} -f`); artifacts with `mount: true` are saved as they are written"
    ))]
    NotFinished { run: String, status: RunStatus },

    #[error("{run} ended {status}, so its artifacts were not saved")]
    #[diagnostic(help("only runs that end `done` or `stopped` save their artifacts"))]
    NotSaved { run: String, status: RunStatus },

    #[error("the manifest of {0} is missing from state and from the artifact store")]
    #[diagnostic(help(
        "if it was pushed, `dstack pull {0}` fetches it from the remote artifact store"
    ))]
    ManifestMissing(String),

    #[error("the artifact store: {0}")]
    Store(String),
}

/// What a name resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Run(String),
    Tag { tag: String, run: String },
}

/// A run's or tag's artifacts.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The name as given.
    pub name: String,
    pub source: Source,
    pub manifest: Manifest,
}

impl Resolved {
    /// The run the artifacts come from.
    pub fn run(&self) -> &str {
        match &self.source {
            Source::Run(run) | Source::Tag { run, .. } => run,
        }
    }
}

/// Whether a run belongs to a run resource or legacy workflow of that name.
fn belongs_to(run: &RunRecord, name: &str) -> bool {
    run.resource.as_deref() == Some(name) || run.workflow.as_deref() == Some(name)
}

/// A run by name: a run (`train-3`), or a run resource (or legacy workflow) meaning its latest
/// run (`train`).
pub fn find_run<'a>(snapshot: &'a Snapshot, name: &str) -> Option<&'a RunRecord> {
    snapshot.runs.get(name).or_else(|| {
        snapshot
            .runs
            .values()
            .filter(|r| belongs_to(r, name))
            .max_by_key(|r| (r.submitted_at, r.number))
    })
}

/// The latest run of a run resource (or legacy workflow) that ended `done`.
pub fn latest_done<'a>(snapshot: &'a Snapshot, resource: &str) -> Option<&'a RunRecord> {
    snapshot
        .runs
        .values()
        .filter(|r| belongs_to(r, resource) && r.status == RunStatus::Done)
        .max_by_key(|r| (r.submitted_at, r.number))
}

/// The manifest of a run: from state, else the store's ref.
fn run_manifest(
    snapshot: &Snapshot,
    store: &Store,
    lineage: &str,
    run: &str,
) -> Result<Manifest, ArtifactError> {
    if let Some(manifest) = snapshot.manifests.get(run) {
        return Ok(manifest.clone());
    }
    if let Some(manifest) = store.manifest(lineage, run) {
        return Ok(manifest);
    }
    match snapshot.runs.get(run) {
        Some(record) if !record.status.is_finished() => Err(ArtifactError::NotFinished {
            run: run.to_string(),
            status: record.status,
        }),
        Some(record) if matches!(record.status, RunStatus::Failed | RunStatus::Aborted) => {
            Err(ArtifactError::NotSaved {
                run: run.to_string(),
                status: record.status,
            })
        }
        Some(record) if !has_artifacts(record) => Ok(Manifest {
            run: run.to_string(),
            files: Vec::new(),
            created_at: record.finished_at.unwrap_or(record.submitted_at),
        }),
        _ => Err(ArtifactError::ManifestMissing(run.to_string())),
    }
}

fn has_artifacts(run: &RunRecord) -> bool {
    run.spec
        .get("artifacts")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// Resolve a run or tag name to its artifacts.
pub fn resolve(
    snapshot: &Snapshot,
    store: &Store,
    lineage: &str,
    name: &str,
) -> Result<Resolved, ArtifactError> {
    if let Some(tag) = snapshot.tags.get(name) {
        let key = tag.manifest.as_deref().unwrap_or(&tag.run);
        let manifest = match snapshot.manifests.get(key) {
            Some(manifest) => manifest.clone(),
            None => match store.tag(lineage, name) {
                Some(manifest) => manifest,
                None => run_manifest(snapshot, store, lineage, &tag.run)?,
            },
        };
        return Ok(Resolved {
            name: name.to_string(),
            source: Source::Tag {
                tag: name.to_string(),
                run: tag.run.clone(),
            },
            manifest,
        });
    }
    let run = find_run(snapshot, name).ok_or_else(|| ArtifactError::UnknownName(name.into()))?;
    Ok(Resolved {
        name: name.to_string(),
        source: Source::Run(run.name.clone()),
        manifest: run_manifest(snapshot, store, lineage, &run.name)?,
    })
}

/// The state changes that forget a run: the run, and its manifest unless a tag keeps it.
pub fn forget_run(snapshot: &Snapshot, run: &str) -> Vec<Change> {
    let mut changes = vec![Change::DeleteRun(run.to_string())];
    let kept = snapshot
        .tags
        .values()
        .any(|t| t.run == run || t.manifest.as_deref() == Some(run));
    if !kept && snapshot.manifests.contains_key(run) {
        changes.push(Change::DeleteManifest(run.to_string()));
    }
    changes
}

/// The state changes that forget a tag: the tag, and the manifest it kept if nothing else does.
pub fn forget_tag(snapshot: &Snapshot, tag: &str) -> Vec<Change> {
    let mut changes = vec![Change::DeleteTag(tag.to_string())];
    if let Some(record) = snapshot.tags.get(tag) {
        let key = record
            .manifest
            .clone()
            .unwrap_or_else(|| record.run.clone());
        let still_used = snapshot.runs.contains_key(&key)
            || snapshot
                .tags
                .values()
                .any(|t| t.name != tag && (t.run == key || t.manifest.as_deref() == Some(&key)));
        if !still_used && snapshot.manifests.contains_key(&key) {
            changes.push(Change::DeleteManifest(key));
        }
    }
    changes
}

/// Give a tag its own ref in the store (when its run's manifest is known), so it keeps the
/// blobs after the run is gone.
pub fn keep_tag(
    snapshot: &Snapshot,
    store: &Store,
    lineage: &str,
    tag: &str,
) -> Result<(), ArtifactError> {
    let Some(record) = snapshot.tags.get(tag) else {
        return Ok(());
    };
    let key = record.manifest.as_deref().unwrap_or(&record.run);
    let manifest = snapshot
        .manifests
        .get(key)
        .cloned()
        .or_else(|| store.manifest(lineage, &record.run));
    match manifest {
        Some(manifest) => store
            .put_tag(lineage, tag, &manifest)
            .map_err(ArtifactError::Store)?,
        // Not saved yet: the run's ref will keep the blobs (a re-pointed tag drops its old ref).
        None => store.remove_tag(lineage, tag),
    }
    Ok(())
}

/// After a run is deleted: tags made of it keep their own refs, the run's ref goes, and blobs
/// no ref points to are collected. Returns how many blobs were collected.
pub fn release_run(
    snapshot: &Snapshot,
    store: &Store,
    lineage: &str,
    run: &str,
) -> Result<usize, ArtifactError> {
    for tag in snapshot.tags.values().filter(|t| t.run == run) {
        keep_tag(snapshot, store, lineage, &tag.name)?;
    }
    store.remove_manifest(lineage, run);
    store.collect_garbage().map_err(ArtifactError::Store)
}

/// After a tag is deleted: its ref goes and unreferenced blobs are collected.
pub fn release_tag(store: &Store, lineage: &str, tag: &str) -> Result<usize, ArtifactError> {
    store.remove_tag(lineage, tag);
    store.collect_garbage().map_err(ArtifactError::Store)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;
    use crate::model::ConfigType;
    use crate::state::{ManifestFile, TagRecord};

    fn run(name: &str, status: RunStatus) -> RunRecord {
        RunRecord {
            name: name.into(),
            workflow: None,
            resource: name.rsplit_once('-').map(|(r, _)| r.to_string()),
            number: 1,
            run_type: ConfigType::Task,
            status,
            backend: "local".into(),
            input_digest: String::new(),
            inputs: BTreeMap::new(),
            spec: serde_json::json!({"artifacts": ["output"]}),
            submitted_at: Utc::now(),
            finished_at: None,
            exit_code: None,
            message: None,
            job: BTreeMap::new(),
        }
    }

    fn manifest(run: &str, digest: &str) -> Manifest {
        Manifest {
            run: run.into(),
            files: vec![ManifestFile {
                artifact: "output".into(),
                path: "a.txt".into(),
                size: 1,
                digest: digest.into(),
                mode: 0o644,
            }],
            created_at: Utc::now(),
        }
    }

    #[test]
    fn names_resolve_to_runs_resources_and_tags() {
        let dir = tempfile::tempdir().expect("temp");
        let store = Store::new(dir.path().to_path_buf());
        let mut snapshot = Snapshot::empty();
        snapshot
            .runs
            .insert("train-1".into(), run("train-1", RunStatus::Done));
        snapshot
            .manifests
            .insert("train-1".into(), manifest("train-1", "sha256:aa"));
        snapshot.tags.insert(
            "best".into(),
            TagRecord {
                name: "best".into(),
                run: "train-1".into(),
                manifest: None,
                created_at: Utc::now(),
            },
        );
        let by_resource = resolve(&snapshot, &store, "l", "train").expect("resource");
        assert_eq!(by_resource.source, Source::Run("train-1".into()));
        let by_tag = resolve(&snapshot, &store, "l", "best").expect("tag");
        assert_eq!(by_tag.run(), "train-1");
        assert_eq!(by_tag.manifest.files.len(), 1);
        assert!(matches!(
            resolve(&snapshot, &store, "l", "nope"),
            Err(ArtifactError::UnknownName(_))
        ));
        snapshot
            .runs
            .insert("eval-1".into(), run("eval-1", RunStatus::Running));
        assert!(matches!(
            resolve(&snapshot, &store, "l", "eval"),
            Err(ArtifactError::NotFinished { .. })
        ));
        snapshot
            .runs
            .insert("bad-1".into(), run("bad-1", RunStatus::Aborted));
        assert!(matches!(
            resolve(&snapshot, &store, "l", "bad-1"),
            Err(ArtifactError::NotSaved { .. })
        ));
    }

    #[test]
    fn a_tag_keeps_the_manifest_of_a_forgotten_run() {
        let mut snapshot = Snapshot::empty();
        snapshot
            .runs
            .insert("train-1".into(), run("train-1", RunStatus::Done));
        snapshot
            .manifests
            .insert("train-1".into(), manifest("train-1", "sha256:aa"));
        assert_eq!(
            forget_run(&snapshot, "train-1"),
            vec![
                Change::DeleteRun("train-1".into()),
                Change::DeleteManifest("train-1".into())
            ]
        );
        snapshot.tags.insert(
            "best".into(),
            TagRecord {
                name: "best".into(),
                run: "train-1".into(),
                manifest: Some("train-1".into()),
                created_at: Utc::now(),
            },
        );
        assert_eq!(
            forget_run(&snapshot, "train-1"),
            vec![Change::DeleteRun("train-1".into())]
        );
        snapshot.runs.clear();
        assert_eq!(
            forget_tag(&snapshot, "best"),
            vec![
                Change::DeleteTag("best".into()),
                Change::DeleteManifest("train-1".into())
            ]
        );
    }
}
