//! The EC2 calls the aws backend makes, behind one narrow trait.
//!
//! [`Ec2Api`] speaks in plain data ([`VolumeInfo`], [`InstanceInfo`], ...) and plain errors
//! ([`AwsError`]: the AWS error code, its message and the HTTP status), so that tests can wrap
//! the real implementation and inject the errors moto cannot produce (capacity, zone mismatch,
//! throttling). [`SdkEc2`] is the real implementation on `aws-sdk-ec2`: one client per region,
//! created on first use with the connection settings of the backend (never the instance
//! metadata service, see [`crate::aws`]).

use std::collections::BTreeMap;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types as ec2;
use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use super::errors::AwsError;

/// Which objects a describe call returns: these ids (all when empty), matching every filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub ids: Vec<String>,
    /// `(name, values)`: `tag:dstack_name`, `instance-state-name`, `vpc-id`, ...
    pub filters: Vec<(String, Vec<String>)>,
}

impl Query {
    pub fn ids(ids: impl IntoIterator<Item = String>) -> Self {
        Self {
            ids: ids.into_iter().collect(),
            filters: Vec::new(),
        }
    }

    #[must_use]
    pub fn filter(mut self, name: impl Into<String>, values: &[&str]) -> Self {
        self.filters.push((
            name.into(),
            values.iter().map(|v| (*v).to_string()).collect(),
        ));
        self
    }

    /// Objects carrying every one of these tags.
    pub fn tagged(tags: &BTreeMap<String, String>) -> Self {
        Self {
            ids: Vec::new(),
            filters: tags
                .iter()
                .map(|(k, v)| (format!("tag:{k}"), vec![v.clone()]))
                .collect(),
        }
    }
}

/// One attachment of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub instance_id: String,
    pub device: String,
    /// `attaching`, `attached`, `detaching`, `detached`.
    pub state: String,
}

/// An EBS volume.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeInfo {
    pub id: String,
    pub size_gib: i32,
    pub availability_zone: String,
    /// `creating`, `available`, `in-use`, `deleting`, `deleted`, `error`.
    pub state: String,
    pub volume_type: String,
    pub tags: BTreeMap<String, String>,
    pub attachments: Vec<Attachment>,
    pub created_at: Option<DateTime<Utc>>,
}

/// What a new volume is.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeCreate {
    pub availability_zone: String,
    pub size_gib: i32,
    pub tags: BTreeMap<String, String>,
    /// Makes a retried call idempotent.
    pub client_token: Option<String>,
}

/// An EC2 instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceInfo {
    pub id: String,
    pub instance_type: String,
    /// `pending`, `running`, `shutting-down`, `terminated`, `stopping`, `stopped`.
    pub state: String,
    pub availability_zone: String,
    pub spot: bool,
    pub tags: BTreeMap<String, String>,
    pub launched_at: Option<DateTime<Utc>>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    /// Why it changed state (`Server.SpotInstanceTermination: ...`), when AWS says.
    pub state_reason: Option<String>,
}

impl InstanceInfo {
    /// Pending or running: an instance that counts as a node.
    pub fn is_live(&self) -> bool {
        matches!(self.state.as_str(), "pending" | "running")
    }
}

/// What to launch.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub instance_type: String,
    pub image_id: String,
    pub availability_zone: String,
    /// Launch into this subnet (its zone is `availability_zone`); default: the default VPC.
    pub subnet_id: Option<String>,
    /// A spot instance (one-time, terminated on interruption).
    pub spot: bool,
    /// Highest spot price per hour, in dollars (AWS's default is the on-demand price).
    pub max_price: Option<f64>,
    /// Root volume: device name and size.
    pub root_device: String,
    pub root_size_gib: i32,
    pub tags: BTreeMap<String, String>,
    /// Makes a retried call idempotent.
    pub client_token: Option<String>,
    /// The boot script (plain text; encoded for EC2 here).
    pub user_data: Option<String>,
    /// A shutdown from inside the instance terminates it (a run's instance ends with its run).
    pub shutdown_terminates: bool,
    /// The IAM instance profile (name) whose role the instance's software acts as.
    pub instance_profile: Option<String>,
}

/// Standard base64 with padding, as EC2 takes user data.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One GPU model of an instance type.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuInfo {
    pub name: String,
    pub manufacturer: String,
    pub count: i64,
    pub memory_mib: i64,
}

/// An instance type.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceTypeInfo {
    pub name: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    /// `x86_64`, `arm64`, ...
    pub architectures: Vec<String>,
    pub gpus: Vec<GpuInfo>,
    pub spot_supported: bool,
}

impl InstanceTypeInfo {
    pub fn gpu_count(&self) -> i64 {
        self.gpus.iter().map(|g| g.count).sum()
    }
}

/// A machine image.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageInfo {
    pub id: String,
    pub name: String,
    /// ISO 8601, as AWS reports it (sorts by time).
    pub creation_date: String,
    pub root_device: String,
}

/// A subnet.
#[derive(Clone, Debug, PartialEq)]
pub struct SubnetInfo {
    pub id: String,
    pub availability_zone: String,
    pub vpc_id: String,
}

/// The EC2 operations of the aws backend. Every method is one AWS call (or one paginated
/// listing) in one region.
#[async_trait::async_trait]
pub trait Ec2Api: Send + Sync {
    /// The region to use when the backend configures none (environment, profile, `us-east-1`).
    async fn default_region(&self) -> String;

    /// Names of the available zones of a region, in AWS's order.
    async fn availability_zones(&self, region: &str) -> Result<Vec<String>, AwsError>;

    async fn create_volume(
        &self,
        region: &str,
        request: &VolumeCreate,
    ) -> Result<VolumeInfo, AwsError>;

    async fn describe_volumes(
        &self,
        region: &str,
        query: &Query,
    ) -> Result<Vec<VolumeInfo>, AwsError>;

    async fn modify_volume_size(
        &self,
        region: &str,
        volume_id: &str,
        size_gib: i32,
    ) -> Result<(), AwsError>;

    async fn delete_volume(&self, region: &str, volume_id: &str) -> Result<(), AwsError>;

    async fn attach_volume(
        &self,
        region: &str,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<(), AwsError>;

    /// Detach from one instance (moto needs the instance id; AWS accepts it too).
    async fn detach_volume(
        &self,
        region: &str,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), AwsError>;

    async fn create_tags(
        &self,
        region: &str,
        ids: &[String],
        tags: &BTreeMap<String, String>,
    ) -> Result<(), AwsError>;

    async fn delete_tags(
        &self,
        region: &str,
        ids: &[String],
        keys: &[String],
    ) -> Result<(), AwsError>;

    /// Launch exactly one instance.
    async fn run_instance(&self, region: &str, launch: &Launch) -> Result<InstanceInfo, AwsError>;

    async fn describe_instances(
        &self,
        region: &str,
        query: &Query,
    ) -> Result<Vec<InstanceInfo>, AwsError>;

    async fn terminate_instances(&self, region: &str, ids: &[String]) -> Result<(), AwsError>;

    /// These instance types (unknown names are an `InvalidInstanceType` error).
    async fn describe_instance_types(
        &self,
        region: &str,
        names: &[String],
    ) -> Result<Vec<InstanceTypeInfo>, AwsError>;

    /// `(instance type, zone)` for every zone of the region that offers one of these types.
    async fn instance_type_offerings(
        &self,
        region: &str,
        names: &[String],
    ) -> Result<Vec<(String, String)>, AwsError>;

    /// Available images whose name matches `name` (wildcards allowed), of `owner`, for `arch`.
    async fn describe_images(
        &self,
        region: &str,
        name: &str,
        owner: &str,
        arch: &str,
    ) -> Result<Vec<ImageInfo>, AwsError>;

    async fn describe_subnets(
        &self,
        region: &str,
        query: &Query,
    ) -> Result<Vec<SubnetInfo>, AwsError>;
}

/// Where [`SdkEc2`] gets its SDK configuration.
enum Source {
    /// Loaded per region from the standard chain, with this profile and endpoint.
    Connection(crate::aws::Connection),
    /// This configuration, with each call's region.
    Config(Box<aws_config::SdkConfig>),
}

/// The real EC2, through `aws-sdk-ec2`.
pub struct SdkEc2 {
    source: Source,
    clients: Mutex<BTreeMap<String, aws_sdk_ec2::Client>>,
}

impl SdkEc2 {
    /// Clients connect with the profile and endpoint of `connection` (its region is ignored:
    /// every call names its region).
    pub fn new(connection: crate::aws::Connection) -> Self {
        Self {
            source: Source::Connection(connection),
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    /// Clients made from a ready SDK configuration (credentials, endpoint), with each call's
    /// region; for embedding and tests.
    pub fn with_config(config: aws_config::SdkConfig) -> Self {
        Self {
            source: Source::Config(Box::new(config)),
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    async fn client(&self, region: &str) -> aws_sdk_ec2::Client {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(region) {
            return client.clone();
        }
        let client = match &self.source {
            Source::Connection(connection) => {
                let connection = crate::aws::Connection {
                    region: Some(region.to_string()),
                    ..connection.clone()
                };
                aws_sdk_ec2::Client::new(&crate::aws::load(&connection).await)
            }
            Source::Config(config) => aws_sdk_ec2::Client::from_conf(
                aws_sdk_ec2::config::Builder::from(config.as_ref())
                    .region(aws_config::Region::new(region.to_string()))
                    .build(),
            ),
        };
        clients.insert(region.to_string(), client.clone());
        client
    }
}

type HttpResponse = aws_sdk_ec2::config::http::HttpResponse;

/// An SDK error as an [`AwsError`]: the AWS code when the service answered, else the kind of
/// failure (`DispatchFailure`, `TimeoutError`, ...).
// By value, so that it reads `.map_err(sdk_error)` at every call.
#[allow(clippy::needless_pass_by_value)]
fn sdk_error<E>(error: SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let (code, message) = match &error {
        SdkError::ServiceError(_) => (
            error.code().unwrap_or("Unknown").to_string(),
            error.message().unwrap_or_default().to_string(),
        ),
        SdkError::TimeoutError(_) => ("TimeoutError".into(), "the request timed out".into()),
        SdkError::DispatchFailure(_) => (
            "DispatchFailure".into(),
            aws_sdk_ec2::error::DisplayErrorContext(&error).to_string(),
        ),
        SdkError::ResponseError(_) => (
            "ResponseError".into(),
            aws_sdk_ec2::error::DisplayErrorContext(&error).to_string(),
        ),
        _ => (
            "ConstructionFailure".into(),
            aws_sdk_ec2::error::DisplayErrorContext(&error).to_string(),
        ),
    };
    AwsError {
        code,
        message,
        status,
    }
}

fn filters(query: &Query) -> Option<Vec<ec2::Filter>> {
    (!query.filters.is_empty()).then(|| {
        query
            .filters
            .iter()
            .map(|(name, values)| {
                ec2::Filter::builder()
                    .name(name)
                    .set_values(Some(values.clone()))
                    .build()
            })
            .collect()
    })
}

fn ids(query: &Query) -> Option<Vec<String>> {
    (!query.ids.is_empty()).then(|| query.ids.clone())
}

fn tag_map(tags: &[ec2::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn tag_specification(
    resource: ec2::ResourceType,
    tags: &BTreeMap<String, String>,
) -> ec2::TagSpecification {
    ec2::TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| ec2::Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .build()
}

fn time(value: Option<&aws_sdk_ec2::primitives::DateTime>) -> Option<DateTime<Utc>> {
    let value = value?;
    DateTime::from_timestamp(value.secs(), value.subsec_nanos())
}

fn volume_info(volume: &ec2::Volume) -> VolumeInfo {
    VolumeInfo {
        id: volume.volume_id().unwrap_or_default().to_string(),
        size_gib: volume.size().unwrap_or_default(),
        availability_zone: volume.availability_zone().unwrap_or_default().to_string(),
        state: volume
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        volume_type: volume
            .volume_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        tags: tag_map(volume.tags()),
        attachments: volume
            .attachments()
            .iter()
            .map(|a| Attachment {
                instance_id: a.instance_id().unwrap_or_default().to_string(),
                device: a.device().unwrap_or_default().to_string(),
                state: a
                    .state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            })
            .collect(),
        created_at: time(volume.create_time()),
    }
}

fn instance_info(instance: &ec2::Instance) -> InstanceInfo {
    InstanceInfo {
        id: instance.instance_id().unwrap_or_default().to_string(),
        instance_type: instance
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        state: instance
            .state()
            .and_then(|s| s.name())
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        availability_zone: instance
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_string(),
        // Read from the field: moto cannot filter on `instance-lifecycle`.
        spot: instance.instance_lifecycle() == Some(&ec2::InstanceLifecycleType::Spot),
        tags: tag_map(instance.tags()),
        launched_at: time(instance.launch_time()),
        private_ip: instance.private_ip_address().map(str::to_string),
        public_ip: instance.public_ip_address().map(str::to_string),
        state_reason: instance
            .state_reason()
            .and_then(|r| r.message())
            .map(str::to_string),
    }
}

fn instance_type_info(info: &ec2::InstanceTypeInfo) -> InstanceTypeInfo {
    InstanceTypeInfo {
        name: info
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        vcpus: info
            .v_cpu_info()
            .and_then(ec2::VCpuInfo::default_v_cpus)
            .map_or(0, i64::from),
        memory_mib: info
            .memory_info()
            .and_then(ec2::MemoryInfo::size_in_mib)
            .unwrap_or_default(),
        architectures: info
            .processor_info()
            .map(|p| {
                p.supported_architectures()
                    .iter()
                    .map(|a| a.as_str().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        gpus: info
            .gpu_info()
            .map(|g| {
                g.gpus()
                    .iter()
                    .map(|d| GpuInfo {
                        name: d.name().unwrap_or_default().to_string(),
                        manufacturer: d.manufacturer().unwrap_or_default().to_string(),
                        count: i64::from(d.count().unwrap_or_default()),
                        memory_mib: d
                            .memory_info()
                            .and_then(ec2::GpuDeviceMemoryInfo::size_in_mib)
                            .map_or(0, i64::from),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        spot_supported: info
            .supported_usage_classes()
            .contains(&ec2::UsageClassType::Spot),
    }
}

#[async_trait::async_trait]
impl Ec2Api for SdkEc2 {
    async fn default_region(&self) -> String {
        let region = match &self.source {
            Source::Connection(connection) => crate::aws::load(&crate::aws::Connection {
                region: None,
                ..connection.clone()
            })
            .await
            .region()
            .map(ToString::to_string),
            Source::Config(config) => config.region().map(ToString::to_string),
        };
        region.unwrap_or_else(|| "us-east-1".to_string())
    }

    async fn availability_zones(&self, region: &str) -> Result<Vec<String>, AwsError> {
        let output = self
            .client(region)
            .await
            .describe_availability_zones()
            .filters(
                ec2::Filter::builder()
                    .name("state")
                    .values("available")
                    .build(),
            )
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(output
            .availability_zones()
            .iter()
            .filter_map(|z| z.zone_name().map(str::to_string))
            .collect())
    }

    async fn create_volume(
        &self,
        region: &str,
        request: &VolumeCreate,
    ) -> Result<VolumeInfo, AwsError> {
        let output = self
            .client(region)
            .await
            .create_volume()
            .availability_zone(&request.availability_zone)
            .size(request.size_gib)
            .volume_type(ec2::VolumeType::Gp3)
            .tag_specifications(tag_specification(ec2::ResourceType::Volume, &request.tags))
            .set_client_token(request.client_token.clone())
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(VolumeInfo {
            id: output.volume_id().unwrap_or_default().to_string(),
            size_gib: output.size().unwrap_or(request.size_gib),
            availability_zone: output
                .availability_zone()
                .unwrap_or(&request.availability_zone)
                .to_string(),
            state: output
                .state()
                .map_or_else(|| "creating".to_string(), |s| s.as_str().to_string()),
            volume_type: output
                .volume_type()
                .map_or_else(|| "gp3".to_string(), |t| t.as_str().to_string()),
            tags: tag_map(output.tags()),
            attachments: Vec::new(),
            created_at: time(output.create_time()),
        })
    }

    async fn describe_volumes(
        &self,
        region: &str,
        query: &Query,
    ) -> Result<Vec<VolumeInfo>, AwsError> {
        let volumes = self
            .client(region)
            .await
            .describe_volumes()
            .set_volume_ids(ids(query))
            .set_filters(filters(query))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(sdk_error)?;
        Ok(volumes.iter().map(volume_info).collect())
    }

    async fn modify_volume_size(
        &self,
        region: &str,
        volume_id: &str,
        size_gib: i32,
    ) -> Result<(), AwsError> {
        self.client(region)
            .await
            .modify_volume()
            .volume_id(volume_id)
            .size(size_gib)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn delete_volume(&self, region: &str, volume_id: &str) -> Result<(), AwsError> {
        self.client(region)
            .await
            .delete_volume()
            .volume_id(volume_id)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn attach_volume(
        &self,
        region: &str,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<(), AwsError> {
        self.client(region)
            .await
            .attach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .device(device)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn detach_volume(
        &self,
        region: &str,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), AwsError> {
        self.client(region)
            .await
            .detach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .force(force)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn create_tags(
        &self,
        region: &str,
        ids: &[String],
        tags: &BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        if ids.is_empty() || tags.is_empty() {
            return Ok(());
        }
        self.client(region)
            .await
            .create_tags()
            .set_resources(Some(ids.to_vec()))
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| ec2::Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn delete_tags(
        &self,
        region: &str,
        ids: &[String],
        keys: &[String],
    ) -> Result<(), AwsError> {
        if ids.is_empty() || keys.is_empty() {
            return Ok(());
        }
        self.client(region)
            .await
            .delete_tags()
            .set_resources(Some(ids.to_vec()))
            .set_tags(Some(
                keys.iter()
                    .map(|k| ec2::Tag::builder().key(k).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn run_instance(&self, region: &str, launch: &Launch) -> Result<InstanceInfo, AwsError> {
        let mut request = self
            .client(region)
            .await
            .run_instances()
            .min_count(1)
            .max_count(1)
            .image_id(&launch.image_id)
            .instance_type(ec2::InstanceType::from(launch.instance_type.as_str()))
            .block_device_mappings(
                ec2::BlockDeviceMapping::builder()
                    .device_name(&launch.root_device)
                    .ebs(
                        ec2::EbsBlockDevice::builder()
                            .volume_size(launch.root_size_gib)
                            .volume_type(ec2::VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(tag_specification(ec2::ResourceType::Instance, &launch.tags))
            .tag_specifications(tag_specification(ec2::ResourceType::Volume, &launch.tags))
            .set_client_token(launch.client_token.clone())
            .set_user_data(launch.user_data.as_deref().map(|u| base64(u.as_bytes())));
        if launch.shutdown_terminates {
            request =
                request.instance_initiated_shutdown_behavior(ec2::ShutdownBehavior::Terminate);
        }
        if let Some(profile) = &launch.instance_profile {
            request = request.iam_instance_profile(
                ec2::IamInstanceProfileSpecification::builder()
                    .name(profile)
                    .build(),
            );
        }
        request = match &launch.subnet_id {
            Some(subnet) => request.subnet_id(subnet),
            None => request.placement(
                ec2::Placement::builder()
                    .availability_zone(&launch.availability_zone)
                    .build(),
            ),
        };
        if launch.spot {
            let mut spot = ec2::SpotMarketOptions::builder()
                .spot_instance_type(ec2::SpotInstanceType::OneTime)
                .instance_interruption_behavior(ec2::InstanceInterruptionBehavior::Terminate);
            if let Some(price) = launch.max_price {
                spot = spot.max_price(format!("{price:.4}"));
            }
            request = request.instance_market_options(
                ec2::InstanceMarketOptionsRequest::builder()
                    .market_type(ec2::MarketType::Spot)
                    .spot_options(spot.build())
                    .build(),
            );
        }
        let output = request.send().await.map_err(sdk_error)?;
        output
            .instances()
            .first()
            .map(instance_info)
            .ok_or_else(|| AwsError {
                code: "EmptyResponse".into(),
                message: "RunInstances returned no instance".into(),
                status: None,
            })
    }

    async fn describe_instances(
        &self,
        region: &str,
        query: &Query,
    ) -> Result<Vec<InstanceInfo>, AwsError> {
        let reservations = self
            .client(region)
            .await
            .describe_instances()
            .set_instance_ids(ids(query))
            .set_filters(filters(query))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(sdk_error)?;
        Ok(reservations
            .iter()
            .flat_map(ec2::Reservation::instances)
            .map(instance_info)
            .collect())
    }

    async fn terminate_instances(&self, region: &str, ids: &[String]) -> Result<(), AwsError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client(region)
            .await
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn describe_instance_types(
        &self,
        region: &str,
        names: &[String],
    ) -> Result<Vec<InstanceTypeInfo>, AwsError> {
        let client = self.client(region).await;
        let mut found = Vec::new();
        // The API takes at most 100 names per call.
        for chunk in names.chunks(100) {
            let types = client
                .describe_instance_types()
                .set_instance_types(Some(
                    chunk
                        .iter()
                        .map(|n| ec2::InstanceType::from(n.as_str()))
                        .collect(),
                ))
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(sdk_error)?;
            found.extend(types.iter().map(instance_type_info));
        }
        Ok(found)
    }

    async fn instance_type_offerings(
        &self,
        region: &str,
        names: &[String],
    ) -> Result<Vec<(String, String)>, AwsError> {
        let client = self.client(region).await;
        let mut found = Vec::new();
        for chunk in names.chunks(100) {
            let offerings = client
                .describe_instance_type_offerings()
                .location_type(ec2::LocationType::AvailabilityZone)
                .filters(
                    ec2::Filter::builder()
                        .name("instance-type")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(sdk_error)?;
            found.extend(offerings.iter().filter_map(|o| {
                Some((
                    o.instance_type()?.as_str().to_string(),
                    o.location()?.to_string(),
                ))
            }));
        }
        Ok(found)
    }

    async fn describe_images(
        &self,
        region: &str,
        name: &str,
        owner: &str,
        arch: &str,
    ) -> Result<Vec<ImageInfo>, AwsError> {
        let output = self
            .client(region)
            .await
            .describe_images()
            .owners(owner)
            .filters(ec2::Filter::builder().name("name").values(name).build())
            .filters(
                ec2::Filter::builder()
                    .name("state")
                    .values("available")
                    .build(),
            )
            .send()
            .await
            .map_err(sdk_error)?;
        // Architecture is checked here, not by a filter: an image registered without one (as
        // test doubles do) is taken as fitting.
        Ok(output
            .images()
            .iter()
            .filter(|i| i.architecture().is_none_or(|a| a.as_str() == arch))
            .map(|i| ImageInfo {
                id: i.image_id().unwrap_or_default().to_string(),
                name: i.name().unwrap_or_default().to_string(),
                creation_date: i.creation_date().unwrap_or_default().to_string(),
                root_device: i.root_device_name().unwrap_or("/dev/sda1").to_string(),
            })
            .collect())
    }

    async fn describe_subnets(
        &self,
        region: &str,
        query: &Query,
    ) -> Result<Vec<SubnetInfo>, AwsError> {
        let output = self
            .client(region)
            .await
            .describe_subnets()
            .set_subnet_ids(ids(query))
            .set_filters(filters(query))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(output
            .subnets()
            .iter()
            .map(|s| SubnetInfo {
                id: s.subnet_id().unwrap_or_default().to_string(),
                availability_zone: s.availability_zone().unwrap_or_default().to_string(),
                vpc_id: s.vpc_id().unwrap_or_default().to_string(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"#!/bin/sh\n"), "IyEvYmluL3NoCg==");
    }
}
