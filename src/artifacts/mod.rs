//! The content-addressed artifact store.
//!
//! Layout of a store (`~/.dstack/artifacts`, or `artifacts.local` in `.dstack/config.yml`):
//!
//! ```text
//! blobs/sha256/ab/abcdef…     file contents, named by their SHA-256
//! refs/LINEAGE/RUN.json       the manifest of a run of the project with that state lineage
//! refs/LINEAGE/tags/TAG.json  the manifest a tag keeps alive
//! ```
//!
//! Files are streamed into the store (never held in memory whole) while their digest is
//! computed; identical files are stored once. Refs are per project lineage, so one store serves
//! many projects safely, and a blob is collected only when no ref of any project points to it.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::runner::job::{JobSpec, write_atomic};

pub mod live;
pub mod refs;
pub mod remote;
pub mod save;
use crate::state::{Manifest, ManifestFile};

/// A local artifact store.
#[derive(Clone, Debug)]
pub struct Store {
    pub root: PathBuf,
}

/// The default local store: `~/.dstack/artifacts`.
pub fn default_root(home: Option<&Path>) -> PathBuf {
    home.map_or_else(
        || PathBuf::from(".dstack-artifacts"),
        |h| h.join(".dstack").join("artifacts"),
    )
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(|e| io(.., e))`
fn io(context: &str, error: std::io::Error) -> String {
    format!("{context}: {error}")
}

impl Store {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Where a blob lives.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let prefix = hex.get(..2).unwrap_or("00");
        self.root
            .join("blobs")
            .join("sha256")
            .join(prefix)
            .join(hex)
    }

    fn ref_path(&self, lineage: &str, name: &str) -> PathBuf {
        self.root
            .join("refs")
            .join(safe(lineage))
            .join(format!("{}.json", safe(name)))
    }

    fn tag_path(&self, lineage: &str, tag: &str) -> PathBuf {
        self.root
            .join("refs")
            .join(safe(lineage))
            .join("tags")
            .join(format!("{}.json", safe(tag)))
    }

    /// Copy a file into the store (streaming, hashing as it goes); returns `(digest, size)`.
    /// A blob that is already there is not written again.
    pub fn put_file(&self, path: &Path) -> Result<(String, u64), String> {
        let temp_dir = self.root.join("tmp");
        std::fs::create_dir_all(&temp_dir)
            .map_err(|e| io("cannot create the artifact store", e))?;
        let temp = temp_dir.join(uuid::Uuid::new_v4().to_string());
        let mut source = std::fs::File::open(path)
            .map_err(|e| io(&format!("cannot read {}", path.display()), e))?;
        let mut target = std::fs::File::create(&temp)
            .map_err(|e| io("cannot write to the artifact store", e))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let read = source
                .read(&mut buffer)
                .map_err(|e| io(&format!("cannot read {}", path.display()), e))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            target
                .write_all(&buffer[..read])
                .map_err(|e| io("cannot write to the artifact store", e))?;
            size += read as u64;
        }
        drop(target);
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        let blob = self.blob_path(&digest);
        if blob.exists() {
            let _ = std::fs::remove_file(&temp);
        } else {
            if let Some(parent) = blob.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| io("cannot write to the artifact store", e))?;
            }
            std::fs::rename(&temp, &blob)
                .map_err(|e| io("cannot write to the artifact store", e))?;
        }
        Ok((digest, size))
    }

    /// Save the files under `directory` as artifact `artifact`; returns their manifest entries.
    pub fn put_directory(
        &self,
        artifact: &str,
        directory: &Path,
    ) -> Result<Vec<ManifestFile>, String> {
        let mut files = Vec::new();
        if !directory.exists() {
            return Ok(files);
        }
        let canonical_root = directory
            .canonicalize()
            .map_err(|e| io(&format!("cannot read {}", directory.display()), e))?;
        for entry in walk(directory)? {
            let metadata = std::fs::symlink_metadata(&entry)
                .map_err(|e| io(&format!("cannot read {}", entry.display()), e))?;
            if metadata.file_type().is_symlink() {
                // Symlinks are followed only when they stay inside the artifact directory.
                let resolved = entry
                    .canonicalize()
                    .map_err(|e| io(&format!("cannot resolve {}", entry.display()), e))?;
                if !resolved.starts_with(&canonical_root) {
                    return Err(format!(
                        "`{}` points outside the artifact directory `{artifact}`",
                        entry.display()
                    ));
                }
                if !resolved.is_file() {
                    continue;
                }
            } else if !metadata.is_file() {
                continue;
            }
            let relative = entry
                .strip_prefix(directory)
                .unwrap_or(&entry)
                .to_string_lossy()
                .replace('\\', "/");
            let (digest, size) = self.put_file(&entry)?;
            files.push(ManifestFile {
                artifact: artifact.to_string(),
                path: relative,
                size,
                digest,
                mode: file_mode(&entry),
            });
        }
        Ok(files)
    }

    /// Record the manifest of a run.
    pub fn put_manifest(&self, lineage: &str, manifest: &Manifest) -> Result<(), String> {
        let path = self.ref_path(lineage, &manifest.run);
        write_json(&path, manifest)
    }

    pub fn manifest(&self, lineage: &str, run: &str) -> Option<Manifest> {
        read_json(&self.ref_path(lineage, run))
    }

    /// A tag's ref: the same manifest, kept alive under the tag's name.
    pub fn put_tag(&self, lineage: &str, tag: &str, manifest: &Manifest) -> Result<(), String> {
        write_json(&self.tag_path(lineage, tag), manifest)
    }

    pub fn tag(&self, lineage: &str, tag: &str) -> Option<Manifest> {
        read_json(&self.tag_path(lineage, tag))
    }

    pub fn remove_manifest(&self, lineage: &str, run: &str) {
        let _ = std::fs::remove_file(self.ref_path(lineage, run));
    }

    pub fn remove_tag(&self, lineage: &str, tag: &str) {
        let _ = std::fs::remove_file(self.tag_path(lineage, tag));
    }

    fn lock_file(&self) -> Result<std::fs::File, String> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| io("cannot create the artifact store", e))?;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("gc.lock"))
            .map_err(|e| io("cannot lock the artifact store", e))
    }

    /// Hold this while adding blobs until the ref that points to them is written: garbage
    /// collection waits for no one and skips its turn while anybody holds it, so a blob that is
    /// written but not yet referenced is never collected.
    pub fn adding(&self) -> Result<std::fs::File, String> {
        let file = self.lock_file()?;
        file.lock_shared()
            .map_err(|e| io("cannot lock the artifact store", e))?;
        Ok(file)
    }

    /// Delete every blob no ref (of any project) points to. Returns how many were deleted; 0
    /// when blobs are being added right now (the next collection gets them).
    pub fn collect_garbage(&self) -> Result<usize, String> {
        let lock = self.lock_file()?;
        if lock.try_lock().is_err() {
            return Ok(0);
        }
        let mut live = BTreeSet::new();
        let refs = self.root.join("refs");
        if refs.exists() {
            for path in walk(&refs)? {
                if let Some(manifest) = read_json::<Manifest>(&path) {
                    live.extend(manifest.files.into_iter().map(|f| f.digest));
                }
            }
        }
        let blobs = self.root.join("blobs").join("sha256");
        let mut deleted = 0;
        if blobs.exists() {
            for path in walk(&blobs)? {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !live.contains(&format!("sha256:{name}")) && std::fs::remove_file(&path).is_ok()
                {
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }

    /// Copy the files of a manifest to `directory/ARTIFACT/PATH`, checking digests.
    pub fn materialize(&self, manifest: &Manifest, directory: &Path) -> Result<(), String> {
        for file in &manifest.files {
            let target = directory.join(&file.artifact).join(&file.path);
            if !target.starts_with(directory)
                || file.path.split('/').any(|p| p == "..")
                || file.artifact.split('/').any(|p| p == "..")
            {
                return Err(format!(
                    "the manifest of {} has a path outside its artifact: {}",
                    manifest.run, file.path
                ));
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| io(&format!("cannot create {}", parent.display()), e))?;
            }
            let blob = self.blob_path(&file.digest);
            std::fs::copy(&blob, &target).map_err(|e| {
                io(
                    &format!(
                        "the blob of {}/{} is missing from the store ({})",
                        file.artifact,
                        file.path,
                        blob.display()
                    ),
                    e,
                )
            })?;
            let _ = std::fs::set_permissions(
                &target,
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(
                    file.mode & 0o777,
                ),
            );
        }
        Ok(())
    }
}

fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(crate) fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o777)
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io("cannot write to the artifact store", e))?;
    }
    write_atomic(
        path,
        &serde_json::to_vec_pretty(value).unwrap_or_default(),
        0o644,
    )
    .map_err(|e| io("cannot write to the artifact store", e))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

/// Every file and symlink under `directory`, sorted.
pub(crate) fn walk(directory: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![directory.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| io(&format!("cannot read {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(_) => out.push(path),
                Err(_) => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Where an artifact's files are on this machine for a job: its working directory is the
/// project snapshot mounted at `/workflow`.
pub fn artifact_directory(spec: &JobSpec, artifact: &str) -> PathBuf {
    // A working directory that leaves the snapshot never ran (the runner refuses it): nothing
    // outside the snapshot is read in its place.
    spec.local_working_dir()
        .unwrap_or_else(|| spec.code_dir.clone())
        .join(artifact)
}

/// Save the artifacts of a finished job into its store and write the manifest next to the job
/// (`manifest.json`, recorded in state when the run's end is).
pub fn save_job_artifacts(spec: &JobSpec) -> Result<Option<Manifest>, String> {
    if spec.artifacts.is_empty() {
        return Ok(None);
    }
    let Some(root) = &spec.artifact_store else {
        return Ok(None);
    };
    let store = Store::new(root.clone());
    let _adding = store.adding()?;
    let mut files = Vec::new();
    for artifact in &spec.artifacts {
        files.extend(
            store.put_directory_parallel(
                &artifact.path,
                &artifact_directory(spec, &artifact.path),
            )?,
        );
    }
    let manifest = Manifest {
        run: spec.run_name.clone(),
        files,
        created_at: Utc::now(),
    };
    store.put_manifest(&spec.lineage, &manifest)?;
    let job_dir = spec
        .code_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    write_json(&job_dir.join("manifest.json"), &manifest)?;
    Ok(Some(manifest))
}

/// `7.5MiB`, as the seed's `dstack ls` prints sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_files_are_stored_once_and_garbage_is_collected() {
        let dir = tempfile::tempdir().expect("temp");
        let store = Store::new(dir.path().join("store"));
        let data = dir.path().join("out");
        std::fs::create_dir_all(data.join("sub")).expect("mkdir");
        std::fs::write(data.join("a.txt"), "same").expect("write");
        std::fs::write(data.join("sub/b.txt"), "same").expect("write");
        std::fs::write(data.join("c.txt"), "other").expect("write");
        let files = store.put_directory("out", &data).expect("put");
        assert_eq!(files.len(), 3);
        assert_eq!(
            files[0].digest, files[2].digest,
            "a.txt and sub/b.txt have one blob"
        );
        let blobs = walk(&dir.path().join("store/blobs")).expect("walk").len();
        assert_eq!(blobs, 2);
        let manifest = Manifest {
            run: "r-1".into(),
            files,
            created_at: Utc::now(),
        };
        store.put_manifest("lineage", &manifest).expect("manifest");
        assert_eq!(
            store.collect_garbage().expect("gc"),
            0,
            "referenced blobs stay"
        );
        let target = dir.path().join("restored");
        store.materialize(&manifest, &target).expect("materialize");
        assert_eq!(
            std::fs::read_to_string(target.join("out/sub/b.txt")).expect("read"),
            "same"
        );
        store.remove_manifest("lineage", "r-1");
        assert_eq!(store.collect_garbage().expect("gc"), 2);
    }

    #[test]
    fn symlinks_out_of_the_artifact_are_refused() {
        let dir = tempfile::tempdir().expect("temp");
        let store = Store::new(dir.path().join("store"));
        let data = dir.path().join("out");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::write(dir.path().join("secret"), "x").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), data.join("link")).expect("symlink");
        assert!(
            store
                .put_directory("out", &data)
                .unwrap_err()
                .contains("outside the artifact directory")
        );
    }

    #[test]
    fn sizes_read_like_the_seed() {
        assert_eq!(human_size(7_864_320), "7.5MiB");
        assert_eq!(human_size(10_035), "9.8KiB");
        assert_eq!(human_size(12), "12B");
    }
}
