//! Sizes, ranges and durations, with dstack's shorthand syntaxes.
//!
//! - [`Memory`]: gigabytes; a number means GB, a string takes `MB`, `GB` or `TB` (any case,
//!   spaces ignored): `512MB`, `16GB`, `1TB`.
//! - [`Range`]: `8` (exactly), `2..` (at least), `..8` (at most), `2..8`, or `{min, max}`.
//!   An empty range (`..`) and `min > max` are rejected.
//! - [`Duration`]: seconds, or `<n>[s|m|h|d|w]`: `90`, `30m`, `1h`, `2d`.
//! - [`OffDuration`] (`max_duration`, `stop_duration`): a duration or `off`; negatives rejected.
//! - [`IdleDuration`] (`idle_duration`, `auto_cleanup_duration`, `inactivity_duration`): a
//!   duration or `off` (also `false` or `-1`).
//!
//! Every type serializes to its shortest canonical text (`8GB..`, `1h`), which reads well in
//! plans and parses back to the same value.

use std::cmp::Ordering;
use std::fmt;

use serde::{Serialize, Serializer};

use super::lenient::{int_from_raw, parse_int_text, parse_python_int};
use super::raw::{Raw, deserialize_from_raw, format_float};

/// A memory or disk size in gigabytes.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Memory(pub f64);

impl Memory {
    /// Parse `16GB`, `512MB`, `1TB` or a bare number of GB.
    pub fn parse(text: &str) -> Result<Self, String> {
        let compact: String = text
            .chars()
            .filter(|c| *c != ' ')
            .collect::<String>()
            .to_lowercase();
        let (number, factor) = if let Some(n) = compact.strip_suffix("tb") {
            (n, 1024.0)
        } else if let Some(n) = compact.strip_suffix("gb") {
            (n, 1.0)
        } else if let Some(n) = compact.strip_suffix("mb") {
            (n, 1.0 / 1024.0)
        } else {
            (compact.as_str(), 1.0)
        };
        parse_float(number)
            .map(|value| Self(value * factor))
            .ok_or_else(|| {
                format!(
                    "invalid memory size `{text}`: expected a number with MB, GB or TB, like `16GB`"
                )
            })
    }

    /// A number is gigabytes; like dstack (pydantic), a boolean counts as the number 1 or 0.
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Int(i) => Ok(Self(i as f64)),
            Raw::Float(f) => Ok(Self(f)),
            Raw::Bool(b) => Ok(Self(f64::from(u8::from(b)))),
            Raw::Str(s) => Self::parse(&s),
            other => Err(format!(
                "expected a memory size like `16GB`, found {}",
                other.describe()
            )),
        }
    }

    /// Bytes, rounded down.
    pub fn bytes(self) -> u64 {
        (self.0 * 1024.0 * 1024.0 * 1024.0) as u64
    }
}

/// Python's `float()`: decimal numbers, exponents, `inf` and `nan` are not sizes we accept.
fn parse_float(text: &str) -> Option<f64> {
    if text.is_empty() || !text.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'_'))
    {
        return None;
    }
    text.replace('_', "")
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whole megabytes read better as GB with up to three decimals.
        let rounded = (self.0 * 1000.0).round() / 1000.0;
        write!(f, "{}GB", format_float(rounded))
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

deserialize_from_raw!(Memory);

/// A value a [`Range`] can hold.
pub trait RangeBound: Copy + PartialOrd + fmt::Display {
    /// What a single value looks like, for messages.
    const EXAMPLE: &'static str;
    fn from_raw_bound(raw: Raw) -> Result<Self, String>;
    fn parse_bound(text: &str) -> Result<Self, String>;
}

impl RangeBound for i64 {
    const EXAMPLE: &'static str = "`2`";

    /// As dstack reads integers: `" 4 "`, `"+4"`, `"1_000"`, `"2.0"`, `2.0` and `true` are fine.
    fn from_raw_bound(raw: Raw) -> Result<Self, String> {
        int_from_raw(raw)
    }

    fn parse_bound(text: &str) -> Result<Self, String> {
        parse_int_text(text).ok_or_else(|| format!("expected an integer, found `{text}`"))
    }
}

impl RangeBound for Memory {
    const EXAMPLE: &'static str = "`16GB`";

    fn from_raw_bound(raw: Raw) -> Result<Self, String> {
        Memory::from_raw(raw)
    }

    fn parse_bound(text: &str) -> Result<Self, String> {
        Memory::parse(text)
    }
}

/// An inclusive range with optional ends; at least one end is set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range<T> {
    pub min: Option<T>,
    pub max: Option<T>,
}

impl<T: RangeBound> Range<T> {
    pub fn at_least(min: T) -> Self {
        Self {
            min: Some(min),
            max: None,
        }
    }

    pub fn exactly(value: T) -> Self {
        Self {
            min: Some(value),
            max: Some(value),
        }
    }

    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let range = match raw {
            Raw::Str(text) if text.contains("..") => {
                let compact: String = text.chars().filter(|c| *c != ' ').collect();
                let mut parts = compact.split("..");
                let (Some(min), Some(max), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(format!(
                        "invalid range `{text}`: expected `MIN..MAX`, `MIN..` or `..MAX`"
                    ));
                };
                let bound = |s: &str| (!s.is_empty()).then(|| T::parse_bound(s)).transpose();
                Self {
                    min: bound(min)?,
                    max: bound(max)?,
                }
            }
            Raw::Map(_) => {
                let mut fields = raw.fields("a range", &["min", "max"])?;
                let min = fields.take("min").map(T::from_raw_bound).transpose()?;
                let max = fields.take("max").map(T::from_raw_bound).transpose()?;
                Self { min, max }
            }
            raw @ (Raw::Int(_) | Raw::Float(_) | Raw::Str(_) | Raw::Bool(_)) => {
                Self::exactly(T::from_raw_bound(raw)?)
            }
            other => {
                return Err(format!(
                    "expected a value like {} or a range like `MIN..MAX`, found {}",
                    T::EXAMPLE,
                    other.describe()
                ));
            }
        };
        range.check()
    }

    fn check(self) -> Result<Self, String> {
        match (self.min, self.max) {
            (None, None) => {
                Err("invalid empty range `..`: give a minimum, a maximum or both".into())
            }
            (Some(min), Some(max)) if min.partial_cmp(&max) == Some(Ordering::Greater) => Err(
                format!("invalid range `{min}..{max}`: the minimum is greater than the maximum"),
            ),
            _ => Ok(self),
        }
    }

    /// Whether `value` lies in the range.
    pub fn contains(&self, value: T) -> bool {
        self.min.is_none_or(|min| value >= min) && self.max.is_none_or(|max| value <= max)
    }
}

impl<T: RangeBound> fmt::Display for Range<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.min, self.max) {
            (Some(min), Some(max)) if min.partial_cmp(&max) == Some(Ordering::Equal) => {
                write!(f, "{min}")
            }
            (min, max) => {
                if let Some(min) = min {
                    write!(f, "{min}")?;
                }
                f.write_str("..")?;
                if let Some(max) = max {
                    write!(f, "{max}")?;
                }
                Ok(())
            }
        }
    }
}

impl<T: RangeBound> Serialize for Range<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de, T: RangeBound> serde::Deserialize<'de> for Range<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Raw::deserialize(deserializer)?;
        Self::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

use serde::Deserialize as _;

/// A duration in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub i64);

impl Duration {
    /// Seconds as Python's `int()` reads them (`" 90 "`, `"+90"`, `"1_000"`), or `<n>[smhdw]`
    /// with optional spaces before the unit.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(seconds) = parse_python_int(text) {
            return Ok(Self(seconds));
        }
        let invalid = || {
            format!(
                "invalid duration `{text}`: expected seconds or a number with s, m, h, d or w, like `30m`"
            )
        };
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        if digits_end == 0 {
            return Err(invalid());
        }
        let amount: i64 = text[..digits_end].parse().map_err(|_| invalid())?;
        let unit = text[digits_end..].trim_start_matches(' ');
        let multiplier = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 24 * 3600,
            "w" => 7 * 24 * 3600,
            _ => return Err(invalid()),
        };
        amount.checked_mul(multiplier).map(Self).ok_or_else(invalid)
    }

    /// A number is seconds (a fraction is dropped, a boolean is 1 or 0, as in dstack); `off`
    /// is 0, what dstack's YAML 1.1 reader makes of it (`false`).
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Int(i) => Ok(Self(i)),
            Raw::Float(f) if f.is_finite() => Ok(Self(f.trunc() as i64)),
            Raw::Bool(b) => Ok(Self(i64::from(b))),
            Raw::Str(s) if s == "off" => Ok(Self(0)),
            Raw::Str(s) => Self::parse(&s),
            other => Err(format!(
                "expected a duration like `30m` or seconds, found {}",
                other.describe()
            )),
        }
    }

    pub fn seconds(self) -> i64 {
        self.0
    }

    pub fn std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0.max(0) as u64)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0;
        for (unit, size) in [
            ("w", 7 * 24 * 3600),
            ("d", 24 * 3600),
            ("h", 3600),
            ("m", 60),
        ] {
            if seconds != 0 && seconds % size == 0 {
                return write!(f, "{}{unit}", seconds / size);
            }
        }
        write!(f, "{seconds}s")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

deserialize_from_raw!(Duration);

/// A duration that can be switched off (`max_duration`, `stop_duration`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffDuration {
    Off,
    After(Duration),
}

impl OffDuration {
    /// `None` means "the default" (`true` is the same as leaving it out).
    pub fn from_raw_optional(raw: Raw) -> Result<Option<Self>, String> {
        match raw {
            Raw::Null | Raw::Bool(true) => Ok(None),
            Raw::Bool(false) => Ok(Some(Self::Off)),
            Raw::Str(s) if s == "off" => Ok(Some(Self::Off)),
            other => {
                let duration = Duration::from_raw(other)?;
                if duration.0 < 0 {
                    return Err("a duration cannot be negative".into());
                }
                Ok(Some(Self::After(duration)))
            }
        }
    }

    pub fn duration(self) -> Option<Duration> {
        match self {
            Self::Off => None,
            Self::After(d) => Some(d),
        }
    }
}

impl fmt::Display for OffDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::After(d) => d.fmt(f),
        }
    }
}

/// A duration after which something idle is cleaned up, or `off` (`idle_duration`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleDuration {
    Off,
    After(Duration),
}

impl IdleDuration {
    pub fn from_raw_optional(raw: Raw) -> Result<Option<Self>, String> {
        match raw {
            Raw::Null | Raw::Bool(true) => Ok(None),
            Raw::Bool(false) => Ok(Some(Self::Off)),
            Raw::Str(s) if s == "off" => Ok(Some(Self::Off)),
            other => {
                let duration = Duration::from_raw(other)?;
                // Negative values mean "off" (dstack stores `-1` for it and accepts any negative).
                Ok(Some(if duration.0 < 0 {
                    Self::Off
                } else {
                    Self::After(duration)
                }))
            }
        }
    }

    pub fn duration(self) -> Option<Duration> {
        match self {
            Self::Off => None,
            Self::After(d) => Some(d),
        }
    }
}

impl fmt::Display for IdleDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::After(d) => d.fmt(f),
        }
    }
}

/// Serde glue for `Option<OffDuration>` / `Option<IdleDuration>` fields: `true` means default.
macro_rules! optional_duration_serde {
    ($module:ident, $type:ty) => {
        pub mod $module {
            use super::*;

            pub fn serialize<S: Serializer>(
                value: &Option<$type>,
                serializer: S,
            ) -> Result<S::Ok, S::Error> {
                match value {
                    Some(v) => serializer.collect_str(v),
                    None => serializer.serialize_none(),
                }
            }

            pub fn deserialize<'de, D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Option<$type>, D::Error> {
                let raw = Raw::deserialize(deserializer)?;
                <$type>::from_raw_optional(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}
optional_duration_serde!(off_duration, OffDuration);
optional_duration_serde!(idle_duration, IdleDuration);

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Raw {
        Raw::Str(text.into())
    }

    #[test]
    fn memory_units() {
        assert_eq!(Memory::from_raw(s("512MB")), Ok(Memory(0.5)));
        assert_eq!(Memory::from_raw(s("16 gb")), Ok(Memory(16.0)));
        assert_eq!(Memory::from_raw(s("1TB")), Ok(Memory(1024.0)));
        assert_eq!(Memory::from_raw(s("8")), Ok(Memory(8.0)));
        assert_eq!(Memory::from_raw(Raw::Float(1.5)), Ok(Memory(1.5)));
        assert_eq!(Memory::from_raw(Raw::Int(64)), Ok(Memory(64.0)));
        assert!(Memory::from_raw(s("16GiB")).is_err());
        assert!(Memory::from_raw(s("lots")).is_err());
        assert!(Memory::from_raw(s("inf")).is_err());
        assert_eq!(
            Memory::from_raw(Raw::Bool(true)),
            Ok(Memory(1.0)),
            "as in dstack"
        );
        assert_eq!(Memory(0.5).to_string(), "0.5GB");
        assert_eq!(Memory(100.0).to_string(), "100GB");
    }

    #[test]
    fn int_ranges() {
        let r = |raw| Range::<i64>::from_raw(raw);
        assert_eq!(r(Raw::Int(8)), Ok(Range::exactly(8)));
        assert_eq!(r(s("2..")), Ok(Range::at_least(2)));
        assert_eq!(
            r(s("..8")),
            Ok(Range {
                min: None,
                max: Some(8)
            })
        );
        assert_eq!(
            r(s(" 2 .. 8 ")),
            Ok(Range {
                min: Some(2),
                max: Some(8)
            })
        );
        assert_eq!(
            r(Raw::Map(vec![
                ("min".into(), Raw::Int(1)),
                ("max".into(), Raw::Int(4))
            ])),
            Ok(Range {
                min: Some(1),
                max: Some(4)
            })
        );
        assert!(r(s("..")).unwrap_err().contains("empty range"));
        assert!(r(s("8..2")).unwrap_err().contains("minimum is greater"));
        assert!(r(s("1...3")).is_err(), "range typo");
        assert!(r(s("2..x")).is_err());
        assert!(r(Raw::Float(1.5)).is_err());
        assert!(r(Raw::Map(vec![("minimum".into(), Raw::Int(1))])).is_err());
        assert_eq!(Range::<i64>::at_least(2).to_string(), "2..");
        assert_eq!(Range::<i64>::exactly(3).to_string(), "3");
        assert_eq!(
            Range {
                min: Some(1i64),
                max: Some(4)
            }
            .to_string(),
            "1..4"
        );
    }

    #[test]
    fn memory_ranges() {
        let r = |raw| Range::<Memory>::from_raw(raw);
        assert_eq!(r(s("8GB..")), Ok(Range::at_least(Memory(8.0))));
        assert_eq!(
            r(s("16GB..32")),
            Ok(Range {
                min: Some(Memory(16.0)),
                max: Some(Memory(32.0))
            })
        );
        assert_eq!(r(Raw::Int(24)), Ok(Range::exactly(Memory(24.0))));
        assert!(r(s("80GB..40GB")).is_err());
        assert_eq!(Range::at_least(Memory(8.0)).to_string(), "8GB..");
    }

    #[test]
    fn durations() {
        assert_eq!(Duration::from_raw(Raw::Int(90)), Ok(Duration(90)));
        assert_eq!(Duration::from_raw(s("30m")), Ok(Duration(1800)));
        assert_eq!(Duration::from_raw(s("1 h")), Ok(Duration(3600)));
        assert_eq!(Duration::from_raw(s("2d")), Ok(Duration(172_800)));
        assert_eq!(Duration::from_raw(s("1w")), Ok(Duration(604_800)));
        assert_eq!(Duration::from_raw(s("120")), Ok(Duration(120)));
        assert_eq!(Duration::from_raw(s(" +1_000 ")), Ok(Duration(1000)));
        assert_eq!(Duration::from_raw(Raw::Bool(true)), Ok(Duration(1)));
        assert_eq!(Duration::from_raw(s("off")), Ok(Duration(0)));
        assert!(
            Duration::from_raw(s("2.0")).is_err(),
            "int() takes no fraction"
        );
        assert!(Duration::from_raw(s("1.5h")).is_err());
        assert!(Duration::from_raw(s("h")).is_err());
        assert!(Duration::from_raw(s("10 years")).is_err());
        assert_eq!(Duration(3600).to_string(), "1h");
        assert_eq!(Duration(5400).to_string(), "90m");
        assert_eq!(Duration(45).to_string(), "45s");
        assert_eq!(Duration(0).to_string(), "0s");
    }

    #[test]
    fn off_and_idle_durations() {
        assert_eq!(
            OffDuration::from_raw_optional(s("off")),
            Ok(Some(OffDuration::Off))
        );
        assert_eq!(
            OffDuration::from_raw_optional(Raw::Bool(false)),
            Ok(Some(OffDuration::Off))
        );
        assert_eq!(OffDuration::from_raw_optional(Raw::Bool(true)), Ok(None));
        assert_eq!(
            OffDuration::from_raw_optional(s("2h")),
            Ok(Some(OffDuration::After(Duration(7200))))
        );
        assert!(OffDuration::from_raw_optional(Raw::Int(-5)).is_err());
        assert_eq!(
            IdleDuration::from_raw_optional(Raw::Int(-1)),
            Ok(Some(IdleDuration::Off))
        );
        assert_eq!(
            IdleDuration::from_raw_optional(s("off")),
            Ok(Some(IdleDuration::Off))
        );
        assert_eq!(
            IdleDuration::from_raw_optional(s("5m")),
            Ok(Some(IdleDuration::After(Duration(300))))
        );
    }
}
