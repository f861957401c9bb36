//! `env`: environment variables of a run, as a list (`KEY=VALUE`, `KEY`) or a mapping.
//!
//! A bare `KEY` (or `KEY: {key: OTHER}`) takes its value from the environment of the machine that
//! runs `dstack apply`; such a value is sensitive, like `${{ env.X }}`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};

use super::raw::{Raw, deserialize_from_raw};

/// The value of one variable.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EnvValue {
    Text(String),
    /// Read from this variable of the local environment when the run is submitted.
    FromLocal(String),
}

/// Environment variables, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env(pub BTreeMap<String, EnvValue>);

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Env {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let mut vars = BTreeMap::new();
        match raw {
            Raw::Seq(items) => {
                for item in items {
                    let text = item.scalar_text().ok_or_else(|| {
                        format!("expected `KEY=VALUE` or `KEY`, found {}", item.describe())
                    })?;
                    let (key, value) = match text.split_once('=') {
                        Some((key, value)) => (key.to_string(), EnvValue::Text(value.to_string())),
                        None => (text.clone(), EnvValue::FromLocal(text.clone())),
                    };
                    if !is_env_name(&key) || text.contains('\n') {
                        return Err(format!(
                            "invalid environment variable `{text}`: expected `KEY=VALUE` or `KEY`, where KEY is letters, digits and `_`, not starting with a digit"
                        ));
                    }
                    if vars.insert(key, value).is_some() {
                        return Err(format!("duplicate environment variable `{text}`"));
                    }
                }
            }
            Raw::Map(entries) => {
                for (key, value) in entries {
                    let value = match value {
                        Raw::Str(s) => EnvValue::Text(s),
                        Raw::Int(i) => EnvValue::Text(i.to_string()),
                        raw @ Raw::Float(_) => {
                            EnvValue::Text(raw.scalar_text().unwrap_or_default())
                        }
                        raw @ Raw::Map(_) => {
                            let mut fields = raw.fields("an environment reference", &["key"])?;
                            match fields.take("key") {
                                Some(name @ (Raw::Str(_) | Raw::Int(_) | Raw::Float(_))) => {
                                    EnvValue::FromLocal(name.scalar_text().unwrap_or_default())
                                }
                                _ => {
                                    return Err(format!(
                                        "`{key}: {{key: NAME}}` needs a variable name"
                                    ));
                                }
                            }
                        }
                        other => {
                            return Err(format!(
                                "the value of `{key}` must be text or a number, found {}; quote it",
                                other.describe()
                            ));
                        }
                    };
                    vars.insert(key, value);
                }
            }
            other => {
                return Err(format!(
                    "expected a list of `KEY=VALUE` or a mapping, found {}",
                    other.describe()
                ));
            }
        }
        Ok(Self(vars))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Env {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            match value {
                EnvValue::Text(text) => map.serialize_entry(key, text)?,
                EnvValue::FromLocal(name) => {
                    map.serialize_entry(key, &BTreeMap::from([("key", name)]))?;
                }
            }
        }
        map.end()
    }
}

deserialize_from_raw!(Env);

impl JsonSchema for Env {
    fn schema_name() -> Cow<'static, str> {
        "Env".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "array", "items": {"type": ["string", "number"]}},
                {"type": "object", "additionalProperties": {"anyOf": [
                    {"type": ["string", "number"]},
                    {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"], "additionalProperties": false}
                ]}}
            ],
            "x-dstack-parse": "env",
            "x-dstack-expected": "a list of `KEY=VALUE` or a mapping of names to values"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Raw {
        Raw::Seq(items.iter().map(|i| Raw::Str((*i).into())).collect())
    }

    #[test]
    fn list_and_map_forms() {
        let env = Env::from_raw(list(&["A=1", "B", "C=", "D==x"])).expect("valid");
        assert_eq!(env.0.get("A"), Some(&EnvValue::Text("1".into())));
        assert_eq!(env.0.get("B"), Some(&EnvValue::FromLocal("B".into())));
        assert_eq!(env.0.get("C"), Some(&EnvValue::Text(String::new())));
        assert_eq!(env.0.get("D"), Some(&EnvValue::Text("=x".into())));
        let env = Env::from_raw(Raw::Map(vec![
            ("A".into(), Raw::Int(1)),
            (
                "B".into(),
                Raw::Map(vec![("key".into(), Raw::Str("HOME".into()))]),
            ),
        ]))
        .expect("valid");
        assert_eq!(env.0.get("A"), Some(&EnvValue::Text("1".into())));
        assert_eq!(env.0.get("B"), Some(&EnvValue::FromLocal("HOME".into())));
    }

    #[test]
    fn bad_names_duplicates_and_values() {
        for bad in ["1A=x", "A-B=1", "A =x", "=1", "Ä=1"] {
            assert!(Env::from_raw(list(&[bad])).is_err(), "{bad}");
        }
        assert!(
            Env::from_raw(list(&["A=1", "A=2"]))
                .unwrap_err()
                .contains("duplicate")
        );
        assert!(Env::from_raw(list(&["A=1", "A"])).is_err());
        assert!(Env::from_raw(Raw::Map(vec![("A".into(), Raw::Bool(true))])).is_err());
        assert!(Env::from_raw(Raw::Map(vec![("A".into(), Raw::Null)])).is_err());
        assert!(Env::from_raw(Raw::Str("A=1".into())).is_err());
    }
}
