//! The local backend: this machine.
//!
//! - Volumes (`backend: local`) are Docker named volumes, labelled with the project, lineage
//!   and name; `volume_id` registers an existing Docker volume.
//! - Runs are executed by a detached `dstack runner` (see [`crate::runner`]) in Docker
//!   containers, or, with `runtime: host` (or `auto` when no Docker daemon answers), as host
//!   processes in a per-run copy of the project.
//! - A fleet on the local backend is this machine.

pub mod docker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::VolumeCreateRequest;
use serde_json::Value as Json;
use tokio::sync::OnceCell;

use super::{Backend, BackendError, Capabilities, ErrorKind, Observed, Request, RunObserved};
use crate::config::project::LocalRuntime;
use crate::model::mounts::MountPoint;
use crate::model::run::{RunFields, RunSpec};
use crate::model::{Kind, Spec};
use crate::runner::job::{JobMount, JobPort, JobStore, Limits, MountSource, Runtime};
use crate::state::{ResourceRecord, RunRecord, RunStatus};

/// The local backend of a project.
pub struct LocalBackend {
    dot_dir: PathBuf,
    project_dir: PathBuf,
    runtime: LocalRuntime,
    default_image: Option<String>,
    artifact_store: PathBuf,
    resolved: OnceCell<Result<Runtime, BackendError>>,
    show_progress: bool,
}

impl LocalBackend {
    pub fn new(
        project_dir: &Path,
        runtime: LocalRuntime,
        default_image: Option<String>,
        artifact_store: PathBuf,
        show_progress: bool,
    ) -> Self {
        Self {
            dot_dir: project_dir.join(".dstack"),
            project_dir: project_dir.to_path_buf(),
            runtime,
            default_image,
            artifact_store,
            resolved: OnceCell::new(),
            show_progress,
        }
    }

    /// Docker or host processes, decided once.
    pub async fn runtime(&self) -> Result<Runtime, BackendError> {
        self.resolved
            .get_or_init(|| async {
                match self.runtime {
                    LocalRuntime::Docker => docker::connect().await.map(|_| Runtime::Docker),
                    LocalRuntime::Host => Ok(Runtime::Host),
                    LocalRuntime::Auto => Ok(if docker::available().await {
                        Runtime::Docker
                    } else {
                        Runtime::Host
                    }),
                }
            })
            .await
            .clone()
    }

    fn volume_name(request: &Request) -> String {
        let lineage: String = request
            .lineage
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
        format!("dstack-{}-{lineage}", request.id.name)
    }

    async fn create_volume(&self, request: &Request) -> Result<Observed, BackendError> {
        let Spec::Volume(volume) = &request.spec else {
            unreachable!("checked by the caller")
        };
        let docker = docker::connect().await?;
        if let Some(existing) = &volume.volume_id {
            return match docker.inspect_volume(existing).await {
                Ok(found) => Ok(Observed {
                    backend_id: Some(existing.clone()),
                    attributes: BTreeMap::new(),
                    status: "active".into(),
                    labels: found.labels.into_iter().collect(),
                }),
                Err(e) => {
                    let error = docker::error(&format!("Docker volume `{existing}`"), &e);
                    Err(if error.kind == ErrorKind::NotFound {
                        BackendError::new(ErrorKind::Invalid, format!("the Docker volume `{existing}` does not exist"))
                            .with_hint(format!("create it (`docker volume create {existing}`), or remove `volume_id` to let dstack create one"))
                    } else {
                        error
                    })
                }
            };
        }
        let name = Self::volume_name(request);
        let mut labels = request.labels.clone();
        if let Some(size) = volume.size {
            labels.insert("dstack.size".into(), size.to_string());
        }
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(docker::labels(&labels)),
                ..Default::default()
            })
            .await
            .map_err(|e| docker::error(&format!("cannot create the Docker volume `{name}`"), &e))?;
        Ok(Observed {
            backend_id: Some(name),
            attributes: BTreeMap::new(),
            status: "active".into(),
            labels,
        })
    }

    /// Check what the run states explicitly against this machine.
    fn check_resources(spec: &RunSpec, runtime: Runtime) -> Result<Limits, BackendError> {
        let resources = &spec.common.resources;
        let limits = super::jobspec::limits(spec);
        let short = |what: String| {
            BackendError::new(ErrorKind::Invalid, what).with_hint("lower the requirement, or run on a backend with bigger machines (`backends: [aws]`)")
        };
        if let Some(cpu) = resources.cpu {
            let cores =
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as i64;
            if let Some(count) = cpu.count
                && count.min.is_some_and(|min| min > cores)
            {
                return Err(short(format!(
                    "the run needs {} CPUs, this machine has {cores}",
                    count.min.unwrap_or(0)
                )));
            }
            if let Some(arch) = cpu.arch {
                let machine = if cfg!(target_arch = "aarch64") {
                    "arm"
                } else {
                    "x86"
                };
                if arch.to_string() != machine {
                    return Err(short(format!(
                        "the run needs {arch} CPUs, this machine is {machine}"
                    )));
                }
            }
        }
        if let Some(memory) = resources.memory {
            let total = host_memory_gb();
            if let (Some(min), Some(total)) = (memory.min, total)
                && min.0 > total
            {
                return Err(short(format!(
                    "the run needs {min} of memory, this machine has {total:.1}GB"
                )));
            }
        }
        if let Some(gpu) = &resources.gpu {
            let count = gpu.count();
            if count.min.unwrap_or(0) > 0 || count.max.unwrap_or(0) > 0 {
                if !host_has_gpu() {
                    return Err(BackendError::new(ErrorKind::Invalid, format!("the run asks for GPUs (`gpu: {gpu}`), but this machine has none"))
                        .with_hint("remove `gpu` from `resources`, or run on a backend with GPUs (`backends: [aws]`)"));
                }
                if runtime == Runtime::Host {
                    return Err(BackendError::new(
                        ErrorKind::Invalid,
                        "GPUs need the Docker runtime of the local backend",
                    )
                    .with_hint("start Docker, or set `runtime: docker` for the local backend"));
                }
            }
        }
        Ok(limits)
    }

    /// Turn a run request into a job, start its runner, and wait until the runner accepts it.
    async fn submit(&self, request: &Request) -> Result<Observed, BackendError> {
        let Spec::Run(spec) = &request.spec else {
            unreachable!("checked by the caller")
        };
        let run_name = request
            .run_name
            .clone()
            .ok_or_else(|| BackendError::new(ErrorKind::Internal, "a run needs a name"))?;
        let runtime = self.runtime().await?;
        let common = &spec.common;
        if runtime == Runtime::Host {
            if let Some(image) = &common.image {
                return Err(BackendError::new(
                    ErrorKind::Invalid,
                    format!("the run names the image `{image}`, but the local backend runs host processes here (runtime `host`, or no Docker daemon answered)"),
                )
                .with_hint("start Docker (or set `runtime: docker` for the local backend in .dstack/config.yml), or remove `image` to run the commands on this machine"));
            }
            if !common.volumes.is_empty() {
                return Err(BackendError::new(
                    ErrorKind::Invalid,
                    "volumes need the Docker runtime of the local backend",
                )
                .with_hint("start Docker, or remove `volumes` to run on the host"));
            }
        }
        if let RunFields::DevEnvironment(dev) = &spec.fields
            && let Some(ide) = dev.ide
        {
            return Err(BackendError::new(
                    ErrorKind::Invalid,
                    format!("`ide: {}` needs an editor server downloaded from the internet; the local backend does not install one", serde_json::to_value(ide).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
                )
                .with_hint("remove `ide` and use `dstack attach RUN` to open a shell in the environment"));
        }
        let limits = Self::check_resources(spec, runtime)?;
        let image = match runtime {
            Runtime::Docker => Some(super::jobspec::image(spec, self.default_image.as_deref())),
            Runtime::Host => None,
        };
        let store = JobStore::new(&self.dot_dir, &run_name);
        let _ = std::fs::remove_dir_all(&store.dir);
        std::fs::create_dir_all(&store.dir).map_err(|e| {
            BackendError::new(
                ErrorKind::Internal,
                format!("cannot create {}: {e}", store.dir.display()),
            )
        })?;
        if let (Runtime::Docker, Some(image)) = (runtime, &image) {
            let docker = docker::connect().await?;
            docker::ensure_image(&docker, image, self.show_progress).await?;
        }
        let artifact_paths: Vec<String> = common.artifacts.iter().map(|a| a.path.clone()).collect();
        let excluded = crate::runner::code::artifact_exclusions(
            common.working_dir.as_deref(),
            &artifact_paths,
        );
        crate::runner::code::snapshot(&self.project_dir, &store.code_dir(), &excluded).map_err(
            |e| {
                BackendError::new(
                    ErrorKind::Internal,
                    format!(
                        "cannot copy the project to {}: {e}",
                        store.code_dir().display()
                    ),
                )
            },
        )?;
        let working_dir = common
            .working_dir
            .clone()
            .unwrap_or_else(|| "/workflow".into());
        if !(common.artifacts.is_empty()
            || working_dir == "/workflow"
            || working_dir.starts_with("/workflow/"))
        {
            return Err(BackendError::new(ErrorKind::Invalid, "artifacts are saved from the working directory, which must be /workflow or under it")
                .with_hint("remove `working_dir`, or set it under /workflow"));
        }
        // Dependencies' artifacts, at their paths in the working directory.
        super::jobspec::place_deps(
            &self.artifact_store,
            &request.deps,
            &store.code_dir(),
            &working_dir,
        )?;
        let mut mounts = Vec::new();
        for mount in &common.volumes {
            match mount {
                MountPoint::Volume { names, path } => {
                    let record = names
                        .iter()
                        .find_map(|n| request.volumes.get(n).filter(|r| r.backend == "local" && r.backend_id.is_some()))
                        .ok_or_else(|| {
                            BackendError::new(ErrorKind::Invalid, format!("none of the volumes {} exists on the local backend", names.join(", ")))
                                .with_hint("declare it with `type: volume` and `backend: local`, and apply it first")
                        })?;
                    mounts.push(JobMount {
                        source: MountSource::Volume {
                            name: record.backend_id.clone().unwrap_or_default(),
                        },
                        target: path.clone(),
                    });
                }
                MountPoint::Instance {
                    instance_path,
                    path,
                    ..
                } => {
                    let host = PathBuf::from(instance_path);
                    if !host.exists() {
                        std::fs::create_dir_all(&host).map_err(|e| {
                            BackendError::new(
                                ErrorKind::Invalid,
                                format!("cannot create {instance_path}: {e}"),
                            )
                        })?;
                        let _ = std::fs::set_permissions(
                            &host,
                            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(
                                0o777,
                            ),
                        );
                    }
                    mounts.push(JobMount {
                        source: MountSource::Bind { path: host },
                        target: path.clone(),
                    });
                }
            }
        }
        let mut ports = Vec::new();
        for port in spec.ports() {
            let local = match (&spec.fields, port.local_port) {
                (RunFields::Service(_), _) | (_, None) => free_port()?,
                (_, Some(local)) => local,
            };
            ports.push(JobPort {
                local,
                container: port.container_port,
            });
        }
        let job = super::jobspec::build(
            request,
            spec,
            &run_name,
            super::jobspec::Placement {
                runtime,
                image,
                working_dir,
                code_dir: store.code_dir(),
                mounts,
                ports: ports.clone(),
                limits,
                artifact_store: Some(self.artifact_store.clone()),
                cache: crate::runner::cache::for_job(
                    &request.labels,
                    &request.lineage,
                    &self.artifact_store,
                ),
            },
        );
        store.write_spec(&job).map_err(|e| {
            BackendError::new(ErrorKind::Internal, format!("cannot write the job: {e}"))
        })?;
        start_runner(&store)?;
        let status = wait_accepted(&store).await?;
        let mut attributes = BTreeMap::new();
        attributes.insert(
            "runtime".into(),
            Json::String(
                if runtime == Runtime::Docker {
                    "docker"
                } else {
                    "host"
                }
                .into(),
            ),
        );
        if !ports.is_empty() {
            attributes.insert(
                "ports".into(),
                Json::Array(
                    ports
                        .iter()
                        .map(|p| Json::String(format!("{}:{}", p.local, p.container)))
                        .collect(),
                ),
            );
        }
        Ok(Observed {
            backend_id: Some(run_name),
            attributes,
            status: status.status.to_string(),
            labels: request.labels.clone(),
        })
    }

    fn store(&self, run: &str) -> JobStore {
        JobStore::new(&self.dot_dir, run)
    }

    async fn containers_of(&self, run: &str) -> Vec<String> {
        let Ok(docker) = docker::connect().await else {
            return Vec::new();
        };
        let filters = std::collections::HashMap::from([(
            "label".to_string(),
            vec![format!("dstack.run={run}")],
        )]);
        docker
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.id)
            .collect()
    }
}

fn host_memory_gb() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0 / 1024.0)
}

fn host_has_gpu() -> bool {
    Path::new("/dev/nvidia0").exists()
        || Path::new("/dev/dri/renderD128").exists() && Path::new("/dev/kfd").exists()
}

fn free_port() -> Result<u16, BackendError> {
    std::net::TcpListener::bind(("0.0.0.0", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            BackendError::new(
                ErrorKind::Transient,
                format!("cannot find a free local port: {e}"),
            )
        })
}

/// Start the runner detached, in its own process group, so it outlives the CLI.
fn start_runner(store: &JobStore) -> Result<(), BackendError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| {
        BackendError::new(
            ErrorKind::Internal,
            format!("cannot find the dstack binary: {e}"),
        )
    })?;
    let log = std::fs::File::create(store.dir.join("runner.log")).map_err(|e| {
        BackendError::new(
            ErrorKind::Internal,
            format!("cannot create the runner log: {e}"),
        )
    })?;
    std::process::Command::new(exe)
        .arg("runner")
        .arg("--job-dir")
        .arg(&store.dir)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map(drop)
        .map_err(|e| {
            BackendError::new(ErrorKind::Internal, format!("cannot start the runner: {e}"))
        })
}

/// Wait until the runner has written its first status.
async fn wait_accepted(store: &JobStore) -> Result<crate::runner::job::JobStatus, BackendError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = store.read_status() {
            return Ok(status);
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(store.dir.join("runner.log")).unwrap_or_default();
            return Err(BackendError::new(
                ErrorKind::Internal,
                format!(
                    "the runner did not accept the job within 30 s: {}",
                    log.trim()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn observed_run(
    status: &crate::runner::job::JobStatus,
    manifest: Option<crate::state::Manifest>,
) -> RunObserved {
    let mut run_status = status.status;
    let mut message = status.message.clone();
    if !run_status.is_finished() && !crate::state::lock::process_alive(status.runner_pid) {
        run_status = RunStatus::Aborted;
        message = Some("the runner process died".into());
    }
    RunObserved {
        status: run_status,
        exit_code: status.exit_code,
        message,
        finished_at: status.finished_at,
        manifest,
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
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
        match record.kind {
            Kind::Volume => {
                let name = record.backend_id.clone().unwrap_or_default();
                let docker = docker::connect().await?;
                match docker.inspect_volume(&name).await {
                    Ok(volume) => Ok(Some(Observed {
                        backend_id: Some(name),
                        attributes: BTreeMap::new(),
                        status: "active".into(),
                        labels: volume.labels.into_iter().collect(),
                    })),
                    Err(e) => {
                        let error = docker::error(&format!("Docker volume `{name}`"), &e);
                        if error.kind == ErrorKind::NotFound {
                            Ok(None)
                        } else {
                            Err(error)
                        }
                    }
                }
            }
            _ => Ok(Some(Observed {
                backend_id: record.backend_id.clone(),
                status: record.status.clone(),
                ..Observed::default()
            })),
        }
    }

    async fn create(&self, request: &Request) -> Result<Observed, BackendError> {
        match &request.spec {
            Spec::Volume(_) => self.create_volume(request).await,
            Spec::Run(_) => self.submit(request).await,
            Spec::Fleet(_) => Ok(Observed {
                backend_id: Some("local".into()),
                status: "active".into(),
                ..Observed::default()
            }),
            Spec::Tag(_) => Err(BackendError::new(
                ErrorKind::Internal,
                "tags are not backend objects",
            )),
        }
    }

    async fn update(
        &self,
        request: &Request,
        record: &ResourceRecord,
    ) -> Result<Observed, BackendError> {
        // Docker volumes have no size to grow, and the local fleet is this machine: the new spec
        // is recorded as is.
        let _ = request;
        Ok(Observed {
            backend_id: record.backend_id.clone(),
            attributes: BTreeMap::new(),
            status: "active".into(),
            labels: BTreeMap::new(),
        })
    }

    async fn delete(&self, record: &ResourceRecord) -> Result<(), BackendError> {
        if record.kind != Kind::Volume {
            return Ok(());
        }
        let name = record.backend_id.clone().unwrap_or_default();
        let docker = docker::connect().await?;
        match docker
            .remove_volume(
                &name,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let error = docker::error(&format!("cannot delete the Docker volume `{name}`"), &e);
                match error.kind {
                    ErrorKind::NotFound => Ok(()),
                    ErrorKind::Conflict => {
                        let filters = std::collections::HashMap::from([(
                            "volume".to_string(),
                            vec![name.clone()],
                        )]);
                        let users: Vec<String> = docker
                            .list_containers(Some(
                                bollard::query_parameters::ListContainersOptions {
                                    all: true,
                                    filters: Some(filters),
                                    ..Default::default()
                                },
                            ))
                            .await
                            .unwrap_or_default()
                            .into_iter()
                            .map(|c| {
                                c.labels
                                    .as_ref()
                                    .and_then(|l| l.get("dstack.run").cloned())
                                    .map_or_else(
                                        || {
                                            format!(
                                                "container {}",
                                                c.names
                                                    .unwrap_or_default()
                                                    .join(",")
                                                    .trim_start_matches('/')
                                            )
                                        },
                                        |run| format!("run {run}"),
                                    )
                            })
                            .collect();
                        Err(BackendError::new(
                            ErrorKind::Conflict,
                            format!(
                                "{} is in use by {}",
                                record.id(),
                                if users.is_empty() {
                                    "a container".into()
                                } else {
                                    users.join(", ")
                                }
                            ),
                        )
                        .with_hint("stop the run first (`dstack stop RUN`), or wait for it to end"))
                    }
                    _ => Err(error),
                }
            }
        }
    }

    async fn find(&self, labels: &BTreeMap<String, String>) -> Result<Vec<Observed>, BackendError> {
        let mut found = Vec::new();
        let runs = self.dot_dir.join("runs");
        if let Ok(entries) = std::fs::read_dir(&runs) {
            for entry in entries.flatten() {
                let store = JobStore { dir: entry.path() };
                if let Ok(spec) = store.read_spec()
                    && labels.iter().all(|(k, v)| spec.labels.get(k) == Some(v))
                {
                    let status = store
                        .read_status()
                        .map_or_else(|| "submitted".to_string(), |s| s.status.to_string());
                    found.push(Observed {
                        backend_id: Some(spec.run_name.clone()),
                        attributes: BTreeMap::new(),
                        status,
                        labels: spec.labels.clone(),
                    });
                }
            }
        }
        if labels.get("dstack.kind").is_none_or(|k| k == "volume")
            && let Ok(docker) = docker::connect().await
        {
            let filters = std::collections::HashMap::from([(
                "label".to_string(),
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>(),
            )]);
            let volumes = docker
                .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
                    filters: Some(filters),
                }))
                .await
                .map_err(|e| docker::error("cannot list Docker volumes", &e))?;
            for volume in volumes.volumes.unwrap_or_default() {
                found.push(Observed {
                    backend_id: Some(volume.name),
                    attributes: BTreeMap::new(),
                    status: "active".into(),
                    labels: volume.labels.into_iter().collect(),
                });
            }
        }
        Ok(found)
    }

    async fn run_read(&self, run: &RunRecord) -> Result<Option<RunObserved>, BackendError> {
        let store = self.store(&run.name);
        match store.read_status() {
            Some(status) => Ok(Some(observed_run(&status, store.read_manifest()))),
            None if store.spec_path().exists() => Ok(Some(RunObserved {
                status: RunStatus::Submitted,
                exit_code: None,
                message: None,
                finished_at: None,
                manifest: None,
            })),
            None => Ok(None),
        }
    }

    async fn run_stop(&self, run: &RunRecord, abort: bool) -> Result<(), BackendError> {
        let store = self.store(&run.name);
        let control = if abort {
            crate::runner::job::Control::Abort
        } else {
            crate::runner::job::Control::Stop
        };
        store.request(control).map_err(|e| {
            BackendError::new(
                ErrorKind::Internal,
                format!("cannot ask the runner to stop: {e}"),
            )
        })?;
        let runner_alive = store.read_status().is_some_and(|s| {
            !s.status.is_finished() && crate::state::lock::process_alive(s.runner_pid)
        });
        if !runner_alive {
            // Nobody will obey the request: clean up directly.
            if let Ok(docker) = docker::connect().await {
                for container in self.containers_of(&run.name).await {
                    let _ = docker
                        .remove_container(
                            &container,
                            Some(bollard::query_parameters::RemoveContainerOptions {
                                force: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                }
            }
        }
        Ok(())
    }

    async fn run_remove(&self, run: &RunRecord) -> Result<(), BackendError> {
        let store = self.store(&run.name);
        if store.read_status().is_some_and(|s| {
            !s.status.is_finished() && crate::state::lock::process_alive(s.runner_pid)
        }) {
            let _ = store.request(crate::runner::job::Control::Abort);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < deadline
                && store.read_status().is_some_and(|s| !s.status.is_finished())
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if let Ok(docker) = docker::connect().await {
            for container in self.containers_of(&run.name).await {
                let _ = docker
                    .remove_container(
                        &container,
                        Some(bollard::query_parameters::RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        }
        let _ = std::fs::remove_dir_all(&store.dir);
        Ok(())
    }

    async fn run_logs(&self, run: &RunRecord, offset: u64) -> Result<(Vec<u8>, u64), BackendError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.store(&run.name).logs_path();
        let Ok(mut file) = std::fs::File::open(&path) else {
            return Ok((Vec::new(), offset));
        };
        file.seek(SeekFrom::Start(offset)).map_err(|e| {
            BackendError::new(
                ErrorKind::Internal,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| {
            BackendError::new(
                ErrorKind::Internal,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let next = offset + bytes.len() as u64;
        Ok((bytes, next))
    }

    async fn run_shell(&self, run: &RunRecord) -> Result<Vec<String>, BackendError> {
        let store = self.store(&run.name);
        let status = store
            .read_status()
            .filter(|s| s.status == RunStatus::Running)
            .ok_or_else(|| {
                BackendError::new(ErrorKind::Conflict, format!("{} is not running", run.name))
                    .with_hint("`dstack ps` shows its status")
            })?;
        let spec = store
            .read_spec()
            .map_err(|e| BackendError::new(ErrorKind::Internal, e))?;
        match spec.runtime {
            Runtime::Docker => {
                let container = status.containers.first().cloned().unwrap_or_default();
                Ok(vec![
                    "docker".into(),
                    "exec".into(),
                    "-w".into(),
                    spec.working_dir.clone(),
                    container,
                ])
            }
            Runtime::Host => Ok(vec![format!("cd:{}", spec.code_dir.display())]),
        }
    }
}
