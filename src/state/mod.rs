//! Recorded state: what dstack created, what it is doing, and what it saved.
//!
//! One trait, [`StateStore`], with three stores: SQLite (the default, `.dstack/state.db`), a JSON
//! document in S3 (shared by a team and its CI), and memory (tests). Every store keeps the same
//! [`Snapshot`]: a `lineage` (set once, when the state is created), a `serial` (incremented by
//! every commit), resources, pending intents, runs, tags and artifact manifests.
//!
//! Invariants every store keeps (one contract suite, [`contract`], checks them all):
//! - a commit names the serial it was computed against; if the state moved on, the commit is
//!   refused ([`StateError::Stale`]), never merged;
//! - a commit names the lineage it expects; another state's lineage is refused;
//! - at most one holder has the lock; a loser learns who holds it;
//! - a state written by a newer version, or one that cannot be read, is refused and never
//!   overwritten.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::model::{ConfigType, Kind, ResourceId, SourceRef};

pub mod check;
pub mod contract;
pub mod lock;
pub mod memory;
pub mod s3;
pub mod sqlite;
pub mod url;

pub use check::is_valid_lineage;
pub use lock::LockInfo;
pub use url::StateUrl;

/// The version of the state document format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// One resource as dstack last recorded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceRecord {
    pub kind: Kind,
    pub name: String,
    /// The configuration type (`task`, `volume`, ...).
    #[serde(rename = "type")]
    pub config_type: ConfigType,
    /// Where it was declared (empty file for resources created outside configuration files).
    pub source: SourceRef,
    /// The applied configuration in canonical form; sensitive values replaced by salted digests.
    pub spec: Json,
    /// Digest of the canonical spec (sensitive values included as digests).
    pub digest: String,
    /// The backend that holds it (`local`, `aws`, `fake`).
    pub backend: String,
    /// The backend's identifier of the object (Docker volume name, EBS volume id, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_id: Option<String>,
    /// What the backend reported: region, zone, size, instance ids, ...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Json>,
    /// `active`, `running`, `done`, `failed`, ...
    pub status: String,
    /// Registered, not created, by dstack: never destroyed, only forgotten.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ResourceRecord {
    pub fn id(&self) -> ResourceId {
        ResourceId::new(self.kind, self.name.clone())
    }
}

/// What a pending intent was about to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IntentAction {
    Create,
    Update,
    Delete,
}

impl fmt::Display for IntentAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        })
    }
}

/// A backend call that was started; recorded before the call, removed after its result is.
/// An intent left behind by a crash is resolved by the next plan: the object is looked up by
/// `labels` and adopted, or the intent is forgotten.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Intent {
    pub id: String,
    pub action: IntentAction,
    pub resource: ResourceId,
    pub backend: String,
    /// Labels or tags the object carries, to find it again.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The record the resource will have once the call succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<ResourceRecord>,
    /// The run this call submits, for runs (recorded as is when the run is adopted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Box<RunRecord>>,
    pub started_at: DateTime<Utc>,
}

/// The lifecycle of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Submitted,
    Provisioning,
    Running,
    Done,
    Failed,
    Stopped,
    Aborted,
}

impl RunStatus {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Done | Self::Failed | Self::Stopped | Self::Aborted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Provisioning => "provisioning",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::Aborted => "aborted",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One submission of a run resource (`train-3`), or an ad-hoc run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunRecord {
    /// `RESOURCE-N`, or a generated name for ad-hoc runs.
    pub name: String,
    /// The run resource it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// For an ad-hoc run of a legacy workflow (`dstack run WORKFLOW`): the workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// N of `RESOURCE-N`.
    pub number: u64,
    #[serde(rename = "type")]
    pub run_type: ConfigType,
    pub status: RunStatus,
    pub backend: String,
    /// Digest of everything the run's result depends on (spec, code, deps, variables).
    pub input_digest: String,
    /// What the inputs were made of, for explaining a replacement.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// The spec it was submitted with (sensitive values masked).
    pub spec: Json,
    pub submitted_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it ended as it did, when that is not obvious.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Backend details: container ids, job store path, ports, instance ids.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub job: BTreeMap<String, Json>,
}

/// A tag: a name for a run's artifacts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TagRecord {
    pub name: String,
    /// The run it was made from.
    pub run: String,
    /// The manifest it keeps (a key of `manifests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One file of a run's artifacts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ManifestFile {
    /// The artifact directory it belongs to (`output`).
    pub artifact: String,
    /// Path inside the artifact directory (`hello.txt`).
    pub path: String,
    pub size: u64,
    /// `sha256:HEX` of the content.
    pub digest: String,
    pub mode: u32,
}

/// The artifacts of one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Manifest {
    pub run: String,
    pub files: Vec<ManifestFile>,
    pub created_at: DateTime<Utc>,
}

/// Everything recorded, at one serial.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Snapshot {
    pub format_version: u32,
    /// Set when the state is first written; `None` for a state that does not exist yet.
    pub lineage: Option<String>,
    pub serial: u64,
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceRecord>,
    #[serde(default)]
    pub intents: BTreeMap<String, Intent>,
    #[serde(default)]
    pub runs: BTreeMap<String, RunRecord>,
    #[serde(default)]
    pub tags: BTreeMap<String, TagRecord>,
    #[serde(default)]
    pub manifests: BTreeMap<String, Manifest>,
}

impl Snapshot {
    /// An empty state that does not exist yet.
    pub fn empty() -> Self {
        Self {
            format_version: FORMAT_VERSION,
            ..Self::default()
        }
    }

    pub fn resource(&self, id: &ResourceId) -> Option<&ResourceRecord> {
        self.resources.get(&id.to_string())
    }

    /// Apply a step's changes in memory (every store shares this, so they agree on meaning).
    pub fn apply(&mut self, step: &Step) {
        for change in &step.changes {
            match change {
                Change::PutResource(record) => {
                    self.resources
                        .insert(record.id().to_string(), (**record).clone());
                }
                Change::DeleteResource(id) => {
                    self.resources.remove(&id.to_string());
                }
                Change::PutIntent(intent) => {
                    self.intents.insert(intent.id.clone(), (**intent).clone());
                }
                Change::DeleteIntent(id) => {
                    self.intents.remove(id);
                }
                Change::PutRun(run) => {
                    self.runs.insert(run.name.clone(), (**run).clone());
                }
                Change::DeleteRun(name) => {
                    self.runs.remove(name);
                }
                Change::PutTag(tag) => {
                    self.tags.insert(tag.name.clone(), tag.clone());
                }
                Change::DeleteTag(name) => {
                    self.tags.remove(name);
                }
                Change::PutManifest(key, manifest) => {
                    self.manifests.insert(key.clone(), (**manifest).clone());
                }
                Change::DeleteManifest(key) => {
                    self.manifests.remove(key);
                }
            }
        }
    }
}

/// One change of a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", content = "value", rename_all = "snake_case")]
pub enum Change {
    PutResource(Box<ResourceRecord>),
    DeleteResource(ResourceId),
    PutIntent(Box<Intent>),
    DeleteIntent(String),
    PutRun(Box<RunRecord>),
    DeleteRun(String),
    PutTag(TagRecord),
    DeleteTag(String),
    PutManifest(String, Box<Manifest>),
    DeleteManifest(String),
}

/// Changes committed together, as one new serial.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Step {
    /// What the step was (`create volume/data`), for the history.
    pub description: String,
    pub changes: Vec<Change>,
}

impl Step {
    pub fn new(description: impl Into<String>) -> Self {
        Self {
            description: description.into(),
            changes: Vec::new(),
        }
    }

    #[must_use]
    pub fn with(mut self, change: Change) -> Self {
        self.changes.push(change);
        self
    }
}

/// What went wrong with a state store.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StateError {
    #[error("the state is locked by {holder}")]
    #[diagnostic(help("wait for that operation to finish, or pass `--lock-timeout 5m` to wait; if it is gone, run `dstack state unlock {}`", holder.id))]
    Locked { holder: Box<LockInfo> },
    #[error(
        "the state is locked by {holder}, a process on this host that no longer runs (stale lock)"
    )]
    #[diagnostic(help("after checking that nothing else is changing this state, run `dstack state unlock {}`", holder.id))]
    StaleLock { holder: Box<LockInfo> },
    #[error("the lock `{id}` is not held (the state is {state})")]
    #[diagnostic(help("`dstack state list` shows the current lock"))]
    NotLocked { id: String, state: String },
    #[error("the state changed since it was read (expected serial {expected}, found {found})")]
    #[diagnostic(help("another operation wrote the state meanwhile; plan again"))]
    Stale { expected: u64, found: u64 },
    #[error("the state belongs to another lineage (expected {expected}, found {found})")]
    #[diagnostic(help(
        "this is a different state; check `--state` / `DSTACK_STATE` / `state:` in .dstack/config.yml"
    ))]
    Lineage { expected: String, found: String },
    #[error(
        "`{location}` was written by a newer version of dstack (format {found}, this version reads up to {supported})"
    )]
    #[diagnostic(help("upgrade dstack; the state was left untouched"))]
    TooNew {
        location: String,
        found: u64,
        supported: u64,
    },
    #[error("`{location}` is not a valid dstack state: {reason}")]
    #[diagnostic(help(
        "it was left untouched; restore it from a backup (`{location}` history, `KEY.backup`, or bucket versioning), or point `--state` elsewhere"
    ))]
    Corrupt { location: String, reason: String },
    #[error("`{location}` holds names that are not safe to use (they become paths):\n{records}")]
    #[diagnostic(help(
        "dstack never writes such names, so the state was edited outside it. Fix or remove those records: `dstack state pull > state.json`, edit it, then `dstack state push --force state.json`"
    ))]
    UnsafeNames { location: String, records: String },
    #[error("{message}")]
    Backend {
        message: String,
        #[help]
        hint: Option<String>,
    },
    #[error("the state could not be written: {message}; it was saved to `{path}`")]
    #[diagnostic(help("fix the cause, then run `dstack state push {path}`"))]
    Errored { message: String, path: String },
    #[error("invalid state URL `{url}`: {reason}")]
    #[diagnostic(help("use `sqlite:PATH`, a path, or `s3://BUCKET/KEY`"))]
    Url { url: String, reason: String },
}

/// A place state is kept.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// The URL of the store, for messages.
    fn location(&self) -> String;

    /// Read the current snapshot (an empty one, without lineage, when there is no state yet),
    /// refusing one whose names break the naming rules ([`StateError::UnsafeNames`]): every
    /// name it returns is safe to use in a path.
    async fn load(&self) -> Result<Snapshot, StateError> {
        let snapshot = self.load_unchecked().await?;
        let problems = snapshot.unsafe_records();
        if problems.is_empty() {
            Ok(snapshot)
        } else {
            Err(StateError::UnsafeNames {
                location: self.location(),
                records: indented(&problems),
            })
        }
    }

    /// Read the current snapshot as stored, without checking its names. Only for `state pull`
    /// (to fix such a document) and for reading a state that is about to be replaced; nothing
    /// read this way may be used in a path.
    async fn load_unchecked(&self) -> Result<Snapshot, StateError>;

    /// Commit a step computed against `expected_serial` of `lineage` (`None` for a state that
    /// does not exist yet, which this commit creates with a new lineage). Returns the lineage and
    /// the new serial; the caller applies the step to its own snapshot ([`Snapshot::apply`]).
    async fn commit(
        &self,
        lineage: Option<&str>,
        expected_serial: u64,
        step: &Step,
    ) -> Result<Committed, StateError>;

    /// Take the lock, or fail with the holder.
    async fn lock_acquire(&self, info: &LockInfo) -> Result<(), StateError>;

    /// Release the lock `id` (also used by `dstack state unlock`).
    async fn lock_release(&self, id: &str) -> Result<(), StateError>;

    /// Who holds the lock, if anyone.
    async fn lock_read(&self) -> Result<Option<LockInfo>, StateError>;

    /// Replace the whole state (`state push`, `state migrate`); the caller checked lineage and
    /// serial. The snapshot is written as given.
    async fn replace(&self, snapshot: &Snapshot) -> Result<(), StateError>;
}

/// Problems, one per line, indented under the error that lists them.
pub fn indented(problems: &[String]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The outcome of a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub lineage: String,
    pub serial: u64,
}

/// A new lineage identifier.
pub fn new_lineage() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Write a state or plan file readable and writable by its owner only (§6), replacing any
/// previous content. The mode is set again after opening: `open`'s mode applies only to a file it
/// creates, and a file that already existed keeps whatever mode it had.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Check a loaded document's format version.
pub fn check_format(location: &str, format_version: u64) -> Result<(), StateError> {
    if format_version > u64::from(FORMAT_VERSION) {
        return Err(StateError::TooNew {
            location: location.to_string(),
            found: format_version,
            supported: u64::from(FORMAT_VERSION),
        });
    }
    Ok(())
}

/// Verify the lineage and serial a writer expects against the current ones.
pub fn check_expected(
    current: &Snapshot,
    lineage: Option<&str>,
    expected_serial: u64,
) -> Result<(), StateError> {
    match (current.lineage.as_deref(), lineage) {
        (Some(found), Some(expected)) if found != expected => {
            return Err(StateError::Lineage {
                expected: expected.to_string(),
                found: found.to_string(),
            });
        }
        _ => {}
    }
    if current.serial != expected_serial {
        return Err(StateError::Stale {
            expected: expected_serial,
            found: current.serial,
        });
    }
    Ok(())
}

/// Acquire the lock, retrying with capped exponential backoff until `timeout` has passed.
pub async fn lock_with_timeout(
    store: &dyn StateStore,
    info: &LockInfo,
    timeout: std::time::Duration,
) -> Result<(), StateError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match store.lock_acquire(info).await {
            Err(StateError::Locked { holder }) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("state locked by {holder}; retrying in {delay:?}");
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                tokio::time::sleep(delay.min(remaining)).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(StateError::Locked { holder }) => {
                if holder.is_stale() {
                    return Err(StateError::StaleLock { holder });
                }
                return Err(StateError::Locked { holder });
            }
            other => return other,
        }
    }
}

/// The JSON Schema of the state document (`schemas/state.schema.json`).
pub fn document_schema() -> Json {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .root_schema_for::<Snapshot>()
        .to_value();
    if let Json::Object(object) = &mut schema {
        object.insert(
            "$id".into(),
            Json::String(format!("{}state", crate::model::schema::ID_PREFIX)),
        );
        object.insert(
            "description".into(),
            Json::String("The dstack state document: the S3 store's object, `dstack state pull`'s output. See state/README.md.".into()),
        );
    }
    schema
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn private_files_are_private_even_over_a_world_readable_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("plan.out");
        std::fs::write(&path, "a longer, older content").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        super::write_private(&path, b"{}").expect("write");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).expect("read"), b"{}");
        let new = dir.path().join("new.plan");
        super::write_private(&new, b"{}").expect("write");
        assert_eq!(mode(&new), 0o600);
    }

    #[tokio::test]
    async fn an_empty_sqlite_file_becomes_a_private_state() {
        use super::StateStore;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.db");
        std::fs::write(&path, "").expect("touch");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let store = super::sqlite::SqliteStore::new(path.clone());
        store
            .commit(None, 0, &super::Step::new("nothing"))
            .await
            .expect("commit");
        for file in ["state.db", "state.db-wal", "state.db-shm"] {
            let file = dir.path().join(file);
            if file.exists() {
                assert_eq!(mode(&file), 0o600, "{}", file.display());
            }
        }
    }

    #[test]
    fn state_schema_is_up_to_date() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/state.schema.json");
        let text = serde_json::to_string_pretty(&super::document_schema()).expect("json") + "\n";
        if std::fs::read_to_string(&path).unwrap_or_default() != text {
            if std::env::var_os("UPDATE_SCHEMAS").is_some() {
                std::fs::write(&path, text).expect("write");
            } else {
                panic!(
                    "schemas/state.schema.json is stale: run `UPDATE_SCHEMAS=1 cargo test --lib schema`"
                );
            }
        }
    }
}
