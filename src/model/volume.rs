//! `type: volume`: a network volume on a backend, created by dstack or registered by id.
//!
//! Backends we implement: `local` (a Docker named volume), `aws` (EBS), and `fake` (tests).
//! Volumes of the other backends dstack knows (`gcp`, `runpod`, `kubernetes`, `daytona`, `lium`)
//! validate exactly as in dstack and fail at plan time with "backend X is not supported".

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::lenient::Flag;
use super::profile::CloudTags;
use super::quantity::{IdleDuration, Memory, idle_duration};

/// Backends a volume can live on.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum VolumeBackend {
    /// A Docker named volume on this machine.
    Local,
    /// An EBS volume.
    Aws,
    Gcp,
    Runpod,
    Kubernetes,
    Daytona,
    Lium,
    /// Tests only; accepted when `DSTACK_FAKE_BACKEND=1`.
    Fake,
}

impl VolumeBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Aws => "aws",
            Self::Gcp => "gcp",
            Self::Runpod => "runpod",
            Self::Kubernetes => "kubernetes",
            Self::Daytona => "daytona",
            Self::Lium => "lium",
            Self::Fake => "fake",
        }
    }

    /// Fields only some backends take, and which backends take them.
    pub fn allows(self, field: &str) -> bool {
        use VolumeBackend as B;
        match field {
            "size" => !matches!(self, B::Daytona | B::Lium),
            "volume_id" => self != B::Kubernetes,
            "region" => !matches!(self, B::Daytona | B::Lium),
            "availability_zone" => matches!(self, B::Aws | B::Gcp | B::Runpod | B::Fake),
            "claim_name" | "storage_class_name" | "access_modes" | "read_only" => {
                self == B::Kubernetes
            }
            _ => true,
        }
    }

    /// Backends that need `region`.
    pub fn requires_region(self) -> bool {
        matches!(self, Self::Aws | Self::Gcp | Self::Runpod)
    }
}

/// A volume configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Where the volume lives: `local`, `aws`, `gcp`, `runpod`, `kubernetes`, `daytona`, `lium`.
    pub backend: VolumeBackend,
    /// Size of a new volume, e.g. `100GB`. Needed unless `volume_id` registers an existing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Memory>,
    /// Register an existing volume instead of creating one; it is never destroyed, only forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// Region (required for `aws`, `gcp`, `runpod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Availability zone (default: the first of the region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// Delete the volume after it has been unused this long, or `off` (default: keep).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "idle_duration"
    )]
    #[schemars(with = "Option<IdleDuration>")]
    pub auto_cleanup_duration: Option<IdleDuration>,
    /// Cloud tags of the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<CloudTags>,
    /// `kubernetes`: an existing claim to register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// `kubernetes`: the storage class of a new claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// `kubernetes`: access modes (default `[ReadWriteOnce]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<String>")]
    pub access_modes: Option<Vec<String>>,
    /// `kubernetes`: mount read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Flag")]
    pub read_only: Option<Flag>,
}

impl VolumeSpec {
    /// The identifier of an existing volume this configuration registers, if any.
    pub fn external_id(&self) -> Option<&str> {
        self.volume_id.as_deref().or(self.claim_name.as_deref())
    }

    /// The names of the fields that are set, for per-backend checks.
    pub fn fields_set(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        let pairs: [(&'static str, bool); 9] = [
            ("size", self.size.is_some()),
            ("volume_id", self.volume_id.is_some()),
            ("region", self.region.is_some()),
            ("availability_zone", self.availability_zone.is_some()),
            ("claim_name", self.claim_name.is_some()),
            ("storage_class_name", self.storage_class_name.is_some()),
            ("access_modes", self.access_modes.is_some()),
            ("read_only", self.read_only.is_some()),
            ("tags", self.tags.is_some()),
        ];
        for (name, present) in pairs {
            if present {
                set.push(name);
            }
        }
        set
    }
}
