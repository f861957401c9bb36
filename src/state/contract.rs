//! The contract every [`StateStore`] keeps, as a test suite that runs against each of them
//! (memory in unit tests; SQLite and S3 on moto in `tests/integration/state.rs`).
//!
//! Each check takes a [`Harness`]: a way to open new handles to one store (as separate processes
//! would) and to tamper with what it holds.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;

use super::{
    Change, LockInfo, ResourceRecord, RunRecord, RunStatus, Snapshot, StateError, StateStore, Step,
    TagRecord,
};
use crate::model::{ConfigType, Kind, SourceRef};

/// Access to one store under test.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// A new handle to the same state.
    fn store(&self) -> Box<dyn StateStore>;
    /// The bytes the store holds, to prove that nothing was overwritten.
    async fn raw(&self) -> Vec<u8>;
    /// Replace what the store holds with garbage.
    async fn corrupt(&self);
    /// Make the state look written by a newer version of dstack.
    async fn make_future(&self);
}

/// A resource record for tests.
pub fn record(name: &str, status: &str) -> ResourceRecord {
    let now = Utc::now();
    ResourceRecord {
        kind: Kind::Volume,
        name: name.to_string(),
        config_type: ConfigType::Volume,
        source: SourceRef {
            file: "vol.dstack.yml".into(),
            document: 0,
        },
        spec: serde_json::json!({"type": "volume", "backend": "fake", "size": "1GB"}),
        digest: format!("sha256:{name}"),
        backend: "fake".into(),
        backend_id: Some(format!("fake-{name}")),
        attributes: BTreeMap::new(),
        status: status.to_string(),
        external: false,
        created_at: now,
        updated_at: now,
    }
}

fn step(name: &str) -> Step {
    Step::new(format!("create volume/{name}"))
        .with(Change::PutResource(Box::new(record(name, "active"))))
}

/// The run `train-1` of `run/train`, running.
fn round_trip_run() -> RunRecord {
    RunRecord {
        name: "train-1".into(),
        workflow: None,
        resource: Some("train".into()),
        number: 1,
        run_type: ConfigType::Task,
        status: RunStatus::Running,
        backend: "fake".into(),
        input_digest: "sha256:x".into(),
        inputs: BTreeMap::new(),
        spec: serde_json::json!({"type": "task"}),
        submitted_at: Utc::now(),
        finished_at: None,
        exit_code: None,
        message: None,
        job: BTreeMap::new(),
    }
}

/// Load, commit, load again: the committed record comes back, with a lineage and serial 1.
pub async fn round_trip(harness: &dyn Harness) {
    let store = harness.store();
    let empty = store.load().await.expect("load an empty state");
    assert_eq!((empty.lineage.as_deref(), empty.serial), (None, 0));
    assert!(empty.resources.is_empty());
    let mut step = step("data");
    let run = round_trip_run();
    let now = run.submitted_at;
    step.changes.push(Change::PutRun(Box::new(run)));
    step.changes.push(Change::PutTag(TagRecord {
        name: "best".into(),
        run: "train-1".into(),
        manifest: None,
        created_at: now,
    }));
    let committed = store.commit(None, 0, &step).await.expect("first commit");
    assert_eq!(committed.serial, 1);
    let loaded = harness.store().load().await.expect("load");
    assert_eq!(loaded.lineage.as_deref(), Some(committed.lineage.as_str()));
    assert_eq!(loaded.serial, 1);
    assert_eq!(
        loaded.resources.get("volume/data"),
        Some(&record_like(&loaded, "volume/data"))
    );
    assert_eq!(
        loaded.resources["volume/data"].backend_id.as_deref(),
        Some("fake-data")
    );
    assert_eq!(loaded.runs["train-1"].status, RunStatus::Running);
    assert_eq!(loaded.tags["best"].run, "train-1");
    let mut expected = Snapshot::empty();
    expected.apply(&step);
    assert_eq!(loaded.resources, expected.resources);
}

fn record_like(snapshot: &Snapshot, id: &str) -> ResourceRecord {
    snapshot.resources[id].clone()
}

/// Every commit increments the serial by one and keeps the lineage; deletes take effect.
pub async fn serial_increments(harness: &dyn Harness) {
    let store = harness.store();
    let first = store
        .commit(None, 0, &step("vol-a"))
        .await
        .expect("commit 1");
    let second = store
        .commit(Some(&first.lineage), 1, &step("vol-b"))
        .await
        .expect("commit 2");
    let delete = Step::new("delete volume/vol-a").with(Change::DeleteResource(
        crate::model::ResourceId::new(Kind::Volume, "vol-a"),
    ));
    let third = store
        .commit(Some(&first.lineage), 2, &delete)
        .await
        .expect("commit 3");
    assert_eq!((second.serial, third.serial), (2, 3));
    assert_eq!(second.lineage, first.lineage);
    let loaded = harness.store().load().await.expect("load");
    assert_eq!(loaded.serial, 3);
    assert_eq!(
        loaded.resources.keys().collect::<Vec<_>>(),
        ["volume/vol-b"]
    );
}

/// A writer whose serial is behind is refused, and the state is unchanged.
pub async fn stale_serial_refused(harness: &dyn Harness) {
    let store = harness.store();
    let first = store.commit(None, 0, &step("vol-a")).await.expect("commit");
    let other = harness.store();
    other
        .commit(Some(&first.lineage), 1, &step("vol-b"))
        .await
        .expect("the other writer commits");
    let before = harness.raw().await;
    match store.commit(Some(&first.lineage), 1, &step("vol-c")).await {
        Err(StateError::Stale {
            expected: 1,
            found: 2,
        }) => {}
        other => panic!("expected a stale-serial error, got {other:?}"),
    }
    assert_eq!(
        harness.raw().await,
        before,
        "a refused commit writes nothing"
    );
    let loaded = harness.store().load().await.expect("load");
    assert!(!loaded.resources.contains_key("volume/vol-c"));
}

/// A writer of another lineage is refused.
pub async fn lineage_mismatch_refused(harness: &dyn Harness) {
    let store = harness.store();
    store.commit(None, 0, &step("vol-a")).await.expect("commit");
    match store
        .commit(Some("another-lineage"), 1, &step("vol-b"))
        .await
    {
        Err(StateError::Lineage { expected, .. }) => assert_eq!(expected, "another-lineage"),
        other => panic!("expected a lineage error, got {other:?}"),
    }
}

/// Sixteen contenders race for the lock in several rounds: exactly one wins each round, and
/// every loser is told who holds it.
pub async fn lock_exclusivity(harness: Arc<dyn Harness>) {
    for round in 0..3 {
        let mut tasks = Vec::new();
        for contender in 0..16 {
            let harness = Arc::clone(&harness);
            tasks.push(tokio::spawn(async move {
                let info = LockInfo::new(&format!("apply round {round} contender {contender}"));
                let result = harness.store().lock_acquire(&info).await;
                (info, result)
            }));
        }
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for task in tasks {
            let (info, result) = task.await.expect("contender task");
            match result {
                Ok(()) => winners.push(info),
                Err(StateError::Locked { holder }) => losers.push(*holder),
                Err(other) => panic!("unexpected lock error: {other}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one holder, got {}",
            winners.len()
        );
        let winner = &winners[0];
        for loser in &losers {
            assert_eq!(loser, winner, "every loser sees the holder");
        }
        let read = harness.store().lock_read().await.expect("lock read");
        assert_eq!(read.as_ref(), Some(winner));
        harness
            .store()
            .lock_release(&winner.id)
            .await
            .expect("release");
    }
}

/// The loser's error names the holder, and holding twice is idempotent for the holder.
pub async fn lock_info_shown_to_loser(harness: &dyn Harness) {
    let holder = LockInfo::new("apply");
    harness.store().lock_acquire(&holder).await.expect("lock");
    harness
        .store()
        .lock_acquire(&holder)
        .await
        .expect("re-acquiring one's own lock is fine");
    let loser = LockInfo::new("delete");
    match harness.store().lock_acquire(&loser).await {
        Err(error @ StateError::Locked { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains(&holder.id) && text.contains("apply") && text.contains(&holder.host),
                "{text}"
            );
        }
        other => panic!("expected a lock error, got {other:?}"),
    }
    harness
        .store()
        .lock_release(&holder.id)
        .await
        .expect("release");
}

/// Unlocking needs the lock's id.
pub async fn unlock_by_id(harness: &dyn Harness) {
    let holder = LockInfo::new("apply");
    let store = harness.store();
    assert!(matches!(
        store.lock_release("nobody").await,
        Err(StateError::NotLocked { .. })
    ));
    store.lock_acquire(&holder).await.expect("lock");
    assert!(matches!(
        store.lock_release("wrong-id").await,
        Err(StateError::NotLocked { .. })
    ));
    assert!(store.lock_read().await.expect("read").is_some());
    harness
        .store()
        .lock_release(&holder.id)
        .await
        .expect("unlock by id");
    assert!(store.lock_read().await.expect("read").is_none());
    store
        .lock_acquire(&LockInfo::new("apply"))
        .await
        .expect("free again");
}

/// A corrupt state is refused on load and on commit, and left as it was.
pub async fn corrupt_state_refused(harness: &dyn Harness) {
    harness
        .store()
        .commit(None, 0, &step("vol-a"))
        .await
        .expect("commit");
    harness.corrupt().await;
    let before = harness.raw().await;
    assert!(
        matches!(
            harness.store().load().await,
            Err(StateError::Corrupt { .. })
        ),
        "load refuses"
    );
    assert!(
        harness
            .store()
            .commit(None, 1, &step("vol-b"))
            .await
            .is_err(),
        "commit refuses"
    );
    assert_eq!(harness.raw().await, before, "never overwritten");
}

/// A state written by a newer version is refused, and left as it was.
pub async fn future_version_refused(harness: &dyn Harness) {
    harness
        .store()
        .commit(None, 0, &step("vol-a"))
        .await
        .expect("commit");
    harness.make_future().await;
    let before = harness.raw().await;
    assert!(
        matches!(harness.store().load().await, Err(StateError::TooNew { .. })),
        "load refuses"
    );
    assert!(
        matches!(
            harness.store().commit(None, 1, &step("vol-b")).await,
            Err(StateError::TooNew { .. })
        ),
        "commit refuses"
    );
    assert_eq!(harness.raw().await, before, "never overwritten");
}

/// `replace` writes a snapshot as given (push and migrate keep lineage and serial).
pub async fn replace_keeps_lineage_and_serial(harness: &dyn Harness) {
    let mut snapshot = Snapshot::empty();
    snapshot.lineage = Some("lineage-from-elsewhere".into());
    snapshot.serial = 41;
    snapshot.apply(&step("vol-x"));
    harness.store().replace(&snapshot).await.expect("replace");
    let loaded = harness.store().load().await.expect("load");
    assert_eq!(
        (loaded.lineage.as_deref(), loaded.serial),
        (Some("lineage-from-elsewhere"), 41)
    );
    assert_eq!(loaded.resources, snapshot.resources);
    let next = harness
        .store()
        .commit(Some("lineage-from-elsewhere"), 41, &step("vol-y"))
        .await
        .expect("commit after replace");
    assert_eq!(next.serial, 42);
}

/// A state whose names would be paths (`../victim`) is refused by `load`, naming the record,
/// and still readable by `load_unchecked` (so `state pull` can fetch it for repair).
pub async fn unsafe_names_refused(harness: &dyn Harness) {
    let mut snapshot = Snapshot::empty();
    snapshot.lineage = Some("lineage-from-elsewhere".into());
    snapshot.serial = 3;
    snapshot.apply(&step("data"));
    let mut run = round_trip_run();
    run.name = "../../../victim".into();
    snapshot.runs.insert(run.name.clone(), run);
    harness.store().replace(&snapshot).await.expect("replace");
    match harness.store().load().await {
        Err(StateError::UnsafeNames { records, .. }) => {
            assert!(records.contains("runs[`../../../victim`]"), "{records}");
        }
        other => panic!("expected the names to be refused, got {other:?}"),
    }
    let unchecked = harness
        .store()
        .load_unchecked()
        .await
        .expect("load unchecked");
    assert!(unchecked.runs.contains_key("../../../victim"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::memory::MemoryStore;

    struct MemoryHarness(MemoryStore);

    #[async_trait::async_trait]
    impl Harness for MemoryHarness {
        fn store(&self) -> Box<dyn StateStore> {
            Box::new(self.0.clone())
        }

        async fn raw(&self) -> Vec<u8> {
            self.0.raw()
        }

        async fn corrupt(&self) {
            self.0.set_raw(b"{ this is not json".to_vec());
        }

        async fn make_future(&self) {
            let mut value: serde_json::Value = serde_json::from_slice(&self.0.raw()).expect("json");
            value["format_version"] = 999.into();
            self.0.set_raw(serde_json::to_vec(&value).expect("json"));
        }
    }

    fn harness() -> MemoryHarness {
        MemoryHarness(MemoryStore::new())
    }

    #[tokio::test]
    async fn memory_store_keeps_the_contract() {
        round_trip(&harness()).await;
        serial_increments(&harness()).await;
        stale_serial_refused(&harness()).await;
        lineage_mismatch_refused(&harness()).await;
        lock_exclusivity(Arc::new(harness())).await;
        lock_info_shown_to_loser(&harness()).await;
        unlock_by_id(&harness()).await;
        replace_keeps_lineage_and_serial(&harness()).await;
        corrupt_state_refused(&harness()).await;
        future_version_refused(&harness()).await;
        unsafe_names_refused(&harness()).await;
    }
}
