//! `cache:` of legacy workflows: directories kept between runs of the same workflow.
//!
//! A cached directory lives on this machine in `CACHE/LINEAGE/WORKFLOW/PATH`, where `CACHE` is the
//! directory next to the local artifact store (`~/.dstack/cache` for the default store
//! `~/.dstack/artifacts`) and `LINEAGE` is the project's state lineage, so two projects never
//! share a cache even when their workflows have the same name. Before the run starts, the runner
//! copies it into the working directory (creating the directory when nothing is cached yet);
//! after the run ends `done`, `failed` or `stopped`, it copies the directory back, replacing what
//! was kept. An aborted run keeps nothing, as it saves no artifacts.
//!
//! A save is staged next to the cache and swapped in by renames, so a concurrent run of the same
//! workflow reads either the old or the new cache, never half of one; the last run to end wins.
//! A cache that cannot be restored or saved is reported in the run's log and does not fail the
//! run: it only makes the next run slower.
//!
//! `dstack run` asks for a cache with two labels on the run's request: `dstack.workflow` and
//! `dstack.cache` (a JSON list of paths relative to the working directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::job::JobSpec;

/// The label naming the legacy workflow of a run.
pub const WORKFLOW_LABEL: &str = "dstack.workflow";
/// The label listing the cached paths (JSON list).
pub const CACHE_LABEL: &str = "dstack.cache";

/// One cached directory of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCache {
    /// Relative to the working directory.
    pub path: String,
    /// Where it is kept between runs.
    pub store: PathBuf,
}

/// The cache root next to an artifact store (`~/.dstack/artifacts` → `~/.dstack/cache`).
pub fn root(artifact_store: &Path) -> PathBuf {
    artifact_store
        .parent()
        .map_or_else(|| PathBuf::from(".dstack-cache"), |p| p.join("cache"))
}

/// Keep path components to plain names: no separators, no `.`/`..`, nothing empty.
fn safe_component(text: &str) -> Option<&str> {
    (!text.is_empty() && text != "." && text != ".." && !text.contains(['/', '\\', '\0']))
        .then_some(text)
}

/// The cached directories a run asks for through its labels.
pub fn for_job(
    labels: &BTreeMap<String, String>,
    lineage: &str,
    artifact_store: &Path,
) -> Vec<JobCache> {
    let (Some(workflow), Some(paths)) = (labels.get(WORKFLOW_LABEL), labels.get(CACHE_LABEL))
    else {
        return Vec::new();
    };
    let (Some(workflow), Some(lineage)) = (safe_component(workflow), safe_component(lineage))
    else {
        return Vec::new();
    };
    let paths: Vec<String> = serde_json::from_str(paths).unwrap_or_default();
    let base = root(artifact_store).join(lineage).join(workflow);
    paths
        .into_iter()
        .filter(|path| path.split('/').all(|part| safe_component(part).is_some()))
        .map(|path| JobCache {
            store: base.join(&path),
            path,
        })
        .collect()
}

/// Where a cached path is in the job's working directory on this machine.
fn working_path(spec: &JobSpec, path: &str) -> PathBuf {
    crate::artifacts::artifact_directory(spec, path)
}

/// Copy a directory tree: files with their modes, symbolic links as links; other kinds of file
/// (sockets, pipes) are skipped.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path())?;
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(link, &target)?;
        } else if kind.is_file() {
            if target.is_symlink() {
                std::fs::remove_file(&target)?;
            }
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Put every cached directory of the job into its working directory.
pub fn restore(spec: &JobSpec) -> Result<(), String> {
    for cache in &spec.cache {
        let target = working_path(spec, &cache.path);
        if target.is_symlink() || (target.exists() && !target.is_dir()) {
            return Err(format!(
                "cannot restore the cache `{}`: it is not a directory in the working directory",
                cache.path
            ));
        }
        let result = if cache.store.is_dir() {
            copy_tree(&cache.store, &target)
        } else {
            std::fs::create_dir_all(&target)
        };
        result.map_err(|e| format!("cannot restore the cache `{}`: {e}", cache.path))?;
    }
    Ok(())
}

/// Keep every cached directory of the job, replacing what was kept before.
pub fn save(spec: &JobSpec) -> Result<(), String> {
    for cache in &spec.cache {
        let from = working_path(spec, &cache.path);
        if from.is_symlink() || !from.is_dir() {
            continue;
        }
        let fail = |e: std::io::Error| format!("cannot save the cache `{}`: {e}", cache.path);
        let parent = cache.store.parent().ok_or_else(|| {
            format!(
                "cannot save the cache `{}`: no place to keep it",
                cache.path
            )
        })?;
        std::fs::create_dir_all(parent).map_err(fail)?;
        let name = cache
            .store
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let unique = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let staged = parent.join(format!(".{name}.new-{unique}"));
        let retired = parent.join(format!(".{name}.old-{unique}"));
        if let Err(e) = copy_tree(&from, &staged) {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(fail(e));
        }
        let had_cache = cache.store.exists();
        if had_cache && let Err(e) = std::fs::rename(&cache.store, &retired) {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(fail(e));
        }
        if let Err(e) = std::fs::rename(&staged, &cache.store) {
            // Put the old cache back rather than lose it.
            if had_cache {
                let _ = std::fs::rename(&retired, &cache.store);
            }
            let _ = std::fs::remove_dir_all(&staged);
            return Err(fail(e));
        }
        if had_cache {
            let _ = std::fs::remove_dir_all(&retired);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(workflow: &str, paths: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (WORKFLOW_LABEL.to_string(), workflow.to_string()),
            (CACHE_LABEL.to_string(), paths.to_string()),
        ])
    }

    fn job(code_dir: &Path, working_dir: &str, cache: Vec<JobCache>) -> JobSpec {
        let mut spec: JobSpec = serde_json::from_value(serde_json::json!({
            "run_name": "sly-fox-1", "resource": null, "project": "p", "lineage": "l",
            "run_type": "task", "runtime": "host", "image": null, "shell": "/bin/sh",
            "script": "", "keep_alive": false, "env": {}, "working_dir": working_dir,
            "code_dir": code_dir, "mounts": [], "ports": [], "limits": {}, "user": null,
            "privileged": false, "entrypoint": null, "max_duration_secs": null,
            "stop_duration_secs": 0, "retry": {"on_error": false, "duration_secs": 0},
            "replicas": 1, "readiness": null, "labels": {}, "artifacts": [],
            "submitted_at": "2024-01-01T00:00:00Z"
        }))
        .expect("job spec");
        spec.cache = cache;
        spec
    }

    #[test]
    fn labels_give_places_under_the_cache_root() {
        let store = Path::new("/home/u/.dstack/artifacts");
        let caches = for_job(&labels("train", r#"["pip", ".cache/hf"]"#), "lin", store);
        assert_eq!(
            caches,
            [
                JobCache {
                    path: "pip".into(),
                    store: "/home/u/.dstack/cache/lin/train/pip".into()
                },
                JobCache {
                    path: ".cache/hf".into(),
                    store: "/home/u/.dstack/cache/lin/train/.cache/hf".into()
                },
            ]
        );
        // Nothing escapes the cache root, whatever the labels say.
        assert!(for_job(&labels("../x", r#"["a"]"#), "lin", store).is_empty());
        assert!(
            for_job(
                &labels("w", r#"["../a", "b/../../c", "", "/abs"]"#),
                "lin",
                store
            )
            .is_empty()
        );
        assert!(for_job(&labels("w", "not json"), "lin", store).is_empty());
        assert!(for_job(&BTreeMap::new(), "lin", store).is_empty());
    }

    #[test]
    fn a_saved_directory_comes_back_in_the_next_run() {
        let temp = tempfile::tempdir().expect("temp");
        let store = temp.path().join("cache/l/w/data");
        let cache = vec![JobCache {
            path: "data".into(),
            store: store.clone(),
        }];
        // First run: nothing cached yet; the directory is made, filled, saved.
        let first = temp.path().join("run-1/code");
        std::fs::create_dir_all(&first).expect("code dir");
        let spec = job(&first, "/workflow/sub", cache.clone());
        restore(&spec).expect("restore");
        let dir = first.join("sub/data");
        assert!(dir.is_dir());
        std::fs::create_dir_all(dir.join("nested")).expect("nested");
        std::fs::write(dir.join("nested/a.txt"), "a").expect("write");
        std::os::unix::fs::symlink("nested/a.txt", dir.join("link")).expect("link");
        save(&spec).expect("save");
        assert_eq!(
            std::fs::read_to_string(store.join("nested/a.txt")).expect("kept"),
            "a"
        );
        // Second run: restored, changed, saved again; what was removed is gone from the cache.
        let second = temp.path().join("run-2/code");
        std::fs::create_dir_all(&second).expect("code dir");
        let spec = job(&second, "/workflow/sub", cache);
        restore(&spec).expect("restore");
        let dir = second.join("sub/data");
        assert_eq!(
            std::fs::read_to_string(dir.join("link")).expect("link"),
            "a"
        );
        std::fs::remove_dir_all(dir.join("nested")).expect("remove");
        std::fs::write(dir.join("b.txt"), "b").expect("write");
        save(&spec).expect("save");
        assert!(!store.join("nested").exists());
        assert_eq!(
            std::fs::read_to_string(store.join("b.txt")).expect("kept"),
            "b"
        );
        // No staging directories are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(store.parent().expect("parent"))
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("data")]);
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_an_error() {
        let temp = tempfile::tempdir().expect("temp");
        let code = temp.path().join("code");
        std::fs::create_dir_all(&code).expect("code");
        std::fs::write(code.join("data"), "not a dir").expect("file");
        let spec = job(
            &code,
            "/workflow",
            vec![JobCache {
                path: "data".into(),
                store: temp.path().join("cache/data"),
            }],
        );
        assert!(
            restore(&spec)
                .expect_err("a file")
                .contains("not a directory")
        );
        // Nothing to save from a file: the cache is left as it was.
        save(&spec).expect("save skips it");
        assert!(!temp.path().join("cache/data").exists());
    }
}
