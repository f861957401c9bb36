//! EBS volumes: create (gp3), register (`volume_id`), grow, re-tag, delete, attach, detach.
//!
//! - A new volume goes to `availability_zone`, else the first available zone of its region, and
//!   is ready when EC2 says `available`. Its intent is its client token and a tag, so a retried or
//!   interrupted create finds the volume it made instead of making another.
//! - A registered volume (`volume_id`) is read, never changed, and never deleted: the executor
//!   only forgets it.
//! - Growing is `ModifyVolume`; a volume grown outside dstack is not shrunk back (EBS cannot),
//!   its size is recorded instead.
//! - Deleting refuses a volume that is attached, naming the instance and what it belongs to.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::ec2::{Attachment, Query, VolumeCreate, VolumeInfo};
use super::errors::{AwsError, to_backend};
use super::{AwsBackend, aws, recorded_region};
use crate::backend::{BackendError, ErrorKind, Observed, Request};
use crate::model::quantity::Memory;
use crate::model::volume::VolumeSpec;
use crate::state::ResourceRecord;

/// The largest gp3 volume, in GiB.
const MAX_GIB: i32 = 16_384;

/// A size in whole GiB, as EBS takes it.
fn to_gib(size: Memory) -> Result<i32, BackendError> {
    let gib = size.0.ceil();
    if !(1.0..=f64::from(MAX_GIB)).contains(&gib) {
        return Err(BackendError::new(
            ErrorKind::Invalid,
            format!("an EBS gp3 volume holds 1GB to {MAX_GIB}GB; `size` is {size}"),
        )
        .with_hint("set `size` between 1GB and 16TB"));
    }
    Ok(gib as i32)
}

/// What state records of a volume (and refresh compares).
fn stable_attributes(volume: &VolumeInfo, region: &str) -> BTreeMap<String, Json> {
    BTreeMap::from([
        ("region".to_string(), Json::from(region)),
        (
            "availability_zone".to_string(),
            Json::from(volume.availability_zone.as_str()),
        ),
        (
            "size".to_string(),
            Json::from(Memory(f64::from(volume.size_gib)).to_string()),
        ),
        (
            "volume_type".to_string(),
            Json::from(volume.volume_type.as_str()),
        ),
    ])
}

fn status(state: &str) -> &'static str {
    match state {
        "creating" => "provisioning",
        "available" | "in-use" => "active",
        "deleting" => "deleting",
        "deleted" => "deleted",
        _ => "failed",
    }
}

/// The volume as dstack sees it; `volatile` adds its state and attachments (see the module
/// documentation of [`super`]).
fn observed(volume: &VolumeInfo, region: &str, volatile: bool) -> Observed {
    let mut attributes = stable_attributes(volume, region);
    if volatile {
        attributes.insert("state".into(), Json::from(volume.state.as_str()));
        attributes.insert(
            "attachments".into(),
            Json::Array(
                volume
                    .attachments
                    .iter()
                    .filter(|a| a.state != "detached")
                    .map(|a| Json::from(a.instance_id.as_str()))
                    .collect(),
            ),
        );
    }
    Observed {
        backend_id: Some(volume.id.clone()),
        attributes,
        status: status(&volume.state).to_string(),
        labels: super::labels_of(&volume.tags),
    }
}

async fn region_of(backend: &AwsBackend, spec_region: Option<&String>) -> String {
    match spec_region {
        Some(region) => region.clone(),
        None => backend
            .regions()
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| "us-east-1".into()),
    }
}

async fn record_region(backend: &AwsBackend, record: &ResourceRecord) -> String {
    match recorded_region(record) {
        Some(region) => region,
        None => region_of(backend, None).await,
    }
}

/// The volume, or `None` when EC2 does not know it.
async fn describe(
    backend: &AwsBackend,
    region: &str,
    id: &str,
) -> Result<Option<VolumeInfo>, BackendError> {
    match backend
        .api()
        .describe_volumes(region, &Query::ids([id.to_string()]))
        .await
    {
        Ok(volumes) => Ok(volumes.into_iter().find(|v| v.id == id)),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(to_backend(
            &format!("reading the EBS volume {id} in {region}"),
            &error,
        )),
    }
}

async fn wait_available(
    backend: &AwsBackend,
    region: &str,
    id: &str,
) -> Result<VolumeInfo, BackendError> {
    backend
        .wait_for(
            &format!("waiting for the EBS volume {id} to become available"),
            backend.timing.volume_timeout,
            || async move {
                match describe(backend, region, id).await? {
                    Some(v) if matches!(v.state.as_str(), "available" | "in-use") => Ok(Some(v)),
                    Some(v) if v.state == "error" => Err(BackendError::new(
                        ErrorKind::Internal,
                        format!("EC2 could not create the EBS volume {id} (state `error`)"),
                    )
                    .with_hint("delete it in the AWS console, then apply again")),
                    // Just created: EC2 may not list it yet.
                    _ => Ok(None),
                }
            },
        )
        .await
}

pub(super) async fn read(
    backend: &AwsBackend,
    record: &ResourceRecord,
) -> Result<Option<Observed>, BackendError> {
    let Some(id) = record.backend_id.as_deref() else {
        return Ok(None);
    };
    let region = record_region(backend, record).await;
    Ok(describe(backend, &region, id)
        .await?
        .filter(|v| v.state != "deleted")
        .map(|v| observed(&v, &region, true)))
}

pub(super) async fn create(
    backend: &AwsBackend,
    request: &Request,
    spec: &VolumeSpec,
) -> Result<Observed, BackendError> {
    let region = region_of(backend, spec.region.as_ref()).await;
    if let Some(id) = &spec.volume_id {
        return register(backend, spec, &region, id).await;
    }
    let what = format!("creating the EBS volume of {}", request.id);
    let size = spec.size.ok_or_else(|| {
        BackendError::new(ErrorKind::Invalid, format!("{} has no `size`", request.id))
            .with_hint("set `size` (e.g. `100GB`), or `volume_id` to register an existing volume")
    })?;
    let size_gib = to_gib(size)?;
    let zones = backend
        .api()
        .availability_zones(&region)
        .await
        .map_err(aws(&what))?;
    let zone = match &spec.availability_zone {
        Some(zone) if zones.contains(zone) => zone.clone(),
        Some(zone) => {
            return Err(BackendError::new(
                ErrorKind::Invalid,
                format!("`{zone}` is not an available zone of {region}"),
            )
            .with_hint(format!("use one of: {}", zones.join(", "))));
        }
        None => zones.first().cloned().ok_or_else(|| {
            BackendError::new(
                ErrorKind::Invalid,
                format!("{region} has no available zone"),
            )
            .with_hint("set `region` to another region")
        })?,
    };
    let intent = request.labels.get("dstack.intent").cloned();
    // A retried or interrupted create of this very intent may have made the volume already.
    if let Some(intent) = &intent {
        let query = Query::tagged(&BTreeMap::from([
            ("dstack_intent".to_string(), intent.clone()),
            ("dstack_kind".to_string(), "volume".to_string()),
        ]));
        let existing = backend
            .api()
            .describe_volumes(&region, &query)
            .await
            .map_err(aws(&what))?;
        if let Some(volume) = existing.into_iter().find(|v| v.state != "deleted") {
            let volume = wait_available(backend, &region, &volume.id).await?;
            return Ok(observed(&volume, &region, false));
        }
    }
    let tags = backend.tags(
        &request.labels,
        &format!("dstack-{}-{}", request.project, request.id.name),
        spec.tags.as_ref().map(|t| &t.0),
    );
    let volume = backend
        .api()
        .create_volume(
            &region,
            &VolumeCreate {
                availability_zone: zone,
                size_gib,
                tags,
                client_token: intent,
            },
        )
        .await
        .map_err(aws(&what))?;
    let volume = wait_available(backend, &region, &volume.id).await?;
    Ok(observed(&volume, &region, false))
}

/// Register an existing volume: read it, change nothing.
async fn register(
    backend: &AwsBackend,
    spec: &VolumeSpec,
    region: &str,
    id: &str,
) -> Result<Observed, BackendError> {
    let volume = describe(backend, region, id).await?.ok_or_else(|| {
        BackendError::new(
            ErrorKind::Invalid,
            format!("the EBS volume `{id}` does not exist in {region}"),
        )
        .with_hint(
            "check `volume_id` and `region`, or remove `volume_id` to let dstack create a volume",
        )
    })?;
    if let Some(zone) = &spec.availability_zone
        && *zone != volume.availability_zone
    {
        return Err(BackendError::new(
            ErrorKind::Invalid,
            format!(
                "the EBS volume `{id}` is in {}, not in {zone}",
                volume.availability_zone
            ),
        )
        .with_hint(format!(
            "set `availability_zone: {}`, or remove it",
            volume.availability_zone
        )));
    }
    Ok(observed(&volume, region, false))
}

pub(super) async fn update(
    backend: &AwsBackend,
    request: &Request,
    spec: &VolumeSpec,
    record: &ResourceRecord,
) -> Result<Observed, BackendError> {
    let id = record.backend_id.as_deref().ok_or_else(|| {
        BackendError::not_found(format!("{} has no EBS volume recorded", request.id))
    })?;
    let region = record_region(backend, record).await;
    let what = format!("updating the EBS volume {id} of {}", request.id);
    let gone = || {
        BackendError::not_found(format!(
            "the EBS volume {id} of {} no longer exists",
            request.id
        ))
        .with_hint("plan again: a volume deleted outside dstack is created anew")
    };
    let mut volume = describe(backend, &region, id).await?.ok_or_else(gone)?;
    if spec.volume_id.is_some() || record.external {
        return Ok(observed(&volume, &region, false));
    }
    if let Some(size) = spec.size {
        let wanted = to_gib(size)?;
        if wanted > volume.size_gib {
            backend
                .api()
                .modify_volume_size(&region, id, wanted)
                .await
                .map_err(aws(&what))?;
            volume = backend
                .wait_for(
                    &format!("waiting for the EBS volume {id} to grow"),
                    backend.timing.volume_timeout,
                    || async {
                        Ok(describe(backend, &region, id)
                            .await?
                            .filter(|v| v.size_gib >= wanted))
                    },
                )
                .await?;
        }
    }
    // Tags: set what the configuration says now; remove what it said before and no longer does.
    let wanted = backend.tags(
        &request.labels,
        &format!("dstack-{}-{}", request.project, request.id.name),
        spec.tags.as_ref().map(|t| &t.0),
    );
    let changed: BTreeMap<String, String> = wanted
        .iter()
        .filter(|(k, v)| volume.tags.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removed: Vec<String> = record
        .spec
        .get("tags")
        .and_then(Json::as_object)
        .map(|old| {
            old.keys()
                .filter(|k| !wanted.contains_key(*k) && volume.tags.contains_key(*k))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let ids = [id.to_string()];
    if !changed.is_empty() {
        backend
            .api()
            .create_tags(&region, &ids, &changed)
            .await
            .map_err(aws(&what))?;
    }
    if !removed.is_empty() {
        backend
            .api()
            .delete_tags(&region, &ids, &removed)
            .await
            .map_err(aws(&what))?;
    }
    if !changed.is_empty() || !removed.is_empty() {
        volume = describe(backend, &region, id).await?.ok_or_else(gone)?;
    }
    Ok(observed(&volume, &region, false))
}

/// Who holds a volume's attachments, for messages: `i-1 (node 0 of fleet/gpus)`.
async fn holders(backend: &AwsBackend, region: &str, attachments: &[&Attachment]) -> String {
    let ids: Vec<String> = attachments.iter().map(|a| a.instance_id.clone()).collect();
    let instances = backend
        .api()
        .describe_instances(region, &Query::ids(ids.clone()))
        .await
        .unwrap_or_default();
    ids.iter()
        .map(|id| {
            let tags = instances.iter().find(|i| i.id == *id).map(|i| &i.tags);
            let what = tags.and_then(|t| {
                if let Some(run) = t.get("dstack_run") {
                    Some(format!("run {run}"))
                } else if t.get("dstack_kind").is_some_and(|k| k == "fleet") {
                    Some(format!(
                        "node {} of fleet/{}",
                        t.get("dstack_node").map_or("?", String::as_str),
                        t.get("dstack_name").map_or("?", String::as_str)
                    ))
                } else {
                    None
                }
            });
            match what {
                Some(what) => format!("{id} ({what})"),
                None => id.clone(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) async fn delete(
    backend: &AwsBackend,
    record: &ResourceRecord,
) -> Result<(), BackendError> {
    let Some(id) = record.backend_id.as_deref() else {
        return Ok(());
    };
    let region = record_region(backend, record).await;
    let Some(volume) = describe(backend, &region, id).await? else {
        return Ok(());
    };
    let attached: Vec<&Attachment> = volume
        .attachments
        .iter()
        .filter(|a| a.state != "detached")
        .collect();
    if let Some(first) = attached.first() {
        let holders = holders(backend, &region, &attached).await;
        return Err(BackendError::new(
            ErrorKind::Conflict,
            format!(
                "{} ({id}) is attached to the instance {holders}",
                record.id()
            ),
        )
        .with_hint(format!(
            "stop the run or delete the fleet that uses it, or detach it (`aws ec2 detach-volume --region {region} --volume-id {id} --instance-id {}`), then delete again",
            first.instance_id
        )));
    }
    let what = format!("deleting the EBS volume {id} of {}", record.id());
    match backend.api().delete_volume(&region, id).await {
        Ok(()) => {}
        Err(error) if error.is_not_found() => return Ok(()),
        Err(error) => return Err(to_backend(&what, &error)),
    }
    backend
        .wait_for(
            &format!("waiting for the EBS volume {id} to be deleted"),
            backend.timing.volume_timeout,
            || async {
                Ok(match describe(backend, &region, id).await? {
                    None => Some(()),
                    Some(v) if v.state == "deleted" => Some(()),
                    Some(_) => None,
                })
            },
        )
        .await
}

/// The volumes of a region carrying all of `tags` (instances' root volumes excluded).
pub(super) async fn find(
    backend: &AwsBackend,
    region: &str,
    tags: &BTreeMap<String, String>,
) -> Result<Vec<Observed>, BackendError> {
    let volumes = backend
        .api()
        .describe_volumes(region, &Query::tagged(tags))
        .await
        .map_err(aws(&format!(
            "looking for dstack's EBS volumes in {region}"
        )))?;
    Ok(volumes
        .iter()
        .filter(|v| {
            v.state != "deleted" && v.tags.get("dstack_kind").is_some_and(|k| k == "volume")
        })
        .map(|v| observed(v, region, false))
        .collect())
}

/// Attach a recorded volume to an instance as `device` (`/dev/sdf`), and wait until it is
/// attached. A volume in another zone than the instance is refused before calling EC2 (which
/// would answer `InvalidVolume.ZoneMismatch`; local doubles do not check it).
pub async fn attach_volume(
    backend: &AwsBackend,
    record: &ResourceRecord,
    instance_id: &str,
    device: &str,
) -> Result<(), BackendError> {
    let id = record.backend_id.as_deref().ok_or_else(|| {
        BackendError::not_found(format!("{} has no EBS volume recorded", record.id()))
    })?;
    let region = record_region(backend, record).await;
    let what = format!(
        "attaching the EBS volume {id} of {} to {instance_id}",
        record.id()
    );
    let volume = describe(backend, &region, id).await?.ok_or_else(|| {
        BackendError::not_found(format!("{what}: the volume no longer exists"))
            .with_hint("plan again: a volume deleted outside dstack is created anew")
    })?;
    let live: Vec<&Attachment> = volume
        .attachments
        .iter()
        .filter(|a| a.state != "detached")
        .collect();
    if live.iter().any(|a| a.instance_id == instance_id) {
        return Ok(());
    }
    if !live.is_empty() {
        return Err(to_backend(
            &what,
            &AwsError::new(
                "VolumeInUse",
                format!(
                    "{id} is already attached to {}",
                    holders(backend, &region, &live).await
                ),
            ),
        ));
    }
    let instance = backend
        .api()
        .describe_instances(&region, &Query::ids([instance_id.to_string()]))
        .await
        .map_err(aws(&what))?
        .into_iter()
        .next()
        .ok_or_else(|| BackendError::not_found(format!("{what}: no such instance")))?;
    if instance.availability_zone != volume.availability_zone {
        return Err(to_backend(
            &what,
            &AwsError::new(
                "InvalidVolume.ZoneMismatch",
                format!(
                    "the volume is in {}, the instance in {}",
                    volume.availability_zone, instance.availability_zone
                ),
            ),
        ));
    }
    backend
        .api()
        .attach_volume(&region, id, instance_id, device)
        .await
        .map_err(aws(&what))?;
    backend
        .wait_for(
            &format!("waiting for {id} to attach to {instance_id}"),
            backend.timing.volume_timeout,
            || async {
                Ok(describe(backend, &region, id).await?.and_then(|v| {
                    v.attachments
                        .iter()
                        .any(|a| a.instance_id == instance_id && a.state == "attached")
                        .then_some(())
                }))
            },
        )
        .await
}

/// Detach a recorded volume from an instance (`force` after a stop timeout) and wait until it
/// is detached; a volume that is not attached there is fine.
pub async fn detach_volume(
    backend: &AwsBackend,
    record: &ResourceRecord,
    instance_id: &str,
    force: bool,
) -> Result<(), BackendError> {
    let Some(id) = record.backend_id.as_deref() else {
        return Ok(());
    };
    let region = record_region(backend, record).await;
    let what = format!(
        "detaching the EBS volume {id} of {} from {instance_id}",
        record.id()
    );
    detach_by_id(backend, &region, id, instance_id, force, &what).await
}

/// Detach a volume from an instance and wait until it is free; a volume that is not attached
/// there is fine.
pub(super) async fn detach_by_id(
    backend: &AwsBackend,
    region: &str,
    id: &str,
    instance_id: &str,
    force: bool,
    what: &str,
) -> Result<(), BackendError> {
    match backend
        .api()
        .detach_volume(region, id, instance_id, force)
        .await
    {
        Ok(()) => {}
        Err(error)
            if error.is_not_found()
                || matches!(
                    error.code.as_str(),
                    "IncorrectState" | "InvalidAttachment.NotFound"
                ) =>
        {
            return Ok(());
        }
        Err(error) => return Err(to_backend(what, &error)),
    }
    backend
        .wait_for(
            &format!("waiting for {id} to detach from {instance_id}"),
            backend.timing.volume_timeout,
            || async {
                Ok(match describe(backend, region, id).await? {
                    None => Some(()),
                    Some(v) => (!v
                        .attachments
                        .iter()
                        .any(|a| a.instance_id == instance_id && a.state != "detached"))
                    .then_some(()),
                })
            },
        )
        .await
}
