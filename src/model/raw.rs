//! A loosely typed value, the input of every shorthand parser.
//!
//! Shorthand types (`2..8`, `A100:80GB:2`, `1h`, `80:8080`) accept several shapes: a number, a
//! string, a mapping. They deserialize into [`Raw`] first and then parse it, so the same parser
//! serves the typed model (read from YAML nodes) and the schema's `x-dstack-parse` keyword (run
//! on JSON values). Parsers return plain `String` errors; callers attach the location.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Any YAML/JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Raw>),
    Map(Vec<(String, Raw)>),
}

impl Raw {
    /// How the value reads in a message.
    pub fn describe(&self) -> String {
        match self {
            Self::Null => "null".into(),
            Self::Bool(b) => format!("`{b}`"),
            Self::Int(i) => format!("`{i}`"),
            // `2.0`, not `2`: a whole number written as a decimal reads as written.
            Self::Float(f) => format!("`{f:?}`"),
            Self::Str(s) => format!("`{s}`"),
            Self::Seq(_) => "a list".into(),
            Self::Map(_) => "a mapping".into(),
        }
    }

    /// Text of a scalar: strings as they are, numbers printed.
    pub fn scalar_text(&self) -> Option<String> {
        match self {
            Self::Str(s) => Some(s.clone()),
            Self::Int(i) => Some(i.to_string()),
            Self::Float(f) => Some(format_float(*f)),
            _ => None,
        }
    }

    /// Read a mapping's fields, refusing keys not in `allowed`.
    pub fn fields(self, what: &str, allowed: &[&str]) -> Result<Fields, String> {
        let Self::Map(entries) = self else {
            return Err(format!("expected {what}, found {}", self.describe()));
        };
        for (key, _) in &entries {
            if !allowed.contains(&key.as_str()) {
                let expected: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
                return Err(format!(
                    "unknown property `{key}` in {what}; expected {}",
                    expected.join(", ")
                ));
            }
        }
        Ok(Fields(entries))
    }
}

/// The fields of a mapping, taken one by one.
pub struct Fields(Vec<(String, Raw)>);

impl Fields {
    /// Remove and return a field; null counts as absent.
    pub fn take(&mut self, key: &str) -> Option<Raw> {
        let index = self.0.iter().position(|(k, _)| k == key)?;
        match self.0.remove(index).1 {
            Raw::Null => None,
            value => Some(value),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Print a float without a needless `.0` and without exponent noise: `0.5`, `8`, `1.25`.
pub fn format_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        let text = format!("{f}");
        text
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Raw, D::Error> {
        Raw::deserialize(deserializer)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Raw>()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<Raw, Raw>()? {
            let key = key.scalar_text().unwrap_or_else(|| key.describe());
            entries.push((key, value));
        }
        Ok(Raw::Map(entries))
    }
}

/// Implement `Deserialize` for a type with `fn from_raw(Raw) -> Result<Self, String>`.
macro_rules! deserialize_from_raw {
    ($type:ty) => {
        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = $crate::model::raw::Raw::deserialize(deserializer)?;
                <$type>::from_raw(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use deserialize_from_raw;
