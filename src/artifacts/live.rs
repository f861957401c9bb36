//! `mount: true`: artifacts saved while the run writes them.
//!
//! The runner polls the mounted artifact directories (every second by default) and stores each
//! new or changed file — changed meaning its size or modification time moved — then rewrites the
//! run's ref and `manifest.json`, so checkpoints survive an interrupted run and `dstack ls`
//! shows them before the run ends. The final save at the end of the run covers every artifact.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use chrono::Utc;

use super::{Store, artifact_directory, walk, write_json};
use crate::runner::job::JobSpec;
use crate::state::{Manifest, ManifestFile};

/// What was saved, so unchanged files are not read again.
#[derive(Debug, Default)]
pub struct LiveSaver {
    /// `(artifact, path)` → (size, mtime, the saved entry).
    seen: BTreeMap<(String, String), (u64, Option<SystemTime>, ManifestFile)>,
}

impl LiveSaver {
    /// Save the new and changed files of the run's `mount: true` artifacts; write the manifest
    /// when anything changed. Returns how many files were saved.
    pub fn sync(&mut self, spec: &JobSpec) -> Result<usize, String> {
        let Some(root) = &spec.artifact_store else {
            return Ok(0);
        };
        let store = Store::new(root.clone());
        let _adding = store.adding()?;
        let mut saved = 0;
        for artifact in spec.artifacts.iter().filter(|a| a.mount) {
            let directory = artifact_directory(spec, &artifact.path);
            if !directory.exists() {
                continue;
            }
            for path in walk(&directory)? {
                let Ok(metadata) = std::fs::metadata(&path) else {
                    continue; // removed or a dangling link meanwhile
                };
                if !metadata.is_file() || escapes(&directory, &path) {
                    continue;
                }
                let relative = path
                    .strip_prefix(&directory)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/");
                let key = (artifact.path.clone(), relative.clone());
                let modified = metadata.modified().ok();
                if self
                    .seen
                    .get(&key)
                    .is_some_and(|(size, mtime, _)| *size == metadata.len() && *mtime == modified)
                {
                    continue;
                }
                let (digest, size) = match store.put_file(&path) {
                    Ok(done) => done,
                    // Being replaced as we read it: the next round gets it.
                    Err(_) if !path.exists() => continue,
                    Err(e) => return Err(e),
                };
                let entry = ManifestFile {
                    artifact: artifact.path.clone(),
                    path: relative,
                    size,
                    digest,
                    mode: super::file_mode(&path),
                };
                self.seen.insert(key, (metadata.len(), modified, entry));
                saved += 1;
            }
        }
        if saved > 0 {
            let manifest = self.manifest(spec);
            store.put_manifest(&spec.lineage, &manifest)?;
            write_json(&job_dir(spec).join("manifest.json"), &manifest)?;
        }
        Ok(saved)
    }

    /// The manifest of what was saved so far.
    pub fn manifest(&self, spec: &JobSpec) -> Manifest {
        Manifest {
            run: spec.run_name.clone(),
            files: self.seen.values().map(|(_, _, f)| f.clone()).collect(),
            created_at: Utc::now(),
        }
    }
}

fn escapes(directory: &Path, path: &Path) -> bool {
    match (directory.canonicalize(), path.canonicalize()) {
        (Ok(directory), Ok(path)) => !path.starts_with(directory),
        _ => true,
    }
}

/// The job's directory (`.dstack/runs/RUN/`), parent of its code snapshot.
pub fn job_dir(spec: &JobSpec) -> std::path::PathBuf {
    spec.code_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Poll the mounted artifacts until `stop` is set; returns the saver (for a last sync).
pub async fn watch(
    spec: JobSpec,
    interval: std::time::Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> LiveSaver {
    use std::sync::atomic::Ordering;
    let mut saver = LiveSaver::default();
    while !stop.load(Ordering::SeqCst) {
        let spec = spec.clone();
        let mut moved = std::mem::take(&mut saver);
        let round = tokio::task::spawn_blocking(move || {
            let result = moved.sync(&spec);
            (moved, result)
        })
        .await;
        match round {
            Ok((back, result)) => {
                saver = back;
                if let Err(error) = result {
                    tracing::warn!("saving mounted artifacts: {error}");
                }
            }
            Err(_) => return saver,
        }
        let deadline = tokio::time::Instant::now() + interval;
        while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    saver
}
