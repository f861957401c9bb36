//! Field tables: for each kind, which changes apply in place and which force a replacement.
//!
//! | kind | in place | replace | refused |
//! |---|---|---|---|
//! | volume | `size` increase, `tags`, `auto_cleanup_duration` | `backend`, `region`, `availability_zone`, `volume_id`, anything else | `size` decrease |
//! | fleet | `nodes`, `resources`, `backends`, `regions`, `availability_zones`, `instance_types`, `spot_policy`, `max_price`, `idle_duration`, `retry`, `reservation`, `tags`, `blocks`, `backend_options` | `placement`, `ssh_config`, `env` | |
//! | run (task, service, dev environment) | | every field: a run is immutable, a new spec is a new run | |
//! | tag | | `run` | |
//!
//! dstack re-creates a volume on any change (destroying its data); here only the fields a
//! backend cannot change in place do, and such a change is flagged as data loss.

use serde_json::Value as Json;

use crate::model::ConfigType;
use crate::model::quantity::Memory;

/// The effect of changing one top-level field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    InPlace,
    Replace,
    /// The change is not allowed at all; the message says why and what to do.
    Refused(String),
}

fn size_of(value: Option<&Json>) -> Option<f64> {
    let value = value?;
    match value {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => Memory::parse(s).ok().map(|m| m.0),
        _ => None,
    }
}

/// The effect of a change of `field` from `before` to `after` for a configuration type.
pub fn effect(
    config_type: ConfigType,
    field: &str,
    before: Option<&Json>,
    after: Option<&Json>,
) -> Effect {
    match config_type {
        ConfigType::Volume => match field {
            "size" => match (size_of(before), size_of(after)) {
                (Some(old), Some(new)) if new > old => Effect::InPlace,
                (Some(old), Some(new)) if new < old => Effect::Refused(format!(
                    "a volume cannot shrink ({} → {}); to start over with a smaller one, delete it first (this destroys its data) or use another name",
                    Memory(old),
                    Memory(new)
                )),
                _ => Effect::Replace,
            },
            "tags" | "auto_cleanup_duration" => Effect::InPlace,
            _ => Effect::Replace,
        },
        ConfigType::Fleet => match field {
            "nodes" | "resources" | "backends" | "regions" | "availability_zones"
            | "instance_types" | "spot_policy" | "max_price" | "idle_duration" | "retry"
            | "reservation" | "tags" | "blocks" | "backend_options" => Effect::InPlace,
            _ => Effect::Replace,
        },
        ConfigType::Task | ConfigType::DevEnvironment | ConfigType::Service | ConfigType::Tag => {
            Effect::Replace
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn volume_fields() {
        let s = |v: &str| json!(v);
        assert_eq!(
            effect(
                ConfigType::Volume,
                "size",
                Some(&s("10GB")),
                Some(&s("20GB"))
            ),
            Effect::InPlace
        );
        assert!(matches!(
            effect(
                ConfigType::Volume,
                "size",
                Some(&s("20GB")),
                Some(&s("10GB"))
            ),
            Effect::Refused(_)
        ));
        assert_eq!(
            effect(ConfigType::Volume, "region", Some(&s("a")), Some(&s("b"))),
            Effect::Replace
        );
        assert_eq!(
            effect(ConfigType::Volume, "availability_zone", None, Some(&s("b"))),
            Effect::Replace
        );
        assert_eq!(
            effect(ConfigType::Volume, "tags", None, Some(&json!({"a": "b"}))),
            Effect::InPlace
        );
    }

    #[test]
    fn fleet_and_run_fields() {
        assert_eq!(
            effect(ConfigType::Fleet, "nodes", None, None),
            Effect::InPlace
        );
        assert_eq!(
            effect(ConfigType::Fleet, "placement", None, None),
            Effect::Replace
        );
        assert_eq!(
            effect(ConfigType::Task, "commands", None, None),
            Effect::Replace
        );
        assert_eq!(effect(ConfigType::Tag, "run", None, None), Effect::Replace);
    }
}
