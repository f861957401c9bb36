//! Orphans: objects tagged with a state's lineage that the state does not record.
//!
//! They come from outside the executor's protocol: a state restored from an old backup, an
//! intent removed by hand, a `dstack state push --force`. Any backend whose `find` understands
//! labels works here (aws turns them into tag filters; fake and local match labels).
//!
//! - [`orphans`] lists them: `find({dstack.lineage: L})`, minus the objects whose backend id a
//!   record holds, minus the objects of a pending intent (recovery settles those).
//! - [`orphan_record`] makes a minimal record of one, enough for [`Backend::delete`] (volumes:
//!   backend id and region; fleets: backend id and regions) or for adopting it under its name.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use serde_json::Value as Json;

use crate::backend::{Backend, BackendError, Observed};
use crate::model::{ConfigType, Kind, SourceRef};
use crate::state::{ResourceRecord, Snapshot};

/// The objects of `backend` tagged with the lineage of `snapshot` that it does not record.
pub async fn orphans(
    backend: &dyn Backend,
    snapshot: &Snapshot,
) -> Result<Vec<Observed>, BackendError> {
    let Some(lineage) = &snapshot.lineage else {
        return Ok(Vec::new());
    };
    let labels = BTreeMap::from([("dstack.lineage".to_string(), lineage.clone())]);
    let found = crate::backend::retry(|| backend.find(&labels), &crate::backend::quietly).await?;
    let known: BTreeSet<&str> = snapshot
        .resources
        .values()
        .filter(|r| r.backend == backend.name())
        .filter_map(|r| r.backend_id.as_deref())
        .collect();
    Ok(found
        .into_iter()
        .filter(|o| o.backend_id.as_deref().is_none_or(|id| !known.contains(id)))
        .filter(|o| {
            o.labels
                .get("dstack.intent")
                .is_none_or(|intent| !snapshot.intents.contains_key(intent))
        })
        // Runs have their own life cycle (job stores, `dstack rm`); only volumes and fleets
        // are resources that can be adopted or deleted here.
        .filter(|o| orphan_record(o, backend.name()).is_some())
        .collect())
}

/// A record standing for an orphan (kind and name from its labels), to delete or adopt it;
/// `None` when its labels do not say what it is.
pub fn orphan_record(observed: &Observed, backend: &str) -> Option<ResourceRecord> {
    let kind = match observed.labels.get("dstack.kind")?.as_str() {
        "volume" => Kind::Volume,
        "fleet" => Kind::Fleet,
        _ => return None,
    };
    let name = observed.labels.get("dstack.name")?.clone();
    let now = Utc::now();
    Some(ResourceRecord {
        kind,
        name,
        config_type: if kind == Kind::Volume {
            ConfigType::Volume
        } else {
            ConfigType::Fleet
        },
        source: SourceRef {
            file: String::new(),
            document: 0,
        },
        spec: Json::Null,
        digest: String::new(),
        backend: backend.to_string(),
        backend_id: observed.backend_id.clone(),
        attributes: observed.attributes.clone(),
        status: observed.status.clone(),
        external: false,
        created_at: now,
        updated_at: now,
    })
}
