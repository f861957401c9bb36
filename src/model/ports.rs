//! Port mappings: `8080` (the same port locally), `80:8080` (local 80 → container 8080),
//! `*:8080` (any free local port), or `{local_port, container_port}`; and a service's `port`.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};

use super::lenient::parse_int_text;
use super::raw::{Raw, deserialize_from_raw};

/// Container ports dstack keeps for itself; they may only be published under another local port.
pub const RESERVED_PORTS: std::ops::RangeInclusive<u16> = 10000..=10999;

/// A published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortMapping {
    /// `None`: any free local port (`*`).
    pub local_port: Option<u16>,
    pub container_port: u16,
}

fn port(value: i64, what: &str) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{what} must be from 1 to 65535, found {value}"))
}

fn port_text(text: &str, what: &str) -> Result<u16, String> {
    let value = parse_int_text(text).filter(|_| text.bytes().all(|b| b.is_ascii_digit()));
    port(
        value.ok_or_else(|| format!("{what} `{text}` is not a number"))?,
        what,
    )
}

impl PortMapping {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Int(i) => {
                let p = port(i, "port")?;
                Ok(Self {
                    local_port: Some(p),
                    container_port: p,
                })
            }
            Raw::Bool(true) => Ok(Self {
                local_port: Some(1),
                container_port: 1,
            }),
            Raw::Str(text) => Self::parse(&text),
            Raw::Map(_) => {
                let mut fields = raw.fields("a port mapping", &["local_port", "container_port"])?;
                let container = fields
                    .take("container_port")
                    .ok_or("a port mapping needs `container_port`")?;
                let container_port =
                    port(super::lenient::int_from_raw(container)?, "container_port")?;
                let local_port = fields
                    .take("local_port")
                    .map(|raw| {
                        super::lenient::int_from_raw(raw).and_then(|i| port(i, "local_port"))
                    })
                    .transpose()?;
                Ok(Self {
                    local_port,
                    container_port,
                })
            }
            other => Err(format!(
                "expected a port like `8080`, `80:8080` or `*:8080`, found {}",
                other.describe()
            )),
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        let invalid =
            || format!("invalid port mapping `{text}`: expected `8080`, `80:8080` or `*:8080`");
        let (local, container) = match text.split_once(':') {
            Some((local, container)) => (Some(local), container),
            None => (None, text),
        };
        if container.is_empty() || container.contains(':') {
            return Err(invalid());
        }
        let container_port =
            port_text(container, "container port").map_err(|e| format!("{}: {e}", invalid()))?;
        let local_port = match local {
            None => Some(container_port),
            Some("*") => None,
            Some(local) => {
                Some(port_text(local, "local port").map_err(|e| format!("{}: {e}", invalid()))?)
            }
        };
        Ok(Self {
            local_port,
            container_port,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.local_port {
            Some(local) if local == self.container_port => write!(f, "{local}"),
            Some(local) => write!(f, "{local}:{}", self.container_port),
            None => write!(f, "*:{}", self.container_port),
        }
    }
}

impl Serialize for PortMapping {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

deserialize_from_raw!(PortMapping);

impl JsonSchema for PortMapping {
    fn schema_name() -> Cow<'static, str> {
        "PortMapping".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": "^(?:(?:[0-9]+|\\*):)?[0-9]+$"},
                {"type": "object", "properties": {
                    "local_port": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535},
                    "container_port": {"type": "integer", "minimum": 1, "maximum": 65535}
                }, "required": ["container_port"], "additionalProperties": false}
            ],
            "x-dstack-parse": "port-mapping",
            "x-dstack-expected": "a port like `8080`, `80:8080` or `*:8080`"
        })
    }
}

/// A service's `port`: the container port the service listens on (`8000`, `80:8000`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    pub local_port: Option<u16>,
    pub container_port: u16,
}

impl ServicePort {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let single = |value: i64| -> Result<Self, String> {
            Ok(Self {
                local_port: Some(80),
                container_port: port(value, "port")?,
            })
        };
        match raw {
            Raw::Int(i) => single(i),
            Raw::Bool(b) => single(i64::from(b)),
            Raw::Float(f) if f.fract() == 0.0 => single(f as i64),
            Raw::Str(text) => {
                if let Some(value) = parse_int_text(&text) {
                    return single(value);
                }
                let invalid = || {
                    format!(
                        "invalid service port `{text}`: expected `8000` or `LOCAL:CONTAINER` like `80:8000`"
                    )
                };
                let (local, container) = text.split_once(':').ok_or_else(invalid)?;
                let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                if !is_number(local) || !is_number(container) {
                    return Err(invalid());
                }
                Ok(Self {
                    local_port: Some(port_text(local, "local port")?),
                    container_port: port_text(container, "container port")?,
                })
            }
            raw @ Raw::Map(_) => {
                let mapping = PortMapping::from_raw(raw)?;
                Ok(Self {
                    local_port: mapping.local_port,
                    container_port: mapping.container_port,
                })
            }
            other => Err(format!(
                "expected a port like `8000` or `80:8000`, found {}",
                other.describe()
            )),
        }
    }
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.local_port {
            Some(local) => write!(f, "{local}:{}", self.container_port),
            None => write!(f, "*:{}", self.container_port),
        }
    }
}

impl Serialize for ServicePort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

deserialize_from_raw!(ServicePort);

impl JsonSchema for ServicePort {
    fn schema_name() -> Cow<'static, str> {
        "ServicePort".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string"},
                {"type": "object", "properties": {
                    "local_port": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535},
                    "container_port": {"type": "integer", "minimum": 1, "maximum": 65535}
                }, "required": ["container_port"], "additionalProperties": false}
            ],
            "x-dstack-parse": "service-port",
            "x-dstack-expected": "a port like `8000` or `80:8000`"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Raw {
        Raw::Str(text.into())
    }

    #[test]
    fn port_mappings() {
        assert_eq!(
            PortMapping::from_raw(Raw::Int(8080)),
            Ok(PortMapping {
                local_port: Some(8080),
                container_port: 8080
            })
        );
        assert_eq!(
            PortMapping::from_raw(s("80:8080")),
            Ok(PortMapping {
                local_port: Some(80),
                container_port: 8080
            })
        );
        assert_eq!(
            PortMapping::from_raw(s("*:8080")),
            Ok(PortMapping {
                local_port: None,
                container_port: 8080
            })
        );
        assert_eq!(
            PortMapping::from_raw(s("8080:22")).map(|p| p.to_string()),
            Ok("8080:22".into())
        );
        assert_eq!(
            PortMapping::from_raw(s("0080")).map(|p| p.container_port),
            Ok(80)
        );
        for bad in ["80:", "", " 80", "1:2:3", "0o17", "80:0", "70000"] {
            assert!(PortMapping::from_raw(s(bad)).is_err(), "{bad}");
        }
        assert!(PortMapping::from_raw(Raw::Int(0)).is_err());
        assert!(PortMapping::from_raw(Raw::Int(484_822)).is_err());
        assert!(PortMapping::from_raw(Raw::Float(80.5)).is_err());
        let map = Raw::Map(vec![("container_port".into(), Raw::Int(22))]);
        assert_eq!(
            PortMapping::from_raw(map),
            Ok(PortMapping {
                local_port: None,
                container_port: 22
            })
        );
    }

    #[test]
    fn service_ports() {
        assert_eq!(
            ServicePort::from_raw(Raw::Int(8000)),
            Ok(ServicePort {
                local_port: Some(80),
                container_port: 8000
            })
        );
        assert_eq!(
            ServicePort::from_raw(s("8000")).map(|p| p.container_port),
            Ok(8000)
        );
        assert_eq!(
            ServicePort::from_raw(s("80:30")),
            Ok(ServicePort {
                local_port: Some(80),
                container_port: 30
            })
        );
        assert!(ServicePort::from_raw(s("*:8000")).is_err());
        assert!(ServicePort::from_raw(Raw::Int(0)).is_err());
        assert!(ServicePort::from_raw(Raw::Null).is_err());
    }
}
