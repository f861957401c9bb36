//! The job store of a run: `.dstack/runs/RUN/`.
//!
//! | file | written by | holds |
//! |---|---|---|
//! | `job.json` | the CLI, before starting the runner (mode 0600: it holds env values) | [`JobSpec`] |
//! | `status.json` | the runner, replaced atomically | [`JobStatus`] |
//! | `logs.txt` | the runner, appended | the run's output |
//! | `control.json` | the CLI (`dstack stop`) | [`Control`] |
//! | `runner.log` | the runner | its own diagnostics |
//! | `code/` | the CLI | the project snapshot mounted at `/workflow` |
//!
//! The store is the only channel between the CLI and the runner, so the runner survives the CLI.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::state::RunStatus;

/// Where the job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Host,
}

/// What a mount binds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountSource {
    /// A Docker named volume.
    Volume { name: String },
    /// A directory of the machine.
    Bind { path: PathBuf },
    /// A block device attached to the machine (an EBS volume on EC2), which the runner mounts
    /// at `mount_dir` before the job starts (see [`super::devices`]).
    Device {
        /// The device name it was attached as (`/dev/sdf`); the kernel may call it otherwise.
        device: String,
        volume_id: String,
        /// dstack created the volume, so a blank one may be formatted (ext4).
        format: bool,
        mount_dir: PathBuf,
    },
}

/// One mount of the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMount {
    pub source: MountSource,
    pub target: String,
}

/// A published port: `local` is resolved (a `*` became a free port when the job was made).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPort {
    pub local: u16,
    pub container: u16,
}

/// Container limits from the stated maximums of `resources`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub shm_bytes: Option<u64>,
    /// GPUs requested (device requests).
    pub gpus: Option<u64>,
}

/// Retry policy of the job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retry when the job fails.
    pub on_error: bool,
    /// For this long after submission.
    pub duration_secs: u64,
}

/// A readiness check of a service: HTTP GET until a 2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub container_port: u16,
    pub path: String,
}

/// An artifact directory to save when the job ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobArtifact {
    /// Relative to the working directory.
    pub path: String,
    /// Save while the job writes.
    pub mount: bool,
}

/// Everything the runner needs to execute a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub run_name: String,
    pub resource: Option<String>,
    pub project: String,
    pub lineage: String,
    pub run_type: String,
    pub runtime: Runtime,
    /// Docker image (docker runtime).
    pub image: Option<String>,
    pub shell: String,
    /// The script: the run's commands, one per line, `set -e` first.
    pub script: String,
    /// Stay up after the script (dev environments).
    pub keep_alive: bool,
    pub env: BTreeMap<String, String>,
    pub working_dir: String,
    /// The project snapshot, mounted at `/workflow` (or the working directory on the host).
    pub code_dir: PathBuf,
    pub mounts: Vec<JobMount>,
    pub ports: Vec<JobPort>,
    pub limits: Limits,
    pub user: Option<String>,
    pub privileged: bool,
    pub entrypoint: Option<String>,
    pub max_duration_secs: Option<u64>,
    pub stop_duration_secs: u64,
    pub retry: RetryPolicy,
    /// Containers to run (service replicas).
    pub replicas: u32,
    pub readiness: Option<Readiness>,
    pub labels: BTreeMap<String, String>,
    pub artifacts: Vec<JobArtifact>,
    /// The artifact store and the manifest key (issue: artifacts).
    #[serde(default)]
    pub artifact_store: Option<PathBuf>,
    /// Values to remove from logs.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Directories kept between runs of a legacy workflow (`cache:`), see [`super::cache`].
    #[serde(default)]
    pub cache: Vec<super::cache::JobCache>,
    pub submitted_at: DateTime<Utc>,
}

impl JobSpec {
    /// The directory of the run's copy of the project that stands for `working_dir` on this
    /// machine (`/workflow` is the copy itself; the host runtime runs there, artifacts are read
    /// from there), or `None` when `..` would take it out of the copy. Validation refuses such
    /// a `working_dir`; this guards against a job spec written some other way.
    pub fn local_working_dir(&self) -> Option<PathBuf> {
        let relative = Path::new(
            self.working_dir
                .trim_start_matches("/workflow")
                .trim_start_matches('/'),
        );
        relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
            .then(|| self.code_dir.join(relative))
    }
}

/// What the runner reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub status: RunStatus,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub message: Option<String>,
    pub runner_pid: u32,
    #[serde(default)]
    pub containers: Vec<String>,
    #[serde(default)]
    pub ports: Vec<JobPort>,
    #[serde(default)]
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl JobStatus {
    /// A job that ended now without running anything (it could not start, or was stopped
    /// before a runner took it).
    pub fn ended_now(status: RunStatus, message: &str, runner_pid: u32) -> Self {
        let now = Utc::now();
        Self {
            status,
            exit_code: None,
            message: Some(message.to_string()),
            runner_pid,
            containers: Vec::new(),
            ports: Vec::new(),
            attempt: 0,
            started_at: now,
            finished_at: Some(now),
            updated_at: now,
        }
    }
}

/// A request from the CLI to the runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    /// Stop gracefully: SIGTERM, `stop_duration`, then kill; artifacts are saved.
    Stop,
    /// Kill at once; nothing is saved.
    Abort,
}

impl Control {
    /// The status of a run that this request ended.
    pub fn ended_status(self) -> RunStatus {
        match self {
            Self::Stop => RunStatus::Stopped,
            Self::Abort => RunStatus::Aborted,
        }
    }
}

/// The job store of one run.
#[derive(Clone, Debug)]
pub struct JobStore {
    pub dir: PathBuf,
}

/// Write a file atomically (temp file + rename), with the given mode.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        // A leftover temp file keeps its old mode through `open`: set the one asked for.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, path)
}

impl JobStore {
    /// The store of `run` in a project's `.dstack/`.
    ///
    /// Run names are checked where they enter (state load, the command line), so `run` is one
    /// path component. Should a name that is not slip through, it gets a directory of its own
    /// under `runs/.invalid/` rather than a path that `..` or `/` lead out of the project.
    pub fn new(dot_dir: &Path, run: &str) -> Self {
        let runs = dot_dir.join("runs");
        let dir = if crate::model::is_valid_run_name(run) {
            runs.join(run)
        } else {
            use sha2::Digest;
            tracing::warn!("the run name `{}` is not valid", run.escape_debug());
            runs.join(".invalid")
                .join(hex::encode(sha2::Sha256::digest(run.as_bytes())))
        };
        Self { dir }
    }

    pub fn spec_path(&self) -> PathBuf {
        self.dir.join("job.json")
    }

    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    pub fn logs_path(&self) -> PathBuf {
        self.dir.join("logs.txt")
    }

    pub fn control_path(&self) -> PathBuf {
        self.dir.join("control.json")
    }

    pub fn code_dir(&self) -> PathBuf {
        self.dir.join("code")
    }

    pub fn write_spec(&self, spec: &JobSpec) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_atomic(
            &self.spec_path(),
            &serde_json::to_vec_pretty(spec).unwrap_or_default(),
            0o600,
        )
    }

    pub fn read_spec(&self) -> Result<JobSpec, String> {
        let text = std::fs::read_to_string(self.spec_path())
            .map_err(|e| format!("cannot read {}: {e}", self.spec_path().display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid: {e}", self.spec_path().display()))
    }

    pub fn write_status(&self, status: &JobStatus) -> std::io::Result<()> {
        write_atomic(
            &self.status_path(),
            &serde_json::to_vec_pretty(status).unwrap_or_default(),
            0o644,
        )
    }

    /// The runner's last report, if any.
    pub fn read_status(&self) -> Option<JobStatus> {
        std::fs::read_to_string(self.status_path())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    }

    /// The manifest of the run's saved artifacts (`manifest.json`), once the runner wrote it.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    pub fn read_manifest(&self) -> Option<crate::state::Manifest> {
        std::fs::read_to_string(self.manifest_path())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    }

    pub fn request(&self, control: Control) -> std::io::Result<()> {
        write_atomic(
            &self.control_path(),
            &serde_json::to_vec(&control).unwrap_or_default(),
            0o644,
        )
    }

    pub fn read_control(&self) -> Option<Control> {
        std::fs::read_to_string(self.control_path())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    }

    /// Append to the run's log.
    pub fn append_log(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs_path())?;
        file.write_all(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_job_store_is_always_inside_the_projects_runs_directory() {
        let dot = Path::new("/project/.dstack");
        assert_eq!(
            JobStore::new(dot, "train-3").dir,
            Path::new("/project/.dstack/runs/train-3")
        );
        for hostile in ["../../../victim", "/tmp/victim", "..", "a/b", ""] {
            let dir = JobStore::new(dot, hostile).dir;
            assert!(
                dir.starts_with("/project/.dstack/runs/.invalid")
                    && dir.components().all(|c| c != Component::ParentDir),
                "{hostile}: {}",
                dir.display()
            );
        }
    }

    #[test]
    fn atomic_writes_get_the_mode_asked_for_over_a_leftover_temp_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("job.json");
        let temp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&temp, "old").expect("write");
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_atomic(&path, b"{}", 0o600).expect("write");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&path).expect("read"), b"{}");
    }
}
