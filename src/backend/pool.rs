//! The `pool` backend: runs queued in S3 for a pool of runners (seed 001's "install the runner on
//! all these machines, and submit workflows to run there").
//!
//! Any machine with Docker becomes a runner with `dstack runner --pool s3://BUCKET/PREFIX`. A run
//! targets the pool with `backends: [pool]`; `apply` uploads its code and job under the store
//! (see [`crate::runner::remote`]) and queues it; the first runner to claim it (a conditional
//! write, so exactly one) runs it and reports status, logs and artifacts through S3.
//!
//! Pool runs get no network volumes (the pool does not own any); instance volumes
//! (`/dir:/path`) bind directories of whichever runner takes the job.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value as Json;

use super::jobspec::{job_error, job_of};
use super::{Backend, BackendError, Capabilities, ErrorKind, Observed, Request, RunObserved};
use crate::aws::Connection;
use crate::model::Spec;
use crate::model::mounts::MountPoint;
use crate::runner::job::{Control, JobMount, JobPort, MountSource, Runtime};
use crate::runner::remote::{JobRef, RemoteJobs};
use crate::state::{ResourceRecord, RunRecord, RunStatus};

/// How long a runner may stay silent before its run counts as lost.
const LOST_AFTER: Duration = Duration::from_mins(2);

/// A runner pool reached through S3.
pub struct PoolBackend {
    url: String,
    connection: Connection,
    jobs: tokio::sync::OnceCell<RemoteJobs>,
    project_dir: PathBuf,
    artifact_store: PathBuf,
}

impl PoolBackend {
    pub fn new(
        url: String,
        connection: Connection,
        project_dir: PathBuf,
        artifact_store: PathBuf,
    ) -> Self {
        Self {
            url,
            connection,
            jobs: tokio::sync::OnceCell::new(),
            project_dir,
            artifact_store,
        }
    }

    async fn jobs(&self) -> Result<&RemoteJobs, BackendError> {
        self.jobs
            .get_or_try_init(|| async {
                RemoteJobs::open(&self.url, &self.connection)
                    .await
                    .map_err(|e| job_error(&e))
            })
            .await
    }

    async fn submit(&self, request: &Request) -> Result<Observed, BackendError> {
        let Spec::Run(spec) = &request.spec else {
            unreachable!("checked by the caller")
        };
        let run_name = request
            .run_name
            .clone()
            .ok_or_else(|| BackendError::new(ErrorKind::Internal, "a run needs a name"))?;
        let mut mounts = Vec::new();
        for mount in &spec.common.volumes {
            match mount {
                MountPoint::Volume { names, .. } => {
                    return Err(BackendError::new(
                        ErrorKind::Invalid,
                        format!(
                            "the pool has no network volumes, and the run mounts {}",
                            names.join(", ")
                        ),
                    )
                    .with_hint("run it on the backend of its volumes, or use an instance volume (`/dir:/path`)"));
                }
                MountPoint::Instance {
                    instance_path,
                    path,
                    ..
                } => mounts.push(JobMount {
                    source: MountSource::Bind {
                        path: PathBuf::from(instance_path),
                    },
                    target: path.clone(),
                }),
            }
        }
        let ports = spec
            .ports()
            .iter()
            .map(|p| JobPort {
                local: p.local_port.unwrap_or(p.container_port),
                container: p.container_port,
            })
            .collect();
        let working_dir = super::jobspec::working_dir(spec);
        let (_temp, tar) = super::jobspec::pack_code(
            &self.project_dir,
            &self.artifact_store,
            request,
            spec,
            &working_dir,
        )?;
        let job = super::jobspec::build(
            request,
            spec,
            &run_name,
            super::jobspec::Placement {
                runtime: Runtime::Docker,
                image: Some(super::jobspec::image(spec, None)),
                working_dir,
                code_dir: PathBuf::from("code"),
                mounts,
                ports,
                limits: super::jobspec::limits(spec),
                artifact_store: None,
                cache: Vec::new(),
            },
        );
        let job_ref = JobRef {
            lineage: request.lineage.clone(),
            run: run_name.clone(),
        };
        let jobs = self.jobs().await?;
        jobs.submit(&job_ref, &job, &tar, true)
            .await
            .map_err(|e| job_error(&e))?;
        if let Some(intent) = request.labels.get("dstack.intent") {
            jobs.record_intent(intent, &job_ref)
                .await
                .map_err(|e| job_error(&e))?;
        }
        Ok(Observed {
            backend_id: Some(jobs.job_url(&job_ref)),
            attributes: BTreeMap::from([
                ("lineage".to_string(), Json::String(request.lineage.clone())),
                ("runtime".to_string(), Json::String("pool".into())),
            ]),
            status: "submitted".into(),
            labels: request.labels.clone(),
        })
    }
}

fn unsupported(what: &str) -> BackendError {
    BackendError::new(
        ErrorKind::Invalid,
        format!("the pool backend runs jobs; it has no {what}"),
    )
    .with_hint("declare volumes and fleets on `local` or `aws`")
}

#[async_trait::async_trait]
impl Backend for PoolBackend {
    fn name(&self) -> &'static str {
        "pool"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            runs: true,
            instance_volumes: true,
            ..Capabilities::default()
        }
    }

    async fn read(&self, _record: &ResourceRecord) -> Result<Option<Observed>, BackendError> {
        Ok(None)
    }

    async fn create(&self, request: &Request) -> Result<Observed, BackendError> {
        match &request.spec {
            Spec::Run(_) => self.submit(request).await,
            Spec::Volume(_) => Err(unsupported("volumes")),
            Spec::Fleet(_) => Err(unsupported("fleets")),
            Spec::Tag(_) => Err(BackendError::new(
                ErrorKind::Internal,
                "tags are not backend objects",
            )),
        }
    }

    async fn update(
        &self,
        _request: &Request,
        _record: &ResourceRecord,
    ) -> Result<Observed, BackendError> {
        Err(unsupported("objects to update"))
    }

    async fn delete(&self, _record: &ResourceRecord) -> Result<(), BackendError> {
        Ok(())
    }

    async fn find(&self, labels: &BTreeMap<String, String>) -> Result<Vec<Observed>, BackendError> {
        let Some(intent) = labels.get("dstack.intent") else {
            return Ok(Vec::new());
        };
        let jobs = self.jobs().await?;
        let Some(job) = jobs.intent(intent).await.map_err(|e| job_error(&e))? else {
            return Ok(Vec::new());
        };
        if !jobs.exists(&job).await.map_err(|e| job_error(&e))? {
            return Ok(Vec::new());
        }
        Ok(vec![Observed {
            backend_id: Some(jobs.job_url(&job)),
            attributes: BTreeMap::from([
                ("lineage".to_string(), Json::String(job.lineage.clone())),
                ("runtime".to_string(), Json::String("pool".into())),
            ]),
            status: "submitted".into(),
            labels: labels.clone(),
        }])
    }

    async fn run_read(&self, run: &RunRecord) -> Result<Option<RunObserved>, BackendError> {
        let job = job_of(run)?;
        let jobs = self.jobs().await?;
        let Some(status) = jobs.status(&job).await.map_err(|e| job_error(&e))? else {
            return Ok(jobs
                .exists(&job)
                .await
                .map_err(|e| job_error(&e))?
                .then_some(RunObserved {
                    status: RunStatus::Submitted,
                    exit_code: None,
                    message: Some("queued for a pool runner".into()),
                    finished_at: None,
                    manifest: None,
                }));
        };
        let mut observed = RunObserved {
            status: status.status,
            exit_code: status.exit_code,
            message: status.message.clone(),
            finished_at: status.finished_at,
            manifest: None,
        };
        if status.status.is_finished() {
            observed.manifest = jobs.manifest(&job).await.map_err(|e| job_error(&e))?;
        } else {
            let heard = jobs
                .heartbeat(&job)
                .await
                .map_err(|e| job_error(&e))?
                .unwrap_or(status.updated_at);
            let silent = (Utc::now() - heard).to_std().unwrap_or_default();
            if silent > LOST_AFTER {
                observed.status = RunStatus::Aborted;
                observed.message = Some(format!(
                    "its runner has not reported for {} s",
                    silent.as_secs()
                ));
                observed.finished_at = Some(Utc::now());
            }
        }
        Ok(Some(observed))
    }

    async fn run_stop(&self, run: &RunRecord, abort: bool) -> Result<(), BackendError> {
        let job = job_of(run)?;
        let control = if abort { Control::Abort } else { Control::Stop };
        let jobs = self.jobs().await?;
        if jobs
            .cancel_if_unclaimed(&job, control)
            .await
            .map_err(|e| job_error(&e))?
        {
            return Ok(());
        }
        jobs.request(&job, control).await.map_err(|e| job_error(&e))
    }

    async fn run_remove(&self, run: &RunRecord) -> Result<(), BackendError> {
        let job = job_of(run)?;
        self.jobs()
            .await?
            .remove(&job)
            .await
            .map_err(|e| job_error(&e))
    }

    async fn run_logs(&self, run: &RunRecord, offset: u64) -> Result<(Vec<u8>, u64), BackendError> {
        let job = job_of(run)?;
        self.jobs()
            .await?
            .logs(&job, offset)
            .await
            .map_err(|e| job_error(&e))
    }
}
