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

/// How long the presigned URL of the runner binary stays valid (the instance boots in minutes).
const BINARY_URL_LIFETIME: Duration = Duration::from_hours(6);
/// How long a runner may stay silent, once it has reported, before its run counts as lost.
const LOST_AFTER: Duration = Duration::from_mins(2);
/// Where the runner mounts the run's volumes on the instance.
const VOLUME_ROOT: &str = "/mnt/dstack/volumes";
/// Where the runner binary and its work directory live on the instance.
const INSTANCE_HOME: &str = "/opt/dstack";

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

    async fn jobs(&self) -> Result<&RemoteJobs, BackendError> {
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

fn text(run: &RunRecord, key: &str) -> Option<String> {
    run.job.get(key).and_then(Json::as_str).map(str::to_string)
}

/// A value for a POSIX shell, single-quoted.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The architecture of an ELF executable as `uname -m` names it (`x86_64`, `aarch64`).
pub fn elf_arch(header: &[u8]) -> Option<&'static str> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return None;
    }
    match u16::from_le_bytes([header[18], header[19]]) {
        0x3E => Some("x86_64"),
        0xB7 => Some("aarch64"),
        _ => None,
    }
}

/// What the instance boots: fetch the runner binary for its architecture, make sure Docker is
/// there, run the job, shut down (which terminates the instance).
pub fn user_data(
    binaries: &BTreeMap<String, String>,
    job_url: &str,
    region: &str,
    endpoint_url: Option<&str>,
) -> String {
    let mut cases = String::new();
    for (arch, url) in binaries {
        cases.push_str(&format!("  {arch}) url={} ;;\n", quote(url)));
    }
    let endpoint = endpoint_url
        .map(|e| format!(" --endpoint-url {}", quote(e)))
        .unwrap_or_default();
    format!(
        "#!/bin/sh\n\
         # dstack: run one job, then shut down (the instance terminates on shutdown).\n\
         exec >>/var/log/dstack-runner.log 2>&1\n\
         export AWS_EC2_METADATA_DISABLED=false\n\
         mkdir -p {home}/work\n\
         url=''\n\
         case \"$(uname -m)\" in\n{cases}esac\n\
         if ! command -v docker >/dev/null 2>&1; then\n\
         \x20 (apt-get update -y && apt-get install -y docker.io && systemctl start docker) || echo 'dstack: cannot install Docker'\n\
         fi\n\
         if [ -z \"$url\" ]; then\n\
         \x20 echo \"dstack: no runner binary for $(uname -m)\"\n\
         elif curl -fsSL --retry 5 -o {home}/dstack \"$url\"; then\n\
         \x20 chmod +x {home}/dstack\n\
         \x20 {home}/dstack runner --job {job} --region {region}{endpoint} --work-dir {home}/work\n\
         else\n\
         \x20 echo 'dstack: cannot download the runner binary'\n\
         fi\n\
         shutdown -h now\n",
        home = INSTANCE_HOME,
        job = quote(job_url),
        region = quote(region),
    )
}

/// Upload the runner binary and presign its download, for each architecture the store has.
async fn binaries(
    jobs: &RemoteJobs,
    settings: &RunSettings,
) -> Result<BTreeMap<String, String>, BackendError> {
    let version = env!("CARGO_PKG_VERSION");
    let explicit = settings.runner_binary.clone();
    let local = match &explicit {
        Some(path) => Some(path.clone()),
        None if cfg!(target_os = "linux") => std::env::current_exe().ok(),
        None => None,
    };
    if let Some(path) = &local {
        let mut header = [0u8; 20];
        let read = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header));
        let arch = read.ok().and_then(|()| elf_arch(&header));
        match arch {
            Some(arch) => {
                jobs.upload_binary(&jobs.binary_key(version, arch), path)
                    .await
                    .map_err(|e| job_error(&e))?;
            }
            None if explicit.is_some() => {
                return Err(BackendError::new(
                    ErrorKind::Invalid,
                    format!(
                        "the runner binary {} is not a Linux x86_64 or aarch64 executable",
                        path.display()
                    ),
                )
                .with_hint("point DSTACK_RUNNER_BINARY at a Linux build of dstack"));
            }
            None => {}
        }
    }
    let mut urls = BTreeMap::new();
    for arch in ["x86_64", "aarch64"] {
        let key = jobs.binary_key(version, arch);
        if jobs.object_exists(&key).await.map_err(|e| job_error(&e))? {
            let url = jobs
                .presigned_get(&key, BINARY_URL_LIFETIME)
                .await
                .map_err(|e| job_error(&e))?;
            urls.insert(arch.to_string(), url);
        }
    }
    if urls.is_empty() {
        return Err(BackendError::new(
            ErrorKind::Invalid,
            format!("there is no Linux build of dstack {version} to run on the instance"),
        )
        .with_hint("set DSTACK_RUNNER_BINARY to a Linux build of this version; it is uploaded to the remote store"));
    }
    Ok(urls)
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
    if let Some(fleet) = spec.common.fleets.iter().flatten().next() {
        return Err(BackendError::new(
            ErrorKind::Invalid,
            format!(
                "{}: runs on the instances of an aws fleet (`{}`) are not supported yet",
                request.id, fleet.name
            ),
        )
        .with_hint("remove `fleets` to give the run an instance of its own (`backends: [aws]`)"));
    }
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
    let urls = backend
        .binaries
        .get_or_try_init(|| binaries(jobs, settings))
        .await?;
    let store_region = jobs.region().unwrap_or_else(|| "us-east-1".to_string());
    let script = user_data(
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

/// Terminate the run's instance if it still lives (its attached volumes come free).
async fn release(
    backend: &AwsBackend,
    run: &RunRecord,
    instance: Option<&(String, InstanceInfo)>,
) -> Result<(), BackendError> {
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
        release(backend, run, instance.as_ref()).await?;
        return Ok(Some(RunObserved {
            status: RunStatus::Aborted,
            exit_code: None,
            message: Some(format!(
                "its runner has not reported for {} s; its instance was terminated",
                silent.as_secs()
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
    if jobs
        .end_unstarted(&job, control)
        .await
        .map_err(|e| job_error(&e))?
    {
        let instance = instance(backend, run).await?;
        release(backend, run, instance.as_ref()).await?;
    }
    Ok(())
}

pub(super) async fn remove(backend: &AwsBackend, run: &RunRecord) -> Result<(), BackendError> {
    let job = job_of(run)?;
    let instance = instance(backend, run).await?;
    release(backend, run, instance.as_ref()).await?;
    backend
        .jobs()
        .await?
        .remove(&job)
        .await
        .map_err(|e| job_error(&e))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_fetches_the_binary_for_the_machine_and_runs_the_job() {
        let urls = BTreeMap::from([(
            "x86_64".to_string(),
            "http://s3/bin?X-Amz-Signature=a&b=c".to_string(),
        )]);
        let script = user_data(
            &urls,
            "s3://b/p/jobs/l/train-1",
            "us-east-1",
            Some("http://127.0.0.1:5000"),
        );
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("  x86_64) url='http://s3/bin?X-Amz-Signature=a&b=c' ;;\n"));
        assert!(script.contains(
            "/opt/dstack/dstack runner --job 's3://b/p/jobs/l/train-1' --region 'us-east-1' --endpoint-url 'http://127.0.0.1:5000' --work-dir /opt/dstack/work\n"
        ));
        assert!(script.trim_end().ends_with("shutdown -h now"));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn elf_headers_name_their_architecture() {
        let mut header = [0u8; 20];
        header[..4].copy_from_slice(b"\x7fELF");
        header[18] = 0x3E;
        assert_eq!(elf_arch(&header), Some("x86_64"));
        header[18] = 0xB7;
        assert_eq!(elf_arch(&header), Some("aarch64"));
        assert_eq!(elf_arch(b"#!/bin/sh"), None);
    }
}
