//! EC2 fleets: `nodes.target` instances of the cheapest offer that fits, spot or on-demand.
//!
//! - A fleet is its instances: each is tagged with the fleet's id (`dstack_fleet`, the fleet's
//!   backend id), its node index (`dstack_node`) and the target at launch (`dstack_nodes`), plus
//!   the usual labels. There is no other AWS object, so reading a fleet always succeeds; missing
//!   or terminated nodes show as drift (`instances`, `nodes`) and `update` launches them again.
//! - Create and update reconcile: count the live nodes, terminate the highest indices above the
//!   target, launch the lowest missing indices, wait until every node runs. Doing it again after a
//!   failure or a crash launches only what is missing, so nothing is launched twice.
//! - Launching walks the offers cheapest first (at most [`MAX_OFFERS_TRIED`]); within an offer,
//!   its zones. A capacity error (`InsufficientInstanceCapacity`, `Unsupported`,
//!   `SpotMaxPriceTooLow`, limits) moves on to the next zone, then the next offer; any other
//!   error stops. A zone that had no capacity is not tried again for the next nodes.
//! - `placement: cluster` keeps every node in the zone and offer of the first one (no EC2
//!   placement group yet). Changing `resources`, `instance_types`, `spot_policy` or `max_price`
//!   applies to nodes launched from then on; `--replace fleet/NAME` renews them all.
//! - With a remote artifact store, every node boots the runner agent (see [`super::boot`]) and
//!   is tagged `dstack_agent`; runs that name the fleet are queued to an idle node.
//! - `idle_duration` (default 3 days, as dstack's): nodes above `nodes.min` that ran no run for
//!   that long (since their launch or their last run's end) are terminated. There is no server
//!   to do it on a timer, so refresh finds them (`idle_expired`, which `plan` shows as an update)
//!   and `apply` terminates them. The node count then stays where it is; a node lost otherwise
//!   (a reclaimed spot instance) is launched again, and changing `nodes` brings the fleet back to
//!   `nodes.target`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use serde_json::Value as Json;

use super::ec2::{ImageInfo, InstanceInfo, Launch, Query, SubnetInfo};
use super::errors::to_backend;
use super::offers::{Offer, region_offers, root_disk_gib, sort};
use super::{AwsBackend, aws};
use crate::backend::jobspec::job_error;
use crate::backend::{BackendError, ErrorKind, Observed, Request};
use crate::model::fleet::{FleetSpec, Placement};
use crate::model::quantity::IdleDuration;
use crate::state::ResourceRecord;

/// At most this many offers are tried for one node (dstack's `MAX_OFFERS_TRIED`).
pub const MAX_OFFERS_TRIED: usize = 25;

const LIVE: &[&str] = &["pending", "running"];
const NOT_TERMINATED: &[&str] = &["pending", "running", "stopping", "stopped", "shutting-down"];

/// The backend id of a fleet, which its instances carry as `dstack_fleet`.
pub fn fleet_id(name: &str, lineage: &str) -> String {
    let lineage: String = lineage
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    format!("dstack-{name}-{lineage}")
}

/// A node: its region and instance.
pub(super) type Node = (String, InstanceInfo);

fn node_index(instance: &InstanceInfo) -> i64 {
    instance
        .tags
        .get("dstack_node")
        .and_then(|n| n.parse().ok())
        .unwrap_or(i64::MAX)
}

fn unique(values: impl Iterator<Item = String>) -> Json {
    let set: BTreeSet<String> = values.collect();
    Json::Array(set.into_iter().map(Json::String).collect())
}

/// dstack's default `idle_duration` of fleets.
pub const DEFAULT_IDLE: Duration = Duration::from_hours(72);

/// What state records of a fleet (and refresh compares). `idle_expired` are the nodes idle past
/// `idle_duration` (always empty after an apply, which terminates them).
fn observed(
    fleet: &str,
    nodes: &[Node],
    recorded_nodes: Option<i64>,
    idle_expired: &[String],
) -> Observed {
    let mut nodes: Vec<&Node> = nodes.iter().collect();
    nodes.sort_by_key(|(_, i)| (node_index(i), i.id.clone()));
    let price: Option<f64> = nodes
        .iter()
        .map(|(_, i)| super::prices::price(&i.instance_type, i.spot))
        .sum();
    let attributes = BTreeMap::from([
        (
            "instances".to_string(),
            Json::Array(
                nodes
                    .iter()
                    .map(|(_, i)| Json::from(i.id.as_str()))
                    .collect(),
            ),
        ),
        (
            "nodes".to_string(),
            Json::from(recorded_nodes.unwrap_or(nodes.len() as i64)),
        ),
        (
            "instance_types".to_string(),
            unique(nodes.iter().map(|(_, i)| i.instance_type.clone())),
        ),
        (
            "availability_zones".to_string(),
            unique(nodes.iter().map(|(_, i)| i.availability_zone.clone())),
        ),
        (
            "regions".to_string(),
            unique(nodes.iter().map(|(r, _)| r.clone())),
        ),
        (
            "spot".to_string(),
            Json::Bool(!nodes.is_empty() && nodes.iter().all(|(_, i)| i.spot)),
        ),
        (
            "price".to_string(),
            price.map_or(Json::Null, |p| {
                Json::from((p * 10_000.0).round() / 10_000.0)
            }),
        ),
        (
            "idle_expired".to_string(),
            Json::Array(idle_expired.iter().cloned().map(Json::String).collect()),
        ),
    ]);
    let status = if nodes.iter().all(|(_, i)| i.state == "running") {
        "active"
    } else {
        "provisioning"
    };
    Observed {
        backend_id: Some(fleet.to_string()),
        attributes,
        status: status.to_string(),
        labels: nodes
            .first()
            .map(|(_, i)| super::labels_of(&i.tags))
            .unwrap_or_default(),
    }
}

fn strings(value: Option<&Json>) -> Vec<String> {
    value
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Json::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The regions a recorded fleet may have nodes in.
fn regions_of(record: &ResourceRecord) -> Vec<String> {
    let mut regions = strings(record.attributes.get("regions"));
    regions.extend(strings(record.spec.get("regions")));
    regions
}

/// The fleet's instances in `states`, in every region of `regions`.
async fn nodes(
    backend: &AwsBackend,
    regions: &[String],
    fleet: &str,
    states: &[&str],
) -> Result<Vec<Node>, BackendError> {
    let mut found = Vec::new();
    for region in regions {
        let query = Query::tagged(&BTreeMap::from([(
            "dstack_fleet".to_string(),
            fleet.to_string(),
        )]))
        .filter("instance-state-name", states);
        let instances = backend
            .api()
            .describe_instances(region, &query)
            .await
            .map_err(aws(&format!(
                "listing the instances of {fleet} in {region}"
            )))?;
        found.extend(instances.into_iter().map(|i| (region.clone(), i)));
    }
    Ok(found)
}

pub(super) async fn read(
    backend: &AwsBackend,
    record: &ResourceRecord,
) -> Result<Option<Observed>, BackendError> {
    let Some(fleet) = record.backend_id.as_deref() else {
        return Ok(None);
    };
    let regions = backend.search_regions(&regions_of(record)).await;
    let live = nodes(backend, &regions, fleet, LIVE).await?;
    let idle = match recorded_spec(&record.spec) {
        Some(spec) => idle_expired(backend, &spec, &live, Utc::now()).await?,
        None => Vec::new(),
    };
    let ids: Vec<String> = idle.iter().map(|(_, i)| i.id.clone()).collect();
    Ok(Some(observed(fleet, &live, None, &ids)))
}

/// The spec state recorded for a fleet (its canonical JSON, `type` aside).
fn recorded_spec(spec: &Json) -> Option<FleetSpec> {
    let mut fields = spec.as_object()?.clone();
    fields.remove("type");
    serde_json::from_value(Json::Object(fields)).ok()
}

/// The live nodes of a recorded fleet.
pub(super) async fn live_nodes(
    backend: &AwsBackend,
    record: &ResourceRecord,
) -> Result<Vec<Node>, BackendError> {
    let Some(fleet) = record.backend_id.as_deref() else {
        return Ok(Vec::new());
    };
    let regions = backend.search_regions(&regions_of(record)).await;
    let mut live = nodes(backend, &regions, fleet, LIVE).await?;
    live.sort_by_key(|(_, i)| (node_index(i), i.id.clone()));
    Ok(live)
}

/// Whether a node holds a run, and since when it has been idle otherwise.
struct Usage {
    busy: bool,
    idle_since: Option<DateTime<Utc>>,
}

/// The usage of nodes, from their leases in the job store (without a store no run can hold a
/// node, and idle time counts from the launch).
async fn usage(
    backend: &AwsBackend,
    live: &[Node],
) -> Result<BTreeMap<String, Usage>, BackendError> {
    let jobs = match backend.runs.as_ref() {
        Some(_) => Some(backend.jobs().await?),
        None => None,
    };
    let mut usage = BTreeMap::new();
    for (_, node) in live {
        let mut busy = false;
        let mut idle_since = node.launched_at;
        if let Some(jobs) = jobs
            && node.tags.contains_key("dstack_agent")
        {
            let error = |e: crate::runner::remote::JobError| job_error(&e);
            busy = jobs.live_lease(&node.id).await.map_err(error)?.is_some();
            if let Some(released) = jobs.node_released_at(&node.id).await.map_err(error)? {
                idle_since = Some(idle_since.map_or(released, |l| l.max(released)));
            }
        }
        usage.insert(node.id.clone(), Usage { busy, idle_since });
    }
    Ok(usage)
}

/// The nodes idle for longer than the fleet's `idle_duration`, longest idle first, as many as
/// may go while `nodes.min` stay.
async fn idle_expired(
    backend: &AwsBackend,
    spec: &FleetSpec,
    live: &[Node],
    now: DateTime<Utc>,
) -> Result<Vec<Node>, BackendError> {
    let limit = match spec.idle_duration {
        Some(IdleDuration::Off) => return Ok(Vec::new()),
        Some(IdleDuration::After(d)) => Duration::from_secs(u64::try_from(d.0).unwrap_or(0)),
        None => DEFAULT_IDLE,
    };
    let min = usize::try_from(spec.nodes.map_or(0, |n| n.min)).unwrap_or(0);
    if live.len() <= min {
        return Ok(Vec::new());
    }
    let usage = usage(backend, live).await?;
    let mut expired: Vec<(DateTime<Utc>, Node)> = live
        .iter()
        .filter(|(_, i)| i.state == "running")
        .filter_map(|node| {
            let usage = usage.get(&node.1.id)?;
            let since = usage.idle_since?;
            let idle = (now - since).to_std().unwrap_or_default();
            (!usage.busy && idle > limit).then(|| (since, node.clone()))
        })
        .collect();
    expired.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.1.id.cmp(&b.1.1.id)));
    expired.truncate(live.len() - min);
    Ok(expired.into_iter().map(|(_, n)| n).collect())
}

fn check_spec(request: &Request, spec: &FleetSpec) -> Result<i64, BackendError> {
    if spec.ssh_config.is_some() {
        return Err(BackendError::new(
            ErrorKind::Invalid,
            format!(
                "{} is an SSH fleet; the aws backend provisions cloud fleets (`nodes`)",
                request.id
            ),
        )
        .with_hint("remove `backends: [aws]` from an SSH fleet"));
    }
    if spec.reservation.is_some() {
        return Err(BackendError::new(
            ErrorKind::Invalid,
            format!(
                "{}: capacity reservations are not supported by this aws backend",
                request.id
            ),
        )
        .with_hint("remove `reservation`"));
    }
    Ok(spec.nodes.map_or(0, |n| n.target))
}

pub(super) async fn create(
    backend: &AwsBackend,
    request: &Request,
    spec: &FleetSpec,
) -> Result<Observed, BackendError> {
    let target = check_spec(request, spec)?;
    let fleet = fleet_id(&request.id.name, &request.lineage);
    let live = reconcile(backend, request, spec, &fleet, target).await?;
    Ok(observed(&fleet, &live, None, &[]))
}

pub(super) async fn update(
    backend: &AwsBackend,
    request: &Request,
    spec: &FleetSpec,
    record: &ResourceRecord,
) -> Result<Observed, BackendError> {
    let target = check_spec(request, spec)?;
    let fleet = record
        .backend_id
        .clone()
        .unwrap_or_else(|| fleet_id(&request.id.name, &request.lineage));
    retag(backend, request, spec, record, &fleet).await?;
    // The count stays where it is unless `nodes` changed: nodes terminated for idleness are not
    // launched again, nodes lost otherwise are.
    let nodes_changed = record.spec.get("nodes") != serde_json::to_value(spec.nodes).ok().as_ref();
    let recorded = record.attributes.get("nodes").and_then(Json::as_i64);
    let mut wanted = match recorded {
        Some(count) if !nodes_changed => {
            let min = spec.nodes.map_or(0, |n| n.min);
            let max = spec.nodes.and_then(|n| n.max).unwrap_or(i64::MAX);
            count.clamp(min, max.max(min))
        }
        _ => target,
    };
    let regions = backend.search_regions(&regions_of(record)).await;
    let live = nodes(backend, &regions, &fleet, LIVE).await?;
    // A new `nodes` says how many there should be; idleness counts only against the old one.
    let idle = if nodes_changed {
        Vec::new()
    } else {
        idle_expired(backend, spec, &live, Utc::now()).await?
    };
    if !idle.is_empty() {
        let ids: Vec<&str> = idle.iter().map(|(_, i)| i.id.as_str()).collect();
        tracing::info!("{}: terminating idle nodes {}", request.id, ids.join(", "));
        terminate(
            backend,
            &format!("terminating the idle nodes of {}", request.id),
            &idle,
        )
        .await?;
        let remaining = i64::try_from(live.len() - idle.len()).unwrap_or(0);
        wanted = wanted.min(remaining.max(spec.nodes.map_or(0, |n| n.min)));
    }
    let live = reconcile(backend, request, spec, &fleet, wanted).await?;
    Ok(observed(&fleet, &live, None, &[]))
}

/// Set the fleet's tags on its live nodes; remove the ones the configuration no longer has.
async fn retag(
    backend: &AwsBackend,
    request: &Request,
    spec: &FleetSpec,
    record: &ResourceRecord,
    fleet: &str,
) -> Result<(), BackendError> {
    let wanted: BTreeMap<String, String> = backend
        .settings
        .tags
        .iter()
        .chain(spec.tags.iter().flat_map(|t| t.0.iter()))
        .filter(|(k, v)| {
            super::valid_tag(k, v) && !k.starts_with("dstack_") && *k != "owner" && *k != "Name"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let old: Vec<String> = record
        .spec
        .get("tags")
        .and_then(Json::as_object)
        .map(|o| {
            o.keys()
                .filter(|k| !wanted.contains_key(*k))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let regions = backend.search_regions(&regions_of(record)).await;
    for (region, group) in by_region(&nodes(backend, &regions, fleet, LIVE).await?) {
        let stale: Vec<String> = group
            .iter()
            .filter(|i| wanted.iter().any(|(k, v)| i.tags.get(k) != Some(v)))
            .map(|i| i.id.clone())
            .collect();
        let what = format!("tagging the instances of {}", request.id);
        backend
            .api()
            .create_tags(&region, &stale, &wanted)
            .await
            .map_err(aws(&what))?;
        let ids: Vec<String> = group.iter().map(|i| i.id.clone()).collect();
        backend
            .api()
            .delete_tags(&region, &ids, &old)
            .await
            .map_err(aws(&what))?;
    }
    Ok(())
}

fn by_region(nodes: &[Node]) -> BTreeMap<String, Vec<InstanceInfo>> {
    let mut grouped: BTreeMap<String, Vec<InstanceInfo>> = BTreeMap::new();
    for (region, instance) in nodes {
        grouped
            .entry(region.clone())
            .or_default()
            .push(instance.clone());
    }
    grouped
}

/// Bring the fleet to `target` live nodes, and wait until they run.
async fn reconcile(
    backend: &AwsBackend,
    request: &Request,
    spec: &FleetSpec,
    fleet: &str,
    target: i64,
) -> Result<Vec<Node>, BackendError> {
    let regions = backend
        .search_regions(spec.regions.as_deref().unwrap_or_default())
        .await;
    let mut live = nodes(backend, &regions, fleet, LIVE).await?;
    let target = usize::try_from(target).unwrap_or(0);
    if live.len() > target {
        // Idle nodes go first, highest index first; busy ones only when there are not enough.
        let usage = usage(backend, &live).await?;
        let busy = |id: &str| usage.get(id).is_some_and(|u| u.busy);
        live.sort_by_key(|(_, i)| std::cmp::Reverse((!busy(&i.id), node_index(i), i.id.clone())));
        let extra: Vec<Node> = live.drain(..live.len() - target).collect();
        terminate(backend, &format!("scaling down {}", request.id), &extra).await?;
    }
    if live.len() < target {
        let used: BTreeSet<i64> = live.iter().map(|(_, i)| node_index(i)).collect();
        let missing: Vec<i64> = (0..)
            .filter(|i| !used.contains(i))
            .take(target - live.len())
            .collect();
        let purpose = Purpose::Node {
            fleet: fleet.to_string(),
            target,
            agent: backend.node_user_data().await?,
        };
        let mut launcher = Launcher::new(backend, request, spec, purpose).await?;
        for index in missing {
            live.push(launcher.launch(index).await?.0);
        }
    }
    wait_running(backend, request, live).await
}

pub(super) async fn wait_running(
    backend: &AwsBackend,
    request: &Request,
    live: Vec<Node>,
) -> Result<Vec<Node>, BackendError> {
    if live.is_empty() {
        return Ok(live);
    }
    let grouped = by_region(&live);
    backend
        .wait_for(
            &format!("waiting for the instances of {} to run", request.id),
            backend.timing.instance_timeout,
            || async {
                let mut now = Vec::new();
                for (region, group) in &grouped {
                    let ids: Vec<String> = group.iter().map(|i| i.id.clone()).collect();
                    let instances = match backend
                        .api()
                        .describe_instances(region, &Query::ids(ids))
                        .await
                    {
                        Ok(instances) => instances,
                        // Just launched: EC2 may not list them yet.
                        Err(error) if error.is_not_found() => return Ok(None),
                        Err(error) => {
                            return Err(to_backend(
                                &format!("reading the instances of {}", request.id),
                                &error,
                            ));
                        }
                    };
                    if let Some(lost) = instances.iter().find(|i| !i.is_live()) {
                        return Err(BackendError::new(
                            ErrorKind::Internal,
                            format!(
                                "node {} ({}) of {} ended `{}` while starting{}",
                                node_index(lost),
                                lost.id,
                                request.id,
                                lost.state,
                                lost.state_reason
                                    .as_ref()
                                    .map(|r| format!(": {r}"))
                                    .unwrap_or_default()
                            ),
                        )
                        .with_hint("apply again to launch it anew (a spot instance may have been reclaimed)"));
                    }
                    now.extend(instances.into_iter().map(|i| (region.clone(), i)));
                }
                Ok((now.len() == live.len() && now.iter().all(|(_, i)| i.state == "running"))
                    .then_some(now))
            },
        )
        .await
}

/// Terminate nodes and wait until they are gone.
pub(super) async fn terminate(
    backend: &AwsBackend,
    what: &str,
    doomed: &[Node],
) -> Result<(), BackendError> {
    let grouped = by_region(doomed);
    for (region, group) in &grouped {
        let ids: Vec<String> = group.iter().map(|i| i.id.clone()).collect();
        match backend.api().terminate_instances(region, &ids).await {
            Ok(()) => {}
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(to_backend(what, &error)),
        }
    }
    backend
        .wait_for(
            &format!("{what}: waiting for the instances to terminate"),
            backend.timing.instance_timeout,
            || async {
                for (region, group) in &grouped {
                    let ids: Vec<String> = group.iter().map(|i| i.id.clone()).collect();
                    let instances = match backend
                        .api()
                        .describe_instances(region, &Query::ids(ids))
                        .await
                    {
                        Ok(instances) => instances,
                        Err(error) if error.is_not_found() => continue,
                        Err(error) => return Err(to_backend(what, &error)),
                    };
                    if instances.iter().any(|i| i.state != "terminated") {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )
        .await?;
    // What the nodes' agents and runs kept in the job store goes with them.
    if backend.runs.is_some() {
        let jobs = backend.jobs().await?;
        for (_, node) in doomed {
            if let Err(error) = jobs.forget_node(&node.id).await {
                tracing::warn!("{what}: {error}");
            }
        }
    }
    Ok(())
}

pub(super) async fn delete(
    backend: &AwsBackend,
    record: &ResourceRecord,
) -> Result<(), BackendError> {
    let Some(fleet) = record.backend_id.as_deref() else {
        return Ok(());
    };
    let regions = backend.search_regions(&regions_of(record)).await;
    let doomed = nodes(backend, &regions, fleet, NOT_TERMINATED).await?;
    terminate(backend, &format!("deleting {}", record.id()), &doomed).await
}

/// The fleets of a region whose instances carry all of `tags`, one per fleet id. `nodes` is the
/// target the nodes were launched for, so a fleet adopted after an interrupted create shows the
/// nodes it lacks as drift.
pub(super) async fn find(
    backend: &AwsBackend,
    region: &str,
    tags: &BTreeMap<String, String>,
) -> Result<Vec<Observed>, BackendError> {
    let query = Query::tagged(tags).filter("instance-state-name", LIVE);
    let instances = backend
        .api()
        .describe_instances(region, &query)
        .await
        .map_err(aws(&format!("looking for dstack's instances in {region}")))?;
    let mut fleets: BTreeMap<String, Vec<Node>> = BTreeMap::new();
    for instance in instances {
        if instance
            .tags
            .get("dstack_kind")
            .is_some_and(|k| k == "fleet")
            && let Some(fleet) = instance.tags.get("dstack_fleet").cloned()
        {
            fleets
                .entry(fleet)
                .or_default()
                .push((region.to_string(), instance));
        }
    }
    Ok(fleets
        .iter()
        .map(|(fleet, nodes)| {
            let target = nodes
                .iter()
                .filter_map(|(_, i)| i.tags.get("dstack_nodes")?.parse::<i64>().ok())
                .max();
            observed(fleet, nodes, target, &[])
        })
        .collect())
}

/// What an instance is launched for.
pub(super) enum Purpose {
    /// Node `index` (of [`Launcher::launch`]) of a fleet of `target` nodes, booting the runner
    /// agent when there is a job store for it.
    Node {
        fleet: String,
        target: usize,
        agent: Option<String>,
    },
    /// The instance of one run: it boots `user_data` and terminates when that shuts it down.
    Run { run: String, user_data: String },
}

/// Launches the nodes of one reconcile (or a run's instance), remembering offers, images,
/// subnets and the zones that had no capacity.
pub(super) struct Launcher<'a> {
    backend: &'a AwsBackend,
    request: &'a Request,
    spec: &'a FleetSpec,
    purpose: Purpose,
    offers: Vec<Offer>,
    images: BTreeMap<(String, String), ImageInfo>,
    subnets: BTreeMap<String, Option<Vec<SubnetInfo>>>,
    /// `(offer, zone)` pairs that answered with a capacity error.
    exhausted: BTreeSet<(usize, String)>,
    /// What was tried and why it failed, for the final message.
    tried: Vec<String>,
    /// `placement: cluster`: the offer and zone of the first node.
    pinned: Option<(usize, String)>,
}

impl<'a> Launcher<'a> {
    pub(super) async fn new(
        backend: &'a AwsBackend,
        request: &'a Request,
        spec: &'a FleetSpec,
        purpose: Purpose,
    ) -> Result<Self, BackendError> {
        let offers = fleet_offers(backend, request, spec).await?;
        Ok(Self {
            backend,
            request,
            spec,
            purpose,
            offers,
            images: BTreeMap::new(),
            subnets: BTreeMap::new(),
            exhausted: BTreeSet::new(),
            tried: Vec::new(),
            pinned: None,
        })
    }

    /// The newest image of a filter in a region, for an architecture.
    async fn find_image(
        &self,
        region: &str,
        arch: &str,
        filter: &crate::config::project::ImageFilter,
    ) -> Result<Option<ImageInfo>, BackendError> {
        let what = format!("looking up the machine image `{}` in {region}", filter.name);
        let images = self
            .backend
            .api()
            .describe_images(region, &filter.name, &filter.owner, arch)
            .await
            .map_err(aws(&what))?;
        Ok(images
            .into_iter()
            .max_by(|a, b| a.creation_date.cmp(&b.creation_date)))
    }

    /// The image to boot: for NVIDIA GPU offers the GPU image (the configured one, or AWS's
    /// Deep Learning Base image, falling back to the plain image when a region lacks it).
    async fn image(
        &mut self,
        region: &str,
        arch: &str,
        nvidia: bool,
    ) -> Result<ImageInfo, BackendError> {
        let key = (
            region.to_string(),
            format!("{arch}{}", if nvidia { "+gpu" } else { "" }),
        );
        if let Some(image) = self.images.get(&key) {
            return Ok(image.clone());
        }
        let settings = &self.backend.settings;
        let mut found = None;
        let mut filter = settings.image();
        if nvidia {
            let (gpu, configured) = settings.gpu_image();
            found = self.find_image(region, arch, &gpu).await?;
            if found.is_none() && configured {
                filter = gpu;
            } else if found.is_none() {
                tracing::info!(
                    "no image `{}` in {region}: the boot script installs the NVIDIA driver and container toolkit",
                    gpu.name
                );
            }
        }
        if found.is_none() {
            found = self.find_image(region, arch, &filter).await?;
        }
        let newest = found.ok_or_else(|| {
            BackendError::new(
                ErrorKind::Invalid,
                format!(
                    "no {arch} machine image named `{}` owned by `{}` in {region}",
                    filter.name, filter.owner
                ),
            )
            .with_hint(if nvidia && settings.gpu_image.is_some() {
                "set `gpu_image: {name: ..., owner: ...}` of the aws backend in .dstack/config.yml to an image of this region (wildcards allowed; owner `self` for your own)"
            } else {
                "set `image: {name: ..., owner: ...}` of the aws backend in .dstack/config.yml to an image of this region (wildcards allowed; owner `self` for your own)"
            })
        })?;
        self.images.insert(key, newest.clone());
        Ok(newest)
    }

    /// The subnets to launch into in a region, when the backend names a VPC or subnets.
    async fn subnets(&mut self, region: &str) -> Result<Option<Vec<SubnetInfo>>, BackendError> {
        if let Some(known) = self.subnets.get(region) {
            return Ok(known.clone());
        }
        let settings = &self.backend.settings;
        let query = if settings.subnet_ids.is_empty() {
            settings
                .vpc_id
                .as_ref()
                .map(|vpc| Query::default().filter("vpc-id", &[vpc.as_str()]))
        } else {
            let ids: Vec<&str> = settings.subnet_ids.iter().map(String::as_str).collect();
            Some(Query::default().filter("subnet-id", &ids))
        };
        let subnets = match query {
            None => None,
            Some(query) => Some(
                self.backend
                    .api()
                    .describe_subnets(region, &query)
                    .await
                    .map_err(aws(&format!("listing the subnets of {region}")))?,
            ),
        };
        self.subnets.insert(region.to_string(), subnets.clone());
        Ok(subnets)
    }

    fn no_capacity(&self, index: i64) -> BackendError {
        let shown: Vec<&str> = self.tried.iter().take(10).map(String::as_str).collect();
        let more = self.tried.len().saturating_sub(shown.len());
        let what = match &self.purpose {
            Purpose::Node { .. } => format!("node {index} of {}", self.request.id),
            Purpose::Run { run, .. } => format!("run {run}"),
        };
        BackendError::new(
            ErrorKind::Conflict,
            format!(
                "no capacity for {what}: tried {}{}",
                shown.join("; "),
                if more > 0 { format!("; and {more} more") } else { String::new() }
            ),
        )
        .with_hint("allow more instance types, zones or regions (`instance_types`, `availability_zones`, `regions`), use `spot_policy: auto`, or try later")
    }

    /// Launch node `index` (0 for a run): the offers cheapest first, each in its zones.
    pub(super) async fn launch(&mut self, index: i64) -> Result<(Node, Offer), BackendError> {
        let name = &self.request.id.name;
        let mut offers_tried = 0;
        for number in 0..self.offers.len() {
            let offer = self.offers[number].clone();
            let zones: Vec<String> = offer
                .zones
                .iter()
                .filter(|z| !self.exhausted.contains(&(number, (*z).clone())))
                .filter(|z| {
                    self.pinned
                        .as_ref()
                        .is_none_or(|(n, zone)| *n == number && zone == *z)
                })
                .cloned()
                .collect();
            if zones.is_empty() {
                continue;
            }
            offers_tried += 1;
            if offers_tried > MAX_OFFERS_TRIED {
                break;
            }
            let nvidia = offer
                .instance
                .gpus
                .iter()
                .any(|g| g.manufacturer.eq_ignore_ascii_case("nvidia"));
            let image = self
                .image(&offer.region, offer.architecture(), nvidia)
                .await?;
            let subnets = self.subnets(&offer.region).await?;
            for zone in zones {
                let subnet_id = match &subnets {
                    None => None,
                    Some(subnets) => {
                        let Some(subnet) = subnets.iter().find(|s| s.availability_zone == zone)
                        else {
                            self.tried.push(format!(
                                "{} in {zone}: no configured subnet there",
                                offer.instance.name
                            ));
                            self.exhausted.insert((number, zone));
                            continue;
                        };
                        Some(subnet.id.clone())
                    }
                };
                let mut labels = self.request.labels.clone();
                let (instance_name, user_data) = match &self.purpose {
                    Purpose::Node {
                        fleet,
                        target,
                        agent,
                    } => {
                        labels.insert("dstack.fleet".into(), fleet.clone());
                        labels.insert("dstack.node".into(), index.to_string());
                        labels.insert("dstack.nodes".into(), target.to_string());
                        if agent.is_some() {
                            labels.insert(
                                "dstack.agent".into(),
                                env!("CARGO_PKG_VERSION").to_string(),
                            );
                        }
                        (
                            format!("dstack-{}-{name}-{index}", self.request.project),
                            agent.clone(),
                        )
                    }
                    Purpose::Run { run, user_data } => (
                        format!("dstack-{}-{run}", self.request.project),
                        Some(user_data.clone()),
                    ),
                };
                let tags = self.backend.tags(
                    &labels,
                    &instance_name,
                    self.spec.tags.as_ref().map(|t| &t.0),
                );
                let launch = Launch {
                    instance_type: offer.instance.name.clone(),
                    image_id: image.id.clone(),
                    availability_zone: zone.clone(),
                    subnet_id,
                    spot: offer.spot,
                    max_price: if offer.spot {
                        self.spec.max_price.map(|p| p.0)
                    } else {
                        None
                    },
                    root_device: image.root_device.clone(),
                    root_size_gib: root_disk_gib(self.spec.resources.as_ref()),
                    tags,
                    client_token: None,
                    shutdown_terminates: matches!(self.purpose, Purpose::Run { .. }),
                    user_data,
                    instance_profile: self.backend.settings.instance_profile.clone(),
                };
                tracing::info!("launching {instance_name}: {} in {zone}", offer.describe());
                match self
                    .backend
                    .api()
                    .run_instance(&offer.region, &launch)
                    .await
                {
                    Ok(instance) => {
                        if self.spec.placement == Some(Placement::Cluster) {
                            self.pinned = Some((number, zone));
                        }
                        return Ok(((offer.region.clone(), instance), offer));
                    }
                    Err(error) if error.is_capacity() => {
                        tracing::info!("{} in {zone}: {error}", offer.describe());
                        self.tried.push(format!(
                            "{} in {zone}: {}",
                            offer.instance.name.clone() + if offer.spot { " (spot)" } else { "" },
                            error.code
                        ));
                        self.exhausted.insert((number, zone));
                    }
                    Err(error) => {
                        return Err(to_backend(
                            &format!(
                                "launching {} as {}{} in {zone}",
                                match &self.purpose {
                                    Purpose::Node { .. } =>
                                        format!("node {index} of {}", self.request.id),
                                    Purpose::Run { run, .. } => format!("the instance of {run}"),
                                },
                                offer.instance.name,
                                if offer.spot { " (spot)" } else { "" }
                            ),
                            &error,
                        ));
                    }
                }
            }
        }
        Err(self.no_capacity(index))
    }
}

/// Every offer for a fleet, cheapest first.
async fn fleet_offers(
    backend: &AwsBackend,
    request: &Request,
    spec: &FleetSpec,
) -> Result<Vec<Offer>, BackendError> {
    let configured = backend.regions().await;
    let regions: Vec<String> = match &spec.regions {
        Some(wanted) if !wanted.is_empty() => {
            if !backend.settings.regions.is_empty()
                && let Some(unknown) = wanted.iter().find(|r| !configured.contains(r))
            {
                return Err(BackendError::new(
                    ErrorKind::Invalid,
                    format!(
                        "{}: the region `{unknown}` is not among the aws backend's regions ({})",
                        request.id,
                        configured.join(", ")
                    ),
                )
                .with_hint("add it to `regions` of the aws backend in .dstack/config.yml, or remove it from the fleet's `regions`"));
            }
            wanted.clone()
        }
        _ => configured,
    };
    let candidates = match &spec.instance_types {
        Some(types) if !types.is_empty() => types.clone(),
        _ => super::prices::priced_types(),
    };
    let mut offers = Vec::new();
    for region in &regions {
        let what = format!("listing the instance types of {region}");
        let offerings = backend
            .api()
            .instance_type_offerings(region, &candidates)
            .await
            .map_err(aws(&what))?;
        let offered: BTreeSet<String> = offerings.iter().map(|(t, _)| t.clone()).collect();
        if offered.is_empty() {
            continue;
        }
        let offered: Vec<String> = offered.into_iter().collect();
        let types = backend
            .api()
            .describe_instance_types(region, &offered)
            .await
            .map_err(aws(&what))?;
        offers.extend(region_offers(spec, region, &types, &offerings));
    }
    sort(&mut offers);
    if offers.is_empty() {
        let resources = spec.resources.clone().unwrap_or_default().pretty();
        let mut conditions = vec![resources];
        if let Some(types) = &spec.instance_types {
            conditions.push(format!("instance_types {}", types.join(",")));
        }
        if let Some(policy) = spec.spot_policy {
            conditions.push(format!(
                "spot_policy {}",
                serde_json::to_value(policy)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ));
        }
        if let Some(price) = spec.max_price {
            conditions.push(format!("max_price {}", price.0));
        }
        if let Some(zones) = &spec.availability_zones {
            conditions.push(format!("availability_zones {}", zones.join(",")));
        }
        return Err(BackendError::new(
            ErrorKind::Invalid,
            format!(
                "no aws offer matches {} ({}) in {}",
                request.id,
                conditions.join(", "),
                regions.join(", ")
            ),
        )
        .with_hint("relax `resources`, name `instance_types` explicitly, or allow more `regions`, `availability_zones` or a higher `max_price`"));
    }
    Ok(offers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Spec;

    #[test]
    fn the_recorded_spec_reads_back_as_the_fleet_it_was() {
        let spec: FleetSpec = serde_json::from_value(serde_json::json!({
            "nodes": {"min": 1, "target": 3},
            "idle_duration": "10m",
            "backends": ["aws"],
        }))
        .expect("fleet spec");
        let read =
            recorded_spec(&Spec::Fleet(Box::new(spec.clone())).to_json()).expect("read back");
        assert_eq!(read, spec);
        assert_eq!(read.nodes.map(|n| (n.min, n.target)), Some((1, 3)));
        assert_eq!(
            read.idle_duration
                .and_then(IdleDuration::duration)
                .map(|d| d.0),
            Some(600)
        );
    }
}
