//! `resources`: what a run or fleet needs from a machine.
//!
//! Shorthands as in dstack: `cpu: arm:8`, `cpu: 4..`, `memory: 16GB..`, `gpu: A100:80GB:2`,
//! `gpu: H100,A100:4`, `gpu: 24GB..:2`, `gpu: MI300X:amd`, `disk: 200GB`. Fields left out keep
//! `None`, so a backend can tell what the user asked for explicitly from the defaults
//! (`cpu 2..`, `memory 8GB..`, `gpu 0..`, `disk 100GB..`).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize, Serializer};

use super::quantity::{Memory, Range};
use super::raw::{Raw, deserialize_from_raw, format_float};

/// CPU architecture.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CpuArch {
    X86,
    Arm,
}

impl CpuArch {
    fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "x86" => Some(Self::X86),
            "arm" => Some(Self::Arm),
            _ => None,
        }
    }
}

impl fmt::Display for CpuArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::X86 => "x86",
            Self::Arm => "arm",
        })
    }
}

/// `cpu`: a count (range) and an optional architecture.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuSpec {
    pub arch: Option<CpuArch>,
    /// `None`: the default, `2..`.
    pub count: Option<Range<i64>>,
}

impl CpuSpec {
    pub const DEFAULT_COUNT: Range<i64> = Range {
        min: Some(2),
        max: None,
    };

    pub fn count(&self) -> Range<i64> {
        self.count.unwrap_or(Self::DEFAULT_COUNT)
    }

    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Int(i) => Self::parse(&i.to_string()),
            Raw::Bool(b) => Self::parse(if b { "True" } else { "False" }),
            Raw::Str(s) => Self::parse(&s),
            Raw::Map(ref entries)
                if !entries.is_empty() && entries.iter().all(|(k, _)| k == "min" || k == "max") =>
            {
                Ok(Self {
                    arch: None,
                    count: Some(Range::from_raw(raw)?),
                })
            }
            Raw::Map(_) => {
                let mut fields = raw.fields("a CPU spec", &["arch", "count"])?;
                let arch = match fields.take("arch") {
                    None => None,
                    Some(Raw::Str(s)) => Some(CpuArch::parse(&s).ok_or_else(|| {
                        format!("invalid CPU architecture `{s}`: expected `x86` or `arm`")
                    })?),
                    Some(other) => {
                        return Err(format!("invalid CPU architecture {}", other.describe()));
                    }
                };
                let count = fields.take("count").map(Range::from_raw).transpose()?;
                Ok(Self { arch, count })
            }
            other => Err(format!(
                "expected a CPU spec like `4`, `2..8` or `arm:8`, found {}",
                other.describe()
            )),
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        let compact: String = text.chars().filter(|c| *c != ' ').collect();
        let mut spec = Self::default();
        for token in compact.split(':') {
            if token.is_empty() {
                return Err(format!("CPU spec `{text}` has an empty part"));
            }
            if token.contains("..") || token.bytes().all(|b| b.is_ascii_digit()) {
                if spec.count.is_some() {
                    return Err(format!("CPU spec `{text}` gives the count twice"));
                }
                spec.count = Some(Range::from_raw(Raw::Str(token.to_string()))?);
            } else {
                let arch = CpuArch::parse(token).ok_or_else(|| {
                    format!(
                        "invalid CPU spec `{text}`: `{token}` is neither a count nor `x86`/`arm`"
                    )
                })?;
                if spec.arch.is_some() {
                    return Err(format!("CPU spec `{text}` gives the architecture twice"));
                }
                spec.arch = Some(arch);
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for CpuSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.arch, self.count) {
            (Some(arch), Some(count)) => write!(f, "{arch}:{count}"),
            (Some(arch), None) => write!(f, "{arch}"),
            (None, count) => write!(f, "{}", count.unwrap_or(Self::DEFAULT_COUNT)),
        }
    }
}

impl Serialize for CpuSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

deserialize_from_raw!(CpuSpec);

/// GPU vendor.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    Nvidia,
    Amd,
    Google,
    Intel,
    Tenstorrent,
}

impl GpuVendor {
    /// Vendor names and their aliases (`tpu` → google, `tt` → tenstorrent), any case.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "nvidia" => Some(Self::Nvidia),
            "amd" => Some(Self::Amd),
            "google" | "tpu" => Some(Self::Google),
            "intel" => Some(Self::Intel),
            "tenstorrent" | "tt" => Some(Self::Tenstorrent),
            _ => None,
        }
    }
}

impl fmt::Display for GpuVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nvidia => "nvidia",
            Self::Amd => "amd",
            Self::Google => "google",
            Self::Intel => "intel",
            Self::Tenstorrent => "tenstorrent",
        })
    }
}

/// A CUDA compute capability, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ComputeCapability(pub i64, pub i64);

impl ComputeCapability {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let invalid = |what: &str| {
            format!("invalid compute capability {what}: expected `MAJOR.MINOR` like `7.5`")
        };
        let parts: Vec<Raw> = match raw {
            Raw::Float(f) => format_float_keep_point(f)
                .split('.')
                .map(|p| Raw::Str(p.to_string()))
                .collect(),
            Raw::Str(s) => s
                .trim()
                .split('.')
                .map(|p| Raw::Str(p.to_string()))
                .collect(),
            Raw::Seq(items) => items,
            other => return Err(invalid(&other.describe())),
        };
        let [major, minor] = parts.as_slice() else {
            return Err(invalid("with the wrong number of parts"));
        };
        let part = |raw: &Raw| match raw {
            Raw::Int(i) => Ok(*i),
            Raw::Float(f) => Ok(f.trunc() as i64),
            Raw::Str(s) => s
                .trim()
                .parse::<i64>()
                .map_err(|_| invalid(&format!("part `{s}`"))),
            other => Err(invalid(&other.describe())),
        };
        Ok(Self(part(major)?, part(minor)?))
    }
}

/// `7.5` → "7.5", `8.0` → "8.0" (Python's `str(float)`).
fn format_float_keep_point(f: f64) -> String {
    let text = format_float(f);
    if text.contains('.') {
        text
    } else {
        format!("{text}.0")
    }
}

impl fmt::Display for ComputeCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl Serialize for ComputeCapability {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

deserialize_from_raw!(ComputeCapability);

/// `gpu`: vendor, model names, count, per-GPU and total memory, compute capability.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuSpec {
    pub vendor: Option<GpuVendor>,
    /// Any of these models; empty means any model.
    pub names: Vec<String>,
    /// `None`: the default, `1..` (a `gpu` value asks for at least one GPU).
    pub count: Option<Range<i64>>,
    pub memory: Option<Range<Memory>>,
    pub total_memory: Option<Range<Memory>>,
    pub compute_capability: Option<ComputeCapability>,
}

impl GpuSpec {
    pub const DEFAULT_COUNT: Range<i64> = Range {
        min: Some(1),
        max: None,
    };

    pub fn count(&self) -> Range<i64> {
        self.count.unwrap_or(Self::DEFAULT_COUNT)
    }

    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Int(i) => Self::parse(&i.to_string()),
            Raw::Bool(b) => Self::parse(if b { "True" } else { "False" }),
            Raw::Str(s) => Self::parse(&s),
            Raw::Map(_) => {
                let mut fields = raw.fields(
                    "a GPU spec",
                    &[
                        "vendor",
                        "name",
                        "count",
                        "memory",
                        "total_memory",
                        "compute_capability",
                    ],
                )?;
                let vendor = match fields.take("vendor") {
                    None => None,
                    Some(Raw::Str(s)) => Some(GpuVendor::parse(&s).ok_or_else(|| {
                        format!("invalid GPU vendor `{s}`: expected `nvidia`, `amd`, `google` (`tpu`), `intel` or `tenstorrent` (`tt`)")
                    })?),
                    Some(other) => return Err(format!("invalid GPU vendor {}", other.describe())),
                };
                let names = match fields.take("name") {
                    None => Vec::new(),
                    Some(Raw::Seq(items)) => items
                        .into_iter()
                        .map(|item| {
                            item.scalar_text()
                                .ok_or_else(|| format!("invalid GPU name {}", item.describe()))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    Some(item) => vec![
                        item.scalar_text()
                            .ok_or_else(|| format!("invalid GPU name {}", item.describe()))?,
                    ],
                };
                Ok(Self {
                    vendor,
                    names: names.into_iter().map(strip_tpu_prefix).collect(),
                    count: fields.take("count").map(Range::from_raw).transpose()?,
                    memory: fields.take("memory").map(Range::from_raw).transpose()?,
                    total_memory: fields
                        .take("total_memory")
                        .map(Range::from_raw)
                        .transpose()?,
                    compute_capability: fields
                        .take("compute_capability")
                        .map(ComputeCapability::from_raw)
                        .transpose()?,
                })
            }
            other => Err(format!(
                "expected a GPU spec like `A100:80GB:2`, found {}",
                other.describe()
            )),
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        let compact: String = text.chars().filter(|c| *c != ' ').collect();
        let mut spec = Self::default();
        let twice = |what: &str| format!("GPU spec `{text}` gives the {what} twice");
        for token in compact.split(':') {
            if token.is_empty() {
                return Err(format!("GPU spec `{text}` has an empty part"));
            }
            if let Some(vendor) = GpuVendor::parse(token) {
                if spec.vendor.replace(vendor).is_some() {
                    return Err(twice("vendor"));
                }
            } else if token.starts_with(|c: char| c.is_alphabetic()) {
                if !spec.names.is_empty() {
                    return Err(twice("model name"));
                }
                let names: Vec<String> = token.split(',').map(str::to_string).collect();
                if names.iter().any(String::is_empty) {
                    return Err(format!("GPU spec `{text}` has an empty model name"));
                }
                spec.names = names.into_iter().map(strip_tpu_prefix).collect();
            } else if token.chars().any(char::is_alphabetic) {
                if spec.memory.is_some() {
                    return Err(twice("memory"));
                }
                spec.memory = Some(Range::from_raw(Raw::Str(token.to_string()))?);
            } else {
                if spec.count.is_some() {
                    return Err(twice("count"));
                }
                spec.count = Some(Range::from_raw(Raw::Str(token.to_string()))?);
            }
        }
        Ok(spec)
    }

    /// The shorthand string, when the spec can be written as one.
    fn shorthand(&self) -> Option<String> {
        if self.total_memory.is_some()
            || self.compute_capability.is_some()
            || self.names.iter().any(|n| {
                !n.starts_with(|c: char| c.is_alphabetic()) || GpuVendor::parse(n).is_some()
            })
        {
            return None;
        }
        let mut parts = Vec::new();
        if let Some(vendor) = self.vendor {
            parts.push(vendor.to_string());
        }
        if !self.names.is_empty() {
            parts.push(self.names.join(","));
        }
        if let Some(memory) = self.memory {
            parts.push(memory.to_string());
        }
        parts.push(self.count().to_string());
        Some(parts.join(":"))
    }
}

fn strip_tpu_prefix(name: String) -> String {
    match name.strip_prefix("tpu-") {
        Some(rest) => rest.to_string(),
        None => name,
    }
}

impl fmt::Display for GpuSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shorthand() {
            Some(text) => f.write_str(&text),
            None => f.write_str(&serde_json::to_string(self).unwrap_or_default()),
        }
    }
}

impl Serialize for GpuSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if let Some(text) = self.shorthand() {
            return serializer.serialize_str(&text);
        }
        let mut map = serializer.serialize_map(None)?;
        if let Some(vendor) = self.vendor {
            map.serialize_entry("vendor", &vendor)?;
        }
        if !self.names.is_empty() {
            map.serialize_entry("name", &self.names)?;
        }
        map.serialize_entry("count", &self.count())?;
        if let Some(memory) = &self.memory {
            map.serialize_entry("memory", memory)?;
        }
        if let Some(total) = &self.total_memory {
            map.serialize_entry("total_memory", total)?;
        }
        if let Some(cc) = &self.compute_capability {
            map.serialize_entry("compute_capability", cc)?;
        }
        map.end()
    }
}

deserialize_from_raw!(GpuSpec);

/// `disk`: the size of the machine's disk.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiskSpec {
    pub size: Range<Memory>,
}

impl DiskSpec {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Map(_) => {
                let mut fields = raw.fields("a disk spec", &["size"])?;
                let size = fields.take("size").ok_or("a disk spec needs `size`")?;
                Ok(Self {
                    size: Range::from_raw(size)?,
                })
            }
            Raw::Bool(b) => Ok(Self {
                size: Range::exactly(Memory(f64::from(u8::from(b)))),
            }),
            other => Ok(Self {
                size: Range::from_raw(other)?,
            }),
        }
    }
}

impl Serialize for DiskSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.size.serialize(serializer)
    }
}

deserialize_from_raw!(DiskSpec);

/// Machine requirements of a run, fleet or group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores and architecture: `4`, `2..8`, `arm:8` (default `2..`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "CpuSpec")]
    pub cpu: Option<CpuSpec>,
    /// RAM: `16GB`, `16GB..`, `16GB..64GB` (default `8GB..`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Range<Memory>")]
    pub memory: Option<Range<Memory>>,
    /// Shared memory (`/dev/shm`), e.g. `8GB`; needed by parallel data loaders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Memory>,
    /// GPUs: `A100:80GB:2`, `H100,A100:4`, `24GB..:2`, `MI300X:amd`, or a mapping (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,
    /// Disk size: `200GB`, `100GB..` (default `100GB..`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskSpec>,
}

impl Resources {
    pub const DEFAULT_MEMORY: Range<Memory> = Range {
        min: Some(Memory(8.0)),
        max: None,
    };
    pub const DEFAULT_DISK: Range<Memory> = Range {
        min: Some(Memory(100.0)),
        max: None,
    };

    /// `cpu=2.. mem=8GB.. disk=100GB..` as dstack prints resources.
    pub fn pretty(&self) -> String {
        let cpu = self.cpu.unwrap_or_default();
        let mut parts = vec![format!("cpu={cpu}")];
        parts.push(format!(
            "mem={}",
            self.memory.unwrap_or(Self::DEFAULT_MEMORY)
        ));
        if let Some(shm) = self.shm_size {
            parts.push(format!("shm={shm}"));
        }
        if let Some(gpu) = &self.gpu {
            parts.push(format!("gpu={gpu}"));
        }
        parts.push(format!(
            "disk={}",
            self.disk.map_or(Self::DEFAULT_DISK, |d| d.size)
        ));
        parts.join(" ")
    }
}

macro_rules! shorthand_schema {
    ($type:ty, $name:literal, $parse:literal, $expected:literal, $($schema:tt)+) => {
        impl JsonSchema for $type {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                let mut schema = json_schema!($($schema)+);
                schema.insert("x-dstack-parse".into(), $parse.into());
                schema.insert("x-dstack-expected".into(), $expected.into());
                schema
            }
        }
    };
}

shorthand_schema!(Memory, "Memory", "memory", "a size like `16GB`, `512MB` or `1TB`", {
    "anyOf": [{"type": "number"}, {"type": "string"}]
});

shorthand_schema!(Range<i64>, "RangeInt", "range-int", "a number like `2` or a range like `2..8`, `2..`, `..8`", {
    "anyOf": [
        {"type": "integer"},
        {"type": "string"},
        {"type": "object", "properties": {"min": {"type": ["integer", "null"]}, "max": {"type": ["integer", "null"]}}, "additionalProperties": false}
    ]
});

shorthand_schema!(Range<Memory>, "RangeMemory", "range-memory", "a size like `16GB` or a range like `16GB..`, `16GB..64GB`", {
    "anyOf": [
        {"type": "number"},
        {"type": "string"},
        {"type": "object", "properties": {"min": {"type": ["number", "string", "null"]}, "max": {"type": ["number", "string", "null"]}}, "additionalProperties": false}
    ]
});

shorthand_schema!(CpuSpec, "CpuSpec", "cpu", "a CPU spec like `4`, `2..8` or `arm:8`", {
    "anyOf": [
        {"type": "integer"},
        {"type": "string"},
        {"type": "object", "properties": {
            "arch": {"type": "string", "description": "CPU architecture: `x86` or `arm` (any case)"},
            "count": {"type": ["integer", "string", "object"], "description": "Number of cores, or a range"},
            "min": {"type": "integer"},
            "max": {"type": "integer"}
        }, "additionalProperties": false}
    ]
});

shorthand_schema!(GpuSpec, "GpuSpec", "gpu", "a GPU spec like `A100:80GB:2`, `H100,A100:4` or `24GB..:2`", {
    "anyOf": [
        {"type": "integer"},
        {"type": "string"},
        {"type": "object", "properties": {
            "vendor": {"type": "string", "description": "`nvidia`, `amd`, `google` (`tpu`), `intel` or `tenstorrent` (`tt`)"},
            "name": {"type": ["string", "array"], "items": {"type": "string"}, "description": "Model name(s), e.g. `A100`"},
            "count": {"type": ["integer", "string", "object"], "description": "Number of GPUs, or a range (default `1..`)"},
            "memory": {"type": ["number", "string", "object"], "description": "Memory per GPU, e.g. `24GB..`"},
            "total_memory": {"type": ["number", "string", "object"], "description": "Memory of all GPUs together"},
            "compute_capability": {"type": ["number", "string", "array"], "description": "CUDA compute capability, e.g. `7.5`"}
        }, "additionalProperties": false}
    ]
});

shorthand_schema!(DiskSpec, "DiskSpec", "disk", "a disk size like `200GB` or a range like `100GB..`", {
    "anyOf": [
        {"type": "number"},
        {"type": "string"},
        {"type": "object", "properties": {"size": {"type": ["number", "string", "object"]}}, "required": ["size"], "additionalProperties": false}
    ]
});

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Raw {
        Raw::Str(text.into())
    }

    #[test]
    fn cpu_shorthands() {
        assert_eq!(
            CpuSpec::from_raw(Raw::Int(4)).map(|c| c.to_string()),
            Ok("4".into())
        );
        assert_eq!(
            CpuSpec::from_raw(s("2..8")).map(|c| c.count()),
            Ok(Range {
                min: Some(2),
                max: Some(8)
            })
        );
        let arm = CpuSpec::from_raw(s("arm:4")).expect("valid");
        assert_eq!(
            (arm.arch, arm.count()),
            (Some(CpuArch::Arm), Range::exactly(4))
        );
        assert_eq!(
            CpuSpec::from_raw(s("4:ARM")).map(|c| c.arch),
            Ok(Some(CpuArch::Arm))
        );
        assert_eq!(
            CpuSpec::from_raw(s("arm")).map(|c| c.count()),
            Ok(CpuSpec::DEFAULT_COUNT)
        );
        assert_eq!(
            CpuSpec::from_raw(Raw::Map(vec![("min".into(), Raw::Int(2))])).map(|c| c.count()),
            Ok(Range::at_least(2))
        );
        assert!(CpuSpec::from_raw(s("")).unwrap_err().contains("empty part"));
        assert!(
            CpuSpec::from_raw(s("4:8"))
                .unwrap_err()
                .contains("count twice")
        );
        assert!(
            CpuSpec::from_raw(s("arm:x86"))
                .unwrap_err()
                .contains("architecture twice")
        );
        assert!(CpuSpec::from_raw(s("foo:4")).is_err());
        assert!(CpuSpec::from_raw(s("2.5")).is_err());
        assert!(CpuSpec::from_raw(Raw::Float(2.5)).is_err());
        assert!(CpuSpec::from_raw(Raw::Bool(true)).is_err());
        let arch = |value: &str| {
            CpuSpec::from_raw(Raw::Map(vec![("arch".into(), s(value))])).map(|c| c.arch)
        };
        assert_eq!(
            arch("ARM"),
            Ok(Some(CpuArch::Arm)),
            "any case, as in dstack"
        );
        assert!(arch("foo").is_err());
        assert_eq!(
            CpuSpec::from_raw(Raw::Map(vec![("min".into(), s(" +4 "))])).map(|c| c.count()),
            Ok(Range::at_least(4))
        );
        assert_eq!(
            CpuSpec::from_raw(Raw::Int(0)).map(|c| c.count()),
            Ok(Range::exactly(0))
        );
    }

    #[test]
    fn gpu_shorthands() {
        let gpu = GpuSpec::from_raw(s("A100:80GB:2")).expect("valid");
        assert_eq!(gpu.names, vec!["A100".to_string()]);
        assert_eq!(gpu.memory, Some(Range::exactly(Memory(80.0))));
        assert_eq!(gpu.count(), Range::exactly(2));
        let gpu = GpuSpec::from_raw(s("H100,A100:4")).expect("valid");
        assert_eq!(gpu.names.len(), 2);
        let gpu = GpuSpec::from_raw(s("24GB..:2")).expect("valid");
        assert_eq!(
            (gpu.memory, gpu.count()),
            (Some(Range::at_least(Memory(24.0))), Range::exactly(2))
        );
        assert_eq!(
            GpuSpec::from_raw(s("MI300X:AMD")).map(|g| g.vendor),
            Ok(Some(GpuVendor::Amd))
        );
        assert_eq!(
            GpuSpec::from_raw(s("tpu:v5p-1024")).map(|g| g.vendor),
            Ok(Some(GpuVendor::Google))
        );
        assert_eq!(
            GpuSpec::from_raw(s("Nvidia")).map(|g| g.count()),
            Ok(GpuSpec::DEFAULT_COUNT)
        );
        assert_eq!(
            GpuSpec::from_raw(s("tpu-v3-8")).map(|g| g.names),
            Ok(vec!["v3-8".to_string()])
        );
        assert_eq!(
            GpuSpec::from_raw(Raw::Int(2)).map(|g| g.count()),
            Ok(Range::exactly(2))
        );
        assert_eq!(
            GpuSpec::from_raw(s("16GB..32")).map(|g| g.memory),
            Ok(Some(Range {
                min: Some(Memory(16.0)),
                max: Some(Memory(32.0))
            }))
        );
        assert!(
            GpuSpec::from_raw(s("A100:"))
                .unwrap_err()
                .contains("empty part")
        );
        assert!(
            GpuSpec::from_raw(s("A100,:2"))
                .unwrap_err()
                .contains("empty model name")
        );
        assert!(
            GpuSpec::from_raw(s("A100:2:3"))
                .unwrap_err()
                .contains("count twice")
        );
        assert!(
            GpuSpec::from_raw(s("nvidia:amd"))
                .unwrap_err()
                .contains("vendor twice")
        );
        assert!(GpuSpec::from_raw(Raw::Float(1.5)).is_err());
        assert!(GpuSpec::from_raw(Raw::Map(vec![("min".into(), Raw::Int(1))])).is_err());
    }

    #[test]
    fn gpu_round_trips_through_its_canonical_form() {
        for text in [
            "A100:80GB:2",
            "nvidia:H100,A100:1..",
            "24GB..:2",
            "2",
            "amd:MI300X:8",
        ] {
            let gpu = GpuSpec::from_raw(s(text)).expect("valid");
            let again = GpuSpec::from_raw(s(&gpu.to_string())).expect("canonical form parses");
            assert_eq!(gpu.to_string(), again.to_string(), "{text}");
            assert_eq!(gpu.count(), again.count());
        }
        let cc = GpuSpec::from_raw(Raw::Map(vec![(
            "compute_capability".into(),
            Raw::Float(7.5),
        )]))
        .expect("valid");
        let json = serde_json::to_value(&cc).expect("serializes");
        let back: GpuSpec = serde_json::from_value(json).expect("deserializes");
        assert_eq!(
            back,
            GpuSpec {
                count: Some(GpuSpec::DEFAULT_COUNT),
                ..cc
            }
        );
    }

    #[test]
    fn compute_capability_forms() {
        assert_eq!(
            ComputeCapability::from_raw(Raw::Float(7.5)),
            Ok(ComputeCapability(7, 5))
        );
        assert_eq!(
            ComputeCapability::from_raw(Raw::Float(8.0)),
            Ok(ComputeCapability(8, 0))
        );
        assert_eq!(
            ComputeCapability::from_raw(s("8.6")),
            Ok(ComputeCapability(8, 6))
        );
        assert_eq!(
            ComputeCapability::from_raw(Raw::Seq(vec![Raw::Int(9), Raw::Int(0)])),
            Ok(ComputeCapability(9, 0))
        );
        assert!(ComputeCapability::from_raw(Raw::Int(8)).is_err());
        assert!(ComputeCapability::from_raw(s("7.5.1")).is_err());
        assert!(ComputeCapability::from_raw(Raw::Seq(vec![Raw::Int(8), Raw::Null])).is_err());
    }

    #[test]
    fn disk_forms() {
        assert_eq!(
            DiskSpec::from_raw(s("200GB")).map(|d| d.size),
            Ok(Range::exactly(Memory(200.0)))
        );
        assert_eq!(
            DiskSpec::from_raw(s("100GB..")).map(|d| d.size),
            Ok(Range::at_least(Memory(100.0)))
        );
        assert!(DiskSpec::from_raw(Raw::Map(vec![("min".into(), s("100GB"))])).is_err());
    }
}
