//! The fake backend, for tests: objects kept in `.dstack/fake-backend.json` so that separate
//! invocations see them, with latency and faults on demand.
//!
//! - Accepted only with `DSTACK_FAKE_BACKEND=1`; volumes say `backend: fake`, runs and fleets
//!   `backends: [fake]`.
//! - `DSTACK_FAKE_LATENCY_MS`: every call takes this long. The object is written *before* the
//!   wait, like a cloud API that created something but has not answered yet, so a crash during a
//!   call leaves an object behind for recovery to find.
//! - `DSTACK_FAKE_FAIL_AT=K`: the K-th call of this process fails (`Internal`, or the kind in
//!   `DSTACK_FAKE_FAIL_KIND`: `transient`, `conflict`, ...); `K1,K2` fails several.
//! - Fake runs end `done` after the latency, or `failed` (exit code 1) when a command is `false`
//!   or `exit N` with N > 0.
//!
//! Every process serializes its access with a lock file and replaces the JSON file atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{Backend, BackendError, Capabilities, ErrorKind, Observed, Request, RunObserved};
use crate::model::Spec;
use crate::model::run::RunFields;
use crate::state::{ResourceRecord, RunRecord, RunStatus};

/// One object of the fake world.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FakeObject {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Json,
    pub status: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub attributes: BTreeMap<String, Json>,
    /// Runs: when they end, and how.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Runs: the volume objects they mount.
    #[serde(default)]
    pub mounts: Vec<String>,
}

/// Everything the fake backend holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct World {
    pub objects: BTreeMap<String, FakeObject>,
    pub next_id: u64,
}

/// The fake backend of a project.
#[derive(Debug)]
pub struct FakeBackend {
    path: PathBuf,
    latency: Duration,
    fail_at: Vec<u64>,
    fail_kind: ErrorKind,
    calls: AtomicU64,
}

/// The file the fake world lives in.
pub fn world_path(dot_dir: &Path) -> PathBuf {
    dot_dir.join("fake-backend.json")
}

impl FakeBackend {
    /// A fake backend configured by the `DSTACK_FAKE_*` variables.
    pub fn from_env(dot_dir: &Path, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let latency = env("DSTACK_FAKE_LATENCY_MS")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let fail_at = env("DSTACK_FAKE_FAIL_AT")
            .map(|v| v.split(',').filter_map(|k| k.trim().parse().ok()).collect())
            .unwrap_or_default();
        let fail_kind = match env("DSTACK_FAKE_FAIL_KIND").as_deref() {
            Some("transient") => ErrorKind::Transient,
            Some("conflict") => ErrorKind::Conflict,
            Some("invalid") => ErrorKind::Invalid,
            Some("unauthorized") => ErrorKind::Unauthorized,
            Some("not_found" | "notfound") => ErrorKind::NotFound,
            _ => ErrorKind::Internal,
        };
        Self {
            path: world_path(dot_dir),
            latency: Duration::from_millis(latency),
            fail_at,
            fail_kind,
            calls: AtomicU64::new(0),
        }
    }

    /// The world as stored.
    pub fn load_world(path: &Path) -> Result<World, BackendError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                BackendError::new(
                    ErrorKind::Internal,
                    format!("`{}` is not valid: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(World::default()),
            Err(e) => Err(BackendError::new(
                ErrorKind::Internal,
                format!("cannot read `{}`: {e}", path.display()),
            )),
        }
    }

    /// Read, change and write the world under an exclusive lock.
    fn with_world<T>(
        &self,
        change: impl FnOnce(&mut World) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let io = |e: std::io::Error| {
            BackendError::new(ErrorKind::Internal, format!("fake backend: {e}"))
        };
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))
            .map_err(io)?;
        let _guard = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| {
                BackendError::new(ErrorKind::Internal, format!("fake backend lock: {e}"))
            })?;
        let mut world = Self::load_world(&self.path)?;
        let before = world.clone();
        let result = change(&mut world)?;
        if world != before {
            let temp = self.path.with_extension("json.tmp");
            std::fs::write(&temp, serde_json::to_vec_pretty(&world).unwrap_or_default())
                .map_err(io)?;
            std::fs::rename(&temp, &self.path).map_err(io)?;
        }
        Ok(result)
    }

    /// Count a call and fail it if it is one of `DSTACK_FAKE_FAIL_AT`.
    fn call(&self, what: &str) -> Result<(), BackendError> {
        let number = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::debug!("fake backend call {number}: {what}");
        if self.fail_at.contains(&number) {
            return Err(BackendError::new(
                self.fail_kind,
                format!("fake backend: injected fault at call {number} ({what})"),
            ));
        }
        Ok(())
    }

    async fn wait(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    fn observed(object: &FakeObject) -> Observed {
        Observed {
            backend_id: Some(object.id.clone()),
            attributes: object.attributes.clone(),
            status: object.status.clone(),
            labels: object.labels.clone(),
        }
    }

    fn attributes(spec: &Spec) -> BTreeMap<String, Json> {
        match spec {
            Spec::Volume(volume) => {
                let mut attributes = BTreeMap::new();
                if let Some(size) = volume.size {
                    attributes.insert("size".into(), Json::String(size.to_string()));
                }
                attributes.insert(
                    "region".into(),
                    Json::String(volume.region.clone().unwrap_or_else(|| "fake-1".into())),
                );
                attributes
            }
            Spec::Fleet(fleet) => {
                let nodes = fleet.nodes.map_or(0, |n| n.target);
                BTreeMap::from([("instances".into(), Json::from(nodes))])
            }
            Spec::Run(_) | Spec::Tag(_) => BTreeMap::new(),
        }
    }

    /// How a fake run ends: `failed` when a command is `false` or `exit N` (N > 0).
    fn run_exit_code(spec: &Spec) -> i32 {
        let Spec::Run(run) = spec else { return 0 };
        let commands: &[String] = match &run.fields {
            RunFields::Task(t) => &t.commands,
            RunFields::Service(s) => &s.commands,
            RunFields::DevEnvironment(d) => &d.init,
        };
        for command in commands {
            let command = command.trim();
            if command == "false" {
                return 1;
            }
            if let Some(code) = command
                .strip_prefix("exit ")
                .and_then(|c| c.trim().parse::<i32>().ok())
                && code != 0
            {
                return code;
            }
        }
        0
    }

    fn refresh_run(object: &mut FakeObject, now: DateTime<Utc>) {
        if object.status == "running" && object.ends_at.is_some_and(|end| end <= now) {
            let code = object.exit_code.unwrap_or(0);
            object.status = if code == 0 {
                "done".into()
            } else {
                "failed".into()
            };
        }
    }
}

fn run_status(status: &str) -> RunStatus {
    match status {
        "done" => RunStatus::Done,
        "failed" => RunStatus::Failed,
        "stopped" => RunStatus::Stopped,
        "aborted" => RunStatus::Aborted,
        "submitted" => RunStatus::Submitted,
        _ => RunStatus::Running,
    }
}

#[async_trait::async_trait]
impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            volumes: true,
            fleets: true,
            runs: true,
            resize_volumes: true,
            instance_volumes: true,
        }
    }

    async fn read(&self, record: &ResourceRecord) -> Result<Option<Observed>, BackendError> {
        self.call(&format!("read {}", record.id()))?;
        let Some(id) = record.backend_id.clone() else {
            return Ok(None);
        };
        let observed = self.with_world(|world| {
            let now = Utc::now();
            Ok(world.objects.get_mut(&id).map(|object| {
                Self::refresh_run(object, now);
                Self::observed(object)
            }))
        })?;
        self.wait().await;
        Ok(observed)
    }

    async fn create(&self, request: &Request) -> Result<Observed, BackendError> {
        self.call(&format!("create {}", request.id))?;
        let latency = chrono::Duration::from_std(self.latency).unwrap_or_default();
        let observed = self.with_world(|world| {
            // Registering an existing volume: the object is the one with that id (made up if the
            // fake world has never seen it, as if it had been created by hand).
            if let Spec::Volume(volume) = &request.spec
                && let Some(existing) = &volume.volume_id
            {
                let object = world
                    .objects
                    .entry(existing.clone())
                    .or_insert_with(|| FakeObject {
                        id: existing.clone(),
                        kind: "volume".into(),
                        name: existing.clone(),
                        labels: BTreeMap::new(),
                        spec: Json::Null,
                        status: "active".into(),
                        created_at: Utc::now(),
                        attributes: BTreeMap::from([("size".into(), Json::String("100GB".into()))]),
                        ends_at: None,
                        exit_code: None,
                        mounts: Vec::new(),
                    });
                return Ok(Self::observed(object));
            }
            world.next_id += 1;
            let kind = request.id.kind.to_string();
            let id = format!("fake-{kind}-{}", world.next_id);
            let now = Utc::now();
            let is_run = matches!(request.spec, Spec::Run(_));
            let mounts = request
                .volumes
                .values()
                .filter_map(|r| r.backend_id.clone())
                .collect();
            let object = FakeObject {
                id: id.clone(),
                kind,
                name: request.id.name.clone(),
                labels: request.labels.clone(),
                spec: request.spec.to_json(),
                status: if is_run {
                    "running".into()
                } else {
                    "active".into()
                },
                created_at: now,
                attributes: Self::attributes(&request.spec),
                ends_at: is_run.then(|| now + latency),
                exit_code: is_run.then(|| Self::run_exit_code(&request.spec)),
                mounts,
            };
            let observed = Self::observed(&object);
            world.objects.insert(id, object);
            Ok(observed)
        })?;
        self.wait().await;
        Ok(observed)
    }

    async fn update(
        &self,
        request: &Request,
        record: &ResourceRecord,
    ) -> Result<Observed, BackendError> {
        self.call(&format!("update {}", request.id))?;
        let id = record.backend_id.clone().unwrap_or_default();
        let observed = self.with_world(|world| {
            let object = world.objects.get_mut(&id).ok_or_else(|| {
                BackendError::not_found(format!("{} ({id}) does not exist", request.id))
            })?;
            object.spec = request.spec.to_json();
            object.attributes = Self::attributes(&request.spec);
            Ok(Self::observed(object))
        })?;
        self.wait().await;
        Ok(observed)
    }

    async fn delete(&self, record: &ResourceRecord) -> Result<(), BackendError> {
        self.call(&format!("delete {}", record.id()))?;
        let Some(id) = record.backend_id.clone() else {
            return Ok(());
        };
        self.with_world(|world| {
            let now = Utc::now();
            for object in world.objects.values_mut() {
                Self::refresh_run(object, now);
            }
            let users: Vec<String> = world
                .objects
                .values()
                .filter(|o| o.status == "running" && o.mounts.contains(&id))
                .map(|o| {
                    o.labels
                        .get("dstack.run")
                        .cloned()
                        .unwrap_or_else(|| o.name.clone())
                })
                .collect();
            if !users.is_empty() {
                return Err(BackendError::new(
                    ErrorKind::Conflict,
                    format!("{} is in use by the run {}", record.id(), users.join(", ")),
                )
                .with_hint("stop the run first (`dstack stop RUN`), or wait for it to end"));
            }
            world.objects.remove(&id);
            Ok(())
        })?;
        self.wait().await;
        Ok(())
    }

    async fn find(&self, labels: &BTreeMap<String, String>) -> Result<Vec<Observed>, BackendError> {
        self.call("find")?;
        let found = self.with_world(|world| {
            Ok(world
                .objects
                .values()
                .filter(|o| labels.iter().all(|(k, v)| o.labels.get(k) == Some(v)))
                .map(Self::observed)
                .collect())
        })?;
        self.wait().await;
        Ok(found)
    }

    async fn run_read(&self, run: &RunRecord) -> Result<Option<RunObserved>, BackendError> {
        self.call(&format!("read run {}", run.name))?;
        let id = run
            .job
            .get("backend_id")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        let observed = self.with_world(|world| {
            let now = Utc::now();
            Ok(world.objects.get_mut(&id).map(|object| {
                Self::refresh_run(object, now);
                let status = run_status(&object.status);
                RunObserved {
                    status,
                    exit_code: status
                        .is_finished()
                        .then_some(object.exit_code.unwrap_or(0)),
                    message: None,
                    finished_at: status
                        .is_finished()
                        .then(|| object.ends_at.unwrap_or(now).min(now)),
                    manifest: None,
                }
            }))
        })?;
        Ok(observed)
    }

    async fn run_stop(&self, run: &RunRecord, abort: bool) -> Result<(), BackendError> {
        self.call(&format!("stop run {}", run.name))?;
        let id = run
            .job
            .get("backend_id")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        self.with_world(|world| {
            let now = Utc::now();
            if let Some(object) = world.objects.get_mut(&id) {
                Self::refresh_run(object, now);
                if object.status == "running" {
                    object.status = if abort {
                        "aborted".into()
                    } else {
                        "stopped".into()
                    };
                    object.ends_at = Some(now);
                }
            }
            Ok(())
        })
    }

    async fn run_remove(&self, run: &RunRecord) -> Result<(), BackendError> {
        self.call(&format!("remove run {}", run.name))?;
        let id = run
            .job
            .get("backend_id")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        self.with_world(|world| {
            world.objects.remove(&id);
            Ok(())
        })
    }
}
