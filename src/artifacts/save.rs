//! Saving a directory into the store with a few threads at once.
//!
//! Saving a file is reading it, hashing it (CPU-bound: SHA-256) and writing it (IO-bound); one
//! thread leaves the disk idle while it hashes and a core idle while it waits for the disk, so
//! [`Store::put_directory_parallel`] saves several files at a time. It returns exactly what
//! [`Store::put_directory`] returns, in the same order, and refuses the same symlinks; each
//! file still streams through a fixed buffer, so memory stays bounded by the thread count.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use super::{Store, file_mode, walk};
use crate::state::ManifestFile;

/// At most this many threads: past a few, the disk is the limit.
const MAX_THREADS: usize = 8;
/// Bigger than `put_file`'s buffer: fewer system calls for large files.
const BUFFER: usize = 1024 * 1024;

/// A file's `(digest, size)` once saved.
type Saved = Result<(String, u64), String>;

impl Store {
    /// [`Store::put_directory`], saving several files at a time.
    pub fn put_directory_parallel(
        &self,
        artifact: &str,
        directory: &Path,
    ) -> Result<Vec<ManifestFile>, String> {
        if !directory.exists() {
            return Ok(Vec::new());
        }
        let files = files_to_save(artifact, directory)?;
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let temp_dir = self.root.join("tmp");
        std::fs::create_dir_all(&temp_dir)
            .map_err(|e| format!("cannot create the artifact store: {e}"))?;
        let threads = std::thread::available_parallelism()
            .map_or(2, std::num::NonZero::get)
            .clamp(2, MAX_THREADS)
            .min(files.len());
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let results: Vec<Mutex<Option<Saved>>> = files.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let mut buffer = vec![0u8; BUFFER];
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= files.len() || failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let result = self.save_file(&files[index].0, &temp_dir, &mut buffer);
                        if result.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        if let Ok(mut slot) = results[index].lock() {
                            *slot = Some(result);
                        }
                    }
                });
            }
        });
        let mut saved = Vec::with_capacity(files.len());
        for ((path, relative), result) in files.into_iter().zip(results) {
            let result = result
                .into_inner()
                .map_err(|_| "a saving thread failed".to_string())?;
            match result {
                Some(Ok((digest, size))) => saved.push(ManifestFile {
                    artifact: artifact.to_string(),
                    path: relative,
                    size,
                    digest,
                    mode: file_mode(&path),
                }),
                Some(Err(error)) => return Err(error),
                // Not reached: a thread stopped early only because another file failed, and
                // that failure is returned (files before it all have results).
                None => return Err("saving stopped after an error".into()),
            }
        }
        Ok(saved)
    }

    /// Stream one file into the store through `buffer`, hashing as it goes.
    fn save_file(
        &self,
        path: &Path,
        temp_dir: &Path,
        buffer: &mut [u8],
    ) -> Result<(String, u64), String> {
        let cannot_read = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
        let cannot_write = |e: std::io::Error| format!("cannot write to the artifact store: {e}");
        let temp = temp_dir.join(uuid::Uuid::new_v4().to_string());
        let mut source = std::fs::File::open(path).map_err(cannot_read)?;
        let mut target = std::fs::File::create(&temp).map_err(cannot_write)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let copied = loop {
            let read = match source.read(buffer) {
                Ok(0) => break Ok(()),
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(cannot_read(e)),
            };
            hasher.update(&buffer[..read]);
            if let Err(e) = target.write_all(&buffer[..read]) {
                break Err(cannot_write(e));
            }
            size += read as u64;
        };
        drop(target);
        if let Err(error) = copied {
            let _ = std::fs::remove_file(&temp);
            return Err(error);
        }
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        let blob = self.blob_path(&digest);
        if blob.exists() {
            let _ = std::fs::remove_file(&temp);
        } else {
            if let Some(parent) = blob.parent() {
                std::fs::create_dir_all(parent).map_err(cannot_write)?;
            }
            std::fs::rename(&temp, &blob).map_err(cannot_write)?;
        }
        Ok((digest, size))
    }
}

/// The files under `directory` to save, with their paths relative to it, in `walk` order;
/// symlinks are followed only when they stay inside the directory (as `put_directory` does).
fn files_to_save(artifact: &str, directory: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let canonical_root = directory
        .canonicalize()
        .map_err(|e| format!("cannot read {}: {e}", directory.display()))?;
    let mut files = Vec::new();
    for entry in walk(directory)? {
        let metadata = std::fs::symlink_metadata(&entry)
            .map_err(|e| format!("cannot read {}: {e}", entry.display()))?;
        if metadata.file_type().is_symlink() {
            let resolved = entry
                .canonicalize()
                .map_err(|e| format!("cannot resolve {}: {e}", entry.display()))?;
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
        files.push((entry, relative));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        for i in 0..40 {
            std::fs::write(
                root.join(format!("a/file-{i}")),
                format!("content {}", i % 7),
            )
            .expect("write");
        }
        std::fs::write(root.join("a/b/big"), vec![7u8; 3 * BUFFER + 11]).expect("write");
        std::fs::write(root.join("empty"), "").expect("write");
        std::os::unix::fs::symlink(root.join("a/file-1"), root.join("link")).expect("symlink");
        std::fs::set_permissions(
            root.join("a/file-2"),
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .expect("chmod");
    }

    #[test]
    fn saves_what_put_directory_saves_in_the_same_order() {
        let dir = tempfile::tempdir().expect("temp");
        let data = dir.path().join("out");
        tree(&data);
        let one = Store::new(dir.path().join("one"));
        let parallel = Store::new(dir.path().join("parallel"));
        let expected = one.put_directory("out", &data).expect("put");
        let saved = parallel.put_directory_parallel("out", &data).expect("put");
        assert_eq!(saved, expected);
        assert_eq!(saved.len(), 43);
        for file in &saved {
            let blob = std::fs::read(parallel.blob_path(&file.digest)).expect("blob");
            assert_eq!(blob.len() as u64, file.size);
            assert_eq!(
                format!("sha256:{}", hex::encode(Sha256::digest(&blob))),
                file.digest
            );
        }
        let temp: Vec<_> = std::fs::read_dir(parallel.root.join("tmp"))
            .expect("tmp")
            .collect();
        assert!(temp.is_empty(), "temp files are moved or removed");
        assert_eq!(
            parallel
                .put_directory_parallel("out", &dir.path().join("missing"))
                .expect("missing"),
            Vec::new()
        );
    }

    #[test]
    fn symlinks_out_of_the_artifact_are_refused() {
        let dir = tempfile::tempdir().expect("temp");
        let data = dir.path().join("out");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::write(data.join("fine"), "x").expect("write");
        std::fs::write(dir.path().join("secret"), "x").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), data.join("link")).expect("symlink");
        let error = Store::new(dir.path().join("store"))
            .put_directory_parallel("out", &data)
            .expect_err("refused");
        assert!(error.contains("outside the artifact directory"), "{error}");
    }

    #[test]
    fn a_file_that_cannot_be_stored_fails_the_save() {
        let dir = tempfile::tempdir().expect("temp");
        let data = dir.path().join("out");
        std::fs::create_dir_all(&data).expect("mkdir");
        for i in 0..10 {
            std::fs::write(data.join(format!("f{i}")), format!("{i}")).expect("write");
        }
        // A file where the blob directory of `f5` must go.
        let store = Store::new(dir.path().join("store"));
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(b"5")));
        let blob_dir = store.blob_path(&digest);
        let blob_dir = blob_dir.parent().expect("parent");
        std::fs::create_dir_all(blob_dir.parent().expect("parent")).expect("mkdir");
        std::fs::write(blob_dir, "in the way").expect("write");
        let error = store
            .put_directory_parallel("out", &data)
            .expect_err("cannot store f5");
        assert!(
            error.contains("cannot write to the artifact store"),
            "{error}"
        );
    }
}
