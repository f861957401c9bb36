//! Scalars read the way dstack reads them.
//!
//! dstack (pydantic in lax mode) takes `"5"` for an integer, `yes`/`on`/`1` for a boolean and
//! `"0.5"` for a number. We accept the same inputs so that every file dstack accepts loads here,
//! and because under YAML 1.2 `yes` and `off` arrive as text: they still mean what the user wrote.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};

use super::raw::{Raw, deserialize_from_raw, format_float};

/// A boolean: `true`/`false`, `yes`/`no`, `on`/`off`, `y`/`n`, `t`/`f`, `1`/`0` (any case).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flag(pub bool);

impl Flag {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Bool(b) => Ok(Self(b)),
            Raw::Int(0) => Ok(Self(false)),
            Raw::Int(1) => Ok(Self(true)),
            #[allow(clippy::float_cmp)]
            Raw::Float(f) if f == 0.0 || f == 1.0 => Ok(Self(f == 1.0)),
            Raw::Str(s) => match s.to_ascii_lowercase().as_str() {
                "0" | "off" | "f" | "false" | "n" | "no" => Ok(Self(false)),
                "1" | "on" | "t" | "true" | "y" | "yes" => Ok(Self(true)),
                _ => Err(format!(
                    "expected a boolean (`true` or `false`), found `{s}`"
                )),
            },
            other => Err(format!(
                "expected a boolean (`true` or `false`), found {}",
                other.describe()
            )),
        }
    }
}

impl Serialize for Flag {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bool(self.0)
    }
}

deserialize_from_raw!(Flag);

impl JsonSchema for Flag {
    fn schema_name() -> Cow<'static, str> {
        "Flag".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [{"type": "boolean"}, {"type": "integer", "enum": [0, 1]}, {"type": "string"}],
            "x-dstack-parse": "flag",
            "x-dstack-expected": "`true` or `false`"
        })
    }
}

/// Parse an integer the way pydantic reads text for an integer field: Python's `int()` rules
/// (see [`parse_python_int`]) plus an all-zero fraction (`"2.0"`).
pub fn parse_int_text(text: &str) -> Option<i64> {
    let trimmed = text.trim();
    let (whole, fraction) = match trimmed.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (trimmed, None),
    };
    if fraction.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b == b'0')) {
        return None;
    }
    parse_python_int(whole)
}

/// Parse an integer the way Python's `int()` does for text: surrounding spaces, a sign, and
/// single `_` between digits are fine (`" 90 "`, `"+90"`, `"1_000"`); a fraction is not.
pub fn parse_python_int(text: &str) -> Option<i64> {
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    trimmed.replace('_', "").parse().ok()
}

/// Read an integer from any scalar dstack would take as one.
pub fn int_from_raw(raw: Raw) -> Result<i64, String> {
    match raw {
        Raw::Int(i) => Ok(i),
        Raw::Bool(b) => Ok(i64::from(b)),
        Raw::Float(f) if f.fract() == 0.0 && f.abs() < 9e15 => Ok(f as i64),
        Raw::Float(f) => Err(format!("expected an integer, found `{}`", format_float(f))),
        Raw::Str(s) => {
            parse_int_text(&s).ok_or_else(|| format!("expected an integer, found `{s}`"))
        }
        other => Err(format!("expected an integer, found {}", other.describe())),
    }
}

/// An integer within `MIN..=MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Int<const MIN: i64, const MAX: i64>(pub i64);

impl<const MIN: i64, const MAX: i64> Int<MIN, MAX> {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let value = int_from_raw(raw)?;
        if value < MIN {
            return Err(format!("must be at least {MIN}, found {value}"));
        }
        if value > MAX {
            return Err(format!("must be at most {MAX}, found {value}"));
        }
        Ok(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl<const MIN: i64, const MAX: i64> fmt::Display for Int<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<const MIN: i64, const MAX: i64> Serialize for Int<MIN, MAX> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

impl<'de, const MIN: i64, const MAX: i64> serde::Deserialize<'de> for Int<MIN, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <Raw as serde::Deserialize>::deserialize(deserializer)?;
        Self::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

impl<const MIN: i64, const MAX: i64> JsonSchema for Int<MIN, MAX> {
    fn schema_name() -> Cow<'static, str> {
        let bound = |v: i64| {
            if v == i64::MAX {
                "max".to_string()
            } else {
                v.to_string().replace('-', "m")
            }
        };
        format!("Int_{}_{}", bound(MIN), bound(MAX)).into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut integer = serde_json::json!({"type": "integer", "minimum": MIN});
        if MAX != i64::MAX {
            integer["maximum"] = MAX.into();
        }
        let expected = if MAX == i64::MAX {
            format!("an integer of at least {MIN}")
        } else {
            format!("an integer from {MIN} to {MAX}")
        };
        json_schema!({
            "anyOf": [integer, {"type": "string", "pattern": "^\\s*[+-]?[0-9][0-9_]*(\\.0*)?\\s*$"}],
            "x-dstack-parse": format!("int:{MIN}:{MAX}"),
            "x-dstack-expected": expected
        })
    }
}

/// A non-negative count with no upper bound.
pub type Count = Int<0, { i64::MAX }>;
/// A positive count.
pub type PositiveCount = Int<1, { i64::MAX }>;
/// A TCP/UDP port number.
pub type PortNumber = Int<1, 65535>;
/// A percentage-like priority from 0 to 100.
pub type Percent = Int<0, 100>;

/// A decimal number (`0.5`, `"0.5"`, `2`).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Number(pub f64);

impl Number {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Int(i) => Ok(Self(i as f64)),
            Raw::Float(f) => Ok(Self(f)),
            Raw::Bool(b) => Ok(Self(f64::from(u8::from(b)))),
            Raw::Str(s) => {
                let cleaned = s.trim().replace('_', "");
                cleaned
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && !cleaned.is_empty())
                    .map(Self)
                    .ok_or_else(|| format!("expected a number, found `{s}`"))
            }
            other => Err(format!("expected a number, found {}", other.describe())),
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_float(self.0))
    }
}

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0)
    }
}

deserialize_from_raw!(Number);

impl JsonSchema for Number {
    fn schema_name() -> Cow<'static, str> {
        "Number".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [{"type": "number"}, {"type": "string"}],
            "x-dstack-parse": "number",
            "x-dstack-expected": "a number"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_accept_yaml_1_1_words() {
        for word in ["yes", "On", "TRUE", "y", "t", "1"] {
            assert_eq!(
                Flag::from_raw(Raw::Str(word.into())),
                Ok(Flag(true)),
                "{word}"
            );
        }
        for word in ["no", "Off", "false", "n", "f", "0"] {
            assert_eq!(
                Flag::from_raw(Raw::Str(word.into())),
                Ok(Flag(false)),
                "{word}"
            );
        }
        assert_eq!(Flag::from_raw(Raw::Int(1)), Ok(Flag(true)));
        assert!(Flag::from_raw(Raw::Int(2)).is_err());
        assert!(Flag::from_raw(Raw::Str("maybe".into())).is_err());
        assert!(Flag::from_raw(Raw::Null).is_err());
    }

    #[test]
    fn ints_follow_python_int() {
        for (text, value) in [
            (" 4 ", 4),
            ("+4", 4),
            ("1_000", 1000),
            ("2.0", 2),
            ("007", 7),
            ("-3", -3),
        ] {
            assert_eq!(parse_int_text(text), Some(value), "{text}");
        }
        for text in ["2.", "1e3", "0x10", "1.5", "", "_1", "1__0", "abc"] {
            assert_eq!(parse_int_text(text), None, "{text}");
        }
        assert_eq!(parse_python_int(" +1_000 "), Some(1000));
        assert_eq!(parse_python_int("2.0"), None, "int() takes no fraction");
        assert_eq!(Percent::from_raw(Raw::Int(100)), Ok(Int(100)));
        assert!(Percent::from_raw(Raw::Int(101)).is_err());
        assert!(PortNumber::from_raw(Raw::Int(0)).is_err());
        assert_eq!(int_from_raw(Raw::Bool(true)), Ok(1));
        assert!(int_from_raw(Raw::Float(1.5)).is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(Number::from_raw(Raw::Str("0.5".into())), Ok(Number(0.5)));
        assert_eq!(Number::from_raw(Raw::Int(2)), Ok(Number(2.0)));
        assert!(Number::from_raw(Raw::Str("cheap".into())).is_err());
    }
}
