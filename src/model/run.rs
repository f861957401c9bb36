//! Run configurations: `task`, `dev-environment` and `service`.
//!
//! A run document is read twice from the same mapping: once for the fields of its type
//! ([`TaskFields`], [`DevEnvironmentFields`], [`ServiceFields`]) and once for the fields every run
//! shares ([`RunCommon`]: image, commands' environment, resources, volumes, provisioning
//! parameters, and our `artifacts` and `deps`). The schema of each type is the union of both
//! halves with no other property allowed, so unknown keys are still errors.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize, Serializer};

use super::env::Env;
use super::lenient::{Count, Flag, Number, Percent, PositiveCount};
use super::mounts::{FileMapping, MountPoint, RepoSpec};
use super::ports::{PortMapping, ServicePort};
use super::profile::{
    BackendOptions, BackendType, CloudTags, CreationPolicy, EntityReference, InstanceSelector,
    PythonVersion, RegistryAuth, Retry, Schedule, Shell, SpotPolicy, StartupOrder, StopCriteria,
    UnixUser, UtilizationPolicy,
};
use super::quantity::{Duration, IdleDuration, OffDuration, Range, idle_duration, off_duration};
use super::raw::{Raw, deserialize_from_raw};
use super::resources::Resources;

/// Fields every run has.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunCommon {
    /// Docker image (default: `python:3.X-slim` on the local backend). Excludes `python`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// User in the container: `USER` or `USER:GROUP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UnixUser>,
    /// Run the container in privileged mode (default `false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Flag")]
    pub privileged: Option<Flag>,
    /// Image entrypoint override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Absolute working directory in the container (default `/workflow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Deprecated; has no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub home_dir: Option<String>,
    /// Credentials for a private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
    /// Python version of the default image (`3.9`–`3.15`). Excludes `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonVersion>,
    /// Install the CUDA compiler in the default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvcc: Option<Flag>,
    /// Clone only the current branch of the repo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_branch: Option<Flag>,
    /// Environment variables: `[KEY=VALUE, KEY]` or `{KEY: VALUE}`.
    #[serde(default, skip_serializing_if = "Env::is_empty")]
    pub env: Env,
    /// Shell for `commands`: `sh`, `bash`, or an absolute path (default `/bin/sh` with `image`, else `/bin/bash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Shell>,
    /// Required machine resources.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// Scheduling priority, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Percent>,
    /// Network volumes (`name:/path`) and instance volumes (`/host:/path`) to mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<MountPoint>,
    /// Docker-in-Docker (implies `privileged`). Excludes `image`, `python`, `nvcc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<Flag>,
    /// A repository to bring in (at most one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repos: Vec<RepoSpec>,
    /// Local files to copy in: `LOCAL[:PATH]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileMapping>,
    /// Expose the dstack server inside the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Flag")]
    pub dstack: Option<Flag>,
    /// Deprecated: commands run before `commands`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<String>,
    /// Backends the run may use, in order of preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<BackendType>>,
    /// Regions the run may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// Availability zones the run may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zones: Option<Vec<String>>,
    /// Instance types the run may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_types: Option<Vec<String>>,
    /// A capacity reservation to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    /// `spot`, `on-demand` (default) or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_policy: Option<SpotPolicy>,
    /// Retry on `no-capacity`, `interruption`, `error`: `true`, `false` or `{on_events, duration}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Stop the run after this long (`off` by default), e.g. `2h`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "off_duration"
    )]
    #[schemars(with = "Option<OffDuration>")]
    pub max_duration: Option<OffDuration>,
    /// Grace period of a stop before the run is killed (default `5m`), or `off`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "off_duration"
    )]
    #[schemars(with = "Option<OffDuration>")]
    pub stop_duration: Option<OffDuration>,
    /// Highest price per hour, in dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<Number>,
    /// `reuse` idle instances only, or `reuse-or-create` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_policy: Option<CreationPolicy>,
    /// Terminate an idle instance after this long (default `5m`), or `off`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "idle_duration"
    )]
    #[schemars(with = "Option<IdleDuration>")]
    pub idle_duration: Option<IdleDuration>,
    /// Stop the run when its GPUs stay under-used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_policy: Option<UtilizationPolicy>,
    /// Start order of the nodes of a multi-node task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_order: Option<StartupOrder>,
    /// When a multi-node task is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_criteria: Option<StopCriteria>,
    /// Start the run on a cron schedule (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Fleets the run may use: `NAME` or `PROJECT/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleets: Option<Vec<EntityReference>>,
    /// Instances the run may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub instances: Option<Vec<InstanceSelector>>,
    /// Cloud tags for the run's instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<CloudTags>,
    /// Backend-specific options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_options: Option<Vec<BackendOptions>>,
    /// Directories saved as the run's artifacts when it ends: `[{path, mount}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// Runs, tasks and tags whose artifacts this run needs: `[{run: NAME} | {task: NAME} | {tag: NAME}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<Dep>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// `artifacts` entry: a directory of the working directory saved when the run ends.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Artifact {
    /// Relative to the working directory, normalised (`./output/` → `output`).
    pub path: String,
    /// Save files while the run writes them, not only at the end.
    pub mount: bool,
}

impl Artifact {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let (path, mount) = match raw {
            Raw::Map(_) => {
                let mut fields = raw.fields("an artifact", &["path", "mount"])?;
                let path = fields
                    .take("path")
                    .and_then(|r| r.scalar_text())
                    .ok_or("an artifact needs `path`")?;
                let mount = fields
                    .take("mount")
                    .map(Flag::from_raw)
                    .transpose()?
                    .is_some_and(|f| f.0);
                (path, mount)
            }
            other => (
                other.scalar_text().ok_or_else(|| {
                    format!(
                        "expected an artifact path or `{{path, mount}}`, found {}",
                        other.describe()
                    )
                })?,
                false,
            ),
        };
        Ok(Self {
            path: normalize_relative(&path)?,
            mount,
        })
    }
}

/// Normalise a path that must stay inside the working directory.
pub fn normalize_relative(path: &str) -> Result<String, String> {
    if path.starts_with('/') || path.starts_with('~') {
        return Err(format!(
            "the artifact path `{path}` must be relative to the working directory"
        ));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!("the artifact path `{path}` must not contain `..`"));
    }
    if parts.is_empty() {
        return Err(format!(
            "the artifact path `{path}` names the working directory itself; name a directory in it"
        ));
    }
    Ok(parts.join("/"))
}

impl Serialize for Artifact {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("path", &self.path)?;
        if self.mount {
            map.serialize_entry("mount", &true)?;
        }
        map.end()
    }
}

deserialize_from_raw!(Artifact);

impl JsonSchema for Artifact {
    fn schema_name() -> Cow<'static, str> {
        "Artifact".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "string"},
                {"type": "object", "properties": {
                    "path": {"type": "string", "description": "A directory relative to the working directory"},
                    "mount": {"type": "boolean", "description": "Save files as they are written (checkpoints survive interruptions)"}
                }, "required": ["path"], "additionalProperties": false}
            ],
            "x-dstack-parse": "artifact",
            "x-dstack-expected": "an artifact like `output` or `{path: output, mount: true}`"
        })
    }
}

/// A dependency whose artifacts are placed in the working directory before the run starts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dep {
    /// That exact run (`train-3`), or a run resource's latest run (`train`).
    Run(String),
    /// That task's latest `done` run.
    Task(String),
    /// The run a tag points at.
    Tag(String),
}

impl Dep {
    pub fn name(&self) -> &str {
        match self {
            Self::Run(n) | Self::Task(n) | Self::Tag(n) => n,
        }
    }

    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let mut fields = raw.fields(
            "a dependency (`{run: NAME}`, `{task: NAME}` or `{tag: NAME}`)",
            &["run", "task", "tag"],
        )?;
        let run = fields.take("run").and_then(|r| r.scalar_text());
        let task = fields.take("task").and_then(|r| r.scalar_text());
        let tag = fields.take("tag").and_then(|r| r.scalar_text());
        match (run, task, tag) {
            (Some(n), None, None) => Ok(Self::Run(n)),
            (None, Some(n), None) => Ok(Self::Task(n)),
            (None, None, Some(n)) => Ok(Self::Tag(n)),
            _ => Err("a dependency names exactly one of `run`, `task` or `tag`".into()),
        }
    }
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Run(n) => write!(f, "run/{n}"),
            Self::Task(n) => write!(f, "task/{n}"),
            Self::Tag(n) => write!(f, "tag/{n}"),
        }
    }
}

impl Serialize for Dep {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Self::Run(n) => map.serialize_entry("run", n)?,
            Self::Task(n) => map.serialize_entry("task", n)?,
            Self::Tag(n) => map.serialize_entry("tag", n)?,
        }
        map.end()
    }
}

deserialize_from_raw!(Dep);

impl JsonSchema for Dep {
    fn schema_name() -> Cow<'static, str> {
        "Dep".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "properties": {
                "run": {"type": "string", "description": "A run (`train-3`) or a run resource's latest run (`train`)"},
                "task": {"type": "string", "description": "A task's latest `done` run"},
                "tag": {"type": "string", "description": "The run a tag points at"}
            },
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": false,
            "x-dstack-parse": "dep",
            "x-dstack-expected": "`{run: NAME}`, `{task: NAME}` or `{tag: NAME}`"
        })
    }
}

/// A node group of a multi-node task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeGroup {
    /// Group name (default: its index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Number of nodes (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<PositiveCount>,
    /// Resources of each node of the group.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
}

/// Fields of `type: task`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskFields {
    /// Number of nodes of a distributed task (default 1). Excludes `groups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<PositiveCount>,
    /// Node groups with their own resources and commands. Excludes `nodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<NodeGroup>>,
    /// Ports to publish: `8080`, `80:8080`, `*:8080`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// Shell commands to run; `cmd &` runs in the background until the last command ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

/// Editors a dev environment can open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ide {
    Vscode,
    Cursor,
    Windsurf,
    Zed,
}

/// Fields of `type: dev-environment`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DevEnvironmentFields {
    /// The editor to install (needs the internet); without it, the environment is reached by `dstack attach`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ide: Option<Ide>,
    /// Version of the editor server (needs `ide`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Commands run when the environment starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init: Vec<String>,
    /// Stop the environment after this long without an attached user, or `off`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "off_duration"
    )]
    #[schemars(with = "Option<OffDuration>")]
    pub inactivity_duration: Option<OffDuration>,
    /// Ports to publish: `8080`, `80:8080`, `*:8080`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
}

/// `gateway` of a service: `true`/`false`, or a gateway name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewaySetting {
    Enabled(bool),
    Named(EntityReference),
}

impl GatewaySetting {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        if let Ok(flag) = Flag::from_raw(raw.clone()) {
            return Ok(Self::Enabled(flag.0));
        }
        EntityReference::from_raw(raw).map(Self::Named)
    }
}

impl Serialize for GatewaySetting {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Enabled(b) => serializer.serialize_bool(*b),
            Self::Named(reference) => reference.serialize(serializer),
        }
    }
}

deserialize_from_raw!(GatewaySetting);

impl JsonSchema for GatewaySetting {
    fn schema_name() -> Cow<'static, str> {
        "GatewaySetting".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [{"type": ["boolean", "string", "number"]}, {"type": "object"}],
            "x-dstack-parse": "gateway",
            "x-dstack-expected": "`true`, `false`, a gateway name or `PROJECT/NAME`"
        })
    }
}

/// `https` of a service: `true`, `false` or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Https {
    On(bool),
    Auto,
}

impl Https {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        if raw == Raw::Str("auto".into()) {
            return Ok(Self::Auto);
        }
        Flag::from_raw(raw)
            .map(|f| Self::On(f.0))
            .map_err(|_| "expected `true`, `false` or `auto`".into())
    }
}

impl Serialize for Https {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::On(b) => serializer.serialize_bool(*b),
            Self::Auto => serializer.serialize_str("auto"),
        }
    }
}

deserialize_from_raw!(Https);

impl JsonSchema for Https {
    fn schema_name() -> Cow<'static, str> {
        "Https".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [{"type": "boolean"}, {"type": "string"}, {"type": "integer"}],
            "x-dstack-parse": "https",
            "x-dstack-expected": "`true`, `false` or `auto`"
        })
    }
}

/// The model a service serves: a name (OpenAI-compatible chat at `/v1`) or a mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceModel {
    pub name: String,
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token: Option<String>,
}

impl ServiceModel {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Str(name) => Ok(Self {
                name,
                format: "openai".into(),
                prefix: Some("/v1".into()),
                chat_template: None,
                eos_token: None,
            }),
            Raw::Map(_) => {
                let mut fields = raw.fields(
                    "a model",
                    &[
                        "type",
                        "name",
                        "format",
                        "prefix",
                        "chat_template",
                        "eos_token",
                    ],
                )?;
                let mut text = |key: &str| fields.take(key).and_then(|r| r.scalar_text());
                let kind = text("type");
                if kind.as_deref().is_some_and(|k| k != "chat") {
                    return Err("a model's `type` must be `chat`".into());
                }
                let format = text("format").ok_or("a model needs `format`: `openai` or `tgi`")?;
                let name = text("name").ok_or("a model needs `name`")?;
                let prefix = text("prefix");
                let chat_template = text("chat_template");
                let eos_token = text("eos_token");
                match format.as_str() {
                    "openai" => {
                        if chat_template.is_some() || eos_token.is_some() {
                            return Err(
                                "`chat_template` and `eos_token` are only for `format: tgi`".into(),
                            );
                        }
                        Ok(Self {
                            name,
                            format,
                            prefix: Some(prefix.unwrap_or_else(|| "/v1".into())),
                            chat_template,
                            eos_token,
                        })
                    }
                    "tgi" => {
                        if prefix.is_some() {
                            return Err("`prefix` is only for `format: openai`".into());
                        }
                        Ok(Self {
                            name,
                            format,
                            prefix: None,
                            chat_template,
                            eos_token,
                        })
                    }
                    other => Err(format!(
                        "unknown model format `{other}`: expected `openai` or `tgi`"
                    )),
                }
            }
            other => Err(format!(
                "expected a model name or mapping, found {}",
                other.describe()
            )),
        }
    }
}

deserialize_from_raw!(ServiceModel);

impl JsonSchema for ServiceModel {
    fn schema_name() -> Cow<'static, str> {
        "ServiceModel".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "string"},
                {"type": "object", "properties": {
                    "type": {"const": "chat"},
                    "name": {"type": "string"},
                    "format": {"enum": ["openai", "tgi"]},
                    "prefix": {"type": "string"},
                    "chat_template": {"type": ["string", "null"]},
                    "eos_token": {"type": ["string", "null"]}
                }, "required": ["name", "format"], "additionalProperties": false}
            ],
            "x-dstack-parse": "model",
            "x-dstack-expected": "a model name or `{name, format}`"
        })
    }
}

/// Autoscaling of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// The metric: `rps` (requests per second per replica).
    pub metric: ScalingMetric,
    /// Target value of the metric (greater than 0).
    pub target: Number,
    /// Averaging window: `30s`, `60s` (default) or `300s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// Delay before scaling up (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Duration")]
    pub scale_up_delay: Option<Duration>,
    /// Delay before scaling down (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Duration")]
    pub scale_down_delay: Option<Duration>,
}

/// Scaling metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScalingMetric {
    Rps,
}

/// Probe HTTP methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Delete,
    Patch,
    Head,
}

/// Probe types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProbeType {
    Http,
}

/// An HTTP header of a probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    #[schemars(length(min = 1, max = 2048))]
    pub value: String,
}

/// A readiness probe of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    #[serde(rename = "type")]
    pub probe_type: ProbeType,
    /// Path to request, starting with `/` (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// HTTP method (default `get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub body: Option<String>,
    /// Request timeout (default `10s`, at least `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Time between probes (default `15s`, at least `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Successes in a row before the replica counts as ready (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_after: Option<PositiveCount>,
    /// Stop probing once ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ready: Option<Flag>,
}

/// The key rate limits are counted by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RateLimitKey {
    IpAddress,
    Header {
        #[schemars(regex(pattern = r"^[a-zA-Z0-9-_]+$"), length(max = 500))]
        header: String,
    },
}

/// A rate limit on a path prefix of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Path prefix (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", regex(pattern = r"^/[^\s\\{}]*$"), length(max = 4094))]
    pub prefix: Option<String>,
    /// What requests are counted by (default the client IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "RateLimitKey")]
    pub key: Option<RateLimitKey>,
    /// Requests per second (at least 1/60).
    pub rps: Number,
    /// Burst size (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Count")]
    pub burst: Option<Count>,
}

/// A router of a replica group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Router {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub router_type: Option<RouterType>,
}

/// Router kinds (`sglang` is another name of `smg`, as in dstack).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterType {
    #[serde(alias = "sglang")]
    Smg,
    Dynamo,
}

impl JsonSchema for RouterType {
    fn schema_name() -> Cow<'static, str> {
        "RouterType".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Router kinds (`sglang` is another name of `smg`).",
            "enum": ["smg", "dynamo", "sglang"]
        })
    }
}

/// A replica group of a service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaGroup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Number of replicas, or a range with `scaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Range<i64>>,
    /// An alias of `replicas`.
    #[serde(default, skip_serializing)]
    pub count: Option<Range<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_policy: Option<SpotPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvcc: Option<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<Router>,
}

impl ReplicaGroup {
    /// `replicas`, or its alias `count`.
    pub fn replica_range(&self) -> Option<Range<i64>> {
        self.replicas.or(self.count)
    }
}

/// `replicas` of a service: a count or range, or (legacy) a list of replica groups.
#[derive(Clone, Debug, PartialEq)]
pub enum Replicas {
    Range(Range<i64>),
    Groups(Vec<ReplicaGroup>),
}

impl Serialize for Replicas {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Range(range) => range.serialize(serializer),
            Self::Groups(groups) => groups.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Replicas {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Groups(Vec<ReplicaGroup>),
            Range(Range<i64>),
        }
        match Either::deserialize(deserializer)? {
            Either::Groups(groups) => Ok(Self::Groups(groups)),
            Either::Range(range) => Ok(Self::Range(range)),
        }
    }
}

impl JsonSchema for Replicas {
    fn schema_name() -> Cow<'static, str> {
        "Replicas".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let range = generator.subschema_for::<Range<i64>>();
        let group = generator.subschema_for::<ReplicaGroup>();
        json_schema!({
            "anyOf": [range, {"type": "array", "items": group}]
        })
    }
}

/// Fields of `type: service`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceFields {
    /// The port the service listens on: `8000`, or `LOCAL:CONTAINER`.
    pub port: ServicePort,
    /// Use a gateway: `true`, `false`, or a gateway name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySetting>,
    /// Strip the service path prefix before forwarding (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Flag")]
    pub strip_prefix: Option<Flag>,
    /// The model the service serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ServiceModel>,
    /// Serve over HTTPS: `true`, `false` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<Https>,
    /// Require authorization (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Flag")]
    pub auth: Option<Flag>,
    /// Autoscaling rules (with a `replicas` range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,
    /// Rate limits per path prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    /// Readiness probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Vec<Probe>>,
    /// Number of replicas (default 1), or a range with `scaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
    /// Replica groups. Excludes `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<ReplicaGroup>>,
    /// Shell commands to run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

impl ServiceFields {
    /// The replica range: `replicas`, or 1 when unset.
    pub fn replica_range(&self) -> Range<i64> {
        match &self.replicas {
            Some(Replicas::Range(range)) => Range {
                min: Some(range.min.unwrap_or(0)),
                max: range.max,
            },
            _ => Range::exactly(1),
        }
    }

    /// Groups given as `groups`, or as a legacy `replicas` list.
    pub fn replica_groups(&self) -> Option<&[ReplicaGroup]> {
        match (&self.groups, &self.replicas) {
            (Some(groups), _) | (None, Some(Replicas::Groups(groups))) => Some(groups),
            _ => None,
        }
    }
}

/// The type-specific part of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RunFields {
    Task(TaskFields),
    DevEnvironment(DevEnvironmentFields),
    Service(Box<ServiceFields>),
}

/// A run configuration: its type's fields plus the common ones.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSpec {
    #[serde(flatten)]
    pub fields: RunFields,
    #[serde(flatten)]
    pub common: RunCommon,
}

/// The type of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunType {
    Task,
    DevEnvironment,
    Service,
}

impl RunType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::DevEnvironment => "dev-environment",
            Self::Service => "service",
        }
    }
}

impl fmt::Display for RunType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RunSpec {
    pub fn run_type(&self) -> RunType {
        match self.fields {
            RunFields::Task(_) => RunType::Task,
            RunFields::DevEnvironment(_) => RunType::DevEnvironment,
            RunFields::Service(_) => RunType::Service,
        }
    }

    /// The commands the run executes (`init` for a dev environment).
    pub fn commands(&self) -> &[String] {
        match &self.fields {
            RunFields::Task(t) => &t.commands,
            RunFields::DevEnvironment(d) => &d.init,
            RunFields::Service(s) => &s.commands,
        }
    }

    /// Published ports (a service publishes its `port`).
    pub fn ports(&self) -> Vec<PortMapping> {
        match &self.fields {
            RunFields::Task(t) => t.ports.clone(),
            RunFields::DevEnvironment(d) => d.ports.clone(),
            RunFields::Service(s) => vec![PortMapping {
                local_port: s.port.local_port,
                container_port: s.port.container_port,
            }],
        }
    }
}
