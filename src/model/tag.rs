//! `type: tag`: a name for a run's artifacts that outlives the run.
//!
//! `run` names a run (`train-3`) or a run resource, meaning its latest run. Once created, a tag
//! depends on the run's artifact manifest, not on the run: deleting the run keeps the tag.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A tag configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagSpec {
    /// The run whose artifacts the tag keeps: a run name (`train-3`) or a run resource (`train`).
    pub run: String,
}
