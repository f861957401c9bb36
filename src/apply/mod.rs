//! Apply: the only place that calls backends and writes state.
//!
//! - [`recover`] resolves intents left by an interrupted apply: the object is looked up by its
//!   labels and adopted, or the intent is forgotten. Nothing leaks, nothing is created twice.
//! - [`refresh`] reads every recorded object from its backend, so the planner sees what was
//!   deleted or changed outside dstack, and records run status changes.
//! - [`executor`] carries out a plan: deletions, then creations and updates, following the
//!   dependency graph with bounded parallelism. Before each backend call that creates or deletes,
//!   an intent is committed; after it, the result. Transient errors are retried with capped,
//!   jittered exponential backoff; the first hard error stops new steps while in-flight ones
//!   finish and are recorded. Ctrl-C does the same; a second Ctrl-C abandons in-flight steps,
//!   whose intents the next plan resolves.

pub mod executor;
pub mod inputs;
pub mod pipeline;
pub mod recover;
pub mod refresh;

use crate::backend::BackendError;
use crate::plan::PlanError;
use crate::state::StateError;

/// Errors of apply's building blocks.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ApplyError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),
    #[error("`{address}`: {error}")]
    Backend {
        address: String,
        error: BackendError,
        #[help]
        hint: Option<String>,
    },
}

impl ApplyError {
    pub fn backend(address: impl Into<String>, error: BackendError) -> Self {
        let hint = error.hint.clone();
        Self::Backend {
            address: address.into(),
            error,
            hint,
        }
    }
}
