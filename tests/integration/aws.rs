//! The aws backend against moto on 127.0.0.1: EBS volumes and EC2 fleets through the real
//! binary, and the backend's own error handling through an [`Ec2Api`] wrapper that injects the
//! AWS errors moto cannot produce (capacity, zone mismatch, throttling, refused credentials).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::types as sdk;
use dstack::backend::aws::ec2::{
    Ec2Api, ImageInfo, InstanceInfo, InstanceTypeInfo, Launch, Query, SdkEc2, SubnetInfo,
    VolumeCreate, VolumeInfo,
};
use dstack::backend::aws::errors::AwsError;
use dstack::backend::aws::orphans::{orphan_record, orphans};
use dstack::backend::aws::{AwsBackend, AwsSettings, attach_volume, detach_volume};
use dstack::backend::{Backend, ErrorKind, Observed, Request};
use dstack::config::project::ImageFilter;
use dstack::model::fleet::{FleetNodes, FleetSpec};
use dstack::model::profile::CloudTags;
use dstack::model::quantity::Memory;
use dstack::model::volume::{VolumeBackend, VolumeSpec};
use dstack::model::{Kind, ResourceId, Spec};
use dstack::state::Snapshot;
use serde_json::Value as Json;

use crate::common::moto::moto;
use crate::common::{Run, TestContext};

/// The name pattern of the image tests boot, registered once in moto.
pub(crate) const IMAGE_PATTERN: &str = "dstack-test-ubuntu-22.04-*";

async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&moto().endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await
}

pub(crate) async fn ec2() -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config().await)
}

/// Register the test image (moto's own images are from 2017 and match no Ubuntu 22.04 name).
pub(crate) async fn image() -> String {
    static IMAGE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    IMAGE
        .get_or_init(|| async {
            ec2()
                .await
                .register_image()
                .name("dstack-test-ubuntu-22.04-amd64-server-20250101")
                .root_device_name("/dev/sda1")
                .send()
                .await
                .expect("register image")
                .image_id()
                .expect("image id")
                .to_string()
        })
        .await
        .clone()
}

pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// A project whose aws backend talks to moto.
fn aws_project(image_setting: bool) -> TestContext {
    block_on(image());
    let mut context = TestContext::new();
    for (key, value) in moto().env() {
        context.env(key, &value);
    }
    let image = if image_setting {
        format!("    image: {{name: \"{IMAGE_PATTERN}\", owner: self}}\n")
    } else {
        String::new()
    };
    context.write(
        ".dstack/config.yml",
        &format!(
            "backends:\n  - type: aws\n    regions: [us-east-1]\n    endpoint_url: {}\n    tags: {{suite: dstack-tests}}\n{image}",
            moto().endpoint
        ),
    );
    context
}

fn ok(run: &Run) {
    assert_eq!(run.code, 0, "{}", run.report());
}

/// The record of a resource, as `dstack state show --json` prints it.
fn record(context: &TestContext, address: &str) -> Json {
    let run = context.run(&["state", "show", address, "--json"]);
    ok(&run);
    serde_json::from_str(&run.stdout).expect("json")
}

fn backend_id(context: &TestContext, address: &str) -> String {
    record(context, address)["backend_id"]
        .as_str()
        .expect("backend id")
        .to_string()
}

async fn volume(id: &str) -> Option<sdk::Volume> {
    match ec2().await.describe_volumes().volume_ids(id).send().await {
        Ok(output) => output.volumes().first().cloned(),
        Err(error) => {
            let code = aws_sdk_ec2::error::ProvideErrorMetadata::code(&error).map(str::to_string);
            assert_eq!(code.as_deref(), Some("InvalidVolume.NotFound"), "{error:?}");
            None
        }
    }
}

fn tags(tags: &[sdk::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The live instances of a fleet, by node index.
async fn fleet_instances(fleet: &str) -> BTreeMap<String, sdk::Instance> {
    let output = ec2()
        .await
        .describe_instances()
        .filters(
            sdk::Filter::builder()
                .name("tag:dstack_fleet")
                .values(fleet)
                .build(),
        )
        .filters(
            sdk::Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        )
        .send()
        .await
        .expect("describe instances");
    output
        .reservations()
        .iter()
        .flat_map(sdk::Reservation::instances)
        .map(|i| (tags(i.tags())["dstack_node"].clone(), i.clone()))
        .collect()
}

/// A launched instance in a zone, as something outside dstack would start it.
async fn launch_outside(zone: &str) -> String {
    let output = ec2()
        .await
        .run_instances()
        .image_id(image().await)
        .instance_type(sdk::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .placement(sdk::Placement::builder().availability_zone(zone).build())
        .send()
        .await
        .expect("run instance");
    output.instances()[0].instance_id().expect("id").to_string()
}

/// Snapshot a command's report, with times made stable.
fn snapshot(context: &TestContext, name: &str, text: &str) {
    let mut filters = context.filters();
    filters.push((r"\b(now|\d+ mins? ago)\b".into(), "[AGO]".into()));
    filters.push((r"\bi-[0-9a-f]{8,17}\b".into(), "[INSTANCE]".into()));
    filters.push((r"\bvol-[0-9a-f]{8,17}\b".into(), "[VOLUME]".into()));
    filters.push((
        r"dstack-(\w[\w-]*)-[0-9a-f]{8}\b".into(),
        "dstack-$1-[LINEAGE]".into(),
    ));
    let filters: Vec<(&str, &str)> = filters
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    insta::with_settings!({filters => filters, prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn aws_volume_create_grow_drift_and_delete() {
    let context = aws_project(true);
    let file =
        "type: volume\nname: data\nbackend: aws\nregion: us-east-1\nsize: 10GB\ntags: {team: ml}\n";
    context.write("vol.dstack.yml", file);
    ok(&context.run(&["apply", "-y"]));
    let id = backend_id(&context, "volume/data");
    let recorded = record(&context, "volume/data");
    assert_eq!(recorded["attributes"]["size"], "10GB");
    assert_eq!(recorded["attributes"]["availability_zone"], "us-east-1a");
    assert_eq!(recorded["status"], "active");
    let created = block_on(volume(&id)).expect("the EBS volume exists");
    assert_eq!(created.size(), Some(10));
    assert_eq!(created.volume_type(), Some(&sdk::VolumeType::Gp3));
    assert_eq!(created.availability_zone(), Some("us-east-1a"));
    let tags = tags(created.tags());
    assert_eq!(tags["owner"], "dstack");
    assert_eq!(tags["dstack_name"], "data");
    assert_eq!(tags["dstack_project"], "project");
    assert_eq!(tags["dstack_kind"], "volume");
    assert_eq!(tags["team"], "ml");
    assert_eq!(tags["suite"], "dstack-tests");
    let pulled: Json =
        serde_json::from_str(&context.run(&["state", "pull"]).stdout).expect("state");
    assert_eq!(
        tags["dstack_lineage"],
        pulled["lineage"].as_str().expect("lineage")
    );
    // Converged: nothing to do.
    ok(&context.run(&["plan", "--detailed-exitcode"]));

    // Grow in place.
    context.write("vol.dstack.yml", &file.replace("10GB", "20GB"));
    let plan = context.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.report());
    assert!(
        plan.stdout.contains("volume/data will be updated in-place"),
        "{}",
        plan.stdout
    );
    ok(&context.run(&["apply", "-y"]));
    assert_eq!(backend_id(&context, "volume/data"), id, "grown in place");
    assert_eq!(block_on(volume(&id)).expect("volume").size(), Some(20));
    assert_eq!(
        record(&context, "volume/data")["attributes"]["size"],
        "20GB"
    );
    ok(&context.run(&["plan", "--detailed-exitcode"]));

    // Listed.
    let list = context.run(&["volume", "list"]);
    ok(&list);
    snapshot(&context, "aws_volume_list", &list.stdout);
    let verbose = context.run(&["volume", "list", "-v"]);
    ok(&verbose);
    snapshot(&context, "aws_volume_list_verbose", &verbose.stdout);
    let listed: Json =
        serde_json::from_str(&context.run(&["volume", "list", "--json"]).stdout).expect("json");
    assert_eq!(listed[0]["backend_id"], id.as_str());
    assert_eq!(listed[0]["size"], "20GB");

    // Deleted outside dstack: drift, then re-created.
    block_on(async {
        ec2()
            .await
            .delete_volume()
            .volume_id(&id)
            .send()
            .await
            .expect("delete outside")
    });
    let drift = context.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(drift.code, 2, "{}", drift.report());
    assert!(
        drift.stdout.contains("deleted outside dstack"),
        "{}",
        drift.stdout
    );
    let listed = context.run(&["volume", "list"]);
    assert!(
        listed.stdout.contains("deleted outside dstack"),
        "{}",
        listed.report()
    );
    ok(&context.run(&["apply", "-y"]));
    let again = backend_id(&context, "volume/data");
    assert_ne!(again, id);
    assert_eq!(
        block_on(volume(&again)).expect("re-created").size(),
        Some(20)
    );

    // Deleted.
    ok(&context.run(&["delete", "-y"]));
    assert!(block_on(volume(&again)).is_none(), "the EBS volume is gone");
    let pulled: Json =
        serde_json::from_str(&context.run(&["state", "pull"]).stdout).expect("state");
    assert_eq!(pulled["resources"], serde_json::json!({}));
}

#[test]
fn aws_registered_volume_is_read_and_only_forgotten() {
    let context = aws_project(true);
    let existing = block_on(async {
        ec2()
            .await
            .create_volume()
            .availability_zone("us-east-1b")
            .size(5)
            .volume_type(sdk::VolumeType::Gp3)
            .send()
            .await
            .expect("create volume")
            .volume_id()
            .expect("id")
            .to_string()
    });
    context.write(
        "vol.dstack.yml",
        &format!(
            "type: volume\nname: shared\nbackend: aws\nregion: us-east-1\nvolume_id: {existing}\n"
        ),
    );
    ok(&context.run(&["apply", "-y"]));
    let recorded = record(&context, "volume/shared");
    assert_eq!(recorded["backend_id"], existing.as_str());
    assert_eq!(recorded["external"], true);
    assert_eq!(recorded["attributes"]["size"], "5GB", "read from AWS");
    assert_eq!(recorded["attributes"]["availability_zone"], "us-east-1b");
    ok(&context.run(&["plan", "--detailed-exitcode"]));
    let untouched = block_on(volume(&existing)).expect("volume");
    assert!(
        !tags(untouched.tags()).contains_key("owner"),
        "a registered volume is not tagged"
    );

    // Still declared: `volume delete` refuses and says how.
    let refused = context.run(&["volume", "delete", "shared", "-y"]);
    assert_eq!(refused.code, 1, "{}", refused.report());
    assert!(
        refused
            .stderr
            .contains("is still declared in `vol.dstack.yml`"),
        "{}",
        refused.stderr
    );
    std::fs::remove_file(context.root.join("vol.dstack.yml")).expect("remove file");
    let forgot = context.run(&["volume", "delete", "shared", "-y"]);
    ok(&forgot);
    assert!(
        forgot.stderr.contains("Forgot volume/shared."),
        "{}",
        forgot.stderr
    );
    assert!(block_on(volume(&existing)).is_some(), "never destroyed");

    // A volume id that does not exist is a clear error.
    context.write(
        "vol.dstack.yml",
        "type: volume\nname: ghost\nbackend: aws\nregion: us-east-1\nvolume_id: vol-0123456789abcdef0\n",
    );
    let missing = context.run(&["apply", "-y"]);
    assert_eq!(missing.code, 1, "{}", missing.report());
    assert!(
        missing
            .stderr
            .contains("the EBS volume `vol-0123456789abcdef0` does not exist in us-east-1"),
        "{}",
        missing.stderr
    );
}

#[test]
fn aws_volume_delete_is_refused_while_attached() {
    let context = aws_project(true);
    context.write(
        "vol.dstack.yml",
        "type: volume\nname: busy\nbackend: aws\nregion: us-east-1\nsize: 1GB\n",
    );
    ok(&context.run(&["apply", "-y"]));
    let id = backend_id(&context, "volume/busy");
    let instance = block_on(async {
        let instance = launch_outside("us-east-1a").await;
        ec2()
            .await
            .attach_volume()
            .volume_id(&id)
            .instance_id(&instance)
            .device("/dev/sdf")
            .send()
            .await
            .expect("attach");
        instance
    });
    let verbose = context.run(&["volume", "list", "-v"]);
    assert!(verbose.stdout.contains(&instance), "{}", verbose.report());
    let refused = context.run(&["delete", "-y"]);
    assert_eq!(refused.code, 1, "{}", refused.report());
    assert!(
        refused.stderr.contains(&format!(
            "volume/busy ({id}) is attached to the instance {instance}"
        )),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("aws ec2 detach-volume"),
        "{}",
        refused.stderr
    );
    assert!(block_on(volume(&id)).is_some());
    assert_eq!(record(&context, "volume/busy")["backend_id"], id.as_str());
    block_on(async {
        ec2()
            .await
            .detach_volume()
            .volume_id(&id)
            .instance_id(&instance)
            .send()
            .await
            .expect("detach");
    });
    // Removed from the file, `volume delete` destroys it through the executor.
    std::fs::remove_file(context.root.join("vol.dstack.yml")).expect("remove file");
    let deleted = context.run(&["volume", "delete", "busy", "-y"]);
    ok(&deleted);
    assert!(
        deleted.stderr.contains("Deleted volume/busy."),
        "{}",
        deleted.stderr
    );
    assert!(block_on(volume(&id)).is_none());
    let pulled: Json =
        serde_json::from_str(&context.run(&["state", "pull"]).stdout).expect("state");
    assert_eq!(pulled["resources"], serde_json::json!({}));
    assert_eq!(pulled["intents"], serde_json::json!({}));
}

#[test]
fn aws_fleet_create_scale_drift_and_delete() {
    let context = aws_project(true);
    let file = "type: fleet\nname: cpus\nbackends: [aws]\nnodes: 2\nresources: {cpu: 2, memory: 8GB}\ntags: {team: ml}\n";
    context.write("fleet.dstack.yml", file);
    ok(&context.run(&["apply", "-y"]));
    let fleet = backend_id(&context, "fleet/cpus");
    let nodes = block_on(fleet_instances(&fleet));
    assert_eq!(nodes.keys().collect::<Vec<_>>(), ["0", "1"]);
    for instance in nodes.values() {
        assert_eq!(
            instance.instance_type(),
            Some(&sdk::InstanceType::T3Large),
            "the cheapest fit"
        );
        let tags = tags(instance.tags());
        assert_eq!(tags["owner"], "dstack");
        assert_eq!(tags["dstack_kind"], "fleet");
        assert_eq!(tags["dstack_name"], "cpus");
        assert_eq!(tags["team"], "ml");
        assert_eq!(tags["dstack_nodes"], "2");
    }
    let recorded = record(&context, "fleet/cpus");
    assert_eq!(recorded["attributes"]["nodes"], 2);
    assert_eq!(
        recorded["attributes"]["instance_types"],
        serde_json::json!(["t3.large"])
    );
    assert_eq!(recorded["attributes"]["spot"], false);
    ok(&context.run(&["plan", "--detailed-exitcode"]));
    let list = context.run(&["fleet", "list"]);
    ok(&list);
    snapshot(&context, "aws_fleet_list", &list.stdout);

    // Scale up, then down: the highest nodes go.
    context.write("fleet.dstack.yml", &file.replace("nodes: 2", "nodes: 3"));
    ok(&context.run(&["apply", "-y"]));
    let three = block_on(fleet_instances(&fleet));
    assert_eq!(three.keys().collect::<Vec<_>>(), ["0", "1", "2"]);
    assert_eq!(three["0"].instance_id(), nodes["0"].instance_id(), "kept");
    context.write("fleet.dstack.yml", &file.replace("nodes: 2", "nodes: 1"));
    ok(&context.run(&["apply", "-y"]));
    let one = block_on(fleet_instances(&fleet));
    assert_eq!(one.keys().collect::<Vec<_>>(), ["0"]);
    assert_eq!(one["0"].instance_id(), nodes["0"].instance_id());
    ok(&context.run(&["plan", "--detailed-exitcode"]));

    // Terminated outside dstack: drift, and apply launches it again.
    block_on(async {
        ec2()
            .await
            .terminate_instances()
            .instance_ids(one["0"].instance_id().expect("id"))
            .send()
            .await
            .expect("terminate")
    });
    let drift = context.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(drift.code, 2, "{}", drift.report());
    assert!(
        drift.stdout.contains("changed outside dstack"),
        "{}",
        drift.stdout
    );
    ok(&context.run(&["apply", "-y"]));
    let relaunched = block_on(fleet_instances(&fleet));
    assert_eq!(relaunched.keys().collect::<Vec<_>>(), ["0"]);
    assert_ne!(relaunched["0"].instance_id(), one["0"].instance_id());
    ok(&context.run(&["plan", "--detailed-exitcode"]));

    ok(&context.run(&["delete", "-y"]));
    assert!(block_on(fleet_instances(&fleet)).is_empty(), "terminated");
}

#[test]
fn aws_spot_fleet_launches_spot_instances() {
    let context = aws_project(true);
    context.write(
        "fleet.dstack.yml",
        "type: fleet\nname: spotty\nbackends: [aws]\nnodes: 1\nspot_policy: spot\ninstance_types: [m5.large, t3.large]\n",
    );
    ok(&context.run(&["apply", "-y"]));
    let fleet = backend_id(&context, "fleet/spotty");
    let nodes = block_on(fleet_instances(&fleet));
    assert_eq!(
        nodes["0"].instance_lifecycle(),
        Some(&sdk::InstanceLifecycleType::Spot)
    );
    assert_eq!(
        nodes["0"].instance_type(),
        Some(&sdk::InstanceType::T3Large)
    );
    let recorded = record(&context, "fleet/spotty");
    assert_eq!(recorded["attributes"]["spot"], true);
    let list = context.run(&["fleet", "list"]);
    ok(&list);
    snapshot(&context, "aws_fleet_list_spot", &list.stdout);
    // `fleet delete` refuses while the file declares it; `delete` terminates.
    let refused = context.run(&["fleet", "delete", "spotty", "-y"]);
    assert_eq!(refused.code, 1, "{}", refused.report());
    ok(&context.run(&["delete", "-y"]));
    assert!(block_on(fleet_instances(&fleet)).is_empty());
}

#[test]
fn aws_fleet_errors_name_the_fix() {
    // No image matches the default (Ubuntu 22.04 by Canonical): moto has only old ones.
    let context = aws_project(false);
    context.write(
        "fleet.dstack.yml",
        "type: fleet\nname: noimage\nbackends: [aws]\nnodes: 1\n",
    );
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 1, "{}", run.report());
    snapshot(&context, "aws_fleet_without_image", &run.stderr);
    // Nothing was launched; the intent left behind is forgotten by the next plan.
    let plan = context.run(&["apply", "-y", "--refresh=false"]);
    assert!(
        plan.stderr
            .contains("forgot the interrupted create of fleet/noimage")
            || plan
                .stdout
                .contains("forgot the interrupted create of fleet/noimage"),
        "{}",
        plan.report()
    );

    // No offer fits.
    let context = aws_project(true);
    context.write(
        "fleet.dstack.yml",
        "type: fleet\nname: nooffer\nbackends: [aws]\nnodes: 1\nresources: {gpu: MI300X:8}\n",
    );
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 1, "{}", run.report());
    snapshot(&context, "aws_fleet_without_offer", &run.stderr);
}

#[test]
fn aws_config_round_trip() {
    let context = TestContext::new();
    context.write(
        ".dstack/config.yml",
        "project: research\nbackends:\n  - type: local\n    runtime: host\n",
    );
    let run = context.run(&[
        "config",
        "--region",
        "eu-west-1",
        "--bucket",
        "team-bucket",
        "--profile",
        "work",
    ]);
    ok(&run);
    let text = std::fs::read_to_string(context.root.join(".dstack/config.yml")).expect("config");
    snapshot(&context, "aws_config_written", &text);
    // Every command reads it back (validate opens no state, so nothing leaves this machine).
    context.write("hello.dstack.yml", "type: task\ncommands: [echo hi]\n");
    ok(&context.run(&["validate"]));
    let shown = context.run(&["config"]);
    ok(&shown);
    assert_eq!(shown.stdout, text);
    // Editing again changes only what is named.
    ok(&context.run(&[
        "config",
        "--region",
        "us-east-1",
        "--artifacts",
        "s3://other/art",
    ]));
    let edited = std::fs::read_to_string(context.root.join(".dstack/config.yml")).expect("config");
    snapshot(&context, "aws_config_edited", &edited);
    let same = context.run(&["config", "--region", "us-east-1"]);
    ok(&same);
    assert!(same.stderr.contains("nothing changed"), "{}", same.stderr);
    // A broken file is not overwritten.
    context.write(".dstack/config.yml", "backends: 3\n");
    let broken = context.run(&["config", "--region", "us-east-1"]);
    assert_eq!(broken.code, 1, "{}", broken.report());
    assert_eq!(
        std::fs::read_to_string(context.root.join(".dstack/config.yml")).expect("config"),
        "backends: 3\n"
    );
}

// ---------------------------------------------------------------------------------------------
// The backend's own decisions, with AWS errors injected around the real EC2 calls.

/// An injected failure: the next `times` calls of `operation` (whose key contains `key`) fail.
struct Fault {
    operation: &'static str,
    key: String,
    error: AwsError,
    times: usize,
}

/// The real EC2 (moto), with faults.
struct Faulty {
    inner: SdkEc2,
    faults: Mutex<Vec<Fault>>,
    /// `(operation, key)` of every call, in order.
    calls: Mutex<Vec<(&'static str, String)>>,
}

impl Faulty {
    async fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: SdkEc2::with_config(sdk_config().await),
            faults: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn fail(&self, operation: &'static str, key: &str, code: &str, times: usize) {
        self.faults.lock().expect("lock").push(Fault {
            operation,
            key: key.to_string(),
            error: AwsError::new(code, format!("injected {code}")),
            times,
        });
    }

    fn check(&self, operation: &'static str, key: &str) -> Result<(), AwsError> {
        self.calls
            .lock()
            .expect("lock")
            .push((operation, key.to_string()));
        let mut faults = self.faults.lock().expect("lock");
        if let Some(fault) = faults
            .iter_mut()
            .find(|f| f.operation == operation && key.contains(f.key.as_str()) && f.times > 0)
        {
            fault.times -= 1;
            return Err(fault.error.clone());
        }
        Ok(())
    }

    fn calls(&self, operation: &str) -> Vec<String> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .filter(|(o, _)| *o == operation)
            .map(|(_, k)| k.clone())
            .collect()
    }

    fn forget_calls(&self) {
        self.calls.lock().expect("lock").clear();
    }
}

#[async_trait::async_trait]
impl Ec2Api for Faulty {
    async fn default_region(&self) -> String {
        self.inner.default_region().await
    }

    async fn availability_zones(&self, region: &str) -> Result<Vec<String>, AwsError> {
        self.check("availability_zones", region)?;
        self.inner.availability_zones(region).await
    }

    async fn create_volume(
        &self,
        region: &str,
        request: &VolumeCreate,
    ) -> Result<VolumeInfo, AwsError> {
        self.check("create_volume", &request.availability_zone.clone())?;
        self.inner.create_volume(region, request).await
    }

    async fn describe_volumes(
        &self,
        region: &str,
        query: &Query,
    ) -> Result<Vec<VolumeInfo>, AwsError> {
        self.check("describe_volumes", &query.ids.join(","))?;
        self.inner.describe_volumes(region, query).await
    }

    async fn modify_volume_size(&self, region: &str, id: &str, size: i32) -> Result<(), AwsError> {
        self.check("modify_volume_size", id)?;
        self.inner.modify_volume_size(region, id, size).await
    }

    async fn delete_volume(&self, region: &str, id: &str) -> Result<(), AwsError> {
        self.check("delete_volume", id)?;
        self.inner.delete_volume(region, id).await
    }

    async fn attach_volume(
        &self,
        region: &str,
        id: &str,
        instance: &str,
        device: &str,
    ) -> Result<(), AwsError> {
        self.check("attach_volume", &format!("{id}@{instance}"))?;
        self.inner.attach_volume(region, id, instance, device).await
    }

    async fn detach_volume(
        &self,
        region: &str,
        id: &str,
        instance: &str,
        force: bool,
    ) -> Result<(), AwsError> {
        self.check("detach_volume", &format!("{id}@{instance}"))?;
        self.inner.detach_volume(region, id, instance, force).await
    }

    async fn create_tags(
        &self,
        region: &str,
        ids: &[String],
        tags: &BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        self.check("create_tags", &ids.join(","))?;
        self.inner.create_tags(region, ids, tags).await
    }

    async fn delete_tags(
        &self,
        region: &str,
        ids: &[String],
        keys: &[String],
    ) -> Result<(), AwsError> {
        self.check("delete_tags", &ids.join(","))?;
        self.inner.delete_tags(region, ids, keys).await
    }

    async fn run_instance(&self, region: &str, launch: &Launch) -> Result<InstanceInfo, AwsError> {
        self.check(
            "run_instance",
            &format!("{}@{}", launch.instance_type, launch.availability_zone),
        )?;
        self.inner.run_instance(region, launch).await
    }

    async fn describe_instances(
        &self,
        region: &str,
        query: &Query,
    ) -> Result<Vec<InstanceInfo>, AwsError> {
        self.check("describe_instances", &query.ids.join(","))?;
        self.inner.describe_instances(region, query).await
    }

    async fn terminate_instances(&self, region: &str, ids: &[String]) -> Result<(), AwsError> {
        self.check("terminate_instances", &ids.join(","))?;
        self.inner.terminate_instances(region, ids).await
    }

    async fn describe_instance_types(
        &self,
        region: &str,
        names: &[String],
    ) -> Result<Vec<InstanceTypeInfo>, AwsError> {
        self.check("describe_instance_types", &names.join(","))?;
        self.inner.describe_instance_types(region, names).await
    }

    async fn instance_type_offerings(
        &self,
        region: &str,
        names: &[String],
    ) -> Result<Vec<(String, String)>, AwsError> {
        self.check("instance_type_offerings", &names.join(","))?;
        self.inner.instance_type_offerings(region, names).await
    }

    async fn describe_images(
        &self,
        region: &str,
        name: &str,
        owner: &str,
        arch: &str,
    ) -> Result<Vec<ImageInfo>, AwsError> {
        self.check("describe_images", name)?;
        self.inner.describe_images(region, name, owner, arch).await
    }

    async fn describe_subnets(
        &self,
        region: &str,
        query: &Query,
    ) -> Result<Vec<SubnetInfo>, AwsError> {
        self.check("describe_subnets", &query.ids.join(","))?;
        self.inner.describe_subnets(region, query).await
    }
}

fn settings() -> AwsSettings {
    AwsSettings {
        regions: vec!["us-east-1".into()],
        image: Some(ImageFilter {
            name: IMAGE_PATTERN.into(),
            owner: "self".into(),
        }),
        ..AwsSettings::default()
    }
}

/// A request as the executor makes it, with a fresh lineage and an intent.
fn request(kind: Kind, name: &str, spec: Spec, lineage: &str) -> Request {
    let id = ResourceId::new(kind, name);
    let mut labels = dstack::backend::labels("faults", lineage, &id, None);
    labels.insert("dstack.intent".into(), uuid::Uuid::new_v4().to_string());
    Request {
        id,
        spec,
        labels,
        project: "faults".into(),
        project_dir: std::env::temp_dir(),
        lineage: lineage.into(),
        run_name: None,
        volumes: BTreeMap::new(),
        fleets: BTreeMap::new(),
        env: BTreeMap::new(),
        secrets: Vec::new(),
        deps: Vec::new(),
    }
}

fn volume_spec(size: f64, zone: &str) -> Spec {
    Spec::Volume(VolumeSpec {
        backend: VolumeBackend::Aws,
        size: Some(Memory(size)),
        volume_id: None,
        region: Some("us-east-1".into()),
        availability_zone: Some(zone.into()),
        auto_cleanup_duration: None,
        tags: Some(CloudTags(BTreeMap::from([(
            "team".into(),
            "faults".into(),
        )]))),
        claim_name: None,
        storage_class_name: None,
        access_modes: None,
        read_only: None,
    })
}

fn fleet_spec(nodes: i64, types: &[&str], zones: &[&str]) -> Spec {
    Spec::Fleet(Box::new(FleetSpec {
        nodes: Some(FleetNodes {
            min: nodes,
            target: nodes,
            max: Some(nodes),
        }),
        instance_types: Some(types.iter().map(|t| (*t).to_string()).collect()),
        availability_zones: Some(zones.iter().map(|z| (*z).to_string()).collect()),
        ..FleetSpec::default()
    }))
}

fn lineage() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn strings(value: &Json) -> Vec<String> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect()
}

fn record_of(observed: &Observed) -> dstack::state::ResourceRecord {
    orphan_record(observed, "aws").expect("labels say what it is")
}

#[tokio::test]
async fn aws_capacity_errors_try_the_next_zone_then_the_next_offer() {
    image().await;
    let api = Faulty::new().await;
    let backend = AwsBackend::with_api(settings(), api.clone());
    let zones = ["us-east-1a", "us-east-1b"];
    let types = ["m5.large", "t3.large"];

    // No capacity in the first zone: the next zone, same (cheapest) offer.
    api.fail(
        "run_instance",
        "t3.large@us-east-1a",
        "InsufficientInstanceCapacity",
        1,
    );
    let next_zone = request(
        Kind::Fleet,
        "zone",
        fleet_spec(1, &types, &zones),
        &lineage(),
    );
    let observed = backend.create(&next_zone).await.expect("launched");
    assert_eq!(
        api.calls("run_instance"),
        ["t3.large@us-east-1a", "t3.large@us-east-1b"]
    );
    assert_eq!(
        strings(&observed.attributes["availability_zones"]),
        ["us-east-1b"]
    );
    backend.delete(&record_of(&observed)).await.expect("delete");

    // No capacity for the cheapest offer anywhere: the next offer. Once a zone had no capacity,
    // the next node does not try it again.
    api.forget_calls();
    api.fail(
        "run_instance",
        "t3.large@",
        "InsufficientInstanceCapacity",
        2,
    );
    api.fail("run_instance", "m5.large@us-east-1a", "Unsupported", 1);
    let next_offer = request(
        Kind::Fleet,
        "offer",
        fleet_spec(2, &types, &zones),
        &lineage(),
    );
    let observed = backend.create(&next_offer).await.expect("launched");
    assert_eq!(
        api.calls("run_instance"),
        [
            "t3.large@us-east-1a",
            "t3.large@us-east-1b",
            "m5.large@us-east-1a",
            "m5.large@us-east-1b",
            "m5.large@us-east-1b",
        ]
    );
    assert_eq!(
        strings(&observed.attributes["instance_types"]),
        ["m5.large"]
    );
    assert_eq!(observed.attributes["nodes"], 2);
    backend.delete(&record_of(&observed)).await.expect("delete");

    // No capacity at all: a conflict that lists what was tried.
    api.forget_calls();
    api.fail("run_instance", "@", "InsufficientInstanceCapacity", 4);
    let nowhere = request(
        Kind::Fleet,
        "nowhere",
        fleet_spec(1, &types, &zones),
        &lineage(),
    );
    let error = backend.create(&nowhere).await.expect_err("no capacity");
    assert_eq!(error.kind, ErrorKind::Conflict);
    assert_eq!(
        error.message,
        "no capacity for node 0 of fleet/nowhere: tried t3.large in us-east-1a: InsufficientInstanceCapacity; t3.large in us-east-1b: InsufficientInstanceCapacity; m5.large in us-east-1a: InsufficientInstanceCapacity; m5.large in us-east-1b: InsufficientInstanceCapacity"
    );
    assert!(
        error
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("spot_policy: auto"))
    );

    // Any other error stops at once.
    api.forget_calls();
    api.fail("run_instance", "@", "InvalidParameterValue", 1);
    let invalid = request(
        Kind::Fleet,
        "invalid",
        fleet_spec(1, &types, &zones),
        &lineage(),
    );
    let error = backend.create(&invalid).await.expect_err("invalid");
    assert_eq!(error.kind, ErrorKind::Invalid);
    assert_eq!(api.calls("run_instance").len(), 1);
    assert!(
        error
            .message
            .starts_with("launching node 0 of fleet/invalid as t3.large in us-east-1a: injected InvalidParameterValue (InvalidParameterValue)"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn aws_zone_mismatch_is_refused_and_attached_volumes_are_not_deleted() {
    image().await;
    let api = Faulty::new().await;
    let backend = AwsBackend::with_api(settings(), api.clone());
    let lineage = lineage();
    let instance = launch_outside("us-east-1a").await;

    // A volume in another zone: refused before EC2 is asked (moto would accept it).
    let elsewhere = backend
        .create(&request(
            Kind::Volume,
            "elsewhere",
            volume_spec(1.0, "us-east-1b"),
            &lineage,
        ))
        .await
        .expect("volume");
    let error = attach_volume(&backend, &record_of(&elsewhere), &instance, "/dev/sdf")
        .await
        .expect_err("zone mismatch");
    assert_eq!(error.kind, ErrorKind::Invalid);
    assert!(error.message.contains("the volume and the instance are in different availability zones: the volume is in us-east-1b, the instance in us-east-1a (InvalidVolume.ZoneMismatch)"), "{}", error.message);
    assert!(
        error
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("`availability_zones`"))
    );
    assert!(api.calls("attach_volume").is_empty());

    // EC2's own answer maps the same way.
    let here = backend
        .create(&request(
            Kind::Volume,
            "here",
            volume_spec(1.0, "us-east-1a"),
            &lineage,
        ))
        .await
        .expect("volume");
    let here_record = record_of(&here);
    api.fail("attach_volume", "@", "InvalidVolume.ZoneMismatch", 1);
    let error = attach_volume(&backend, &here_record, &instance, "/dev/sdf")
        .await
        .expect_err("zone mismatch");
    assert_eq!(error.kind, ErrorKind::Invalid);

    // Attached: delete is a conflict naming the instance; detached: deleted.
    attach_volume(&backend, &here_record, &instance, "/dev/sdf")
        .await
        .expect("attach");
    let read = backend
        .read(&here_record)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        read.attributes["attachments"],
        serde_json::json!([instance])
    );
    let error = backend.delete(&here_record).await.expect_err("in use");
    assert_eq!(error.kind, ErrorKind::Conflict);
    assert!(
        error
            .message
            .contains(&format!("is attached to the instance {instance}")),
        "{}",
        error.message
    );
    detach_volume(&backend, &here_record, &instance, false)
        .await
        .expect("detach");
    detach_volume(&backend, &here_record, &instance, false)
        .await
        .expect("detaching again is fine");
    backend.delete(&here_record).await.expect("delete");
    assert!(backend.read(&here_record).await.expect("read").is_none());
    backend
        .delete(&here_record)
        .await
        .expect("deleting again is fine");
    backend
        .delete(&record_of(&elsewhere))
        .await
        .expect("delete");
}

#[tokio::test]
async fn aws_throttling_is_transient_and_retries_do_not_duplicate() {
    image().await;
    let api = Faulty::new().await;
    let backend = AwsBackend::with_api(settings(), api.clone());
    let create = request(
        Kind::Volume,
        "throttled",
        volume_spec(2.0, "us-east-1c"),
        &lineage(),
    );
    api.fail("create_volume", "us-east-1c", "RequestLimitExceeded", 2);
    let error = backend.create(&create).await.expect_err("throttled");
    assert_eq!(error.kind, ErrorKind::Transient);
    assert!(
        error.message.contains("AWS is throttling requests"),
        "{}",
        error.message
    );
    let observed = dstack::backend::retry(|| backend.create(&create), &dstack::backend::quietly)
        .await
        .expect("retried");
    assert_eq!(api.calls("create_volume").len(), 3);
    // The executor retrying the same intent finds the volume instead of making another.
    let again = backend.create(&create).await.expect("same intent");
    assert_eq!(again.backend_id, observed.backend_id);
    let intent = BTreeMap::from([(
        "dstack.intent".to_string(),
        create.labels["dstack.intent"].clone(),
    )]);
    assert_eq!(backend.find(&intent).await.expect("find").len(), 1);

    // Refresh retries too; refused credentials are not retried.
    let record = record_of(&observed);
    api.fail("describe_volumes", "vol-", "Throttling", 1);
    let read = dstack::backend::retry(|| backend.read(&record), &dstack::backend::quietly)
        .await
        .expect("read");
    assert!(read.is_some());
    api.fail("describe_volumes", "vol-", "UnauthorizedOperation", 1);
    let error = backend.read(&record).await.expect_err("unauthorized");
    assert_eq!(error.kind, ErrorKind::Unauthorized);
    assert!(
        error.hint.as_deref().is_some_and(|h| h.contains("IAM")),
        "{error:?}"
    );
    backend.delete(&record).await.expect("delete");
}

#[tokio::test]
async fn aws_interrupted_creates_and_orphans_are_found_by_their_tags() {
    image().await;
    let api = Faulty::new().await;
    let backend = AwsBackend::with_api(settings(), api.clone());
    let lineage = lineage();
    let volume_request = request(
        Kind::Volume,
        "lost",
        volume_spec(1.0, "us-east-1a"),
        &lineage,
    );
    let fleet_request = request(
        Kind::Fleet,
        "lost",
        fleet_spec(2, &["t3.large"], &["us-east-1a"]),
        &lineage,
    );
    let volume = backend.create(&volume_request).await.expect("volume");
    let fleet = backend.create(&fleet_request).await.expect("fleet");

    // Recovery looks objects up by the intent of the create.
    for request in [&volume_request, &fleet_request] {
        let intent = BTreeMap::from([(
            "dstack.intent".to_string(),
            request.labels["dstack.intent"].clone(),
        )]);
        let found = backend.find(&intent).await.expect("find");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].labels["dstack.kind"], request.id.kind.to_string());
    }

    // A fleet adopted with a node missing shows the gap: `find` reports the target it was
    // launched for, `read` the nodes alive.
    let instances = strings(&fleet.attributes["instances"]);
    ec2()
        .await
        .terminate_instances()
        .instance_ids(&instances[1])
        .send()
        .await
        .expect("terminate");
    let intent = BTreeMap::from([(
        "dstack.intent".to_string(),
        fleet_request.labels["dstack.intent"].clone(),
    )]);
    let adopted = backend.find(&intent).await.expect("find").remove(0);
    assert_eq!(adopted.attributes["nodes"], 2);
    let read = backend
        .read(&record_of(&adopted))
        .await
        .expect("read")
        .expect("a fleet always reads");
    assert_eq!(read.attributes["nodes"], 1);

    // Orphans: tagged with the lineage, unknown to the state.
    let mut snapshot = Snapshot::empty();
    snapshot.lineage = Some(lineage.clone());
    let found = orphans(&backend, &snapshot).await.expect("orphans");
    assert_eq!(found.len(), 2, "{found:?}");
    let volume_record = record_of(&volume);
    snapshot
        .resources
        .insert("volume/lost".into(), volume_record.clone());
    let found = orphans(&backend, &snapshot).await.expect("orphans");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].backend_id, fleet.backend_id);
    backend
        .delete(&record_of(&found[0]))
        .await
        .expect("delete orphan");
    backend.delete(&volume_record).await.expect("delete");
    snapshot.resources.clear();
    assert!(
        orphans(&backend, &snapshot)
            .await
            .expect("orphans")
            .is_empty()
    );
}
