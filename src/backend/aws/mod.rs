//! The aws backend: EBS volumes, EC2 fleets, and runs on EC2 instances ([`runs`]).
//!
//! - Every EC2 call goes through [`ec2::Ec2Api`]; [`ec2::SdkEc2`] is the real one, and tests wrap
//!   it to inject the errors a local double cannot produce.
//! - Every object dstack creates is tagged `owner=dstack`, `Name`, and its labels as tags
//!   (`dstack.project` → `dstack_project`, `dstack_lineage`, `dstack_kind`, `dstack_name`,
//!   `dstack_intent`), then the backend's `tags`, then the resource's `tags` (on a clash the
//!   earlier wins, as in dstack; invalid AWS tags are dropped with a warning). [`Backend::find`]
//!   turns labels back into tag filters, so an interrupted create is found by its intent and
//!   orphans by their lineage ([`orphans`]).
//! - Attributes: what `create`, `update` and `find` return is what state records and refresh
//!   compares (volume: region, zone, size, type; fleet: instances, nodes, types, zones,
//!   regions, spot, price). `read` adds volatile facts (a volume's `state` and `attachments`)
//!   that are shown by `dstack volume list` but, not being recorded, never count as drift.
//! - Errors are mapped once, in [`errors`]: throttling and 5xx are `Transient` (the executor
//!   retries them), capacity is a `Conflict` after every zone and offer was tried.

mod boot;
pub mod ec2;
pub mod errors;
mod fleets;
pub mod offers;
pub mod orphans;
pub mod prices;
mod runs;
mod volumes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

use self::ec2::{Ec2Api, SdkEc2};
use self::errors::{AwsError, to_backend};
use super::{Backend, BackendError, Capabilities, ErrorKind, Observed, Request, RunObserved};
use crate::config::project::{BackendSetting, ImageFilter, ProjectConfig};
use crate::model::Kind;
use crate::model::Spec;
use crate::state::{ResourceRecord, RunRecord};

pub use self::fleets::fleet_id;
pub use self::volumes::{attach_volume, detach_volume};

/// The default machine image: Ubuntu 22.04 server, as published by Canonical.
pub const DEFAULT_IMAGE_NAME: &str = "ubuntu/images/hvm-ssd*/ubuntu-jammy-22.04-*-server-*";
/// Canonical's AWS account, the owner of the official Ubuntu images.
pub const DEFAULT_IMAGE_OWNER: &str = "099720109477";
/// The default image of GPU instances: AWS's Deep Learning Base image (NVIDIA driver, Docker and
/// the NVIDIA container toolkit preinstalled) for Ubuntu 22.04.
pub const DEFAULT_GPU_IMAGE_NAME: &str =
    "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *";
/// Amazon's own images.
pub const DEFAULT_GPU_IMAGE_OWNER: &str = "amazon";

/// The settings of the aws entry of `.dstack/config.yml`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// Regions to use; empty: the region of the standard AWS chain (`AWS_REGION`, profile,
    /// else `us-east-1`).
    pub regions: Vec<String>,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
    /// Launch instances into the subnets of this VPC (default: the default VPC).
    pub vpc_id: Option<String>,
    /// Launch instances into these subnets (one per zone is enough).
    pub subnet_ids: Vec<String>,
    /// Tags of every object, after dstack's own.
    pub tags: BTreeMap<String, String>,
    pub image: Option<ImageFilter>,
    pub gpu_image: Option<ImageFilter>,
    /// The IAM instance profile of launched instances.
    pub instance_profile: Option<String>,
}

impl AwsSettings {
    /// The settings of an `aws` backend entry.
    pub fn from_setting(setting: &BackendSetting) -> Option<Self> {
        match setting {
            BackendSetting::Aws {
                regions,
                profile,
                endpoint_url,
                vpc_id,
                subnet_ids,
                tags,
                image,
                gpu_image,
                instance_profile,
            } => Some(Self {
                regions: regions.clone(),
                profile: profile.clone(),
                endpoint_url: endpoint_url.clone(),
                vpc_id: vpc_id.clone(),
                subnet_ids: subnet_ids.clone(),
                tags: tags.clone(),
                image: image.clone(),
                gpu_image: gpu_image.clone(),
                instance_profile: instance_profile.clone(),
            }),
            BackendSetting::Local { .. } => None,
        }
    }

    /// The aws entry of a project configuration, if it has one.
    pub fn from_config(config: &ProjectConfig) -> Option<Self> {
        config.backends.iter().find_map(Self::from_setting)
    }

    /// The machine image filter: the configured one, else Ubuntu 22.04 by Canonical.
    pub fn image(&self) -> ImageFilter {
        self.image.clone().unwrap_or_else(|| ImageFilter {
            name: DEFAULT_IMAGE_NAME.into(),
            owner: DEFAULT_IMAGE_OWNER.into(),
        })
    }

    /// The machine image filter of GPU instances, and whether it was configured (a default one
    /// a region lacks falls back to [`Self::image`]).
    pub fn gpu_image(&self) -> (ImageFilter, bool) {
        match &self.gpu_image {
            Some(filter) => (filter.clone(), true),
            None => (
                ImageFilter {
                    name: DEFAULT_GPU_IMAGE_NAME.into(),
                    owner: DEFAULT_GPU_IMAGE_OWNER.into(),
                },
                false,
            ),
        }
    }
}

/// How long to wait for AWS, and how often to look.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// The first pause between two looks (it doubles up to 5 s).
    pub poll: Duration,
    pub volume_timeout: Duration,
    pub instance_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(500),
            volume_timeout: Duration::from_mins(5),
            instance_timeout: Duration::from_mins(10),
        }
    }
}

/// What runs on EC2 need besides EC2: the job store (the remote artifact store) and what goes
/// into it.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// `artifacts.remote` of .dstack/config.yml: `s3://BUCKET/PREFIX`.
    pub store_url: String,
    pub connection: crate::aws::Connection,
    pub project_dir: std::path::PathBuf,
    /// The local artifact store (dependencies' artifacts come from it).
    pub artifact_store: std::path::PathBuf,
    /// The Linux build of dstack instances run (`DSTACK_RUNNER_BINARY`); default: this
    /// executable, when it is one.
    pub runner_binary: Option<std::path::PathBuf>,
}

/// The aws backend of a project.
pub struct AwsBackend {
    settings: AwsSettings,
    api: Arc<dyn Ec2Api>,
    timing: Timing,
    runs: Option<RunSettings>,
    jobs: tokio::sync::OnceCell<crate::runner::remote::RemoteJobs>,
    /// Presigned URLs of the runner binary by architecture, uploaded once per process.
    binaries: tokio::sync::OnceCell<BTreeMap<String, String>>,
}

/// The error of tag methods, which are no backend objects.
fn not_an_object() -> BackendError {
    BackendError::new(ErrorKind::Internal, "tags are not backend objects")
}

/// `dstack.project` → `dstack_project`; other keys stay as they are.
pub fn label_to_tag(key: &str) -> String {
    key.strip_prefix("dstack.")
        .map_or_else(|| key.to_string(), |rest| format!("dstack_{rest}"))
}

/// The labels an object's tags stand for (`dstack_project` → `dstack.project`).
pub fn labels_of(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("dstack_")
                .map(|rest| (format!("dstack.{rest}"), v.clone()))
        })
        .collect()
}

/// Whether AWS accepts a tag (dstack's rule: key `^[\w .:/=\-+@]{1,128}$`, not `aws:`; value up
/// to 256 characters).
pub fn valid_tag(key: &str, value: &str) -> bool {
    let key_ok = (1..=128).contains(&key.chars().count())
        && !key.to_ascii_lowercase().starts_with("aws:")
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || " .:/=-+@".contains(c));
    key_ok && value.chars().count() <= 256
}

impl AwsBackend {
    /// The backend of these settings, talking to EC2 through the AWS SDK.
    pub fn new(settings: AwsSettings) -> Self {
        let connection = crate::aws::Connection {
            region: None,
            profile: settings.profile.clone(),
            endpoint_url: settings.endpoint_url.clone(),
        };
        Self::with_api(settings, Arc::new(SdkEc2::new(connection)))
    }

    /// The backend of these settings, talking to EC2 through `api`.
    pub fn with_api(settings: AwsSettings, api: Arc<dyn Ec2Api>) -> Self {
        Self {
            settings,
            api,
            timing: Timing::default(),
            runs: None,
            jobs: tokio::sync::OnceCell::new(),
            binaries: tokio::sync::OnceCell::new(),
        }
    }

    /// Let the backend run jobs, through this job store.
    #[must_use]
    pub fn with_runs(mut self, runs: RunSettings) -> Self {
        self.runs = Some(runs);
        self
    }

    #[must_use]
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    pub fn settings(&self) -> &AwsSettings {
        &self.settings
    }

    pub(crate) fn api(&self) -> &dyn Ec2Api {
        self.api.as_ref()
    }

    /// The configured regions (or the default region when none is configured).
    pub async fn regions(&self) -> Vec<String> {
        if self.settings.regions.is_empty() {
            vec![self.api.default_region().await]
        } else {
            self.settings.regions.clone()
        }
    }

    /// The regions to look in for an object: the configured ones and `also`, without repeats.
    async fn search_regions(&self, also: &[String]) -> Vec<String> {
        let mut regions = self.regions().await;
        for region in also {
            if !regions.contains(region) {
                regions.push(region.clone());
            }
        }
        regions
    }

    /// The tags of a new object: dstack's own (`owner`, `Name`, labels), then the backend's,
    /// then the resource's; invalid ones are dropped with a warning.
    fn tags(
        &self,
        labels: &BTreeMap<String, String>,
        name: &str,
        resource: Option<&BTreeMap<String, String>>,
    ) -> BTreeMap<String, String> {
        let mut tags = BTreeMap::from([
            ("owner".to_string(), "dstack".to_string()),
            ("Name".to_string(), name.to_string()),
        ]);
        for (key, value) in labels {
            tags.insert(label_to_tag(key), value.clone());
        }
        for (key, value) in self
            .settings
            .tags
            .iter()
            .chain(resource.into_iter().flatten())
        {
            if !valid_tag(key, value) {
                tracing::warn!("the tag `{key}` is not valid on AWS; it is not set");
                continue;
            }
            tags.entry(key.clone()).or_insert_with(|| value.clone());
        }
        tags
    }

    /// Call `check` until it returns a value, pausing longer each time, for at most `timeout`.
    /// Transient errors while waiting are tolerated.
    async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, BackendError>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = self.timing.poll;
        loop {
            match check().await {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(error) if error.is_retryable() => tracing::debug!("{what}: {error}"),
                Err(error) => return Err(error),
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(BackendError::new(
                    ErrorKind::Internal,
                    format!("timed out after {}s {what}", timeout.as_secs()),
                )
                .with_hint("look at it in the AWS console; `dstack apply` again picks up where this stopped"));
            }
            tracing::debug!("{what}: waiting {}ms", pause.as_millis());
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

/// The region an object was recorded in, else the one its spec names.
fn recorded_region(record: &ResourceRecord) -> Option<String> {
    record
        .attributes
        .get("region")
        .and_then(Json::as_str)
        .map(str::to_string)
        .or_else(|| {
            record
                .spec
                .get("region")
                .and_then(Json::as_str)
                .map(str::to_string)
        })
}

/// A backend error from an AWS error, for `what`.
fn aws(what: &str) -> impl Fn(AwsError) -> BackendError + '_ {
    move |error| to_backend(what, &error)
}

#[async_trait::async_trait]
impl Backend for AwsBackend {
    fn name(&self) -> &'static str {
        "aws"
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
            Kind::Volume => volumes::read(self, record).await,
            Kind::Fleet => fleets::read(self, record).await,
            // A run resource is its runs, which `run_read` reads.
            Kind::Run => Ok(Some(Observed {
                backend_id: record.backend_id.clone(),
                status: record.status.clone(),
                ..Observed::default()
            })),
            Kind::Tag => Err(not_an_object()),
        }
    }

    async fn create(&self, request: &Request) -> Result<Observed, BackendError> {
        match &request.spec {
            Spec::Volume(volume) => volumes::create(self, request, volume).await,
            Spec::Fleet(fleet) => fleets::create(self, request, fleet).await,
            Spec::Run(run) => runs::submit(self, request, run).await,
            Spec::Tag(_) => Err(not_an_object()),
        }
    }

    async fn update(
        &self,
        request: &Request,
        record: &ResourceRecord,
    ) -> Result<Observed, BackendError> {
        match &request.spec {
            Spec::Volume(volume) => volumes::update(self, request, volume, record).await,
            Spec::Fleet(fleet) => fleets::update(self, request, fleet, record).await,
            Spec::Run(_) => Err(BackendError::new(
                ErrorKind::Internal,
                "a run is submitted anew, never updated",
            )),
            Spec::Tag(_) => Err(not_an_object()),
        }
    }

    async fn delete(&self, record: &ResourceRecord) -> Result<(), BackendError> {
        match record.kind {
            Kind::Volume => volumes::delete(self, record).await,
            Kind::Fleet => fleets::delete(self, record).await,
            // Runs end and are removed through `run_stop` and `run_remove`.
            Kind::Run => Ok(()),
            Kind::Tag => Err(not_an_object()),
        }
    }

    async fn find(&self, labels: &BTreeMap<String, String>) -> Result<Vec<Observed>, BackendError> {
        let mut tags: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (label_to_tag(k), v.clone()))
            .collect();
        tags.insert("owner".into(), "dstack".into());
        let kind = labels.get("dstack.kind").map(String::as_str);
        // Recovery asks by intent alone: a run is found through the job store's intents.
        if kind.is_none_or(|k| k == "run") {
            let runs = runs::find(self, labels).await?;
            if kind.is_some() || !runs.is_empty() {
                return Ok(runs);
            }
        }
        let mut found = Vec::new();
        for region in self.regions().await {
            if kind.is_none_or(|k| k == "volume") {
                found.extend(volumes::find(self, &region, &tags).await?);
            }
            if kind.is_none_or(|k| k == "fleet") {
                found.extend(fleets::find(self, &region, &tags).await?);
            }
        }
        Ok(found)
    }

    async fn run_read(&self, run: &RunRecord) -> Result<Option<RunObserved>, BackendError> {
        runs::read(self, run).await
    }

    async fn run_stop(&self, run: &RunRecord, abort: bool) -> Result<(), BackendError> {
        runs::stop(self, run, abort).await
    }

    async fn run_remove(&self, run: &RunRecord) -> Result<(), BackendError> {
        runs::remove(self, run).await
    }

    async fn run_logs(&self, run: &RunRecord, offset: u64) -> Result<(Vec<u8>, u64), BackendError> {
        runs::logs(self, run, offset).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_tags_convert_both_ways() {
        assert_eq!(label_to_tag("dstack.lineage"), "dstack_lineage");
        assert_eq!(label_to_tag("team"), "team");
        let tags = BTreeMap::from([
            ("dstack_name".to_string(), "data".to_string()),
            ("owner".to_string(), "dstack".to_string()),
        ]);
        assert_eq!(
            labels_of(&tags),
            BTreeMap::from([("dstack.name".to_string(), "data".to_string())])
        );
    }

    #[test]
    fn invalid_tags_are_recognized() {
        assert!(valid_tag("team", "ml"));
        assert!(valid_tag("cost-center:a/b=c+d@e", ""));
        assert!(!valid_tag("aws:reserved", "x"));
        assert!(!valid_tag("", "x"));
        assert!(!valid_tag("bad{key}", "x"));
        assert!(!valid_tag("k", &"v".repeat(257)));
    }

    #[test]
    fn dstack_tags_win_over_backend_and_resource_tags() {
        let backend = AwsBackend::new(AwsSettings {
            tags: BTreeMap::from([
                ("team".to_string(), "ml".to_string()),
                ("owner".to_string(), "someone".to_string()),
            ]),
            ..AwsSettings::default()
        });
        let labels = BTreeMap::from([("dstack.name".to_string(), "data".to_string())]);
        let resource = BTreeMap::from([
            ("team".to_string(), "other".to_string()),
            ("env".to_string(), "dev".to_string()),
            ("aws:x".to_string(), "y".to_string()),
        ]);
        let tags = backend.tags(&labels, "dstack-p-data", Some(&resource));
        assert_eq!(tags["owner"], "dstack");
        assert_eq!(tags["team"], "ml");
        assert_eq!(tags["env"], "dev");
        assert_eq!(tags["dstack_name"], "data");
        assert_eq!(tags["Name"], "dstack-p-data");
        assert!(!tags.contains_key("aws:x"));
    }
}
