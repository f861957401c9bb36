//! `type: fleet`: a group of instances runs are placed on — provisioned in a cloud (`nodes`) or
//! existing hosts reached over SSH (`ssh_config`).

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize, Serializer};

use super::env::Env;
use super::lenient::{Int, Number, int_from_raw};
use super::profile::{BackendOptions, BackendType, CloudTags, Retry, SpotPolicy};
use super::quantity::{IdleDuration, idle_duration};
use super::raw::{Raw, deserialize_from_raw};
use super::resources::Resources;

/// How instances of a fleet are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    Any,
    /// Same backend, region and interconnect (a placement group on AWS).
    Cluster,
}

/// `blocks`: split an instance's GPUs and CPUs between jobs: a number, or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocks {
    Auto,
    Count(i64),
}

impl Blocks {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        if raw == Raw::Str("auto".into()) {
            return Ok(Self::Auto);
        }
        let count = Int::<1, { i64::MAX }>::from_raw(raw)
            .map_err(|e| format!("`blocks` must be `auto` or a number: {e}"))?;
        Ok(Self::Count(count.0))
    }
}

impl Serialize for Blocks {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => serializer.serialize_str("auto"),
            Self::Count(n) => serializer.serialize_i64(*n),
        }
    }
}

deserialize_from_raw!(Blocks);

impl JsonSchema for Blocks {
    fn schema_name() -> Cow<'static, str> {
        "Blocks".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}, {"type": "string"}],
            "x-dstack-parse": "blocks",
            "x-dstack-expected": "`auto` or a number of at least 1"
        })
    }
}

/// `nodes` of a cloud fleet: `2`, `0..4`, or `{min, target, max}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetNodes {
    pub min: i64,
    pub target: i64,
    pub max: Option<i64>,
}

impl FleetNodes {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let (min, target, max) = match raw {
            Raw::Str(text) if text.contains("..") => {
                let compact: String = text.chars().filter(|c| *c != ' ').collect();
                let mut parts = compact.split("..");
                let (Some(min), Some(max), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(format!(
                        "invalid nodes `{text}`: expected `N`, `MIN..MAX`, `MIN..` or `..MAX`"
                    ));
                };
                let bound = |s: &str| {
                    (!s.is_empty())
                        .then(|| int_from_raw(Raw::Str(s.to_string())))
                        .transpose()
                };
                (bound(min)?, None, bound(max)?)
            }
            raw @ (Raw::Int(_) | Raw::Str(_) | Raw::Bool(_)) => {
                let n = int_from_raw(raw)?;
                (Some(n), None, Some(n))
            }
            raw @ Raw::Map(_) => {
                let mut fields = raw.fields("fleet nodes", &["min", "target", "max"])?;
                let mut take = |key: &str| fields.take(key).map(int_from_raw).transpose();
                (take("min")?, take("target")?, take("max")?)
            }
            other => {
                return Err(format!(
                    "expected nodes like `2`, `0..4` or `{{min, target, max}}`, found {}",
                    other.describe()
                ));
            }
        };
        let min = min.unwrap_or(0);
        let target = target.unwrap_or(min);
        if min < 0 {
            return Err("`nodes.min` cannot be negative".into());
        }
        if target < min {
            return Err(format!(
                "`nodes.target` ({target}) must not be less than `nodes.min` ({min})"
            ));
        }
        if let Some(max) = max {
            if max < min {
                return Err(format!(
                    "`nodes.max` ({max}) must not be less than `nodes.min` ({min})"
                ));
            }
            if max < target {
                return Err(format!(
                    "`nodes.max` ({max}) must not be less than `nodes.target` ({target})"
                ));
            }
        }
        Ok(Self { min, target, max })
    }
}

impl fmt::Display for FleetNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.max {
            Some(max) if max == self.min && self.target == self.min => write!(f, "{max}"),
            max => {
                write!(f, "{}..", self.min)?;
                if let Some(max) = max {
                    write!(f, "{max}")?;
                }
                if self.target != self.min {
                    write!(f, " (target {})", self.target)?;
                }
                Ok(())
            }
        }
    }
}

impl Serialize for FleetNodes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("min", &self.min)?;
        if self.target != self.min {
            map.serialize_entry("target", &self.target)?;
        }
        map.serialize_entry("max", &self.max)?;
        map.end()
    }
}

deserialize_from_raw!(FleetNodes);

impl JsonSchema for FleetNodes {
    fn schema_name() -> Cow<'static, str> {
        "FleetNodes".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string"},
                {"type": "object", "properties": {
                    "min": {"type": ["integer", "string", "null"], "description": "Instances kept even when idle (default 0)"},
                    "target": {"type": ["integer", "string", "null"], "description": "Instances provisioned at creation (default `min`)"},
                    "max": {"type": ["integer", "string", "null"], "description": "Most instances"}
                }, "additionalProperties": false}
            ],
            "x-dstack-parse": "fleet-nodes",
            "x-dstack-expected": "nodes like `2`, `0..4` or `{min, target, max}`"
        })
    }
}

/// An SSH key given inline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshKey {
    pub public: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<String>,
}

/// A jump host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshProxy {
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Int<{ i64::MIN }, { i64::MAX }>>,
    pub user: String,
    pub identity_file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<SshKey>,
}

/// One host of an SSH fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshHost {
    pub hostname: String,
    pub port: Option<i64>,
    pub user: Option<String>,
    pub identity_file: Option<String>,
    pub proxy_jump: Option<SshProxy>,
    pub internal_ip: Option<String>,
    pub ssh_key: Option<SshKey>,
    pub blocks: Option<Blocks>,
}

impl SshHost {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Map(_) => {
                let mut fields = raw.fields(
                    "an SSH host",
                    &[
                        "hostname",
                        "port",
                        "user",
                        "identity_file",
                        "proxy_jump",
                        "internal_ip",
                        "ssh_key",
                        "blocks",
                    ],
                )?;
                let hostname = fields
                    .take("hostname")
                    .and_then(|r| r.scalar_text())
                    .ok_or("an SSH host needs `hostname`")?;
                let port = fields.take("port").map(int_from_raw).transpose()?;
                let user = fields.take("user").and_then(|r| r.scalar_text());
                let identity_file = fields.take("identity_file").and_then(|r| r.scalar_text());
                let proxy_jump = fields
                    .take("proxy_jump")
                    .map(|r| {
                        serde_json::from_value::<SshProxy>(raw_to_json(numbers_as_text(r)))
                            .map_err(|e| format!("invalid `proxy_jump`: {e}"))
                    })
                    .transpose()?;
                let internal_ip = fields.take("internal_ip").and_then(|r| r.scalar_text());
                if let Some(ip) = &internal_ip {
                    let address =
                        parse_ip_address(ip).ok_or_else(|| format!("invalid IP address `{ip}`"))?;
                    if !is_private(address) {
                        return Err(format!("`internal_ip` {ip} is not a private address"));
                    }
                }
                let ssh_key = fields
                    .take("ssh_key")
                    .map(|r| {
                        serde_json::from_value::<SshKey>(raw_to_json(numbers_as_text(r)))
                            .map_err(|e| format!("invalid `ssh_key`: {e}"))
                    })
                    .transpose()?;
                let blocks = fields.take("blocks").map(Blocks::from_raw).transpose()?;
                Ok(Self {
                    hostname,
                    port,
                    user,
                    identity_file,
                    proxy_jump,
                    internal_ip,
                    ssh_key,
                    blocks,
                })
            }
            other => {
                let hostname = other.scalar_text().ok_or_else(|| {
                    format!(
                        "expected a host name or mapping, found {}",
                        other.describe()
                    )
                })?;
                Ok(Self {
                    hostname,
                    port: None,
                    user: None,
                    identity_file: None,
                    proxy_jump: None,
                    internal_ip: None,
                    ssh_key: None,
                    blocks: None,
                })
            }
        }
    }
}

/// Numbers in a mapping's values as text: dstack reads `hostname: 5` as `"5"`. (A proxy's
/// `port` is read leniently, so text is fine there too.)
fn numbers_as_text(raw: Raw) -> Raw {
    match raw {
        Raw::Map(entries) => Raw::Map(
            entries
                .into_iter()
                .map(|(key, value)| match value {
                    Raw::Int(_) | Raw::Float(_) => {
                        let text = value.scalar_text().unwrap_or_default();
                        (key, Raw::Str(text))
                    }
                    other => (key, other),
                })
                .collect(),
        ),
        other => other,
    }
}

/// Convert a raw value back to JSON, for nested structs read with serde.
fn raw_to_json(raw: Raw) -> serde_json::Value {
    use serde_json::Value as J;
    match raw {
        Raw::Null => J::Null,
        Raw::Bool(b) => J::Bool(b),
        Raw::Int(i) => J::from(i),
        Raw::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        Raw::Str(s) => J::String(s),
        Raw::Seq(items) => J::Array(items.into_iter().map(raw_to_json).collect()),
        Raw::Map(entries) => J::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k, raw_to_json(v)))
                .collect(),
        ),
    }
}

impl Serialize for SshHost {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("hostname", &self.hostname)?;
        if let Some(port) = self.port {
            map.serialize_entry("port", &port)?;
        }
        if let Some(user) = &self.user {
            map.serialize_entry("user", user)?;
        }
        if let Some(identity_file) = &self.identity_file {
            map.serialize_entry("identity_file", identity_file)?;
        }
        if let Some(proxy) = &self.proxy_jump {
            map.serialize_entry("proxy_jump", proxy)?;
        }
        if let Some(ip) = &self.internal_ip {
            map.serialize_entry("internal_ip", ip)?;
        }
        if let Some(key) = &self.ssh_key {
            map.serialize_entry("ssh_key", key)?;
        }
        if let Some(blocks) = &self.blocks {
            map.serialize_entry("blocks", blocks)?;
        }
        map.end()
    }
}

deserialize_from_raw!(SshHost);

impl JsonSchema for SshHost {
    fn schema_name() -> Cow<'static, str> {
        "SshHost".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": ["string", "number"]},
                {"type": "object", "properties": {
                    "hostname": {"type": "string"},
                    "port": {"type": ["integer", "null"]},
                    "user": {"type": ["string", "null"]},
                    "identity_file": {"type": ["string", "null"]},
                    "proxy_jump": {"type": ["object", "null"]},
                    "internal_ip": {"type": ["string", "null"]},
                    "ssh_key": {"type": ["object", "null"]},
                    "blocks": {"type": ["integer", "string", "null"]}
                }, "required": ["hostname"], "additionalProperties": false}
            ],
            "x-dstack-parse": "ssh-host",
            "x-dstack-expected": "a host name or `{hostname, port, user, ...}`"
        })
    }
}

/// The private IPv4 blocks, as Python 3.11's `ipaddress` lists them (dstack checks with it).
const PRIVATE_V4: [(Ipv4Addr, u8); 14] = [
    (Ipv4Addr::UNSPECIFIED, 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 29),
    (Ipv4Addr::new(192, 0, 0, 170), 31),
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
    (Ipv4Addr::BROADCAST, 32),
];

/// The private IPv6 blocks, as Python 3.11's `ipaddress` lists them.
const PRIVATE_V6: [(Ipv6Addr, u8); 10] = [
    (Ipv6Addr::LOCALHOST, 128),
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 48),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x2001, 0x10, 0, 0, 0, 0, 0, 0), 28),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
];

/// Whether the first `prefix` of `bits` address bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    let shift = u32::from(bits - prefix.min(bits));
    a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
}

/// The private block `address` lies in, if any (an IPv4-mapped IPv6 address counts as IPv4).
fn private_block(address: IpAddr) -> Option<(IpAddr, u8)> {
    match address {
        IpAddr::V4(v4) => PRIVATE_V4
            .iter()
            .find(|(net, prefix)| {
                same_prefix(
                    u128::from(v4.to_bits()),
                    u128::from(net.to_bits()),
                    *prefix,
                    32,
                )
            })
            .map(|(net, prefix)| (IpAddr::V4(*net), *prefix)),
        IpAddr::V6(v6) => PRIVATE_V6
            .iter()
            .find(|(net, prefix)| same_prefix(v6.to_bits(), net.to_bits(), *prefix, 128))
            .map(|(net, prefix)| (IpAddr::V6(*net), *prefix)),
    }
}

/// Whether an address is private (loopback, link-local, documentation, ...), as Python's
/// `ipaddress` decides.
pub fn is_private(address: IpAddr) -> bool {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => private_block(IpAddr::V4(v4)).is_some(),
            None => private_block(address).is_some(),
        },
        IpAddr::V4(_) => private_block(address).is_some(),
    }
}

/// Parse an IP address as Python's `ipaddress.ip_address` does: dotted IPv4 without leading
/// zeros, or IPv6 with an optional `%scope`.
pub fn parse_ip_address(text: &str) -> Option<IpAddr> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    let (address, scope) = text.split_once('%')?;
    if scope.is_empty() || scope.contains('%') {
        return None;
    }
    address.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// `ssh_config` of an SSH fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Int<{ i64::MIN }, { i64::MAX }>>,
    /// Private key file (read on this machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<SshKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_jump: Option<SshProxy>,
    /// Hosts: names or addresses, or mappings.
    pub hosts: Vec<SshHost>,
    /// The private network of the hosts, e.g. `10.0.0.0/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// The prefix length of a network's `/...` part: a number, or for IPv4 a netmask
/// (`255.255.255.0`) or a host mask (`0.0.0.255`), as Python's `ipaddress.ip_network` reads it.
fn network_prefix(text: &str, bits: u8) -> Option<u8> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u8>().ok().filter(|p| *p <= bits);
    }
    if bits != 32 {
        return None;
    }
    let mask = text.parse::<Ipv4Addr>().ok()?.to_bits();
    let contiguous = |m: u32| m.leading_ones() + m.trailing_zeros() == 32;
    if contiguous(mask) {
        Some(mask.leading_ones() as u8)
    } else if contiguous(!mask) {
        Some((!mask).leading_ones() as u8)
    } else {
        None
    }
}

/// Check that `network` is a private network, like dstack: `ADDRESS[/PREFIX]` (host bits are
/// allowed), whose first and last addresses lie in one private block.
pub fn check_network(network: &str) -> Result<(), String> {
    let invalid = || format!("invalid network `{network}`");
    let (address, prefix) = match network.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (network, None),
    };
    let address: IpAddr = address.parse().map_err(|_| invalid())?;
    let bits: u8 = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(prefix) => network_prefix(prefix, bits).ok_or_else(invalid)?,
        None => bits,
    };
    let (value, to_address): (u128, fn(u128) -> IpAddr) = match address {
        IpAddr::V4(v4) => (u128::from(v4.to_bits()), |v| {
            IpAddr::V4(Ipv4Addr::from_bits(v as u32))
        }),
        IpAddr::V6(v6) => (v6.to_bits(), |v| IpAddr::V6(Ipv6Addr::from_bits(v))),
    };
    let all_ones = if bits == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    let host_mask = all_ones.checked_shr(u32::from(prefix)).unwrap_or(0);
    let first = to_address(value & !host_mask & all_ones);
    let last = to_address((value | host_mask) & all_ones);
    // Python checks a network against its blocks directly (no IPv4-mapped conversion).
    match (private_block(first), private_block(last)) {
        (Some(a), Some(b)) if a == b => Ok(()),
        _ => Err(format!(
            "the network `{network}` is public; a private network is required"
        )),
    }
}

/// A fleet configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// `any` or `cluster` (same backend, region and interconnect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Split each instance between jobs: a number (default 1) or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Blocks")]
    pub blocks: Option<Blocks>,
    /// Number of instances of a cloud fleet: `2`, `0..4`, `{min, target, max}`. Excludes `ssh_config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<FleetNodes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    /// Resources of each instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Backends to provision in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<BackendType>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zones: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_types: Option<Vec<String>>,
    /// `spot`, `on-demand` (default) or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_policy: Option<SpotPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Highest price per hour and instance, in dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<Number>,
    /// Terminate instances above `nodes.min` after being idle this long (default `3d`), or `off`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "idle_duration"
    )]
    #[schemars(with = "Option<IdleDuration>")]
    pub idle_duration: Option<IdleDuration>,
    /// Cloud tags for the fleet's instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<CloudTags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_options: Option<Vec<BackendOptions>>,
    /// Existing hosts reached over SSH. Excludes `nodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_config: Option<SshConfig>,
    /// Environment of the hosts of an SSH fleet.
    #[serde(default, skip_serializing_if = "Env::is_empty")]
    pub env: Env,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Raw {
        Raw::Str(text.into())
    }

    #[test]
    fn nodes_forms() {
        assert_eq!(
            FleetNodes::from_raw(Raw::Int(2)),
            Ok(FleetNodes {
                min: 2,
                target: 2,
                max: Some(2)
            })
        );
        assert_eq!(
            FleetNodes::from_raw(s("0..2")),
            Ok(FleetNodes {
                min: 0,
                target: 0,
                max: Some(2)
            })
        );
        assert_eq!(
            FleetNodes::from_raw(s("1..")),
            Ok(FleetNodes {
                min: 1,
                target: 1,
                max: None
            })
        );
        assert_eq!(
            FleetNodes::from_raw(s("..3")),
            Ok(FleetNodes {
                min: 0,
                target: 0,
                max: Some(3)
            })
        );
        assert_eq!(
            FleetNodes::from_raw(Raw::Map(vec![("target".into(), Raw::Int(2))])),
            Ok(FleetNodes {
                min: 0,
                target: 2,
                max: None
            })
        );
        assert!(FleetNodes::from_raw(Raw::Map(vec![("min".into(), Raw::Int(-1))])).is_err());
        assert!(FleetNodes::from_raw(s("3..1")).is_err());
        assert!(
            FleetNodes::from_raw(Raw::Map(vec![
                ("target".into(), Raw::Int(3)),
                ("max".into(), Raw::Int(2))
            ]))
            .is_err()
        );
        assert!(
            FleetNodes::from_raw(Raw::Float(1.5)).is_err(),
            "dstack crashes here; we report it"
        );
        assert!(FleetNodes::from_raw(Raw::Seq(vec![Raw::Int(1)])).is_err());
    }

    #[test]
    fn private_addresses() {
        for ok in [
            "10.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "127.0.0.1",
            "fd00::1",
            "::1",
        ] {
            assert!(is_private(ok.parse().expect("ip")), "{ok}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2600::1"] {
            assert!(!is_private(public.parse().expect("ip")), "{public}");
        }
        assert!(
            !is_private("192.0.0.100".parse().expect("ip")),
            "only 192.0.0.0/29"
        );
        assert!(is_private("::ffff:10.0.0.1".parse().expect("ip")));
        assert_eq!(
            parse_ip_address("fe80::1%eth0"),
            Some("fe80::1".parse().expect("ip"))
        );
        assert_eq!(parse_ip_address("10.0.0.1%eth0"), None);
        assert!(check_network("10.0.0.0/24").is_ok());
        assert!(check_network("10.0.0.5/24").is_ok(), "host bits are fine");
        assert!(check_network("192.168.1.1").is_ok());
        assert!(check_network("10.0.0.0/255.255.255.0").is_ok());
        assert!(check_network("10.0.0.0/0.0.0.255").is_ok());
        assert!(check_network("fd00::/64").is_ok());
        assert!(check_network("8.8.8.0/24").is_err());
        assert!(check_network("10.0.0.0/7").is_err(), "ends outside 10/8");
        assert!(check_network("10.0.0.0/33").is_err());
        assert!(check_network("10.0.0.0/").is_err());
        assert!(check_network("10.0.0.0/255.0.255.0").is_err());
    }
}
