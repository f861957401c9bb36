//! The state store contract against SQLite files and S3 on moto (the memory store runs it in
//! unit tests).

use std::sync::Arc;

use dstack::state::StateStore;
use dstack::state::contract::{self, Harness};
use dstack::state::s3::S3Store;
use dstack::state::sqlite::SqliteStore;
use dstack::state::url::S3Location;

use crate::common::moto::moto;

struct SqliteHarness {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl SqliteHarness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(".dstack/state.db");
        Self { _dir: dir, path }
    }
}

#[async_trait::async_trait]
impl Harness for SqliteHarness {
    fn store(&self) -> Box<dyn StateStore> {
        Box::new(SqliteStore::new(self.path.clone()))
    }

    async fn raw(&self) -> Vec<u8> {
        // The database and its write-ahead log together are what is stored.
        let mut bytes = std::fs::read(&self.path).unwrap_or_default();
        bytes.extend(std::fs::read(self.path.with_extension("db-wal")).unwrap_or_default());
        bytes
    }

    async fn corrupt(&self) {
        // Fold the WAL into the database first, then overwrite its header.
        drop(
            rusqlite::Connection::open(&self.path)
                .and_then(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")),
        );
        let mut bytes = std::fs::read(&self.path).expect("read db");
        bytes[..16].copy_from_slice(b"this is garbage!");
        std::fs::write(&self.path, bytes).expect("write db");
    }

    async fn make_future(&self) {
        let connection = rusqlite::Connection::open(&self.path).expect("open");
        connection
            .execute_batch("PRAGMA user_version = 999; PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("set version");
    }
}

struct S3Harness {
    client: aws_sdk_s3::Client,
    location: S3Location,
}

impl S3Harness {
    async fn new() -> Self {
        let moto = moto();
        let bucket = moto.bucket("state").await;
        let location = S3Location {
            bucket,
            key: "team/state.json".into(),
            ..S3Location::default()
        };
        Self {
            client: moto.s3().await,
            location,
        }
    }
}

#[async_trait::async_trait]
impl Harness for S3Harness {
    fn store(&self) -> Box<dyn StateStore> {
        Box::new(S3Store::with_client(
            self.client.clone(),
            self.location.clone(),
        ))
    }

    async fn raw(&self) -> Vec<u8> {
        match self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(&self.location.key)
            .send()
            .await
        {
            Ok(output) => output
                .body
                .collect()
                .await
                .expect("body")
                .into_bytes()
                .to_vec(),
            Err(_) => Vec::new(),
        }
    }

    async fn corrupt(&self) {
        self.put(b"{ truncated".to_vec()).await;
    }

    async fn make_future(&self) {
        let mut value: serde_json::Value = serde_json::from_slice(&self.raw().await).expect("json");
        value["format_version"] = 999.into();
        self.put(serde_json::to_vec(&value).expect("json")).await;
    }
}

impl S3Harness {
    async fn put(&self, bytes: Vec<u8>) {
        self.client
            .put_object()
            .bucket(&self.location.bucket)
            .key(&self.location.key)
            .body(bytes.into())
            .send()
            .await
            .expect("put");
    }
}

macro_rules! contract_tests {
    ($module:ident, $harness:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn round_trip() {
                contract::round_trip(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn serial_increments() {
                contract::serial_increments(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn stale_serial_refused() {
                contract::stale_serial_refused(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn lineage_mismatch_refused() {
                contract::lineage_mismatch_refused(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn lock_exclusivity_with_16_contenders() {
                contract::lock_exclusivity(Arc::new($harness)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn lock_info_shown_to_loser() {
                contract::lock_info_shown_to_loser(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn unlock_by_id() {
                contract::unlock_by_id(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn corrupt_state_refused() {
                contract::corrupt_state_refused(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn future_version_refused() {
                contract::future_version_refused(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn replace_keeps_lineage_and_serial() {
                contract::replace_keeps_lineage_and_serial(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn unsafe_names_refused() {
                contract::unsafe_names_refused(&$harness).await;
            }
        }
    };
}

contract_tests!(sqlite, SqliteHarness::new());
contract_tests!(s3, S3Harness::new().await);

#[test]
fn sqlite_state_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let harness = SqliteHarness::new();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(contract::serial_increments(&harness));
    let mode = std::fs::metadata(&harness.path)
        .expect("state.db")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let history = SqliteStore::new(harness.path.clone())
        .history(10)
        .expect("history");
    let serials: Vec<u64> = history.iter().map(|h| h.0).collect();
    assert_eq!(serials, [3, 2, 1], "past serials are kept");
}
