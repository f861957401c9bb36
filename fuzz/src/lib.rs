//! The bodies of the fuzz targets, shared by `cargo fuzz` (`fuzz_targets/*.rs`) and the stable
//! runner of the torture suite (`tests/torture/fuzz.rs` includes this file), so that both feed
//! the very same functions.
//!
//! Each target takes arbitrary bytes and drives one of the parsers of untrusted input the binary
//! has, then whatever consumes a successful parse on the way to output:
//!
//! - [`config_loader`]: a `*.dstack.yml` text (YAML 1.2, interpolation, schema, typed model),
//!   its diagnostics, and — when it loads — resolution and a plan against an empty state; the
//!   same text as `.dstack/config.yml` and `.dstack/variables.yaml`.
//! - [`plan_file`]: a saved plan as `dstack apply FILE` reads it, then its three renderings.
//! - [`state_document`]: a state document as `dstack state push FILE` and the S3/memory stores
//!   read it, then a plan that deletes everything it records, rendered; a document that reads
//!   must write back to the same document.
//!
//! Invariant checked: no input panics (and the state round trip holds).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use dstack::config::diagnostic::SourceText;
use dstack::config::load::{LoadOptions, load_text};
use dstack::config::project::{Project, ProjectConfig};
use dstack::model::ResourceId;
use dstack::plan::diff::{self, Observation};
use dstack::plan::{Plan, PlanInputs, render};
use dstack::state::Snapshot;

/// The project every target pretends to be in (nothing is read from or written to it).
fn project() -> Project {
    Project {
        root: "/fuzz/project".into(),
        name: "fuzz".into(),
        config: ProjectConfig::default(),
    }
}

/// Render a plan the three ways the binary does.
fn render_all(plan: &Plan) {
    let _ = render::text(plan);
    let _ = render::markdown(plan);
    let _ = serde_json::to_string_pretty(&render::json(plan));
}

/// Plan `desired` against `snapshot`, every recorded resource in scope, and render the result.
fn plan_and_render(desired: &[diff::Desired], snapshot: &Snapshot) {
    let observed: BTreeMap<ResourceId, Observation> = BTreeMap::new();
    let in_scope = |_: &dstack::model::SourceRef| true;
    let request = diff::Request {
        desired,
        snapshot,
        observed: &observed,
        in_scope: &in_scope,
        targets: &[],
        replace: &[],
        destroy: false,
        inputs: PlanInputs::default(),
    };
    if let Ok(plan) = diff::plan(&request) {
        render_all(&plan);
    }
}

/// A `*.dstack.yml` (and `config.yml`, `variables.yaml`) text.
pub fn config_loader(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let project = project();
    let env = |name: &str| (name != "UNSET").then(|| format!("value-of-{name}"));
    let stdin = || Ok(String::new());
    let options = LoadOptions {
        inputs: Vec::new(),
        cwd: "/fuzz/project".into(),
        project: &project,
        vars: BTreeMap::from([("x".to_string(), "1".to_string())]),
        run_args: Some("--epochs 1".into()),
        env: &env,
        stdin: &stdin,
        validation: dstack::model::validate::Context { fake_backend: true },
    };
    let source = Arc::new(SourceText {
        name: "fuzz.dstack.yml".into(),
        text: text.clone(),
    });
    let file = load_text(&source, "fuzz.dstack.yml", Some("fuzz"), &options);
    // Diagnostics are rendered with carets under spans: spans must stay inside the text.
    let _ = dstack::config::diagnostic::render(&file.problems, false, 80);
    if file.problems.is_empty() && !file.resources.is_empty() {
        let configured = BTreeSet::from(["local".to_string(), "fake".to_string()]);
        let snapshot = Snapshot::empty();
        if let Ok((desired, _)) = dstack::apply::pipeline::resolve_all(
            &file.resources,
            &configured,
            "fuzz-lineage",
            &snapshot,
            &BTreeMap::new(),
        ) {
            plan_and_render(&desired, &snapshot);
        }
    }
    let validator = dstack::model::schema::config_validator();
    let _ = dstack::config::project::read_config("config.yml", text.clone(), &|node| {
        validator.problems(node)
    });
    let _ = dstack::config::variables::parse("variables.yaml", text);
}

/// A scratch file for the readers that take a path, one per thread (tests run targets in
/// parallel), removed after each use.
fn scratch(data: &[u8], extension: &str) -> Option<PathBuf> {
    let path = std::env::temp_dir().join(format!(
        "dstack-fuzz-{}-{:?}.{extension}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, data).ok().map(|()| path)
}

/// A saved plan, read as `dstack apply FILE` reads it.
pub fn plan_file(data: &[u8]) {
    let Some(path) = scratch(data, "plan") else {
        return;
    };
    let read = dstack::cli::read_plan(&path);
    let _ = std::fs::remove_file(&path);
    if let Ok(plan) = read {
        render_all(&plan);
        let _ = plan.data_loss();
        let _ = plan.has_changes();
    }
}

/// Poll a future that never waits (the memory store's), without a runtime.
fn ready<T>(future: impl std::future::Future<Output = T>) -> Option<T> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(value) => Some(value),
        std::task::Poll::Pending => None,
    }
}

/// A state document, read as `dstack state push FILE` and the S3 store read it.
pub fn state_document(data: &[u8]) {
    use dstack::state::StateStore;
    if let Some(path) = scratch(data, "json") {
        let pushed = dstack::cli::read_document(&path);
        let _ = std::fs::remove_file(&path);
        if let Ok(snapshot) = pushed {
            plan_and_render(&[], &snapshot);
        }
    }
    // The memory store keeps the document as bytes and parses it like the S3 store does.
    let store = dstack::state::memory::MemoryStore::new();
    store.set_raw(data.to_vec());
    if let Some(Ok(snapshot)) = ready(store.load()) {
        let written = serde_json::to_vec(&snapshot).expect("a snapshot serializes");
        store.set_raw(written);
        let again = ready(store.load())
            .expect("the memory store never waits")
            .expect("a document the store wrote reads back");
        assert_eq!(again, snapshot, "a state document survives a round trip");
    }
}
