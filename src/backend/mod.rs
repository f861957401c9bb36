//! Backends: where volumes, fleets and runs live.
//!
//! One trait, [`Backend`], implemented by `local` (Docker or host processes on this machine),
//! `aws` (EBS and EC2) and `fake` (tests). The executor is the only caller. Every method is
//! idempotent where it can be (deleting what is gone succeeds), and every error carries a
//! [`ErrorKind`] so the executor decides to retry or stop by kind, never by matching strings.
//!
//! Every object a backend creates carries labels (`dstack.project`, `dstack.lineage`,
//! `dstack.kind`, `dstack.name`, and for runs `dstack.run`), so that an object created by an
//! apply that crashed before recording it can be found again and adopted ([`Backend::find`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value as Json;

use crate::model::{ResourceId, Spec};
use crate::state::{ResourceRecord, RunRecord, RunStatus};

pub mod aws;
pub mod fake;
pub mod jobspec;
pub mod local;
pub mod pool;

/// What kind of failure a backend reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object does not exist.
    NotFound,
    /// The object is in a state that forbids the call (a volume in use, a name taken).
    Conflict,
    /// The request is invalid for this backend (an unsupported size, a bad instance type).
    Invalid,
    /// The credentials were refused.
    Unauthorized,
    /// Worth retrying: throttling, timeouts, 5xx.
    Transient,
    /// Anything else.
    Internal,
}

/// A backend error.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
}

impl miette::Diagnostic for BackendError {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.hint
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
}

impl BackendError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// Call a backend, retrying transient errors with capped, jittered exponential backoff (up to
/// five attempts). `on_retry` hears about each retry.
pub async fn retry<T, F, Fut>(
    mut call: F,
    on_retry: &(dyn Fn(u32, &BackendError) + Send + Sync),
) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackendError>>,
{
    const MAX_ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(error) if error.is_retryable() && attempt < MAX_ATTEMPTS => {
                let base = std::time::Duration::from_millis(200) * 2u32.pow(attempt - 1);
                let capped = base.min(std::time::Duration::from_secs(5));
                on_retry(attempt, &error);
                tokio::time::sleep(capped.mul_f64(rand::random_range(0.5..1.5))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Ignore retries (for callers that do not report them).
pub fn quietly(_attempt: u32, error: &BackendError) {
    tracing::debug!("retrying: {error}");
}

/// What a backend can do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub volumes: bool,
    pub fleets: bool,
    pub runs: bool,
    /// Volumes grow in place.
    pub resize_volumes: bool,
    /// Runs can bind directories of the machine (`/host:/path`).
    pub instance_volumes: bool,
}

/// An object as the backend sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The backend's identifier (Docker volume name, EBS volume id, run name, ...).
    pub backend_id: Option<String>,
    /// Attributes worth recording and comparing for drift (size, region, zone, ...).
    pub attributes: BTreeMap<String, Json>,
    /// `active`, `running`, `done`, ...
    pub status: String,
    /// The labels it carries.
    pub labels: BTreeMap<String, String>,
}

/// A run as the backend sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunObserved {
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The run's artifacts, once saved (while it runs, for `mount: true` artifacts).
    pub manifest: Option<crate::state::Manifest>,
}

/// Everything a backend needs to create or update an object.
#[derive(Clone, Debug)]
pub struct Request {
    pub id: ResourceId,
    /// The desired spec, with real (unmasked) values.
    pub spec: Spec,
    pub labels: BTreeMap<String, String>,
    pub project: String,
    pub project_dir: PathBuf,
    pub lineage: String,
    /// For runs: the name of the run being submitted (`train-3`).
    pub run_name: Option<String>,
    /// For runs: the records of the volumes it mounts, by name.
    pub volumes: BTreeMap<String, ResourceRecord>,
    /// For runs: the records of the fleets it names (`fleets`), by name.
    pub fleets: BTreeMap<String, ResourceRecord>,
    /// For runs: resolved environment values (sensitive values included).
    pub env: BTreeMap<String, String>,
    /// Sensitive values, to keep out of logs.
    pub secrets: Vec<String>,
    /// For runs: the artifacts of their dependencies, to place in the working directory.
    pub deps: Vec<crate::state::Manifest>,
}

/// The labels of an object.
pub fn labels(
    project: &str,
    lineage: &str,
    id: &ResourceId,
    run: Option<&str>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("dstack.project".to_string(), project.to_string()),
        ("dstack.lineage".to_string(), lineage.to_string()),
        ("dstack.kind".to_string(), id.kind.to_string()),
        ("dstack.name".to_string(), id.name.clone()),
    ]);
    if let Some(run) = run {
        labels.insert("dstack.run".to_string(), run.to_string());
    }
    labels
}

/// A place volumes, fleets and runs live.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Read the object of a record; `Ok(None)` when it is gone.
    async fn read(&self, record: &ResourceRecord) -> Result<Option<Observed>, BackendError>;

    /// Create the object (submit the run, for runs).
    async fn create(&self, request: &Request) -> Result<Observed, BackendError>;

    /// Change the object in place.
    async fn update(
        &self,
        request: &Request,
        record: &ResourceRecord,
    ) -> Result<Observed, BackendError>;

    /// Delete the object; deleting what is gone succeeds. A volume in use is a `Conflict`.
    async fn delete(&self, record: &ResourceRecord) -> Result<(), BackendError>;

    /// Objects carrying all of these labels.
    async fn find(&self, labels: &BTreeMap<String, String>) -> Result<Vec<Observed>, BackendError>;

    /// The current status of a run; `Ok(None)` when the backend has no trace of it.
    async fn run_read(&self, run: &RunRecord) -> Result<Option<RunObserved>, BackendError>;

    /// Stop a run: gracefully (`abort = false`, artifacts are saved) or not.
    async fn run_stop(&self, run: &RunRecord, abort: bool) -> Result<(), BackendError>;

    /// Remove what is left of a finished run (containers, job store).
    async fn run_remove(&self, run: &RunRecord) -> Result<(), BackendError>;

    /// The run's log from byte `offset` on, and the offset after it.
    async fn run_logs(&self, run: &RunRecord, offset: u64) -> Result<(Vec<u8>, u64), BackendError> {
        let _ = run;
        Ok((Vec::new(), offset))
    }

    /// A command that opens a shell in a running run (`docker exec ...`), for `dstack attach`.
    async fn run_shell(&self, run: &RunRecord) -> Result<Vec<String>, BackendError> {
        Err(BackendError::new(
            ErrorKind::Invalid,
            format!(
                "{} runs on `{}`, which cannot be attached to",
                run.name,
                self.name()
            ),
        ))
    }
}

/// The backends of a command, by name, created on first use.
#[derive(Clone, Default)]
pub struct Backends {
    map: BTreeMap<String, Arc<dyn Backend>>,
}

impl Backends {
    pub fn insert(&mut self, backend: Arc<dyn Backend>) {
        self.map.insert(backend.name().to_string(), backend);
    }

    pub fn get(&self, name: &str) -> Result<Arc<dyn Backend>, BackendError> {
        self.map.get(name).cloned().ok_or_else(|| {
            BackendError::new(
                ErrorKind::Invalid,
                format!("backend `{name}` is not configured"),
            )
            .with_hint(match name {
                "fake" => "the fake backend is for tests: set DSTACK_FAKE_BACKEND=1".to_string(),
                "aws" => "add `- type: aws` with `regions` under `backends:` in .dstack/config.yml"
                    .to_string(),
                _ => {
                    format!("backend `{name}` is not supported by this tool; use `local` or `aws`")
                }
            })
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }
}

/// The backends a project can use: `local` always, `fake` with `DSTACK_FAKE_BACKEND=1`, `aws`
/// when `.dstack/config.yml` configures it.
pub fn for_project(
    project: &crate::config::project::Project,
    env: &dyn Fn(&str) -> Option<String>,
    fake: bool,
) -> Backends {
    let mut backends = Backends::default();
    let (runtime, default_image) = project.config.local_backend();
    let show_progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    backends.insert(Arc::new(local::LocalBackend::new(
        &project.root,
        runtime,
        default_image,
        artifact_root(project, env),
        show_progress,
    )));
    if fake {
        backends.insert(Arc::new(fake::FakeBackend::from_env(
            &project.dot_dir(),
            env,
        )));
    }
    // The remote artifact store, when configured: the pool's queue and aws runs' job stores.
    let remote = project
        .config
        .artifacts
        .as_ref()
        .map(super::config::project::ArtifactsSetting::stores)
        .and_then(|stores| {
            let url = stores.remote.clone()?;
            Some((
                url,
                crate::aws::Connection {
                    region: stores.region,
                    profile: stores.profile,
                    endpoint_url: stores.endpoint_url,
                },
            ))
        });
    if let Some((url, connection)) = &remote {
        backends.insert(Arc::new(pool::PoolBackend::new(
            url.clone(),
            connection.clone(),
            project.root.clone(),
            artifact_root(project, env),
        )));
    }
    if let Some(settings) = aws::AwsSettings::from_config(&project.config) {
        let mut backend = aws::AwsBackend::new(settings);
        if let Some((url, connection)) = remote {
            backend = backend.with_runs(aws::RunSettings {
                store_url: url,
                connection,
                project_dir: project.root.clone(),
                artifact_store: artifact_root(project, env),
                runner_binary: env("DSTACK_RUNNER_BINARY").map(PathBuf::from),
            });
        }
        backends.insert(Arc::new(backend));
    }
    backends
}

/// The local artifact store of a project: `artifacts.local` in `.dstack/config.yml`, else
/// `~/.dstack/artifacts`.
pub fn artifact_root(
    project: &crate::config::project::Project,
    env: &dyn Fn(&str) -> Option<String>,
) -> PathBuf {
    let configured = project
        .config
        .artifacts
        .as_ref()
        .and_then(|a| a.stores().local);
    match configured {
        Some(path) => {
            let path = PathBuf::from(path);
            if path.is_absolute() {
                path
            } else {
                project.root.join(path)
            }
        }
        None => crate::artifacts::default_root(
            env("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
                .as_deref(),
        ),
    }
}
