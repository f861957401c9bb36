//! Checking the names a state document holds before any of them is used.
//!
//! Names in state become paths: `.dstack/runs/RUN/` (the job store, deleted by `dstack rm`),
//! `refs/LINEAGE/RUN.json` in the artifact store, cache directories per lineage, S3 keys. A state
//! that dstack wrote only holds names that passed the configuration rules, but a state document
//! can be edited and pushed, or written to S3 by anyone with access to the bucket. So every
//! store's [`super::StateStore::load`] checks the names with the same rules as configuration
//! names ([`crate::model::is_valid_name`], [`crate::model::is_valid_run_name`]) and refuses a
//! document that breaks them, naming each bad record; `state push` refuses such a file before
//! writing it.

use super::{Manifest, ResourceRecord, RunRecord, Snapshot};
use crate::model::{Kind, is_valid_name, is_valid_run_name};

/// Whether `lineage` can be a path component and an S3 key segment: what a UUID holds.
pub fn is_valid_lineage(lineage: &str) -> bool {
    (1..=64).contains(&lineage.len())
        && lineage
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A legacy workflow's name (`dstack run WORKFLOW`): one path component, as its loader checks.
fn is_valid_workflow(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['-', '.'])
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '\\')
}

/// `sha256:` and 64 lowercase hex digits: a blob's name in the artifact store.
fn is_valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// A path inside an artifact: relative, without `..`.
fn is_inside(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && path.split('/').all(|part| part != "..")
}

const RESOURCE_RULE: &str =
    "a resource name is a lowercase letter, then 1 to 40 lowercase letters, digits or `-`";
const RUN_RULE: &str = "a run name is a resource name, optionally followed by `-N`";

impl Snapshot {
    /// Every record whose names break the naming rules, each as `what: why`; empty when the
    /// document is safe to use.
    pub fn unsafe_records(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(lineage) = &self.lineage
            && !is_valid_lineage(lineage)
        {
            problems.push(format!(
                "lineage `{}`: a lineage is 1 to 64 letters, digits, `-` or `_` (a UUID)",
                lineage.escape_debug()
            ));
        }
        for (key, record) in &self.resources {
            check_resource(
                &format!("resources[`{}`]", key.escape_debug()),
                record,
                &mut problems,
            );
            if *key != record.id().to_string() {
                problems.push(format!(
                    "resources[`{}`]: the key must be the record's `KIND/NAME`, `{}`",
                    key.escape_debug(),
                    record.id().to_string().escape_debug()
                ));
            }
        }
        for (key, intent) in &self.intents {
            let what = format!("intents[`{}`]", key.escape_debug());
            let name = &intent.resource.name;
            // A run resource's intent names the resource (`train`), a legacy run's names the run.
            let valid = match intent.resource.kind {
                Kind::Run => is_valid_run_name(name),
                _ => is_valid_name(name),
            };
            if !valid {
                problems.push(format!(
                    "{what}: resource `{}`: {RESOURCE_RULE}",
                    intent.resource.to_string().escape_debug()
                ));
            }
            if let Some(record) = &intent.record {
                check_resource(&format!("{what}.record"), record, &mut problems);
            }
            if let Some(run) = &intent.run {
                check_run(&format!("{what}.run"), run, &mut problems);
            }
        }
        for (key, run) in &self.runs {
            let what = format!("runs[`{}`]", key.escape_debug());
            check_key(&what, key, &run.name, &mut problems);
            check_run(&what, run, &mut problems);
        }
        for (key, tag) in &self.tags {
            let what = format!("tags[`{}`]", key.escape_debug());
            check_key(&what, key, &tag.name, &mut problems);
            if !is_valid_name(&tag.name) {
                problems.push(format!(
                    "{what}: name `{}`: {RESOURCE_RULE}",
                    tag.name.escape_debug()
                ));
            }
            if !is_valid_run_name(&tag.run) {
                problems.push(format!(
                    "{what}: run `{}`: {RUN_RULE}",
                    tag.run.escape_debug()
                ));
            }
            if let Some(manifest) = &tag.manifest
                && !is_valid_run_name(manifest)
            {
                problems.push(format!(
                    "{what}: manifest `{}`: {RUN_RULE}",
                    manifest.escape_debug()
                ));
            }
        }
        for (key, manifest) in &self.manifests {
            let what = format!("manifests[`{}`]", key.escape_debug());
            if !is_valid_run_name(key) {
                problems.push(format!("{what}: the key is a run name; {RUN_RULE}"));
            }
            check_manifest(&what, manifest, &mut problems);
        }
        problems
    }
}

fn check_key(what: &str, key: &str, name: &str, problems: &mut Vec<String>) {
    if key != name {
        problems.push(format!(
            "{what}: the key must be the record's name, `{}`",
            name.escape_debug()
        ));
    }
}

fn check_resource(what: &str, record: &ResourceRecord, problems: &mut Vec<String>) {
    if !is_valid_name(&record.name) {
        problems.push(format!(
            "{what}: name `{}`: {RESOURCE_RULE}",
            record.name.escape_debug()
        ));
    }
}

fn check_run(what: &str, run: &RunRecord, problems: &mut Vec<String>) {
    if !is_valid_run_name(&run.name) {
        problems.push(format!(
            "{what}: name `{}`: {RUN_RULE}",
            run.name.escape_debug()
        ));
    }
    if let Some(resource) = &run.resource
        && !is_valid_name(resource)
    {
        problems.push(format!(
            "{what}: resource `{}`: {RESOURCE_RULE}",
            resource.escape_debug()
        ));
    }
    if let Some(workflow) = &run.workflow
        && !is_valid_workflow(workflow)
    {
        problems.push(format!(
            "{what}: workflow `{}`: a workflow name is one path component, not starting with `-` or `.`",
            workflow.escape_debug()
        ));
    }
}

fn check_manifest(what: &str, manifest: &Manifest, problems: &mut Vec<String>) {
    if !is_valid_run_name(&manifest.run) {
        problems.push(format!(
            "{what}: run `{}`: {RUN_RULE}",
            manifest.run.escape_debug()
        ));
    }
    for file in &manifest.files {
        if !is_inside(&file.artifact) || !is_inside(&file.path) {
            problems.push(format!(
                "{what}: file `{}/{}`: artifact paths are relative, without `..`",
                file.artifact.escape_debug(),
                file.path.escape_debug()
            ));
        }
        if !is_valid_digest(&file.digest) {
            problems.push(format!(
                "{what}: file `{}/{}`: digest `{}` is not `sha256:` and 64 hex digits",
                file.artifact.escape_debug(),
                file.path.escape_debug(),
                file.digest.escape_debug()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::contract::record;
    use crate::state::{ManifestFile, TagRecord};

    fn run(name: &str) -> RunRecord {
        serde_json::from_value(serde_json::json!({
            "name": name, "resource": "train", "number": 1, "type": "task",
            "status": "done", "backend": "local", "input_digest": "", "spec": {},
            "submitted_at": "2024-01-01T00:00:00Z"
        }))
        .expect("run")
    }

    fn valid() -> Snapshot {
        let mut snapshot = Snapshot::empty();
        snapshot.lineage = Some(uuid::Uuid::new_v4().to_string());
        snapshot
            .resources
            .insert("volume/data".into(), record("data", "active"));
        snapshot.runs.insert("train-1".into(), run("train-1"));
        snapshot.tags.insert(
            "best".into(),
            TagRecord {
                name: "best".into(),
                run: "train-1".into(),
                manifest: Some("train-1".into()),
                created_at: chrono::Utc::now(),
            },
        );
        snapshot.manifests.insert(
            "train-1".into(),
            Manifest {
                run: "train-1".into(),
                files: vec![ManifestFile {
                    artifact: "output".into(),
                    path: "sub/model.bin".into(),
                    size: 1,
                    digest: format!("sha256:{}", "ab".repeat(32)),
                    mode: 0o644,
                }],
                created_at: chrono::Utc::now(),
            },
        );
        snapshot
    }

    #[test]
    fn a_state_dstack_writes_passes() {
        assert_eq!(valid().unsafe_records(), Vec::<String>::new());
        assert_eq!(Snapshot::empty().unsafe_records(), Vec::<String>::new());
    }

    #[test]
    fn names_that_are_paths_are_named_with_their_record() {
        for name in ["../../../victim", "/tmp/victim", "..", "train-1/../../x"] {
            let mut snapshot = valid();
            snapshot.runs.insert(name.into(), run(name));
            let problems = snapshot.unsafe_records();
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("runs[`{name}`]: name `{name}`"))),
                "{problems:?}"
            );
        }
    }

    /// A change that makes a valid snapshot unsafe.
    type Edit = Box<dyn Fn(&mut Snapshot)>;

    #[test]
    fn every_record_kind_is_checked() {
        let cases: Vec<(&str, Edit)> = vec![
            ("lineage", Box::new(|s| s.lineage = Some("../x".into()))),
            (
                "resources[`volume/data`]: name",
                Box::new(|s| {
                    s.resources.get_mut("volume/data").expect("data").name = "../x".into();
                }),
            ),
            (
                "runs[`train-1`]: the key",
                Box::new(|s| s.runs.get_mut("train-1").expect("run").name = "train-2".into()),
            ),
            (
                "runs[`train-1`]: resource",
                Box::new(|s| s.runs.get_mut("train-1").expect("run").resource = Some("/x".into())),
            ),
            (
                "runs[`train-1`]: workflow",
                Box::new(|s| {
                    s.runs.get_mut("train-1").expect("run").workflow = Some("../w".into());
                }),
            ),
            (
                "tags[`best`]: run",
                Box::new(|s| s.tags.get_mut("best").expect("tag").run = "../x".into()),
            ),
            (
                "manifests[`train-1`]: file `output/../../x`",
                Box::new(|s| {
                    s.manifests.get_mut("train-1").expect("manifest").files[0].path =
                        "../../x".into();
                }),
            ),
            (
                "manifests[`train-1`]: file `output/sub/model.bin`: digest",
                Box::new(|s| {
                    s.manifests.get_mut("train-1").expect("manifest").files[0].digest =
                        "sha256:../../../etc/passwd".into();
                }),
            ),
        ];
        for (expected, edit) in cases {
            let mut snapshot = valid();
            edit(&mut snapshot);
            let problems = snapshot.unsafe_records();
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{expected}: {problems:?}"
            );
        }
    }

    #[test]
    fn lineages_are_one_path_component() {
        assert!(is_valid_lineage("5b8c2a1e-0f3d-4a8e-9c1b-2d7e6f5a4b3c"));
        assert!(is_valid_lineage("some-other-lineage"));
        for bad in ["", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(!is_valid_lineage(bad), "{bad}");
        }
    }
}
