//! Provisioning parameters shared by runs and fleets (dstack's "profile"), and the small value
//! types they use: backends, spot policy, retry, schedules, cloud tags, references to fleets and
//! instances, Python versions, shells and users.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize, Serializer};

use super::lenient::{Flag, Int, Number, Percent};
use super::quantity::Duration;
use super::raw::{Raw, deserialize_from_raw};

/// A backend: where volumes, fleets and runs live.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendType {
    Amddevcloud,
    Aws,
    Azure,
    Cloudrift,
    Crusoe,
    Cudo,
    Datacrunch,
    Daytona,
    Digitalocean,
    Dstack,
    Gcp,
    Hotaisle,
    Jarvislabs,
    Kubernetes,
    Lambda,
    Lium,
    Remote,
    Nebius,
    Oci,
    Runpod,
    Seeweb,
    Tensordock,
    Vastai,
    Verda,
    Vultr,
    Slurm,
    /// This machine (Docker or host processes).
    Local,
    /// Tests only; accepted when `DSTACK_FAKE_BACKEND=1`.
    Fake,
    /// A pool of runners serving jobs queued in the remote artifact store (`dstack runner --pool`).
    Pool,
}

impl BackendType {
    /// Backends this tool implements.
    pub fn is_supported(self) -> bool {
        matches!(self, Self::Local | Self::Aws | Self::Fake | Self::Pool)
    }

    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

impl fmt::Display for BackendType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// Spot or on-demand instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SpotPolicy {
    Spot,
    OnDemand,
    Auto,
}

/// Whether a run may provision new instances or only reuse idle ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CreationPolicy {
    Reuse,
    ReuseOrCreate,
}

/// The order in which the nodes of a multi-node task start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StartupOrder {
    Any,
    MasterFirst,
    WorkersFirst,
}

/// When a multi-node task counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StopCriteria {
    AllDone,
    MasterDone,
}

/// Events that make a run retry.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RetryEvent {
    NoCapacity,
    Interruption,
    Error,
}

/// `retry`: `true` (all events, 1h), `false`, or `{on_events, duration}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Empty when retry is off.
    pub on_events: Vec<RetryEvent>,
    pub duration: Duration,
}

impl Retry {
    pub const DEFAULT_DURATION: Duration = Duration(3600);
    const ALL: [RetryEvent; 3] = [
        RetryEvent::NoCapacity,
        RetryEvent::Interruption,
        RetryEvent::Error,
    ];

    pub fn enabled(&self) -> bool {
        !self.on_events.is_empty()
    }

    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Map(_) => {
                let mut fields = raw.fields("a retry policy", &["on_events", "duration"])?;
                let on_events = match fields.take("on_events") {
                    None => Self::ALL.to_vec(),
                    Some(Raw::Seq(items)) => {
                        if items.is_empty() {
                            return Err(
                                "`on_events` cannot be empty; use `retry: false` to turn retry off"
                                    .into(),
                            );
                        }
                        items
                            .into_iter()
                            .map(|item| match item {
                                Raw::Str(s) => serde_json::from_value(serde_json::Value::String(s.clone())).map_err(|_| {
                                    format!("unknown retry event `{s}`: expected `no-capacity`, `interruption` or `error`")
                                }),
                                other => Err(format!("unknown retry event {}", other.describe())),
                            })
                            .collect::<Result<Vec<_>, _>>()?
                    }
                    Some(other) => {
                        return Err(format!(
                            "`on_events` must be a list, found {}",
                            other.describe()
                        ));
                    }
                };
                let duration = fields
                    .take("duration")
                    .map(Duration::from_raw)
                    .transpose()?
                    .unwrap_or(Self::DEFAULT_DURATION);
                Ok(Self {
                    on_events,
                    duration,
                })
            }
            other => {
                let on = Flag::from_raw(other).map_err(|_| {
                    "expected `true`, `false` or `{on_events, duration}`".to_string()
                })?;
                Ok(Self {
                    on_events: if on.0 { Self::ALL.to_vec() } else { Vec::new() },
                    duration: Self::DEFAULT_DURATION,
                })
            }
        }
    }
}

impl fmt::Display for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.enabled() {
            return f.write_str("off");
        }
        let events: Vec<String> = self
            .on_events
            .iter()
            .map(|e| {
                serde_json::to_value(e)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect();
        write!(f, "{}[{}]", self.duration, events.join(", "))
    }
}

impl Serialize for Retry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if !self.enabled() {
            return serializer.serialize_bool(false);
        }
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("on_events", &self.on_events)?;
        map.serialize_entry("duration", &self.duration)?;
        map.end()
    }
}

deserialize_from_raw!(Retry);

impl JsonSchema for Retry {
    fn schema_name() -> Cow<'static, str> {
        "Retry".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let event = generator.subschema_for::<RetryEvent>();
        json_schema!({
            "anyOf": [
                {"type": ["boolean", "string", "integer"]},
                {"type": "object", "properties": {
                    "on_events": {"type": ["array", "null"], "items": event, "minItems": 1},
                    "duration": {"type": ["integer", "string", "null"]}
                }, "additionalProperties": false}
            ],
            "x-dstack-parse": "retry",
            "x-dstack-expected": "`true`, `false` or `{on_events, duration}`"
        })
    }
}

/// Cloud tags: `key: value`, propagated to the backend's objects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CloudTags(pub BTreeMap<String, String>);

impl CloudTags {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let Raw::Map(entries) = raw else {
            return Err(format!(
                "expected a mapping of tag names to values, found {}",
                raw.describe()
            ));
        };
        let mut tags = BTreeMap::new();
        for (key, value) in entries {
            let key_ok = !key.is_empty()
                && key.chars().count() <= 60
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !key_ok {
                return Err(format!(
                    "invalid tag key `{key}`: use 1 to 60 letters, digits, `_` and `-`"
                ));
            }
            let Raw::Str(value) = value else {
                return Err(format!(
                    "the value of tag `{key}` must be text, found {}; quote it",
                    value.describe()
                ));
            };
            let value_ok = value.chars().count() <= 256
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || " .:/=_-+@".contains(c));
            if !value_ok {
                return Err(format!(
                    "invalid value `{value}` of tag `{key}`: use up to 256 letters, digits, spaces and `.:/=_-+@`"
                ));
            }
            tags.insert(key, value);
        }
        Ok(Self(tags))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

deserialize_from_raw!(CloudTags);

impl JsonSchema for CloudTags {
    fn schema_name() -> Cow<'static, str> {
        "CloudTags".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "propertyNames": {"pattern": "^[_\\-a-zA-Z0-9]{1,60}$"},
            "additionalProperties": {"type": "string", "pattern": "^[a-zA-Z0-9 .:/=_\\-+@]{0,256}$"},
            "x-dstack-parse": "cloud-tags",
            "x-dstack-expected": "a mapping of tag names to text values"
        })
    }
}

/// A reference to an object of this project or another: `name` or `project/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityReference {
    pub project: Option<String>,
    pub name: String,
}

impl EntityReference {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let invalid = || format!("invalid reference `{text}`: expected `NAME` or `PROJECT/NAME`");
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid());
        }
        match parts.as_slice() {
            [name] => Ok(Self {
                project: None,
                name: (*name).to_string(),
            }),
            [project, name] => Ok(Self {
                project: Some((*project).to_string()),
                name: (*name).to_string(),
            }),
            _ => Err(invalid()),
        }
    }

    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Map(_) => {
                let mut fields = raw.fields("a reference", &["project", "name"])?;
                let name = fields
                    .take("name")
                    .and_then(|r| r.scalar_text())
                    .ok_or("a reference needs `name`")?;
                let project = fields.take("project").and_then(|r| r.scalar_text());
                Ok(Self { project, name })
            }
            other => match other.scalar_text() {
                Some(text) => Self::parse(&text),
                None => Err(format!(
                    "expected `NAME` or `PROJECT/NAME`, found {}",
                    other.describe()
                )),
            },
        }
    }
}

impl fmt::Display for EntityReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.project {
            Some(project) => write!(f, "{project}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl Serialize for EntityReference {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

deserialize_from_raw!(EntityReference);

impl JsonSchema for EntityReference {
    fn schema_name() -> Cow<'static, str> {
        "EntityReference".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": ["string", "number"]},
                {"type": "object", "properties": {"project": {"type": ["string", "null"]}, "name": {"type": "string"}}, "required": ["name"], "additionalProperties": false}
            ],
            "x-dstack-parse": "entity-reference",
            "x-dstack-expected": "`NAME` or `PROJECT/NAME`"
        })
    }
}

/// An instance selector of `instances`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceSelector {
    Name(String),
    Hostname(String),
    FleetInstance {
        fleet: EntityReference,
        instance: i64,
    },
}

impl InstanceSelector {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let non_empty = |value: Option<Raw>, key: &str| -> Result<String, String> {
            value
                .and_then(|r| r.scalar_text())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("`{key}` must be at least 1 character"))
        };
        match raw {
            Raw::Map(ref entries) => {
                let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
                if keys.contains(&"hostname") {
                    let mut fields = raw.fields("an instance selector", &["hostname"])?;
                    Ok(Self::Hostname(non_empty(
                        fields.take("hostname"),
                        "hostname",
                    )?))
                } else if keys.contains(&"fleet") || keys.contains(&"instance") {
                    let mut fields = raw.fields("an instance selector", &["fleet", "instance"])?;
                    let fleet = EntityReference::from_raw(
                        fields
                            .take("fleet")
                            .ok_or("an instance selector needs `fleet`")?,
                    )?;
                    let instance = Int::<0, { i64::MAX }>::from_raw(
                        fields
                            .take("instance")
                            .ok_or("an instance selector needs `instance`")?,
                    )?;
                    Ok(Self::FleetInstance {
                        fleet,
                        instance: instance.0,
                    })
                } else {
                    let mut fields = raw.fields("an instance selector", &["name"])?;
                    Ok(Self::Name(non_empty(fields.take("name"), "name")?))
                }
            }
            // Only text names an instance: dstack does not read numbers as names here.
            Raw::Str(text) if !text.is_empty() => Ok(Self::Name(text)),
            Raw::Str(_) => Err("an instance name must be at least 1 character".into()),
            other => Err(format!(
                "expected an instance name or selector, found {}",
                other.describe()
            )),
        }
    }
}

impl Serialize for InstanceSelector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        match self {
            Self::Name(name) => map.serialize_entry("name", name)?,
            Self::Hostname(host) => map.serialize_entry("hostname", host)?,
            Self::FleetInstance { fleet, instance } => {
                map.serialize_entry("fleet", fleet)?;
                map.serialize_entry("instance", instance)?;
            }
        }
        map.end()
    }
}

deserialize_from_raw!(InstanceSelector);

impl JsonSchema for InstanceSelector {
    fn schema_name() -> Cow<'static, str> {
        "InstanceSelector".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": ["string", "number"]},
                {"type": "object", "properties": {"name": {"type": "string", "minLength": 1}}, "required": ["name"], "additionalProperties": false},
                {"type": "object", "properties": {"hostname": {"type": "string", "minLength": 1}}, "required": ["hostname"], "additionalProperties": false},
                {"type": "object", "properties": {"fleet": {"type": ["string", "object"]}, "instance": {"type": ["integer", "string"]}}, "required": ["fleet", "instance"], "additionalProperties": false}
            ],
            "x-dstack-parse": "instance-selector",
            "x-dstack-expected": "an instance name, `{hostname}` or `{fleet, instance}`"
        })
    }
}

/// `utilization_policy`: stop a run whose GPUs stay below a utilization for a time window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UtilizationPolicy {
    /// Minimum GPU utilization in percent.
    pub min_gpu_utilization: Percent,
    /// The time window (at least `5m`).
    pub time_window: Duration,
}

/// `schedule`: cron expressions (UTC) that start the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Schedule {
    pub cron: Vec<String>,
}

impl Schedule {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let mut fields = raw.fields("a schedule (`{cron: ...}`)", &["cron"])?;
        let cron = match fields.take("cron").ok_or("a schedule needs `cron`")? {
            Raw::Seq(items) => items
                .into_iter()
                .map(|i| {
                    i.scalar_text()
                        .ok_or_else(|| format!("invalid cron expression {}", i.describe()))
                })
                .collect::<Result<Vec<_>, _>>()?,
            other => vec![
                other
                    .scalar_text()
                    .ok_or_else(|| format!("invalid cron expression {}", other.describe()))?,
            ],
        };
        if cron.is_empty() {
            return Err("at least one cron expression must be given".into());
        }
        for expression in &cron {
            super::cron::check(expression)?;
        }
        Ok(Self { cron })
    }
}

deserialize_from_raw!(Schedule);

impl JsonSchema for Schedule {
    fn schema_name() -> Cow<'static, str> {
        "Schedule".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "properties": {"cron": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}], "description": "Cron expressions (UTC), e.g. `0 8 * * mon-fri`"}},
            "required": ["cron"],
            "additionalProperties": false,
            "x-dstack-parse": "schedule",
            "x-dstack-expected": "`{cron: EXPRESSION}` or `{cron: [EXPRESSIONS]}`"
        })
    }
}

/// Offer ordering for vast.ai.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VastAiOfferOrder {
    Score,
    Price,
}

/// The vast.ai marker of `backend_options` entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VastAiType {
    #[default]
    Vastai,
}

/// Backend-specific options (only vast.ai has any).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendOptions {
    #[serde(default, rename = "type")]
    pub backend: VastAiType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_order: Option<VastAiOfferOrder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_reliability: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<Int<0, { i64::MAX }>>,
}

/// Python version of the default image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PythonVersion(pub u8);

impl PythonVersion {
    pub const SUPPORTED: [u8; 7] = [9, 10, 11, 12, 13, 14, 15];
    /// The newest version dstack supports, used when a run names no image and no Python.
    pub const DEFAULT: Self = Self(12);

    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let text = match raw {
            Raw::Str(s) => s,
            // YAML reads `3.10` as the number 3.1; dstack maps it back, and so do we.
            Raw::Float(f) => super::raw::format_float(f),
            other => {
                return Err(format!(
                    "expected a Python version like `3.12`, found {}",
                    other.describe()
                ));
            }
        };
        let minor = match text.as_str() {
            "3.1" | "3.10" | "3.100" => Some(10),
            other => other
                .strip_prefix("3.")
                .and_then(|m| m.parse::<u8>().ok())
                .filter(|m| Self::SUPPORTED.contains(m) && m.to_string() == other[2..]),
        };
        minor.map(Self).ok_or_else(|| {
            let supported: Vec<String> =
                Self::SUPPORTED.iter().map(|m| format!("`3.{m}`")).collect();
            format!(
                "unsupported Python version `{text}`: expected one of {}",
                supported.join(", ")
            )
        })
    }
}

impl fmt::Display for PythonVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "3.{}", self.0)
    }
}

impl Serialize for PythonVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

deserialize_from_raw!(PythonVersion);

impl JsonSchema for PythonVersion {
    fn schema_name() -> Cow<'static, str> {
        "PythonVersion".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [{"enum": ["3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.15"]}, {"type": "number"}],
            "x-dstack-parse": "python",
            "x-dstack-expected": "a Python version from `3.9` to `3.15`"
        })
    }
}

/// The shell that runs `commands`: `sh`, `bash`, or an absolute path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shell(pub String);

impl Shell {
    // Every shorthand type takes `Raw` by value (see `deserialize_from_raw!`).
    #[allow(clippy::needless_pass_by_value)]
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let text = raw
            .scalar_text()
            .ok_or_else(|| format!("expected a shell, found {}", raw.describe()))?;
        if text == "sh" || text == "bash" || text.starts_with('/') {
            Ok(Self(text))
        } else {
            Err(format!(
                "invalid shell `{text}`: expected `sh`, `bash`, or an absolute path"
            ))
        }
    }
}

impl Serialize for Shell {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

deserialize_from_raw!(Shell);

impl JsonSchema for Shell {
    fn schema_name() -> Cow<'static, str> {
        "Shell".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "x-dstack-parse": "shell",
            "x-dstack-expected": "`sh`, `bash`, or an absolute path"
        })
    }
}

/// The user in the container: `name_or_uid[:group_or_gid]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixUser(pub String);

impl UnixUser {
    // Every shorthand type takes `Raw` by value (see `deserialize_from_raw!`).
    #[allow(clippy::needless_pass_by_value)]
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let text = raw
            .scalar_text()
            .ok_or_else(|| format!("expected a user, found {}", raw.describe()))?;
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() > 2 {
            return Err(format!(
                "invalid user `{text}`: expected `USER` or `USER:GROUP`"
            ));
        }
        for (part, what) in parts.iter().zip(["user name or id", "group name or id"]) {
            if part.is_empty() {
                return Err(format!("invalid user `{text}`: empty {what}"));
            }
            if super::lenient::parse_int_text(part).is_some_and(|id| id < 0) {
                return Err(format!("invalid user `{text}`: negative {what}"));
            }
        }
        Ok(Self(text))
    }
}

impl Serialize for UnixUser {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

deserialize_from_raw!(UnixUser);

impl JsonSchema for UnixUser {
    fn schema_name() -> Cow<'static, str> {
        "UnixUser".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "number"],
            "x-dstack-parse": "user",
            "x-dstack-expected": "`USER` or `USER:GROUP` (names or ids)"
        })
    }
}

/// Credentials of a private registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Raw {
        Raw::Str(text.into())
    }

    #[test]
    fn retry_forms() {
        assert_eq!(
            Retry::from_raw(Raw::Bool(true)).map(|r| r.on_events.len()),
            Ok(3)
        );
        assert_eq!(
            Retry::from_raw(Raw::Bool(false)).map(|r| r.enabled()),
            Ok(false)
        );
        assert_eq!(Retry::from_raw(s("yes")).map(|r| r.enabled()), Ok(true));
        let retry = Retry::from_raw(Raw::Map(vec![
            ("on_events".into(), Raw::Seq(vec![s("no-capacity")])),
            ("duration".into(), s("2h")),
        ]))
        .expect("valid");
        assert_eq!(retry.to_string(), "2h[no-capacity]");
        assert!(Retry::from_raw(Raw::Map(vec![("on_events".into(), Raw::Seq(vec![]))])).is_err());
        assert!(
            Retry::from_raw(Raw::Map(vec![(
                "on_events".into(),
                Raw::Seq(vec![s("oom")])
            )]))
            .is_err()
        );
    }

    #[test]
    fn entity_references() {
        assert_eq!(
            EntityReference::parse("gpu"),
            Ok(EntityReference {
                project: None,
                name: "gpu".into()
            })
        );
        assert_eq!(
            EntityReference::parse("p/gpu").map(|r| r.to_string()),
            Ok("p/gpu".into())
        );
        for bad in ["a/b/c", "", "a/", "/gw"] {
            assert!(EntityReference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cloud_tags() {
        let ok = Raw::Map(vec![
            ("team".into(), s("ml")),
            ("cost-center".into(), s("a/b:c")),
        ]);
        assert!(CloudTags::from_raw(ok).is_ok());
        assert!(CloudTags::from_raw(Raw::Map(vec![("bad key".into(), s("x"))])).is_err());
        assert!(CloudTags::from_raw(Raw::Map(vec![("k".into(), Raw::Int(1))])).is_err());
        assert!(CloudTags::from_raw(Raw::Map(vec![("k".into(), s("ü"))])).is_err());
        assert!(CloudTags::from_raw(Raw::Seq(vec![s("a")])).is_err());
    }

    #[test]
    fn python_versions() {
        assert_eq!(
            PythonVersion::from_raw(Raw::Float(3.1)),
            Ok(PythonVersion(10))
        );
        assert_eq!(PythonVersion::from_raw(s("3.10")), Ok(PythonVersion(10)));
        assert_eq!(PythonVersion::from_raw(s("3.12")), Ok(PythonVersion(12)));
        assert!(PythonVersion::from_raw(s("3.8")).is_err());
        assert!(PythonVersion::from_raw(Raw::Int(3)).is_err());
        assert!(PythonVersion::from_raw(s("3.012")).is_err());
    }

    #[test]
    fn shells_and_users() {
        assert!(Shell::from_raw(s("bash")).is_ok());
        assert!(Shell::from_raw(s("/bin/zsh")).is_ok());
        assert!(Shell::from_raw(s("zsh")).is_err());
        assert!(UnixUser::from_raw(s("ubuntu:1000")).is_ok());
        assert!(UnixUser::from_raw(Raw::Int(1000)).is_ok());
        assert!(UnixUser::from_raw(s("a:b:c")).is_err());
        assert!(UnixUser::from_raw(s(":g")).is_err());
        assert!(UnixUser::from_raw(s("-1")).is_err());
    }

    #[test]
    fn instance_selectors() {
        assert_eq!(
            InstanceSelector::from_raw(s("a")),
            Ok(InstanceSelector::Name("a".into()))
        );
        assert!(InstanceSelector::from_raw(s("")).is_err());
        assert!(InstanceSelector::from_raw(Raw::Int(5)).is_err());
        let fleet = Raw::Map(vec![
            ("fleet".into(), s("f")),
            ("instance".into(), Raw::Int(0)),
        ]);
        assert!(matches!(
            InstanceSelector::from_raw(fleet),
            Ok(InstanceSelector::FleetInstance { instance: 0, .. })
        ));
    }
}
