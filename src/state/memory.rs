//! The in-memory store, for tests: the state document kept as bytes, like the S3 store keeps it,
//! so corruption and version checks behave the same. Clones share one state, like separate
//! connections to a database.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    Committed, LockInfo, Snapshot, StateError, StateStore, Step, check_expected, check_format,
    new_lineage,
};

#[derive(Debug, Default)]
struct Inner {
    document: Option<Vec<u8>>,
    lock: Option<LockInfo>,
}

/// State kept in memory.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not make every other test fail on a poisoned lock.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stored document.
    pub fn raw(&self) -> Vec<u8> {
        self.inner().document.clone().unwrap_or_default()
    }

    /// Replace the stored document with arbitrary bytes.
    pub fn set_raw(&self, bytes: Vec<u8>) {
        self.inner().document = Some(bytes);
    }

    fn parse(bytes: Option<&Vec<u8>>) -> Result<Snapshot, StateError> {
        let Some(bytes) = bytes else {
            return Ok(Snapshot::empty());
        };
        let corrupt = |reason: String| StateError::Corrupt {
            location: "memory:".into(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let format = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| corrupt("no format_version".into()))?;
        check_format("memory:", format)?;
        serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    fn location(&self) -> String {
        "memory:".into()
    }

    async fn load_unchecked(&self) -> Result<Snapshot, StateError> {
        Self::parse(self.inner().document.as_ref())
    }

    async fn commit(
        &self,
        lineage: Option<&str>,
        expected_serial: u64,
        step: &Step,
    ) -> Result<Committed, StateError> {
        let mut inner = self.inner();
        let mut snapshot = Self::parse(inner.document.as_ref())?;
        check_expected(&snapshot, lineage, expected_serial)?;
        let lineage = snapshot
            .lineage
            .clone()
            .or_else(|| lineage.map(str::to_string))
            .unwrap_or_else(new_lineage);
        snapshot.lineage = Some(lineage.clone());
        snapshot.apply(step);
        snapshot.serial += 1;
        inner.document = Some(serde_json::to_vec(&snapshot).unwrap_or_default());
        Ok(Committed {
            lineage,
            serial: snapshot.serial,
        })
    }

    async fn lock_acquire(&self, info: &LockInfo) -> Result<(), StateError> {
        let mut inner = self.inner();
        match &inner.lock {
            Some(holder) if holder.id != info.id => Err(StateError::Locked {
                holder: Box::new(holder.clone()),
            }),
            _ => {
                inner.lock = Some(info.clone());
                Ok(())
            }
        }
    }

    async fn lock_release(&self, id: &str) -> Result<(), StateError> {
        let mut inner = self.inner();
        match &inner.lock {
            Some(holder) if holder.id == id => {
                inner.lock = None;
                Ok(())
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

    async fn lock_read(&self) -> Result<Option<LockInfo>, StateError> {
        Ok(self.inner().lock.clone())
    }

    async fn replace(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        let mut snapshot = snapshot.clone();
        if snapshot.lineage.is_none() {
            snapshot.lineage = Some(new_lineage());
        }
        self.inner().document = Some(serde_json::to_vec(&snapshot).unwrap_or_default());
        Ok(())
    }
}
