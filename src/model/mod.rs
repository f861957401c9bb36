//! Typed resources: what `*.dstack.yml` documents describe.
//!
//! A resource is identified by `(kind, name)`: `volume/data`, `run/train`, `fleet/gpus`,
//! `tag/best`. The configuration types `task`, `dev-environment` and `service` are all of kind
//! `run`, so a task and a service cannot share a name. Run and tag names share one namespace.
//!
//! Values are read through shorthand parsers ([`quantity`], [`resources`], [`ports`], [`mounts`],
//! [`env`]) that accept exactly the forms dstack accepts, and serialize to one canonical form, so
//! two documents that mean the same thing have the same digest.

use std::fmt;

use serde::Serialize;

pub mod cron;
pub mod env;
pub mod fleet;
pub mod graph;
pub mod lenient;
pub mod mounts;
pub mod ports;
pub mod profile;
pub mod quantity;
pub mod raw;
pub mod resources;
pub mod run;
pub mod schema;
pub mod tag;
pub mod validate;
pub mod volume;

pub use fleet::FleetSpec;
pub use run::{RunSpec, RunType};
pub use tag::TagSpec;
pub use volume::VolumeSpec;

/// The pattern every resource name must match.
pub const NAME_PATTERN: &str = "^[a-z][a-z0-9-]{1,40}$";

/// Whether `name` is a valid resource name: a lowercase letter, then 1–40 lowercase letters,
/// digits or `-`.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && (2..=41).contains(&name.len())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Whether `name` is a valid run name: a resource name, or one followed by `-N` (the N-th run
/// of a run resource, `train-3`, or a generated name, `grumpy-zebra-1`). Run names become
/// directories (`.dstack/runs/NAME`), so nothing else is ever accepted: no `/`, no `..`.
pub fn is_valid_run_name(name: &str) -> bool {
    is_valid_name(name)
        || name.rsplit_once('-').is_some_and(|(prefix, number)| {
            is_valid_name(prefix)
                && (1..=20).contains(&number.len())
                && number.bytes().all(|b| b.is_ascii_digit())
        })
}

/// What a resource is; configuration types map onto kinds.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Volume,
    Fleet,
    Run,
    Tag,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Volume => "volume",
            Self::Fleet => "fleet",
            Self::Run => "run",
            Self::Tag => "tag",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "volume" => Some(Self::Volume),
            "fleet" => Some(Self::Fleet),
            "run" | "task" | "service" | "dev-environment" => Some(Self::Run),
            "tag" => Some(Self::Tag),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `kind/name`.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub struct ResourceId {
    pub kind: Kind,
    pub name: String,
}

impl ResourceId {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }

    /// Parse `kind/name` (also `task/name` and friends for runs).
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, name) = text.split_once('/')?;
        Some(Self::new(Kind::parse(kind)?, name))
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// A configuration type, the value of `type:`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigType {
    Volume,
    Task,
    DevEnvironment,
    Service,
    Fleet,
    Tag,
}

impl ConfigType {
    pub const ALL: [Self; 6] = [
        Self::Task,
        Self::DevEnvironment,
        Self::Service,
        Self::Volume,
        Self::Fleet,
        Self::Tag,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Volume => "volume",
            Self::Task => "task",
            Self::DevEnvironment => "dev-environment",
            Self::Service => "service",
            Self::Fleet => "fleet",
            Self::Tag => "tag",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    pub fn kind(self) -> Kind {
        match self {
            Self::Volume => Kind::Volume,
            Self::Task | Self::DevEnvironment | Self::Service => Kind::Run,
            Self::Fleet => Kind::Fleet,
            Self::Tag => Kind::Tag,
        }
    }
}

impl fmt::Display for ConfigType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The desired state of one resource.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Spec {
    Volume(VolumeSpec),
    Run(Box<RunSpec>),
    Fleet(Box<FleetSpec>),
    Tag(TagSpec),
}

impl Spec {
    pub fn config_type(&self) -> ConfigType {
        match self {
            Self::Volume(_) => ConfigType::Volume,
            Self::Run(run) => match run.run_type() {
                RunType::Task => ConfigType::Task,
                RunType::DevEnvironment => ConfigType::DevEnvironment,
                RunType::Service => ConfigType::Service,
            },
            Self::Fleet(_) => ConfigType::Fleet,
            Self::Tag(_) => ConfigType::Tag,
        }
    }

    pub fn kind(&self) -> Kind {
        self.config_type().kind()
    }

    /// The canonical JSON form, with `type` first: what plans show and state stores.
    pub fn to_json(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        object.insert("type".into(), self.config_type().as_str().into());
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) {
            object.extend(fields);
        }
        serde_json::Value::Object(object)
    }
}

/// Where a resource was declared.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub struct SourceRef {
    /// Path relative to the project directory (`<stdin>` for standard input).
    pub file: String,
    /// Index of the YAML document in the file.
    pub document: usize,
}

/// A declared resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub id: ResourceId,
    pub spec: Spec,
    pub source: SourceRef,
    /// Values that came from `env.*`/`secrets.*`; masked wherever the spec is shown or stored.
    pub sensitive: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["ab", "train", "my-vol-1", &format!("a{}", "b".repeat(40))] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "a",
            "Train",
            "1abc",
            "-ab",
            "a_b",
            "ab ",
            &format!("a{}", "b".repeat(41)),
            "ab\n",
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn run_names_are_resource_names_with_a_submission_number() {
        let longest = format!("a{}-12", "b".repeat(40));
        for ok in ["train", "train-1", "grumpy-zebra-12", longest.as_str()] {
            assert!(is_valid_run_name(ok), "{ok}");
        }
        for bad in [
            "../../../victim",
            "/tmp/victim",
            "train/../x",
            "..",
            "Train-1",
            "train_1",
            "train-1\n",
            &format!("a{}-{}", "b".repeat(40), "1".repeat(21)),
            &format!("a{}-1", "b".repeat(41)),
        ] {
            assert!(!is_valid_run_name(bad), "{bad}");
        }
    }

    #[test]
    fn resource_ids() {
        assert_eq!(
            ResourceId::parse("run/train"),
            Some(ResourceId::new(Kind::Run, "train"))
        );
        assert_eq!(
            ResourceId::parse("task/train"),
            Some(ResourceId::new(Kind::Run, "train"))
        );
        assert_eq!(
            ResourceId::parse("volume/data").map(|id| id.to_string()),
            Some("volume/data".into())
        );
        assert_eq!(ResourceId::parse("gateway/x"), None);
        assert_eq!(ResourceId::parse("train"), None);
    }
}
