//! The SQLite store: `.dstack/state.db` by default.
//!
//! WAL mode with `synchronous=FULL`, so a committed step survives a crash. Every commit is one
//! `BEGIN IMMEDIATE` transaction that checks lineage and serial first (compare-and-swap), applies
//! the step's row changes, bumps the serial and appends the step to `history`. The lock is a row
//! of the `lock` table, taken in its own transaction, so it works across processes.
//!
//! Migrations live in `state/migrations/NNNN_name.sql`, are embedded in the binary, applied in
//! order and tracked by `PRAGMA user_version`; a released migration is never edited. A database
//! with a higher `user_version` than this build knows is refused and left untouched. The file is
//! created with mode 0600.

use std::path::{Path, PathBuf};

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    Change, Committed, FORMAT_VERSION, LockInfo, Snapshot, StateError, StateStore, Step,
    check_expected, new_lineage,
};

/// Embedded migrations, in order. Append only.
pub const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_init",
    include_str!("../../state/migrations/0001_init.sql"),
)];

/// State in a SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    path: PathBuf,
}

impl SqliteStore {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn corrupt(&self, reason: impl std::fmt::Display) -> StateError {
        StateError::Corrupt {
            location: self.location(),
            reason: reason.to_string(),
        }
    }

    fn sql_error(&self, error: &rusqlite::Error) -> StateError {
        use rusqlite::ErrorCode;
        match error.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => self.corrupt(error),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StateError::Backend {
                message: format!(
                    "`{}` is busy: another process holds it too long",
                    self.location()
                ),
                hint: Some("retry; if it persists, check for a hung dstack process".into()),
            },
            Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
                StateError::Backend {
                    message: format!("cannot write `{}`: {error}", self.location()),
                    hint: Some("check the file's permissions and that its directory exists".into()),
                }
            }
            _ => StateError::Backend {
                message: format!("state database `{}`: {error}", self.location()),
                hint: None,
            },
        }
    }

    /// Open the database. Returns `None` when it does not exist and `create` is false.
    fn open(&self, create: bool) -> Result<Option<Connection>, StateError> {
        // An empty file is a state still to be created (`touch`ed, or a crash before the
        // schema): it is made private like a new one.
        let metadata = std::fs::metadata(&self.path).ok();
        if metadata.is_none() && !create {
            return Ok(None);
        }
        if create && metadata.is_none_or(|m| m.len() == 0) {
            if let Some(parent) = self.path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StateError::Backend {
                    message: format!("cannot create `{}`: {e}", parent.display()),
                    hint: None,
                })?;
            }
            create_private(&self.path).map_err(|e| StateError::Backend {
                message: format!("cannot create `{}`: {e}", self.location()),
                hint: Some("check the directory's permissions".into()),
            })?;
        }
        let connection = Connection::open(&self.path).map_err(|e| self.sql_error(&e))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| self.sql_error(&e))?;
        let mut version: i64 =
            retry_busy(|| connection.query_row("PRAGMA user_version", [], |row| row.get(0)))
                .map_err(|e| self.sql_error(&e))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StateError::TooNew {
                location: self.location(),
                found: version as u64,
                supported: known as u64,
            });
        }
        if version == 0 {
            // A fresh file is empty; anything else without our version is not ours.
            let tables: i64 = retry_busy(|| {
                connection.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            })
            .map_err(|e| self.sql_error(&e))?;
            if tables > 0 {
                // Another process may have created the schema between the two reads.
                version = retry_busy(|| {
                    connection.query_row("PRAGMA user_version", [], |row| row.get(0))
                })
                .map_err(|e| self.sql_error(&e))?;
                if version == 0 {
                    return Err(
                        self.corrupt("it is a SQLite database, but not one written by dstack")
                    );
                }
            }
        }
        self.enable_wal(&connection)?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.sql_error(&e))?;
        if version < known {
            self.migrate(&connection, version)?;
        }
        Ok(Some(connection))
    }

    /// Switch to WAL (kept by the file once set). Entering WAL needs an exclusive lock, and
    /// SQLite answers `SQLITE_BUSY` at once, without its busy handler, while another
    /// connection is in the middle of the same switch: several processes opening a fresh state
    /// at the same moment must wait their turn rather than fail.
    fn enable_wal(&self, connection: &Connection) -> Result<(), StateError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let mode: String =
                match connection.query_row("PRAGMA journal_mode", [], |row| row.get(0)) {
                    Ok(mode) => mode,
                    Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    }
                    Err(e) => return Err(self.sql_error(&e)),
                };
            if mode.eq_ignore_ascii_case("wal") {
                return Ok(());
            }
            match connection.pragma_update(None, "journal_mode", "WAL") {
                Ok(()) => return Ok(()),
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(self.sql_error(&e)),
            }
        }
    }

    fn migrate(&self, connection: &Connection, from: i64) -> Result<(), StateError> {
        for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let next = index as i64 + 1;
            let script = format!("BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {next};\nCOMMIT;");
            if let Err(e) = connection.execute_batch(&script) {
                let _ = connection.execute_batch("ROLLBACK");
                // Another process may have migrated meanwhile.
                let now: i64 = retry_busy(|| {
                    connection.query_row("PRAGMA user_version", [], |row| row.get(0))
                })
                .unwrap_or(0);
                if now >= next {
                    continue;
                }
                return Err(StateError::Backend {
                    message: format!("migration {name} of `{}` failed: {e}", self.location()),
                    hint: None,
                });
            }
            if index == 0 {
                connection
                    .execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('format_version', ?1)",
                        params![FORMAT_VERSION.to_string()],
                    )
                    .map_err(|e| self.sql_error(&e))?;
            }
        }
        Ok(())
    }

    fn read_meta(&self, connection: &Connection) -> Result<(Option<String>, u64), StateError> {
        let get = |key: &str| -> Result<Option<String>, StateError> {
            connection
                .query_row(
                    "SELECT value FROM meta WHERE key = ?1",
                    params![key],
                    |row| row.get::<_, String>(0),
                )
                .optional()
                .map_err(|e| self.sql_error(&e))
        };
        if let Some(format) = get("format_version")? {
            let format: u64 = format
                .parse()
                .map_err(|_| self.corrupt(format!("bad format_version `{format}`")))?;
            super::check_format(&self.location(), format)?;
        }
        let lineage = get("lineage")?;
        let serial = match get("serial")? {
            Some(serial) => serial
                .parse()
                .map_err(|_| self.corrupt(format!("bad serial `{serial}`")))?,
            None => 0,
        };
        Ok((lineage, serial))
    }

    fn read_table<T: serde::de::DeserializeOwned>(
        &self,
        connection: &Connection,
        table: &str,
    ) -> Result<std::collections::BTreeMap<String, T>, StateError> {
        let mut statement = connection
            .prepare(&format!("SELECT * FROM {table}"))
            .map_err(|e| self.sql_error(&e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(|e| self.sql_error(&e))?;
        let mut map = std::collections::BTreeMap::new();
        for row in rows {
            let (key, json) = row.map_err(|e| self.sql_error(&e))?;
            let value = serde_json::from_str(&json)
                .map_err(|e| self.corrupt(format!("the {table} row `{key}` is not valid: {e}")))?;
            map.insert(key, value);
        }
        Ok(map)
    }

    fn load_sync(&self) -> Result<Snapshot, StateError> {
        let Some(mut connection) = self.open(false)? else {
            return Ok(Snapshot::empty());
        };
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(|e| self.sql_error(&e))?;
        let (lineage, serial) = self.read_meta(&transaction)?;
        let snapshot = Snapshot {
            format_version: FORMAT_VERSION,
            lineage,
            serial,
            resources: self.read_table(&transaction, "resources")?,
            intents: self.read_table(&transaction, "intents")?,
            runs: self.read_table(&transaction, "runs")?,
            tags: self.read_table(&transaction, "tags")?,
            manifests: self.read_table(&transaction, "manifests")?,
        };
        transaction.commit().map_err(|e| self.sql_error(&e))?;
        Ok(snapshot)
    }

    fn write_changes(
        &self,
        transaction: &rusqlite::Transaction<'_>,
        changes: &[Change],
    ) -> Result<(), StateError> {
        let json = |value: &dyn erased::Json| value.to_json();
        for change in changes {
            let (sql, key, value): (&str, String, Option<String>) = match change {
                Change::PutResource(r) => ("resources", r.id().to_string(), Some(json(r.as_ref()))),
                Change::DeleteResource(id) => ("resources", id.to_string(), None),
                Change::PutIntent(i) => ("intents", i.id.clone(), Some(json(i.as_ref()))),
                Change::DeleteIntent(id) => ("intents", id.clone(), None),
                Change::PutRun(r) => ("runs", r.name.clone(), Some(json(r.as_ref()))),
                Change::DeleteRun(name) => ("runs", name.clone(), None),
                Change::PutTag(t) => ("tags", t.name.clone(), Some(json(t))),
                Change::DeleteTag(name) => ("tags", name.clone(), None),
                Change::PutManifest(key, m) => ("manifests", key.clone(), Some(json(m.as_ref()))),
                Change::DeleteManifest(key) => ("manifests", key.clone(), None),
            };
            let result = match value {
                Some(value) => transaction.execute(
                    &format!("INSERT OR REPLACE INTO {sql} VALUES (?1, ?2)"),
                    params![key, value],
                ),
                None => transaction.execute(
                    &format!("DELETE FROM {sql} WHERE {} = ?1", key_column(sql)),
                    params![key],
                ),
            };
            result.map_err(|e| self.sql_error(&e))?;
        }
        Ok(())
    }

    fn set_meta(
        &self,
        transaction: &rusqlite::Transaction<'_>,
        lineage: &str,
        serial: u64,
    ) -> Result<(), StateError> {
        for (key, value) in [
            ("lineage", lineage.to_string()),
            ("serial", serial.to_string()),
            ("format_version", FORMAT_VERSION.to_string()),
        ] {
            transaction
                .execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                    params![key, value],
                )
                .map_err(|e| self.sql_error(&e))?;
        }
        Ok(())
    }

    fn commit_sync(
        &self,
        lineage: Option<&str>,
        expected_serial: u64,
        step: &Step,
    ) -> Result<Committed, StateError> {
        let Some(mut connection) = self.open(true)? else {
            return Err(self.corrupt("it could not be created"));
        };
        let transaction =
            retry_busy_transaction(&mut connection).map_err(|e| self.sql_error(&e))?;
        let (current_lineage, current_serial) = self.read_meta(&transaction)?;
        let current = Snapshot {
            lineage: current_lineage.clone(),
            serial: current_serial,
            ..Snapshot::empty()
        };
        check_expected(&current, lineage, expected_serial)?;
        let lineage = current_lineage
            .or_else(|| lineage.map(str::to_string))
            .unwrap_or_else(new_lineage);
        self.write_changes(&transaction, &step.changes)?;
        let serial = current_serial + 1;
        self.set_meta(&transaction, &lineage, serial)?;
        let step_json = serde_json::to_string(step).unwrap_or_default();
        transaction
            .execute(
                "INSERT OR REPLACE INTO history (serial, committed_at, description, step) VALUES (?1, ?2, ?3, ?4)",
                params![serial as i64, Utc::now().to_rfc3339(), step.description, step_json],
            )
            .map_err(|e| self.sql_error(&e))?;
        transaction.commit().map_err(|e| self.sql_error(&e))?;
        Ok(Committed { lineage, serial })
    }

    fn lock_sync(&self, info: &LockInfo) -> Result<(), StateError> {
        let Some(mut connection) = self.open(true)? else {
            return Err(self.corrupt("it could not be created"));
        };
        let transaction =
            retry_busy_transaction(&mut connection).map_err(|e| self.sql_error(&e))?;
        if let Some(holder) = self.read_lock(&transaction)? {
            if holder.id != info.id {
                return Err(StateError::Locked {
                    holder: Box::new(holder),
                });
            }
            return Ok(());
        }
        let text = serde_json::to_string(info).unwrap_or_default();
        transaction
            .execute("INSERT INTO lock (id, info) VALUES (1, ?1)", params![text])
            .map_err(|e| self.sql_error(&e))?;
        transaction.commit().map_err(|e| self.sql_error(&e))
    }

    fn read_lock(&self, connection: &Connection) -> Result<Option<LockInfo>, StateError> {
        let text: Option<String> = connection
            .query_row("SELECT info FROM lock WHERE id = 1", [], |row| row.get(0))
            .optional()
            .map_err(|e| self.sql_error(&e))?;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| self.corrupt(format!("the lock row is not valid: {e}")))
        })
        .transpose()
    }

    fn unlock_sync(&self, id: &str) -> Result<(), StateError> {
        let Some(mut connection) = self.open(false)? else {
            return Err(StateError::NotLocked {
                id: id.into(),
                state: "not locked".into(),
            });
        };
        let transaction =
            retry_busy_transaction(&mut connection).map_err(|e| self.sql_error(&e))?;
        match self.read_lock(&transaction)? {
            Some(holder) if holder.id == id => {
                transaction
                    .execute("DELETE FROM lock WHERE id = 1", [])
                    .map_err(|e| self.sql_error(&e))?;
                transaction.commit().map_err(|e| self.sql_error(&e))
            }
            Some(holder) => Err(StateError::NotLocked {
                id: id.into(),
                state: format!("locked by {holder}"),
            }),
            None => Err(StateError::NotLocked {
                id: id.into(),
                state: "not locked".into(),
            }),
        }
    }

    fn replace_sync(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        let Some(mut connection) = self.open(true)? else {
            return Err(self.corrupt("it could not be created"));
        };
        let transaction =
            retry_busy_transaction(&mut connection).map_err(|e| self.sql_error(&e))?;
        for table in ["resources", "intents", "runs", "tags", "manifests"] {
            transaction
                .execute(&format!("DELETE FROM {table}"), [])
                .map_err(|e| self.sql_error(&e))?;
        }
        let mut changes = Vec::new();
        changes.extend(
            snapshot
                .resources
                .values()
                .map(|r| Change::PutResource(Box::new(r.clone()))),
        );
        changes.extend(
            snapshot
                .intents
                .values()
                .map(|i| Change::PutIntent(Box::new(i.clone()))),
        );
        changes.extend(
            snapshot
                .runs
                .values()
                .map(|r| Change::PutRun(Box::new(r.clone()))),
        );
        changes.extend(snapshot.tags.values().map(|t| Change::PutTag(t.clone())));
        changes.extend(
            snapshot
                .manifests
                .iter()
                .map(|(k, m)| Change::PutManifest(k.clone(), Box::new(m.clone()))),
        );
        self.write_changes(&transaction, &changes)?;
        let lineage = snapshot.lineage.clone().unwrap_or_else(new_lineage);
        self.set_meta(&transaction, &lineage, snapshot.serial)?;
        let text = serde_json::to_string(snapshot).unwrap_or_default();
        transaction
            .execute(
                "INSERT OR REPLACE INTO history (serial, committed_at, description, step) VALUES (?1, ?2, 'replace', ?3)",
                params![snapshot.serial as i64, Utc::now().to_rfc3339(), text],
            )
            .map_err(|e| self.sql_error(&e))?;
        transaction.commit().map_err(|e| self.sql_error(&e))
    }

    /// The history of committed serials: `(serial, committed_at, description)`, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<(u64, String, String)>, StateError> {
        let Some(connection) = self.open(false)? else {
            return Ok(Vec::new());
        };
        let mut statement = connection
            .prepare("SELECT serial, committed_at, description FROM history ORDER BY serial DESC LIMIT ?1")
            .map_err(|e| self.sql_error(&e))?;
        let rows = statement
            .query_map(params![limit as i64], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get(1)?, row.get(2)?))
            })
            .map_err(|e| self.sql_error(&e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql_error(&e))
    }
}

fn key_column(table: &str) -> &'static str {
    match table {
        "resources" | "intents" => "id",
        "runs" | "tags" => "name",
        _ => "key",
    }
}

/// Create an empty file readable and writable by its owner only, or make an existing empty one
/// so: `open`'s mode applies only to a file it creates.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
}

/// Serialize any record to JSON text.
mod erased {
    pub trait Json {
        fn to_json(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// Run blocking SQLite work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(StateError::Backend {
            message: format!("state worker failed: {e}"),
            hint: None,
        }),
    }
}

#[async_trait::async_trait]
impl StateStore for SqliteStore {
    fn location(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    async fn load_unchecked(&self) -> Result<Snapshot, StateError> {
        let store = self.clone();
        blocking(move || store.load_sync()).await
    }

    async fn commit(
        &self,
        lineage: Option<&str>,
        expected_serial: u64,
        step: &Step,
    ) -> Result<Committed, StateError> {
        let store = self.clone();
        let lineage = lineage.map(str::to_string);
        let step = step.clone();
        blocking(move || store.commit_sync(lineage.as_deref(), expected_serial, &step)).await
    }

    async fn lock_acquire(&self, info: &LockInfo) -> Result<(), StateError> {
        let store = self.clone();
        let info = info.clone();
        blocking(move || store.lock_sync(&info)).await
    }

    async fn lock_release(&self, id: &str) -> Result<(), StateError> {
        let store = self.clone();
        let id = id.to_string();
        blocking(move || store.unlock_sync(&id)).await
    }

    async fn lock_read(&self) -> Result<Option<LockInfo>, StateError> {
        let store = self.clone();
        blocking(move || match store.open(false)? {
            Some(connection) => store.read_lock(&connection),
            None => Ok(None),
        })
        .await
    }

    async fn replace(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        let store = self.clone();
        let snapshot = snapshot.clone();
        blocking(move || store.replace_sync(&snapshot)).await
    }
}

/// `SQLITE_BUSY` or `SQLITE_LOCKED`: another connection is in the way for now.
fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Run `op` again while SQLite answers busy without waiting (it skips its busy handler in a few
/// cases, such as while another connection sets up WAL), for up to 30 s.
fn retry_busy<T>(mut op: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match op() {
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// `BEGIN IMMEDIATE`, again while busy (see [`retry_busy`]).
fn retry_busy_transaction(
    connection: &mut Connection,
) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    let connection: &Connection = connection;
    retry_busy(|| rusqlite::Transaction::new_unchecked(connection, TransactionBehavior::Immediate))
}
