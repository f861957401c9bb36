//! Runs on EC2: one instance per run, which runs the job through `dstack runner` and reports
//! through the S3 job store of the remote artifact store (see [`crate::runner::remote`]).
//!
//! Submitting a run: its code and job go to `jobs/LINEAGE/RUN` of the store; this binary goes to
//! `bin/VERSION/ARCH/dstack` (once per content); an instance of the cheapest fitting offer is
//! launched (in the zone of the run's volumes, if any) with user-data that downloads the binary
//! through a presigned URL, runs `dstack runner --job URL` and shuts the instance down, which
//! terminates it. The volumes are attached once the instance runs (`/dev/sdf`, `/dev/sdg`, ...);
//! the runner waits for them, formats the blank ones dstack created, and mounts them.
//!
//! Reading a run reads the job's status from S3. A run that ended, or whose instance is gone
//! without the runner reporting an end (then it is `aborted`), gets its instance terminated, so
//! nothing keeps running after a run. Stopping writes the control object the runner obeys; a
//! run whose runner has not started yet ends at once and its instance is terminated.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value as Json;

use super::boot::run_user_data;
use super::ec2::{InstanceInfo, Query};
use super::errors::to_backend;
use super::fleets::{Launcher, Purpose, wait_running};
use super::{AwsBackend, RunSettings, aws};
use crate::backend::jobspec::{job_error, job_of};
use crate::backend::{BackendError, ErrorKind, Observed, Request, RunObserved};
use crate::model::fleet::FleetSpec;
use crate::model::mounts::MountPoint;
use crate::model::run::RunSpec;
use crate::runner::job::{Control, JobMount, JobPort, MountSource, Runtime};
use crate::runner::remote::{JobRef, RemoteJobs};
use crate::state::{ResourceRecord, RunRecord, RunStatus};

/// How long a runner may stay silent, once it has reported, before its run counts as lost.
const LOST_AFTER: Duration = Duration::from_mins(2);
/// Where the runner mounts the run's volumes on the instance.
const VOLUME_ROOT: &str = "/mnt/dstack/volumes";
/// How long a fleet node may take to boot its agent before its queued run counts as lost.
const NODE_BOOT_GRACE: Duration = Duration::from_mins(15);

fn no_store() -> BackendError {
    BackendError::new(
        ErrorKind::Invalid,
        "runs on aws need a remote artifact store: their job, code, logs and artifacts go through it",
    )
    .with_hint("set `artifacts: {remote: s3://BUCKET/PREFIX}` in .dstack/config.yml")
}

impl AwsBackend {
    fn run_settings(&self) -> Result<&RunSettings, BackendError> {
        self.runs.as_ref().ok_or_else(no_store)
    }

    pub(super) async fn jobs(&self) -> Result<&RemoteJobs, BackendError> {
        let settings = self.run_settings()?;
        self.jobs
            .get_or_try_init(|| async {
                RemoteJobs::open(&settings.store_url, &settings.connection)
                    .await
                    .map_err(|e| job_error(&e))
            })
            .await
    }
}

impl AwsBackend {
    /// The runner binary's presigned URLs, by architecture; uploaded and checked once per
    /// process.
    pub(super) async fn runner_binaries(&self) -> Result<&BTreeMap<String, String>, BackendError> {
        let settings = self.run_settings()?;
        let jobs = self.jobs().await?;
        self.binaries
            .get_or_try_init(|| super::boot::binaries(jobs, settings))
            .await
    }

    /// What a fleet node boots when runs can be queued to it: its agent. `None` without a
    /// remote artifact store (the node then gets no agent and runs cannot use it).
    pub(super) async fn node_user_data(&self) -> Result<Option<String>, BackendError> {
        let Some(settings) = self.runs.as_ref() else {
            return Ok(None);
        };
        let urls = self.runner_binaries().await?;
        let jobs = self.jobs().await?;
        let region = jobs.region().unwrap_or_else(|| "us-east-1".to_string());
        Ok(Some(super::boot::node_user_data(
            urls,
            &settings.store_url,
            &region,
            settings.connection.endpoint_url.as_deref(),
        )))
    }
}

fn text(run: &RunRecord, key: &str) -> Option<String> {
    run.job.get(key).and_then(Json::as_str).map(str::to_string)
}

/// A volume of the run: its record, the device it is attached as, its mount.
struct RunVolume {
    record: ResourceRecord,
    device: String,
}

fn volume_region_zone(record: &ResourceRecord) -> (Option<String>, Option<String>) {
    let get = |key: &str| {
        record
            .attributes
            .get(key)
            .and_then(Json::as_str)
            .map(str::to_string)
    };
    (get("region"), get("availability_zone"))
}

/// The instance volumes and EBS volumes of a run, with the region and zone the volumes fix.
#[allow(clippy::type_complexity)]
fn mounts(
    request: &Request,
    spec: &RunSpec,
) -> Result<(Vec<JobMount>, Vec<RunVolume>, Option<(String, String)>), BackendError> {
    let mut job_mounts = Vec::new();
    let mut volumes: Vec<RunVolume> = Vec::new();
    let mut place: Option<(String, String)> = None;
    for mount in &spec.common.volumes {
        match mount {
            MountPoint::Volume { names, path } => {
                let candidates: Vec<&ResourceRecord> = names
                    .iter()
                    .filter_map(|n| request.volumes.get(n))
                    .filter(|r| r.backend == "aws" && r.backend_id.is_some())
                    .collect();
                // With several candidates, one in the zone already fixed wins.
                let record = candidates
                    .iter()
                    .find(|r| {
                        place.as_ref().is_none_or(|(region, zone)| {
                            volume_region_zone(r) == (Some(region.clone()), Some(zone.clone()))
                        })
                    })
                    .or(candidates.first())
                    .copied()
                    .ok_or_else(|| {
                        BackendError::new(
                            ErrorKind::Invalid,
                            format!(
                                "none of the volumes {} exists on the aws backend",
                                names.join(", ")
                            ),
                        )
                        .with_hint(
                            "declare it with `type: volume` and `backend: aws`, and apply it first",
                        )
                    })?;
                let (Some(region), Some(zone)) = volume_region_zone(record) else {
                    return Err(BackendError::new(
                        ErrorKind::Internal,
                        format!("{} has no recorded region and zone", record.id()),
                    )
                    .with_hint("`dstack plan` refreshes it"));
                };
                match &place {
                    Some((r, z)) if *r != region || *z != zone => {
                        return Err(BackendError::new(
                            ErrorKind::Invalid,
                            format!(
                                "{}: its volumes are in different zones ({z} and {zone}); an instance can attach only volumes of its own zone",
                                request.id
                            ),
                        )
                        .with_hint("put the run's volumes in one `availability_zone`"));
                    }
                    _ => place = Some((region, zone)),
                }
                let letter = char::from(b'f' + u8::try_from(volumes.len()).unwrap_or(u8::MAX));
                if !letter.is_ascii_lowercase() || letter > 'p' {
                    return Err(BackendError::new(
                        ErrorKind::Invalid,
                        format!("{} mounts more than 11 volumes", request.id),
                    ));
                }
                let device = format!("/dev/sd{letter}");
                let volume_id = record.backend_id.clone().unwrap_or_default();
                // A registered volume (`volume_id`) is the user's: never formatted.
                let created = record.spec.get("volume_id").is_none_or(Json::is_null);
                job_mounts.push(JobMount {
                    source: MountSource::Device {
                        device: device.clone(),
                        volume_id: volume_id.clone(),
                        format: created,
                        mount_dir: PathBuf::from(VOLUME_ROOT).join(&volume_id),
                    },
                    target: path.clone(),
                });
                volumes.push(RunVolume {
                    record: record.clone(),
                    device,
                });
            }
            MountPoint::Instance {
                instance_path,
                path,
                ..
            } => job_mounts.push(JobMount {
                source: MountSource::Bind {
                    path: PathBuf::from(instance_path),
                },
                target: path.clone(),
            }),
        }
    }
    Ok((job_mounts, volumes, place))
}

/// The offer conditions of a run, as a fleet of one node states them; volumes fix the zone.
fn placement_spec(spec: &RunSpec, place: Option<&(String, String)>) -> FleetSpec {
    let common = &spec.common;
    FleetSpec {
        resources: Some(common.resources.clone()),
        regions: place.map_or_else(|| common.regions.clone(), |(r, _)| Some(vec![r.clone()])),
        availability_zones: place.map_or_else(
            || common.availability_zones.clone(),
            |(_, z)| Some(vec![z.clone()]),
        ),
        instance_types: common.instance_types.clone(),
        spot_policy: common.spot_policy,
        max_price: common.max_price,
        tags: common.tags.clone(),
        ..FleetSpec::default()
    }
}

/// The aws fleet a run names (`fleets`), from state; `None` when it names none.
fn fleet_of<'a>(
    request: &'a Request,
    spec: &RunSpec,
) -> Result<Option<&'a ResourceRecord>, BackendError> {
    let Some(wanted) = spec.common.fleets.iter().flatten().next() else {
        return Ok(None);
    };
    let record = request
        .fleets
        .get(&wanted.name)
        .filter(|r| r.backend == "aws" && r.backend_id.is_some())
        .ok_or_else(|| {
            BackendError::new(
                ErrorKind::Invalid,
                format!(
                    "{}: the fleet `{}` is not an applied aws fleet",
                    request.id, wanted.name
                ),
            )
            .with_hint(format!(
                "declare `type: fleet` named `{}` with `backends: [aws]` and apply it first, or remove `fleets` to give the run an instance of its own",
                wanted.name
            ))
        })?;
    Ok(Some(record))
}

/// A job ready to be queued to a fleet node.
struct NodeJob<'a> {
    job_ref: &'a JobRef,
    job: &'a crate::runner::job::JobSpec,
    tar: &'a std::path::Path,
    volumes: &'a [RunVolume],
    place: Option<&'a (String, String)>,
}

/// Where a run on a fleet node was put (`placement.json` of its job, and its attributes).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct NodePlacement {
    fleet: String,
    instance_id: String,
    region: String,
    availability_zone: String,
    instance_type: String,
    spot: bool,
    /// The EBS volumes attached for the run, detached when it ends.
    volumes: Vec<String>,
}

impl NodePlacement {
    /// The placement of a run on a fleet node; `None` for a run with an instance of its own.
    fn of(run: &RunRecord) -> Option<Self> {
        serde_json::from_value::<Self>(Json::Object(run.job.clone().into_iter().collect()))
            .ok()
            .filter(|p| !p.fleet.is_empty())
    }

    fn attributes(&self, lineage: &str) -> BTreeMap<String, Json> {
        let price = super::prices::price(&self.instance_type, self.spot);
        BTreeMap::from([
            ("lineage".to_string(), Json::String(lineage.to_string())),
            ("runtime".to_string(), Json::String("ec2".into())),
            ("fleet".to_string(), Json::String(self.fleet.clone())),
            (
                "instance_id".to_string(),
                Json::String(self.instance_id.clone()),
            ),
            ("region".to_string(), Json::String(self.region.clone())),
            (
                "availability_zone".to_string(),
                Json::String(self.availability_zone.clone()),
            ),
            (
                "instance_type".to_string(),
                Json::String(self.instance_type.clone()),
            ),
            ("spot".to_string(), Json::Bool(self.spot)),
            (
                "volumes".to_string(),
                Json::Array(self.volumes.iter().cloned().map(Json::String).collect()),
            ),
            (
                "price".to_string(),
                price.map_or(Json::Null, |p| {
                    Json::from((p * 10_000.0).round() / 10_000.0)
                }),
            ),
        ])
    }
}

/// Queue a run to an idle node of its fleet: take the node (a lease in the job store, so two
/// runs never share one), attach the run's volumes, and queue the job for the node's agent.
async fn submit_to_node(
    backend: &AwsBackend,
    request: &Request,
    fleet: &ResourceRecord,
    work: &NodeJob<'_>,
) -> Result<Observed, BackendError> {
    let jobs = backend.jobs().await?;
    let fleet_name = &fleet.name;
    // The job goes to the store first: a lease names it, and a lease whose job does not exist
    // is stale (another run of this apply must not take the node over while volumes attach).
    jobs.submit(work.job_ref, work.job, work.tar, false)
        .await
        .map_err(|e| job_error(&e))?;
    let taken = take_node(backend, jobs, request, fleet, work).await;
    let (region, node) = match taken {
        Ok(taken) => taken,
        Err(error) => {
            let _ = jobs.remove(work.job_ref).await;
            return Err(error);
        }
    };
    let placement = NodePlacement {
        fleet: fleet_name.clone(),
        instance_id: node.id.clone(),
        region: region.clone(),
        availability_zone: node.availability_zone.clone(),
        instance_type: node.instance_type.clone(),
        spot: node.spot,
        volumes: work
            .volumes
            .iter()
            .filter_map(|v| v.record.backend_id.clone())
            .collect(),
    };
    let queued = async {
        for volume in work.volumes {
            super::volumes::attach_volume(backend, &volume.record, &node.id, &volume.device)
                .await?;
        }
        let placed = serde_json::to_vec_pretty(&placement).unwrap_or_default();
        jobs.put_extra(work.job_ref, "placement.json", placed)
            .await
            .map_err(|e| job_error(&e))?;
        if let Some(intent) = request.labels.get("dstack.intent") {
            jobs.record_intent(intent, work.job_ref)
                .await
                .map_err(|e| job_error(&e))?;
        }
        jobs.on_node(&node.id)
            .map_err(|e| job_error(&e))?
            .enqueue(work.job_ref)
            .await
            .map_err(|e| job_error(&e))
    }
    .await;
    if let Err(error) = queued {
        // Give the node back as it was.
        let _ = free_node(backend, jobs, work.job_ref, &placement).await;
        let _ = jobs.remove(work.job_ref).await;
        return Err(error);
    }
    Ok(Observed {
        backend_id: Some(jobs.job_url(work.job_ref)),
        attributes: placement.attributes(&request.lineage),
        status: "provisioning".into(),
        labels: request.labels.clone(),
    })
}

/// Lease an idle node of the fleet for the job, or say why there is none.
async fn take_node(
    backend: &AwsBackend,
    jobs: &RemoteJobs,
    request: &Request,
    fleet: &ResourceRecord,
    work: &NodeJob<'_>,
) -> Result<super::fleets::Node, BackendError> {
    let fleet_name = &fleet.name;
    let nodes = super::fleets::live_nodes(backend, fleet).await?;
    let mut busy = Vec::new();
    let mut elsewhere = Vec::new();
    let mut agentless = Vec::new();
    let mut chosen = None;
    for (region, node) in nodes {
        if node.state != "running" {
            busy.push(format!("{} is {}", node.id, node.state));
            continue;
        }
        if !node.tags.contains_key("dstack_agent") {
            agentless.push(node.id.clone());
            continue;
        }
        if let Some((r, z)) = work.place
            && (*r != region || *z != node.availability_zone)
        {
            elsewhere.push(format!("{} in {}", node.id, node.availability_zone));
            continue;
        }
        if jobs
            .lease_node(&node.id, work.job_ref)
            .await
            .map_err(|e| job_error(&e))?
        {
            chosen = Some((region, node));
            break;
        }
        let holder = jobs
            .node_lease(&node.id)
            .await
            .map_err(|e| job_error(&e))?
            .map_or_else(|| "another run".to_string(), |j| j.run);
        busy.push(format!("{} runs {holder}", node.id));
    }
    let Some((region, node)) = chosen else {
        let mut reasons = busy;
        if !elsewhere.is_empty() {
            reasons.push(format!(
                "{} not in the zone of the run's volumes ({})",
                elsewhere.join(", "),
                work.place.map(|(_, z)| z.as_str()).unwrap_or_default()
            ));
        }
        if !agentless.is_empty() {
            reasons.push(format!(
                "{} launched without a runner agent (no remote artifact store was configured then)",
                agentless.join(", ")
            ));
        }
        if reasons.is_empty() {
            reasons.push("it has no running node".into());
        }
        let hint = if agentless.is_empty() {
            format!(
                "wait for a run on `{fleet_name}` to end, raise its `nodes`, or remove `fleets` to give the run an instance of its own"
            )
        } else {
            format!(
                "`dstack apply --replace fleet/{fleet_name}` relaunches the nodes with the agent"
            )
        };
        return Err(BackendError::new(
            ErrorKind::Conflict,
            format!(
                "{}: the fleet `{fleet_name}` has no idle node: {}",
                request.id,
                reasons.join("; ")
            ),
        )
        .with_hint(hint));
    };
    Ok((region, node))
}

/// Let a fleet node go after a run: detach the run's volumes, then drop the run's lease.
async fn free_node(
    backend: &AwsBackend,
    jobs: &RemoteJobs,
    job: &JobRef,
    placement: &NodePlacement,
) -> Result<(), BackendError> {
    for volume in &placement.volumes {
        let what = format!(
            "detaching the EBS volume {volume} of {} from {}",
            job.run, placement.instance_id
        );
        super::volumes::detach_by_id(
            backend,
            &placement.region,
            volume,
            &placement.instance_id,
            false,
            &what,
        )
        .await?;
    }
    jobs.free_node(&placement.instance_id, job)
        .await
        .map_err(|e| job_error(&e))
}

pub(super) async fn submit(
    backend: &AwsBackend,
    request: &Request,
    spec: &RunSpec,
) -> Result<Observed, BackendError> {
    let settings = backend.run_settings()?;
    let run_name = request
        .run_name
        .clone()
        .ok_or_else(|| BackendError::new(ErrorKind::Internal, "a run needs a name"))?;
    let fleet = fleet_of(request, spec)?;
    let (job_mounts, volumes, place) = mounts(request, spec)?;
    let working_dir = crate::backend::jobspec::working_dir(spec);
    let (_temp, tar) = crate::backend::jobspec::pack_code(
        &settings.project_dir,
        &settings.artifact_store,
        request,
        spec,
        &working_dir,
    )?;
    let ports = spec
        .ports()
        .iter()
        .map(|p| JobPort {
            local: p.local_port.unwrap_or(p.container_port),
            container: p.container_port,
        })
        .collect();
    let job = crate::backend::jobspec::build(
        request,
        spec,
        &run_name,
        crate::backend::jobspec::Placement {
            runtime: Runtime::Docker,
            image: Some(crate::backend::jobspec::image(spec, None)),
            working_dir,
            code_dir: PathBuf::from("code"),
            mounts: job_mounts,
            ports,
            limits: crate::backend::jobspec::limits(spec),
            artifact_store: None,
            cache: Vec::new(),
        },
    );
    let job_ref = JobRef {
        lineage: request.lineage.clone(),
        run: run_name.clone(),
    };
    let jobs = backend.jobs().await?;
    if let Some(fleet) = fleet {
        return submit_to_node(
            backend,
            request,
            fleet,
            &NodeJob {
                job_ref: &job_ref,
                job: &job,
                tar: &tar,
                volumes: &volumes,
                place: place.as_ref(),
            },
        )
        .await;
    }
    jobs.submit(&job_ref, &job, &tar, false)
        .await
        .map_err(|e| job_error(&e))?;
    if let Some(intent) = request.labels.get("dstack.intent") {
        jobs.record_intent(intent, &job_ref)
            .await
            .map_err(|e| job_error(&e))?;
    }
    let job_url = jobs.job_url(&job_ref);
    // Hashing and checking the binary once serves every run this process submits.
    let urls = backend.runner_binaries().await?;
    let store_region = jobs.region().unwrap_or_else(|| "us-east-1".to_string());
    let script = run_user_data(
        urls,
        &job_url,
        &store_region,
        settings.connection.endpoint_url.as_deref(),
    );
    let fleet_spec = placement_spec(spec, place.as_ref());
    let purpose = Purpose::Run {
        run: run_name.clone(),
        user_data: script,
    };
    let mut launcher = Launcher::new(backend, request, &fleet_spec, purpose).await?;
    let ((region, instance), offer) = launcher.launch(0).await?;
    let started = async {
        let running = wait_running(backend, request, vec![(region.clone(), instance.clone())])
            .await?
            .into_iter()
            .next()
            .map_or_else(|| instance.clone(), |(_, i)| i);
        for volume in &volumes {
            super::volumes::attach_volume(backend, &volume.record, &running.id, &volume.device)
                .await?;
        }
        Ok::<InstanceInfo, BackendError>(running)
    }
    .await;
    let running = match started {
        Ok(running) => running,
        Err(error) => {
            // Nothing may keep running for a run that did not start.
            let _ = backend
                .api()
                .terminate_instances(&region, std::slice::from_ref(&instance.id))
                .await;
            let _ = jobs.end_unstarted(&job_ref, Control::Abort).await;
            return Err(error);
        }
    };
    let price = super::prices::price(&running.instance_type, running.spot);
    Ok(Observed {
        backend_id: Some(job_url),
        attributes: BTreeMap::from([
            ("lineage".to_string(), Json::String(request.lineage.clone())),
            ("runtime".to_string(), Json::String("ec2".into())),
            ("instance_id".to_string(), Json::String(running.id.clone())),
            ("region".to_string(), Json::String(region)),
            (
                "availability_zone".to_string(),
                Json::String(running.availability_zone.clone()),
            ),
            (
                "instance_type".to_string(),
                Json::String(offer.instance.name.clone()),
            ),
            ("spot".to_string(), Json::Bool(running.spot)),
            (
                "price".to_string(),
                price.map_or(Json::Null, |p| {
                    Json::from((p * 10_000.0).round() / 10_000.0)
                }),
            ),
        ]),
        status: "provisioning".into(),
        labels: request.labels.clone(),
    })
}

/// The run's instance as EC2 sees it now; `None` when EC2 no longer knows it.
async fn instance(
    backend: &AwsBackend,
    run: &RunRecord,
) -> Result<Option<(String, InstanceInfo)>, BackendError> {
    let (Some(region), Some(id)) = (text(run, "region"), text(run, "instance_id")) else {
        return Ok(None);
    };
    match backend
        .api()
        .describe_instances(&region, &Query::ids([id.clone()]))
        .await
    {
        Ok(found) => Ok(found.into_iter().next().map(|i| (region, i))),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(to_backend(
            &format!("reading the instance {id} of {}", run.name),
            &error,
        )),
    }
}

/// Terminate the run's instance if it still lives (its attached volumes come free); give a fleet
/// node back instead.
async fn release(
    backend: &AwsBackend,
    run: &RunRecord,
    instance: Option<&(String, InstanceInfo)>,
) -> Result<(), BackendError> {
    if let Some(placement) = NodePlacement::of(run) {
        // A fleet node outlives its runs: it is given back, not terminated. A node that is gone
        // has nothing attached and nothing to give back, which these calls take in their stride.
        let job = job_of(run)?;
        let jobs = backend.jobs().await?;
        return free_node(backend, jobs, &job, &placement).await;
    }
    let Some((region, info)) = instance else {
        return Ok(());
    };
    if matches!(info.state.as_str(), "terminated" | "shutting-down") {
        return Ok(());
    }
    match backend
        .api()
        .terminate_instances(region, std::slice::from_ref(&info.id))
        .await
    {
        Ok(()) => Ok(()),
        Err(error) if error.is_not_found() => Ok(()),
        Err(error) => Err(aws(&format!(
            "terminating the instance {} of {}",
            info.id, run.name
        ))(error)),
    }
}

async fn ended(
    backend: &AwsBackend,
    jobs: &RemoteJobs,
    run: &RunRecord,
    job: &JobRef,
    status: crate::runner::job::JobStatus,
    instance: Option<&(String, InstanceInfo)>,
) -> Result<RunObserved, BackendError> {
    let manifest = jobs.manifest(job).await.map_err(|e| job_error(&e))?;
    release(backend, run, instance).await?;
    Ok(RunObserved {
        status: status.status,
        exit_code: status.exit_code,
        message: status.message,
        finished_at: status.finished_at,
        manifest,
    })
}

pub(super) async fn read(
    backend: &AwsBackend,
    run: &RunRecord,
) -> Result<Option<RunObserved>, BackendError> {
    let job = job_of(run)?;
    let jobs = backend.jobs().await?;
    let status = jobs.status(&job).await.map_err(|e| job_error(&e))?;
    let instance = instance(backend, run).await?;
    if let Some(status) = status.clone()
        && status.status.is_finished()
    {
        return ended(backend, jobs, run, &job, status, instance.as_ref())
            .await
            .map(Some);
    }
    let gone = instance.as_ref().is_none_or(|(_, i)| !i.is_live());
    if gone {
        // The runner may have reported its end just before the instance went.
        if let Some(status) = jobs.status(&job).await.map_err(|e| job_error(&e))?
            && status.status.is_finished()
        {
            return ended(backend, jobs, run, &job, status, instance.as_ref())
                .await
                .map(Some);
        }
        if !jobs.exists(&job).await.map_err(|e| job_error(&e))? {
            return Ok(None);
        }
        let id = text(run, "instance_id").unwrap_or_else(|| "?".into());
        let how = instance.as_ref().map_or_else(
            || "no longer exists".to_string(),
            |(_, i)| {
                format!(
                    "is {}{}",
                    i.state,
                    i.state_reason
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                )
            },
        );
        release(backend, run, instance.as_ref()).await?;
        return Ok(Some(RunObserved {
            status: RunStatus::Aborted,
            exit_code: None,
            message: Some(format!(
                "its instance {id} {how}, and its runner reported no end \
                 (its boot log is /var/log/dstack-runner.log on the instance)"
            )),
            finished_at: Some(Utc::now()),
            manifest: None,
        }));
    }
    let Some(status) = status else {
        if let Some(placement) = NodePlacement::of(run)
            && let Some(instance) = &instance
        {
            return queued_on_node(backend, jobs, run, &job, &placement, instance).await;
        }
        return Ok(Some(RunObserved {
            status: RunStatus::Provisioning,
            exit_code: None,
            message: Some("its instance is starting the runner".into()),
            finished_at: None,
            manifest: None,
        }));
    };
    let heard = jobs
        .heartbeat(&job)
        .await
        .map_err(|e| job_error(&e))?
        .unwrap_or(status.updated_at);
    let silent = (Utc::now() - heard).to_std().unwrap_or_default();
    if silent > LOST_AFTER {
        if NodePlacement::of(run).is_some() {
            // The node lives on: should its agent come back, it must not go on with the run.
            jobs.request(&job, Control::Abort)
                .await
                .map_err(|e| job_error(&e))?;
        }
        release(backend, run, instance.as_ref()).await?;
        return Ok(Some(RunObserved {
            status: RunStatus::Aborted,
            exit_code: None,
            message: Some(format!(
                "its runner has not reported for {} s; its {}",
                silent.as_secs(),
                if NodePlacement::of(run).is_some() {
                    "fleet node was given back"
                } else {
                    "instance was terminated"
                }
            )),
            finished_at: Some(Utc::now()),
            manifest: None,
        }));
    }
    Ok(Some(RunObserved {
        status: status.status,
        exit_code: status.exit_code,
        message: status.message,
        finished_at: status.finished_at,
        manifest: None,
    }))
}

/// A run queued to a fleet node that no agent has taken yet: waiting, or lost when the node's
/// agent is silent (never started within [`NODE_BOOT_GRACE`] of the node's launch, or stopped
/// saying it is alive for [`LOST_AFTER`]).
async fn queued_on_node(
    backend: &AwsBackend,
    jobs: &RemoteJobs,
    run: &RunRecord,
    job: &JobRef,
    placement: &NodePlacement,
    instance: &(String, InstanceInfo),
) -> Result<Option<RunObserved>, BackendError> {
    let node = &placement.instance_id;
    let heard = jobs.node_heartbeat(node).await.map_err(|e| job_error(&e))?;
    let now = Utc::now();
    let silent = match heard {
        Some(at) => (now - at).to_std().unwrap_or_default() > LOST_AFTER,
        None => instance
            .1
            .launched_at
            .is_some_and(|at| (now - at).to_std().unwrap_or_default() > NODE_BOOT_GRACE),
    };
    if !silent {
        return Ok(Some(RunObserved {
            status: RunStatus::Provisioning,
            exit_code: None,
            message: Some(format!(
                "queued for node {node} of the fleet `{}`",
                placement.fleet
            )),
            finished_at: None,
            manifest: None,
        }));
    }
    let on_node = jobs.on_node(node).map_err(|e| job_error(&e))?;
    if !on_node
        .cancel_if_unclaimed(job, Control::Abort)
        .await
        .map_err(|e| job_error(&e))?
    {
        // The agent took it just now: its reports will follow.
        return Ok(Some(RunObserved {
            status: RunStatus::Provisioning,
            exit_code: None,
            message: Some(format!("starting on node {node}")),
            finished_at: None,
            manifest: None,
        }));
    }
    release(backend, run, Some(instance)).await?;
    Ok(Some(RunObserved {
        status: RunStatus::Aborted,
        exit_code: None,
        message: Some(format!(
            "the runner agent of node {node} (fleet `{}`) {}; the run was taken off the node              (the node's boot log is /var/log/dstack-runner.log, the agent's `journalctl -u dstack-runner`)",
            placement.fleet,
            heard.map_or_else(
                || "never reported".to_string(),
                |at| format!("has not reported for {} s", (now - at).num_seconds())
            )
        )),
        finished_at: Some(now),
        manifest: None,
    }))
}

pub(super) async fn stop(
    backend: &AwsBackend,
    run: &RunRecord,
    abort: bool,
) -> Result<(), BackendError> {
    let job = job_of(run)?;
    let control = if abort { Control::Abort } else { Control::Stop };
    let jobs = backend.jobs().await?;
    jobs.request(&job, control)
        .await
        .map_err(|e| job_error(&e))?;
    let ended = match NodePlacement::of(run) {
        // Taken off the node's queue unless its agent has it (then the control tells it).
        Some(placement) => jobs
            .on_node(&placement.instance_id)
            .map_err(|e| job_error(&e))?
            .cancel_if_unclaimed(&job, control)
            .await
            .map_err(|e| job_error(&e))?,
        None => jobs
            .end_unstarted(&job, control)
            .await
            .map_err(|e| job_error(&e))?,
    };
    if ended {
        let instance = instance(backend, run).await?;
        release(backend, run, instance.as_ref()).await?;
    }
    Ok(())
}

/// How long removing a run on a fleet node waits for its agent to end it.
const NODE_ABORT_WAIT: Duration = Duration::from_mins(2);

pub(super) async fn remove(backend: &AwsBackend, run: &RunRecord) -> Result<(), BackendError> {
    let job = job_of(run)?;
    if NodePlacement::of(run).is_some() {
        // The node lives on and its agent may still be running the job: have it abort, and wait
        // (a while) for the end, so the volumes are unmounted before they are detached.
        let jobs = backend.jobs().await?;
        let unfinished = |status: Option<crate::runner::job::JobStatus>| {
            status.is_some_and(|s| !s.status.is_finished())
        };
        if unfinished(jobs.status(&job).await.map_err(|e| job_error(&e))?) {
            jobs.request(&job, Control::Abort)
                .await
                .map_err(|e| job_error(&e))?;
            let started = std::time::Instant::now();
            while started.elapsed() < NODE_ABORT_WAIT
                && unfinished(jobs.status(&job).await.map_err(|e| job_error(&e))?)
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let instance = instance(backend, run).await?;
    release(backend, run, instance.as_ref()).await?;
    let mut jobs = backend.jobs().await?.clone();
    if let Some(placement) = NodePlacement::of(run) {
        jobs = jobs
            .on_node(&placement.instance_id)
            .map_err(|e| job_error(&e))?;
    }
    jobs.remove(&job).await.map_err(|e| job_error(&e))
}

pub(super) async fn logs(
    backend: &AwsBackend,
    run: &RunRecord,
    offset: u64,
) -> Result<(Vec<u8>, u64), BackendError> {
    let job = job_of(run)?;
    backend
        .jobs()
        .await?
        .logs(&job, offset)
        .await
        .map_err(|e| job_error(&e))
}

/// The run an interrupted apply submitted, found by its intent (recorded in the job store) and
/// its instance (tagged with the intent).
pub(super) async fn find(
    backend: &AwsBackend,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<Observed>, BackendError> {
    let Some(intent) = labels.get("dstack.intent") else {
        return Ok(Vec::new());
    };
    if backend.runs.is_none() {
        return Ok(Vec::new());
    }
    let jobs = backend.jobs().await?;
    let Some(job) = jobs.intent(intent).await.map_err(|e| job_error(&e))? else {
        return Ok(Vec::new());
    };
    if !jobs.exists(&job).await.map_err(|e| job_error(&e))? {
        return Ok(Vec::new());
    }
    if let Some(placement) = jobs
        .get_extra(&job, "placement.json")
        .await
        .map_err(|e| job_error(&e))?
        .and_then(|b| serde_json::from_slice::<NodePlacement>(&b).ok())
    {
        return Ok(vec![Observed {
            backend_id: Some(jobs.job_url(&job)),
            attributes: placement.attributes(&job.lineage),
            status: "submitted".into(),
            labels: labels.clone(),
        }]);
    }
    let mut attributes = BTreeMap::from([
        ("lineage".to_string(), Json::String(job.lineage.clone())),
        ("runtime".to_string(), Json::String("ec2".into())),
    ]);
    let tags = BTreeMap::from([("dstack_intent".to_string(), intent.clone())]);
    for region in backend.regions().await {
        let query = Query::tagged(&tags).filter("instance-state-name", &["pending", "running"]);
        let found = backend
            .api()
            .describe_instances(&region, &query)
            .await
            .map_err(aws(&format!("looking for the instance of {}", job.run)))?;
        if let Some(instance) = found.into_iter().next() {
            attributes.insert("instance_id".into(), Json::String(instance.id.clone()));
            attributes.insert("region".into(), Json::String(region.clone()));
            attributes.insert(
                "availability_zone".into(),
                Json::String(instance.availability_zone.clone()),
            );
            attributes.insert(
                "instance_type".into(),
                Json::String(instance.instance_type.clone()),
            );
            break;
        }
    }
    Ok(vec![Observed {
        backend_id: Some(jobs.job_url(&job)),
        attributes,
        status: "submitted".into(),
        labels: labels.clone(),
    }])
}
