//! The plan: what would change between the configuration files and the recorded state.
//!
//! [`diff::plan`] is a pure function — desired resources, recorded state and what refresh
//! observed go in, a [`Plan`] comes out — with no IO and a deterministic order (`BTreeMap`s and
//! the dependency graph), so it is snapshot-tested directly. The same plan is rendered for people
//! ([`render::text`]), pull requests ([`render::markdown`]) and machines ([`render::json`],
//! described by `schemas/plan.schema.json`), and saved to a file that `apply` executes after
//! checking that the state and the configuration have not moved since.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::model::{ConfigType, Kind, ResourceId, SourceRef};

pub mod desired;
pub mod diff;
pub mod fields;
pub mod render;
pub mod sensitive;

/// The version of the JSON plan format (and of plan files).
pub const FORMAT_VERSION: &str = "1.0";

/// One action on a resource.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    NoOp,
    Create,
    Update,
    Delete,
}

/// What happens to a resource, as a whole.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    NoOp,
    Create,
    Update,
    /// Delete, then create.
    Replace,
    Delete,
}

impl ChangeKind {
    /// The action list of the JSON plan (`["delete", "create"]` for a replacement), so callers can
    /// scan for `"delete"` to find every destructive change.
    pub fn actions(self) -> Vec<Action> {
        match self {
            Self::NoOp => vec![Action::NoOp],
            Self::Create => vec![Action::Create],
            Self::Update => vec![Action::Update],
            Self::Replace => vec![Action::Delete, Action::Create],
            Self::Delete => vec![Action::Delete],
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Self::NoOp => " ",
            Self::Create => "+",
            Self::Update => "~",
            Self::Replace => "-/+",
            Self::Delete => "-",
        }
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoOp => "no-op",
            Self::Create => "create",
            Self::Update => "update",
            Self::Replace => "replace",
            Self::Delete => "delete",
        })
    }
}

/// Why a change is planned, when it is not simply "the configuration says so".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The configuration changed a field that cannot change in place.
    ReplaceBecauseCannotUpdate,
    /// `--replace KIND/NAME`.
    ReplaceByRequest,
    /// The inputs of a run changed (spec, code, dependencies, variables).
    ReplaceBecauseInputsChanged,
    /// The last run of a run resource failed or was aborted.
    ReplaceBecauseRunFailed,
    /// Another run depends on this task (`deps: [{task: NAME}]`) and it has no `done` run.
    ReplaceBecauseNeeded,
    /// The object was deleted outside dstack.
    CreateBecauseDeletedOutside,
    /// The object changed outside dstack.
    UpdateBecauseChangedOutside,
    /// Fleet nodes have been idle longer than the fleet's `idle_duration`.
    UpdateBecauseIdle,
    /// The resource's document was removed from its file (or the file was deleted).
    DeleteBecauseNoConfiguration,
    /// `dstack delete`.
    DeleteByRequest,
}

/// The change planned for one resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceChange {
    /// `kind/name`.
    pub address: String,
    pub kind: Kind,
    pub name: String,
    #[serde(rename = "type")]
    pub config_type: ConfigType,
    pub change: ChangeKind,
    pub actions: Vec<Action>,
    /// The recorded spec (sensitive values masked); null for a create.
    pub before: Option<Json>,
    /// The desired spec (sensitive values masked); null for a delete.
    pub after: Option<Json>,
    /// Fields that force the replacement, as paths (`["size"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace_paths: Vec<Vec<String>>,
    /// Fields that change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_paths: Vec<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// A human explanation (`the last run train-3 failed`, `inputs changed: code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The change destroys a volume's data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_loss: bool,
    /// A registered volume: deleting it only forgets it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    pub backend: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
    /// What the resource depends on (for ordering).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

impl ResourceChange {
    pub fn id(&self) -> ResourceId {
        ResourceId::new(self.kind, self.name.clone())
    }
}

/// Something that changed outside dstack, found by refresh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Drift {
    pub address: String,
    /// `deleted` or `changed`.
    pub kind: DriftKind,
    /// Attributes as recorded.
    pub before: Option<Json>,
    /// Attributes as observed (null when deleted).
    pub after: Option<Json>,
}

/// How a resource drifted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    Deleted,
    Changed,
    /// An object tagged with this state's lineage that the state does not record (a restored
    /// backup, an edited state): `dstack state recover --delete-orphans` or `--adopt` settles it.
    Orphaned,
}

/// Counts of planned changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub replace: usize,
    pub destroy: usize,
}

impl Summary {
    pub fn is_empty(&self) -> bool {
        self.add + self.change + self.replace + self.destroy == 0
    }
}

/// What the plan was computed from; `apply PLANFILE` checks that none of it moved.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanInputs {
    /// The state's lineage (generated for a state that does not exist yet).
    pub lineage: String,
    /// The state's serial when planned.
    pub serial: u64,
    /// Digest of every configuration in scope (files, documents, sensitive values as digests).
    pub config_digest: String,
    /// `-f` arguments, relative to `cwd`.
    #[serde(default)]
    pub files: Vec<String>,
    /// The working directory, relative to the project directory.
    #[serde(default)]
    pub cwd: String,
    /// `--var` values given on the command line.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// `--target` addresses.
    #[serde(default)]
    pub targets: Vec<String>,
    /// `--replace` addresses.
    #[serde(default)]
    pub replace: Vec<String>,
    /// `dstack delete`: the plan destroys what the files declare.
    #[serde(default)]
    pub destroy: bool,
    /// Arguments after `--` (`${{ run.args }}`).
    #[serde(default)]
    pub run_args: Vec<String>,
}

/// A plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    pub format_version: String,
    /// The version of dstack that made it.
    pub dstack_version: String,
    pub inputs: PlanInputs,
    /// Every resource in scope, in the order changes are applied (deletions first, dependents
    /// before their dependencies; then creations and updates, dependencies first).
    pub resource_changes: Vec<ResourceChange>,
    pub drift: Vec<Drift>,
    pub summary: Summary,
    /// `false` when `--target` limited the plan.
    pub complete: bool,
    /// Notes about recovered operations, unsupported things skipped, and the like.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Plan {
    /// The changes that do something.
    pub fn actionable(&self) -> impl Iterator<Item = &ResourceChange> {
        self.resource_changes
            .iter()
            .filter(|c| c.change != ChangeKind::NoOp)
    }

    pub fn has_changes(&self) -> bool {
        !self.summary.is_empty()
    }

    /// Changes that destroy volume data.
    pub fn data_loss(&self) -> Vec<&ResourceChange> {
        self.actionable().filter(|c| c.data_loss).collect()
    }
}

/// Errors found while planning.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PlanError {
    #[error("`{address}`: {message}")]
    Invalid {
        address: String,
        message: String,
        #[help]
        hint: Option<String>,
    },
    #[error("{0}")]
    #[diagnostic(help("break the cycle: a run cannot depend, directly or not, on itself"))]
    Cycle(#[from] crate::model::graph::Cycle),
}

/// The JSON Schema of plans (`schemas/plan.schema.json`).
pub fn document_schema() -> Json {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .root_schema_for::<Plan>()
        .to_value();
    if let Json::Object(object) = &mut schema {
        object.insert(
            "$id".into(),
            Json::String(format!("{}plan", crate::model::schema::ID_PREFIX)),
        );
        object.insert(
            "description".into(),
            Json::String("A dstack plan, as printed by `dstack plan --json` and saved by `dstack plan -o FILE`.".into()),
        );
    }
    schema
}

#[cfg(test)]
mod tests {
    #[test]
    fn plan_schema_is_up_to_date() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/plan.schema.json");
        let text = serde_json::to_string_pretty(&super::document_schema()).expect("json") + "\n";
        if std::fs::read_to_string(&path).unwrap_or_default() != text {
            if std::env::var_os("UPDATE_SCHEMAS").is_some() {
                std::fs::write(&path, text).expect("write");
            } else {
                panic!(
                    "schemas/plan.schema.json is stale: run `UPDATE_SCHEMAS=1 cargo test --lib schema`"
                );
            }
        }
    }
}
