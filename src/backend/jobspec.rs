//! From a run request to the runner's job: what every backend that runs jobs shares. What depends
//! on the machine (runtime, image default, code location, mounts, published ports, resource
//! checks, stores) is decided by the backend and passed in a [`Placement`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{BackendError, ErrorKind, Request};
use crate::model::profile::{PythonVersion, RetryEvent};
use crate::model::run::{RunFields, RunSpec};
use crate::runner::job::{
    JobArtifact, JobMount, JobPort, JobSpec, Limits, Readiness, RetryPolicy, Runtime,
};
use crate::runner::remote::{JobError, JobRef};
use crate::state::RunRecord;

/// What the backend decided about where and how the job runs.
pub struct Placement {
    pub runtime: Runtime,
    pub image: Option<String>,
    pub working_dir: String,
    pub code_dir: PathBuf,
    pub mounts: Vec<JobMount>,
    pub ports: Vec<JobPort>,
    pub limits: Limits,
    pub artifact_store: Option<PathBuf>,
    pub cache: Vec<crate::runner::cache::JobCache>,
}

/// A job store error as a backend error: transient S3 trouble is retried by the executor.
pub fn job_error(error: &JobError) -> BackendError {
    let hint = match error {
        JobError::S3 { hint, .. } => hint.clone(),
        _ => None,
    };
    let mut out = BackendError::new(
        if error.is_transient() {
            ErrorKind::Transient
        } else {
            ErrorKind::Internal
        },
        error.to_string(),
    );
    out.hint = hint;
    out
}

/// The S3 job of a run submitted through a remote job store (its lineage is recorded).
pub fn job_of(run: &RunRecord) -> Result<JobRef, BackendError> {
    let lineage = run
        .job
        .get("lineage")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| {
            BackendError::new(
                ErrorKind::Internal,
                format!("{} has no recorded job lineage", run.name),
            )
        })?;
    Ok(JobRef {
        lineage: lineage.to_string(),
        run: run.name.clone(),
    })
}

/// Place the dependencies' artifacts at their paths in the working directory, inside the copy
/// of the project at `code_dir` (which stands for `/workflow`).
pub fn place_deps(
    artifact_store: &std::path::Path,
    deps: &[crate::state::Manifest],
    code_dir: &std::path::Path,
    working_dir: &str,
) -> Result<(), BackendError> {
    let inside = working_dir
        .strip_prefix("/workflow")
        .unwrap_or_default()
        .trim_start_matches('/');
    let store = crate::artifacts::Store::new(artifact_store.to_path_buf());
    for manifest in deps {
        store
            .materialize(manifest, &code_dir.join(inside))
            .map_err(|e| {
                BackendError::new(
                    ErrorKind::Invalid,
                    format!("cannot place the artifacts of {}: {e}", manifest.run),
                )
                .with_hint(format!(
                    "`dstack pull {}` fetches pushed artifacts into this machine's store",
                    manifest.run
                ))
            })?;
    }
    Ok(())
}

/// The project snapshot a remote job's `/workflow` gets, with the dependencies' artifacts in
/// place, packed as a tar file in a temporary directory (kept alive by the returned guard).
pub fn pack_code(
    project_dir: &std::path::Path,
    artifact_store: &std::path::Path,
    request: &Request,
    spec: &RunSpec,
    working_dir: &str,
) -> Result<(tempfile::TempDir, PathBuf), super::BackendError> {
    // The snapshot /workflow gets, with the dependencies' artifacts in place.
    let temp = tempfile::tempdir().map_err(|e| {
        BackendError::new(
            ErrorKind::Internal,
            format!("cannot create a temporary directory: {e}"),
        )
    })?;
    let code = temp.path().join("code");
    let artifacts: Vec<String> = spec
        .common
        .artifacts
        .iter()
        .map(|a| a.path.clone())
        .collect();
    let excluded =
        crate::runner::code::artifact_exclusions(spec.common.working_dir.as_deref(), &artifacts);
    crate::runner::code::snapshot(project_dir, &code, &excluded).map_err(|e| {
        BackendError::new(ErrorKind::Internal, format!("cannot copy the project: {e}"))
    })?;
    place_deps(artifact_store, &request.deps, &code, working_dir)?;
    let tar = temp.path().join("code.tar");
    crate::runner::remote::pack(&code, &tar).map_err(|e| {
        BackendError::new(ErrorKind::Internal, format!("cannot pack the project: {e}"))
    })?;
    Ok((temp, tar))
}

/// The image of a run: its `image`, else the backend's default, else `python:3.X-slim`.
pub fn image(spec: &RunSpec, default_image: Option<&str>) -> String {
    spec.common.image.clone().unwrap_or_else(|| {
        default_image.map_or_else(
            || {
                format!(
                    "python:{}-slim",
                    spec.common.python.unwrap_or(PythonVersion::DEFAULT)
                )
            },
            str::to_string,
        )
    })
}

/// The container limits a run states (a maximum becomes a limit), without checking any machine.
pub fn limits(spec: &RunSpec) -> Limits {
    let resources = &spec.common.resources;
    let mut limits = Limits::default();
    if let Some(count) = resources.cpu.and_then(|c| c.count) {
        limits.cpus = count.max.map(|max| max as f64);
    }
    if let Some(memory) = resources.memory {
        limits.memory_bytes = memory.max.map(crate::model::quantity::Memory::bytes);
    }
    limits.shm_bytes = resources
        .shm_size
        .map(crate::model::quantity::Memory::bytes);
    if let Some(gpu) = &resources.gpu {
        let count = gpu.count();
        if count.min.unwrap_or(0) > 0 || count.max.unwrap_or(0) > 0 {
            limits.gpus = Some(count.max.or(count.min).unwrap_or(1).max(0) as u64);
        }
    }
    limits
}

/// The working directory of a run (`/workflow` unless it says otherwise).
pub fn working_dir(spec: &RunSpec) -> String {
    spec.common
        .working_dir
        .clone()
        .unwrap_or_else(|| "/workflow".into())
}

/// The job of a run request.
pub fn build(request: &Request, spec: &RunSpec, run_name: &str, placement: Placement) -> JobSpec {
    let common = &spec.common;
    let (replicas, readiness) = match &spec.fields {
        RunFields::Service(service) => {
            let replicas = service.replica_range().min.unwrap_or(1).max(1) as u32;
            let path = service
                .probes
                .as_ref()
                .and_then(|p| p.first())
                .and_then(|p| p.url.clone())
                .unwrap_or_else(|| "/".into());
            (
                replicas,
                Some(Readiness {
                    container_port: service.port.container_port,
                    path,
                }),
            )
        }
        _ => (1, None),
    };
    let runtime_values = BTreeMap::from([("run.name".to_string(), run_name.to_string())]);
    let commands: Vec<String> = common
        .setup
        .iter()
        .chain(spec.commands())
        .map(|c| crate::config::interpolate::expand_runtime(c, &runtime_values))
        .collect();
    let script = if commands.is_empty() {
        String::new()
    } else {
        format!("set -e\n{}\n", commands.join("\n"))
    };
    let shell = common.shell.as_ref().map_or_else(
        || {
            if placement.runtime == Runtime::Host || common.image.is_some() {
                "/bin/sh".to_string()
            } else {
                "/bin/bash".to_string()
            }
        },
        |s| match s.0.as_str() {
            "sh" => "/bin/sh".into(),
            "bash" => "/bin/bash".into(),
            other => other.into(),
        },
    );
    let retry = common
        .retry
        .as_ref()
        .map_or_else(RetryPolicy::default, |r| RetryPolicy {
            on_error: r.on_events.contains(&RetryEvent::Error),
            duration_secs: r.duration.0.max(0) as u64,
        });
    JobSpec {
        run_name: run_name.to_string(),
        resource: Some(request.id.name.clone()),
        project: request.project.clone(),
        lineage: request.lineage.clone(),
        run_type: spec.run_type().to_string(),
        runtime: placement.runtime,
        image: placement.image,
        shell,
        script,
        keep_alive: matches!(spec.fields, RunFields::DevEnvironment(_)),
        env: request.env.clone(),
        working_dir: placement.working_dir,
        code_dir: placement.code_dir,
        mounts: placement.mounts,
        ports: placement.ports,
        limits: placement.limits,
        user: common.user.as_ref().map(|u| u.0.clone()),
        privileged: common.privileged.is_some_and(|p| p.0) || common.docker.is_some_and(|d| d.0),
        entrypoint: common.entrypoint.clone(),
        max_duration_secs: common
            .max_duration
            .and_then(crate::model::quantity::OffDuration::duration)
            .map(|d| d.0.max(0) as u64),
        stop_duration_secs: match common.stop_duration {
            Some(crate::model::quantity::OffDuration::Off) => 0,
            Some(crate::model::quantity::OffDuration::After(d)) => d.0.max(0) as u64,
            None => 300,
        },
        retry,
        replicas,
        readiness,
        labels: request.labels.clone(),
        artifacts: common
            .artifacts
            .iter()
            .map(|a| JobArtifact {
                path: a.path.clone(),
                mount: a.mount,
            })
            .collect(),
        artifact_store: placement.artifact_store,
        secrets: request.secrets.clone(),
        cache: placement.cache,
        submitted_at: chrono::Utc::now(),
    }
}
