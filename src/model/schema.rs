//! JSON Schemas generated from the model types.
//!
//! `schemas/*.json` in the repository are the output of [`generate`]; the binary embeds them and
//! validates with them, and a test regenerates them and fails when the files differ (run
//! `UPDATE_SCHEMAS=1 cargo test schemas_are_up_to_date` after changing a type). So the schemas
//! and the Rust types cannot drift, and the docs (descriptions) come from the same doc comments.
//!
//! Shorthand types carry `x-dstack-parse: KIND`; [`check_shorthand`] runs that type's parser, so
//! schema errors on shorthands are the parser's own precise messages.

use std::collections::BTreeMap;
use std::sync::{LazyLock, OnceLock};

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json, json};

use super::env::Env;
use super::fleet::{Blocks, FleetNodes, FleetSpec, SshHost};
use super::lenient::{Flag, Number, int_from_raw};
use super::mounts::{FileMapping, MountPoint, RepoSpec};
use super::ports::{PortMapping, ServicePort};
use super::profile::{
    CloudTags, EntityReference, InstanceSelector, PythonVersion, Retry, Schedule, Shell, UnixUser,
};
use super::quantity::{Duration, IdleDuration, Memory, OffDuration, Range};
use super::raw::Raw;
use super::resources::{CpuSpec, DiskSpec, GpuSpec};
use super::run::{
    Artifact, Dep, DevEnvironmentFields, GatewaySetting, Https, RunCommon, ServiceFields,
    ServiceModel, TaskFields,
};
use super::{ConfigType, TagSpec, VolumeSpec};
use crate::config::project::ProjectConfig;
use crate::config::schema::Validator;

/// Prefix of every schema `$id`.
pub const ID_PREFIX: &str = "urn:dstack:schema:";

const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Run the parser of shorthand type `kind` on `value`.
pub fn check_shorthand(kind: &str, value: &Json) -> Result<(), String> {
    fn parse<T: DeserializeOwned>(value: &Json) -> Result<(), String> {
        T::deserialize(value).map(|_| ()).map_err(|e| e.to_string())
    }
    fn raw(value: &Json) -> Result<Raw, String> {
        Raw::deserialize(value).map_err(|e| e.to_string())
    }
    use serde::Deserialize as _;
    match kind {
        "flag" => parse::<Flag>(value),
        "number" => parse::<Number>(value),
        "memory" => parse::<Memory>(value),
        "range-int" => parse::<Range<i64>>(value),
        "range-memory" => parse::<Range<Memory>>(value),
        "duration" => parse::<Duration>(value),
        "off-duration" => OffDuration::from_raw_optional(raw(value)?).map(|_| ()),
        "idle-duration" => IdleDuration::from_raw_optional(raw(value)?).map(|_| ()),
        "cpu" => parse::<CpuSpec>(value),
        "gpu" => parse::<GpuSpec>(value),
        "disk" => parse::<DiskSpec>(value),
        "env" => parse::<Env>(value),
        "port-mapping" => parse::<PortMapping>(value),
        "service-port" => parse::<ServicePort>(value),
        "mount" => parse::<MountPoint>(value),
        "repo" => parse::<RepoSpec>(value),
        "file" => parse::<FileMapping>(value),
        "retry" => parse::<Retry>(value),
        "cloud-tags" => parse::<CloudTags>(value),
        "entity-reference" => parse::<EntityReference>(value),
        "instance-selector" => parse::<InstanceSelector>(value),
        "schedule" => parse::<Schedule>(value),
        "python" => parse::<PythonVersion>(value),
        "shell" => parse::<Shell>(value),
        "user" => parse::<UnixUser>(value),
        "artifact" => parse::<Artifact>(value),
        "dep" => parse::<Dep>(value),
        "gateway" => parse::<GatewaySetting>(value),
        "https" => parse::<Https>(value),
        "model" => parse::<ServiceModel>(value),
        "blocks" => parse::<Blocks>(value),
        "fleet-nodes" => parse::<FleetNodes>(value),
        "ssh-host" => parse::<SshHost>(value),
        other => match other.strip_prefix("int:").and_then(|b| b.split_once(':')) {
            Some((min, max)) => {
                let value = int_from_raw(raw(value)?)?;
                let (min, max) = (
                    min.parse::<i64>().unwrap_or(i64::MIN),
                    max.parse::<i64>().unwrap_or(i64::MAX),
                );
                if value < min {
                    Err(format!("must be at least {min}, found {value}"))
                } else if value > max {
                    Err(format!("must be at most {max}, found {value}"))
                } else {
                    Ok(())
                }
            }
            None => Err(format!("internal error: unknown shorthand `{other}`")),
        },
    }
}

macro_rules! duration_schemas {
    ($type:ty, $name:literal, $parse:literal, $expected:literal) => {
        impl JsonSchema for $type {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "boolean"}, {"type": "null"}],
                    "x-dstack-parse": $parse,
                    "x-dstack-expected": $expected
                })
            }
        }
    };
}
duration_schemas!(
    OffDuration,
    "OffDuration",
    "off-duration",
    "a duration like `30m`, `2h`, seconds, or `off`"
);
duration_schemas!(
    IdleDuration,
    "IdleDuration",
    "idle-duration",
    "a duration like `30m`, `3d`, seconds, or `off`"
);

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^\\s*[+-]?[0-9_]+\\s*$|^[0-9]+ *[smhdw]$"}],
            "x-dstack-parse": "duration",
            "x-dstack-expected": "a duration like `30m`, `2h`, `1d` or seconds"
        })
    }
}

/// A run type's schema is its own fields plus the common ones.
fn object_properties(
    definitions: &Map<String, Json>,
    name: &str,
) -> (Map<String, Json>, Vec<Json>) {
    let def = definitions.get(name).cloned().unwrap_or_default();
    let properties = def
        .get("properties")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    let required = def
        .get("required")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    (properties, required)
}

fn type_schema(
    config_type: ConfigType,
    parts: &[&str],
    definitions: &Map<String, Json>,
    description: &str,
) -> Json {
    let mut properties = Map::new();
    properties.insert(
        "type".into(),
        json!({"const": config_type.as_str(), "description": "The configuration type"}),
    );
    properties.insert(
        "name".into(),
        json!({"type": ["string", "number", "null"], "description": "The resource name (default: the file name without `.dstack.yml`); `^[a-z][a-z0-9-]{1,40}$`"}),
    );
    let mut required = vec![json!("type")];
    for part in parts {
        let (props, req) = object_properties(definitions, part);
        properties.extend(props);
        required.extend(req);
    }
    json!({
        "title": config_type.as_str(),
        "description": description,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    })
}

/// Volume backends that need `region`.
fn volume_conditions() -> Json {
    json!([
        {"if": {"properties": {"backend": {"enum": ["aws", "gcp", "runpod"]}}, "required": ["backend"]}, "then": {"required": ["region"]}}
    ])
}

/// dstack (pydantic in lax mode) reads `true`/`false` as 1/0 and numeric text as numbers wherever
/// a number is expected. Inside shorthand values (under `x-dstack-parse`), whose parsers read
/// scalars that way, every integer or number type also takes booleans and strings, and the parser
/// decides. Text types are left alone: a boolean is never text. Runs before
/// [`accept_numbers_as_text`], so the numbers it adds to text types are not widened.
fn accept_lax_numbers(value: &mut Json, parsed: bool) {
    match value {
        Json::Object(object) => {
            let parsed = parsed || object.contains_key("x-dstack-parse");
            if parsed && let Some(kind) = object.get_mut("type") {
                let mut types: Vec<Json> = match &*kind {
                    Json::Array(types) => types.clone(),
                    other => vec![other.clone()],
                };
                if types.iter().any(|t| t == "integer" || t == "number") {
                    for extra in ["boolean", "string"] {
                        if !types.iter().any(|t| t == extra) {
                            types.push(json!(extra));
                        }
                    }
                    *kind = Json::Array(types);
                }
            }
            for (key, child) in object.iter_mut() {
                if key != "x-dstack-parse" {
                    accept_lax_numbers(child, parsed);
                }
            }
        }
        Json::Array(items) => items
            .iter_mut()
            .for_each(|item| accept_lax_numbers(item, parsed)),
        _ => {}
    }
}

/// Numbers are read as text where text is expected (`python: 3.10`, `name: 123`), so plain text
/// properties accept numbers too.
fn accept_numbers_as_text(value: &mut Json) {
    match value {
        Json::Object(object) => {
            let plain = !["pattern", "enum", "const", "format", "x-dstack-parse"]
                .iter()
                .any(|k| object.contains_key(*k));
            if plain && let Some(kind) = object.get_mut("type") {
                match kind {
                    Json::String(s) if s == "string" => *kind = json!(["string", "number"]),
                    Json::Array(types)
                        if types.iter().any(|t| t == "string")
                            && !types.iter().any(|t| t == "number") =>
                    {
                        types.push(json!("number"));
                    }
                    _ => {}
                }
            }
            for (key, child) in object.iter_mut() {
                if key != "x-dstack-parse" {
                    accept_numbers_as_text(child);
                }
            }
        }
        Json::Array(items) => items.iter_mut().for_each(accept_numbers_as_text),
        _ => {}
    }
}

fn with_header(mut schema: Json, file: &str, title: &str) -> Json {
    let mut object = Map::new();
    object.insert("$schema".into(), json!(DIALECT));
    object.insert(
        "$id".into(),
        json!(format!(
            "{ID_PREFIX}{}",
            file.trim_end_matches(".schema.json")
        )),
    );
    object.insert("title".into(), json!(title));
    if let Json::Object(rest) = &mut schema {
        rest.remove("$schema");
        rest.remove("title");
        object.extend(std::mem::take(rest));
    }
    Json::Object(object)
}

/// Generate every schema file: `{file name → schema}`.
pub fn generate() -> BTreeMap<String, Json> {
    let settings = SchemaSettings::draft2020_12();
    let mut generator = settings.into_generator();
    for schema in [
        generator.subschema_for::<TaskFields>(),
        generator.subschema_for::<DevEnvironmentFields>(),
        generator.subschema_for::<ServiceFields>(),
        generator.subschema_for::<RunCommon>(),
        generator.subschema_for::<VolumeSpec>(),
        generator.subschema_for::<FleetSpec>(),
        generator.subschema_for::<TagSpec>(),
    ] {
        drop(schema);
    }
    let definitions: Map<String, Json> = generator.take_definitions(true);
    let types: [(ConfigType, Vec<&str>, &str); 6] = [
        (
            ConfigType::Task,
            vec!["TaskFields", "RunCommon"],
            "A batch job: commands that run to completion, with artifacts.",
        ),
        (
            ConfigType::DevEnvironment,
            vec!["DevEnvironmentFields", "RunCommon"],
            "An interactive environment that stays up until stopped.",
        ),
        (
            ConfigType::Service,
            vec!["ServiceFields", "RunCommon"],
            "A long-running server with replicas and a readiness check.",
        ),
        (
            ConfigType::Volume,
            vec!["VolumeSpec"],
            "A network volume: a Docker volume, an EBS volume, ...",
        ),
        (
            ConfigType::Fleet,
            vec!["FleetSpec"],
            "Instances provisioned in a cloud, or existing hosts over SSH.",
        ),
        (
            ConfigType::Tag,
            vec!["TagSpec"],
            "A named reference to a run's artifacts that outlives the run.",
        ),
    ];
    let shared: Map<String, Json> = definitions
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "TaskFields"
                    | "DevEnvironmentFields"
                    | "ServiceFields"
                    | "RunCommon"
                    | "VolumeSpec"
                    | "FleetSpec"
                    | "TagSpec"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let mut files = BTreeMap::new();
    let mut root_defs = shared.clone();
    let mut conditions = Vec::new();
    for (config_type, parts, description) in &types {
        let mut schema = type_schema(*config_type, parts, &definitions, description);
        if *config_type == ConfigType::Volume {
            schema["allOf"] = volume_conditions();
        }
        root_defs.insert(config_type.as_str().into(), schema.clone());
        conditions.push(json!({
            "if": {"properties": {"type": {"const": config_type.as_str()}}, "required": ["type"]},
            "then": {"$ref": format!("#/$defs/{}", config_type.as_str())}
        }));
        let mut file_schema = schema;
        file_schema["$defs"] = Json::Object(shared.clone());
        let file = format!("{}.schema.json", config_type.as_str());
        files.insert(
            file.clone(),
            with_header(file_schema, &file, config_type.as_str()),
        );
    }
    let type_names: Vec<&str> = types.iter().map(|(t, _, _)| t.as_str()).collect();
    let root = json!({
        "description": "A dstack configuration (`*.dstack.yml`): one of the types below, chosen by `type`.",
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": type_names, "description": "The configuration type"}},
        "allOf": conditions,
        "$defs": root_defs
    });
    files.insert(
        "dstack.schema.json".into(),
        with_header(root, "dstack.schema.json", "dstack configuration"),
    );

    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let config = generator.root_schema_for::<ProjectConfig>().to_value();
    files.insert(
        "config.schema.json".into(),
        with_header(config, "config.schema.json", ".dstack/config.yml"),
    );

    for schema in files.values_mut() {
        accept_lax_numbers(schema, false);
        accept_numbers_as_text(schema);
    }
    files
}

/// The schema files as embedded in the binary.
pub fn embedded(file: &str) -> Option<&'static str> {
    Some(match file {
        "dstack.schema.json" => include_str!("../../schemas/dstack.schema.json"),
        "task.schema.json" => include_str!("../../schemas/task.schema.json"),
        "dev-environment.schema.json" => include_str!("../../schemas/dev-environment.schema.json"),
        "service.schema.json" => include_str!("../../schemas/service.schema.json"),
        "volume.schema.json" => include_str!("../../schemas/volume.schema.json"),
        "fleet.schema.json" => include_str!("../../schemas/fleet.schema.json"),
        "tag.schema.json" => include_str!("../../schemas/tag.schema.json"),
        "config.schema.json" => include_str!("../../schemas/config.schema.json"),
        _ => return None,
    })
}

/// Names accepted by `dstack schema [TYPE]`.
pub const SCHEMA_NAMES: [&str; 7] = [
    "task",
    "dev-environment",
    "service",
    "volume",
    "fleet",
    "tag",
    "config",
];

fn compile(file: &str) -> Validator {
    let text = embedded(file).unwrap_or("{}");
    let document: Json = serde_json::from_str(text).unwrap_or_else(|_| json!({}));
    Validator::new(document, check_shorthand).unwrap_or_else(|e| {
        Validator::new(json!({}), check_shorthand)
            .unwrap_or_else(|_| panic!("empty schema compiles: {e}"))
    })
}

/// The compiled validator of a configuration type (compiled once, on first use).
pub fn validator(config_type: ConfigType) -> &'static Validator {
    static VALIDATORS: OnceLock<BTreeMap<ConfigType, OnceLock<Validator>>> = OnceLock::new();
    let map = VALIDATORS.get_or_init(|| {
        ConfigType::ALL
            .into_iter()
            .map(|t| (t, OnceLock::new()))
            .collect()
    });
    let cell = map
        .get(&config_type)
        .unwrap_or_else(|| unreachable!("every type has a cell"));
    cell.get_or_init(|| compile(&format!("{}.schema.json", config_type.as_str())))
}

/// The validator of `.dstack/config.yml`, compiled when first used (it dereferences to the
/// [`Validator`]): most projects have no `config.yml`, and every command asks for it.
pub fn config_validator() -> &'static LazyLock<Validator> {
    static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| compile("config.schema.json"));
    &VALIDATOR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_up_to_date() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        let mut stale = Vec::new();
        for (file, schema) in generate() {
            let text = serde_json::to_string_pretty(&schema).expect("serializes") + "\n";
            let path = dir.join(&file);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != text {
                if update {
                    std::fs::write(&path, &text).expect("writes schema");
                } else {
                    stale.push(file);
                }
            }
        }
        assert!(
            stale.is_empty(),
            "schemas/ is out of date for {stale:?}: run `UPDATE_SCHEMAS=1 cargo test schemas_are_up_to_date`"
        );
    }

    #[test]
    fn every_shorthand_kind_in_the_schemas_has_a_check() {
        fn walk(value: &Json, kinds: &mut Vec<String>) {
            match value {
                Json::Object(object) => {
                    if let Some(kind) = object.get("x-dstack-parse").and_then(Json::as_str) {
                        kinds.push(kind.to_string());
                    }
                    object.values().for_each(|v| walk(v, kinds));
                }
                Json::Array(items) => items.iter().for_each(|v| walk(v, kinds)),
                _ => {}
            }
        }
        let mut kinds = Vec::new();
        for schema in generate().values() {
            walk(schema, &mut kinds);
        }
        kinds.sort();
        kinds.dedup();
        for kind in kinds {
            let result = check_shorthand(&kind, &Json::Null);
            assert!(
                !result.as_ref().is_err_and(|e| e.contains("internal error")),
                "{kind} has no check"
            );
        }
    }

    #[test]
    fn embedded_schemas_compile() {
        for config_type in ConfigType::ALL {
            let text =
                embedded(&format!("{}.schema.json", config_type.as_str())).expect("embedded");
            let document: Json = serde_json::from_str(text).expect("json");
            assert!(
                Validator::new(document, check_shorthand).is_ok(),
                "{config_type}"
            );
        }
        let root: Json =
            serde_json::from_str(embedded("dstack.schema.json").expect("root")).expect("json");
        assert!(Validator::new(root, check_shorthand).is_ok());
    }
}

/// The configuration reference in Markdown, generated from the schemas (and kept in README.md
/// between `<!-- reference:start -->` and `<!-- reference:end -->`).
pub fn reference_markdown() -> String {
    let files = generate();
    let mut out = String::new();
    for name in [
        "task",
        "dev-environment",
        "service",
        "volume",
        "fleet",
        "tag",
    ] {
        let Some(schema) = files.get(&format!("{name}.schema.json")) else {
            continue;
        };
        out.push_str(&format!("#### `type: {name}`\n\n"));
        if let Some(description) = schema.get("description").and_then(Json::as_str) {
            out.push_str(description);
            out.push_str("\n\n");
        }
        out.push_str("| property | description |\n|---|---|\n");
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Json::as_array)
            .map(|r| r.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = schema.get("properties").and_then(Json::as_object) {
            for (property, value) in properties {
                let description = value
                    .get("description")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .replace('\n', " ")
                    .replace('|', "\\|");
                let marker = if required.contains(&property.as_str()) {
                    " (required)"
                } else {
                    ""
                };
                out.push_str(&format!("| `{property}`{marker} | {description} |\n"));
            }
        }
        out.push('\n');
    }
    out.trim_end().to_string() + "\n"
}

#[cfg(test)]
mod reference_tests {
    #[test]
    fn readme_reference_is_up_to_date() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md");
        let (start, end) = ("<!-- reference:start -->\n", "<!-- reference:end -->");
        let (Some(a), Some(b)) = (readme.find(start), readme.find(end)) else {
            panic!("README.md lacks the reference markers");
        };
        let expected = super::reference_markdown();
        let current = &readme[a + start.len()..b];
        if current != expected {
            if std::env::var_os("UPDATE_SCHEMAS").is_some() {
                let updated = format!("{}{start}{expected}{}", &readme[..a], &readme[b..]);
                std::fs::write(&path, updated).expect("write README.md");
            } else {
                panic!(
                    "README.md's configuration reference is stale: run `UPDATE_SCHEMAS=1 cargo test readme_reference_is_up_to_date`"
                );
            }
        }
    }
}
