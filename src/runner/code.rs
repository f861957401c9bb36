//! The project snapshot a run gets at `/workflow`, and its digest.
//!
//! Files come from the project directory, minus what `.gitignore` and `.dstackignore` exclude
//! (with or without a git repository), minus `.dstack/` and `.git/`, minus the run's artifact
//! paths: state and outputs never count as inputs. The digest covers every file's path, mode and
//! content, so an unchanged project has an unchanged digest.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Files of the project that belong in a snapshot, sorted, relative to `root`.
pub fn files(root: &Path, excluded: &[String]) -> std::io::Result<Vec<PathBuf>> {
    let mut walker = ignore::WalkBuilder::new(root);
    walker
        .hidden(false)
        .git_ignore(true)
        .git_global(false)
        .git_exclude(true)
        .require_git(false)
        .parents(false)
        .add_custom_ignore_filename(".dstackignore")
        .filter_entry(|entry| {
            let name = entry.file_name();
            !(entry.depth() == 1 && (name == ".dstack" || name == ".git"))
        });
    let mut files = Vec::new();
    for entry in walker.build() {
        let entry = entry.map_err(std::io::Error::other)?;
        let path = entry.path();
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        if relative.as_os_str().is_empty() {
            continue;
        }
        if is_excluded(&relative.to_string_lossy(), excluded) {
            continue;
        }
        let file_type = entry.file_type();
        if file_type.is_some_and(|t| t.is_file() || t.is_symlink()) {
            files.push(relative.to_path_buf());
        }
    }
    files.sort();
    Ok(files)
}

fn hash_file(path: &Path, hasher: &mut Sha256) -> std::io::Result<()> {
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.file_type().is_symlink() {
        hasher.update(b"link:");
        hasher.update(std::fs::read_link(path)?.to_string_lossy().as_bytes());
        return Ok(());
    }
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(());
        }
        hasher.update(&buffer[..read]);
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path).map_or(0, |m| m.permissions().mode() & 0o777)
}

/// Configuration files (`*.dstack.yml`) are copied but are not code: a run's own configuration
/// is its spec, and editing another resource's file must not change this run's inputs.
fn is_configuration(relative: &str) -> bool {
    relative.ends_with(".dstack.yml") || relative.ends_with(".dstack.yaml")
}

fn is_excluded(relative: &str, excluded: &[String]) -> bool {
    excluded
        .iter()
        .any(|e| relative == e.as_str() || relative.starts_with(&format!("{e}/")))
}

/// A file's digest: its mode and content (or link target).
fn file_digest(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    hasher.update(mode(path).to_le_bytes());
    hash_file(path, &mut hasher)?;
    Ok(hasher.finalize().into())
}

/// One cached file digest, valid while size, mtime and mode are unchanged.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Cached {
    size: u64,
    mtime_ns: i128,
    mode: u32,
    digest: String,
}

/// The digests of a project's snapshot files, computed once per command and shared by its runs
/// (each excludes its own artifact paths).
#[derive(Clone, Debug, Default)]
pub struct CodeIndex {
    files: Vec<(String, [u8; 32])>,
}

impl CodeIndex {
    /// Digest every snapshot file of `root`. With `cache`, files whose size, mtime and mode are
    /// unchanged since the last command are not read again (entries modified in the last two
    /// seconds are never trusted, as git does for racy entries).
    pub fn build(root: &Path, cache: Option<&Path>) -> std::io::Result<Self> {
        let previous: std::collections::HashMap<String, Cached> = cache
            .and_then(|c| std::fs::read(c).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let racy_after = std::time::SystemTime::now() - std::time::Duration::from_secs(2);
        let mut next = std::collections::HashMap::new();
        let mut files = Vec::new();
        for relative in self::files(root, &[])? {
            let text = relative.to_string_lossy().replace('\\', "/");
            let path = root.join(&relative);
            let metadata = std::fs::symlink_metadata(&path)?;
            let modified = metadata.modified().ok();
            let mtime_ns = modified
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128);
            let file_mode = mode(&path);
            let hit = previous.get(&text).filter(|c| {
                c.size == metadata.len() && c.mtime_ns == mtime_ns && c.mode == file_mode
            });
            let digest: [u8; 32] = match hit.and_then(|c| hex::decode(&c.digest).ok()) {
                Some(bytes) if bytes.len() == 32 => {
                    let mut digest = [0; 32];
                    digest.copy_from_slice(&bytes);
                    digest
                }
                _ => file_digest(&path)?,
            };
            if modified.is_some_and(|m| m < racy_after) {
                next.insert(
                    text.clone(),
                    Cached {
                        size: metadata.len(),
                        mtime_ns,
                        mode: file_mode,
                        digest: hex::encode(digest),
                    },
                );
            }
            files.push((text, digest));
        }
        if let Some(cache) = cache {
            if let Some(parent) = cache.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            if let Ok(bytes) = serde_json::to_vec(&next) {
                let _ = super::job::write_atomic(cache, &bytes, 0o600);
            }
        }
        Ok(Self { files })
    }

    /// `sha256:HEX` of the snapshot minus `excluded` paths (a run's artifacts) and minus
    /// configuration files.
    pub fn digest(&self, excluded: &[String]) -> String {
        let mut hasher = Sha256::new();
        for (path, digest) in &self.files {
            if is_configuration(path) || is_excluded(path, excluded) {
                continue;
            }
            hasher.update(path.as_bytes());
            hasher.update([0]);
            hasher.update(digest);
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }
}

/// `sha256:HEX` of the project's snapshot (see [`CodeIndex::digest`]).
pub fn digest(root: &Path, excluded: &[String]) -> std::io::Result<String> {
    Ok(CodeIndex::build(root, None)?.digest(excluded))
}

/// A run's artifact paths relative to the project directory (its snapshot is at `/workflow`),
/// for excluding them from the snapshot; artifacts outside `/workflow` need no exclusion.
pub fn artifact_exclusions(working_dir: Option<&str>, artifacts: &[String]) -> Vec<String> {
    let working_dir = working_dir.unwrap_or("/workflow");
    let Some(inside) = working_dir
        .strip_prefix("/workflow")
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        .or_else(|| (!working_dir.starts_with('/')).then_some(working_dir))
    else {
        return Vec::new();
    };
    let inside = inside.trim_matches('/').trim_start_matches("./");
    artifacts
        .iter()
        .map(|a| {
            if inside.is_empty() || inside == "." {
                a.clone()
            } else {
                format!("{inside}/{a}")
            }
        })
        .collect()
}

/// Copy the snapshot to `destination` (created); returns its digest.
pub fn snapshot(root: &Path, destination: &Path, excluded: &[String]) -> std::io::Result<String> {
    std::fs::create_dir_all(destination)?;
    for relative in files(root, excluded)? {
        let source = root.join(&relative);
        let target = destination.join(&relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let metadata = std::fs::symlink_metadata(&source)?;
        if metadata.file_type().is_symlink() {
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else {
            std::fs::copy(&source, &target)?;
        }
    }
    digest(root, excluded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_dstack_git_and_ignored_files() {
        let dir = tempfile::tempdir().expect("temp");
        let root = dir.path();
        for (path, text) in [
            ("train.py", "print(1)"),
            ("data/a.txt", "a"),
            (".gitignore", "*.log\nbuild/\n"),
            (".dstackignore", "secret.txt\n"),
            ("run.log", "x"),
            ("build/out", "x"),
            ("secret.txt", "x"),
            (".dstack/state.db", "x"),
            (".git/HEAD", "x"),
            ("output/result.bin", "x"),
        ] {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        let names: Vec<String> = files(root, &["output".into()])
            .expect("files")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [".dstackignore", ".gitignore", "data/a.txt", "train.py"]
        );
        let before = digest(root, &["output".into()]).expect("digest");
        std::fs::write(root.join("run.log"), "changed").expect("write");
        std::fs::write(root.join("output/result.bin"), "changed").expect("write");
        assert_eq!(
            digest(root, &["output".into()]).expect("digest"),
            before,
            "ignored files and artifacts are not inputs"
        );
        std::fs::write(root.join("train.py"), "print(2)").expect("write");
        assert_ne!(digest(root, &["output".into()]).expect("digest"), before);
        let copy = dir.path().join("copy-target");
        let digest_of_copy =
            snapshot(root, &copy, &["output".into(), "copy-target".into()]).expect("snapshot");
        assert!(copy.join("train.py").exists() && !copy.join("run.log").exists());
        assert!(digest_of_copy.starts_with("sha256:"));
        std::fs::write(root.join("train.dstack.yml"), "type: task").expect("write");
        assert_eq!(
            digest(root, &["output".into()]).expect("digest"),
            digest(root, &["output".into()]).expect("digest"),
        );
    }

    #[test]
    fn configuration_files_are_not_code_and_the_cache_agrees() {
        let dir = tempfile::tempdir().expect("temp");
        let root = dir.path();
        std::fs::write(root.join("train.py"), "print(1)").expect("write");
        let before = digest(root, &[]).expect("digest");
        std::fs::write(root.join("train.dstack.yml"), "type: task").expect("write");
        assert_eq!(digest(root, &[]).expect("digest"), before);
        let cache = dir.path().join(".dstack/cache/code.json");
        let cached = CodeIndex::build(root, Some(&cache)).expect("index");
        assert_eq!(cached.digest(&[]), before);
        assert_eq!(
            CodeIndex::build(root, Some(&cache))
                .expect("index")
                .digest(&[]),
            before
        );
        std::fs::write(root.join("train.py"), "print(2)").expect("write");
        assert_ne!(
            CodeIndex::build(root, Some(&cache))
                .expect("index")
                .digest(&[]),
            before,
            "a changed file is read again"
        );
    }

    #[test]
    fn artifact_paths_are_taken_relative_to_the_working_directory() {
        let artifacts = ["out".to_string()];
        assert_eq!(artifact_exclusions(None, &artifacts), ["out"]);
        assert_eq!(
            artifact_exclusions(Some("/workflow/sub"), &artifacts),
            ["sub/out"]
        );
        assert_eq!(artifact_exclusions(Some("sub"), &artifacts), ["sub/out"]);
        assert!(artifact_exclusions(Some("/data"), &artifacts).is_empty());
        assert!(artifact_exclusions(Some("/workflowx"), &artifacts).is_empty());
    }
}
