//! Random input never makes the configuration loader panic (a property test; the cargo-fuzz
//! targets in `fuzz/` run the same code for longer).

use std::collections::BTreeMap;
use std::sync::Arc;

use dstack::config::diagnostic::SourceText;
use dstack::config::load::{LoadOptions, load_text};
use dstack::config::project::{Project, ProjectConfig};
use proptest::prelude::*;

fn load(text: &str) {
    let project = Project {
        root: "/project".into(),
        name: "p".into(),
        config: ProjectConfig::default(),
    };
    let env = |_: &str| Some("value".to_string());
    let stdin = || Ok(String::new());
    let options = LoadOptions {
        inputs: Vec::new(),
        cwd: "/project".into(),
        project: &project,
        vars: BTreeMap::from([("x".to_string(), "1".to_string())]),
        run_args: None,
        env: &env,
        stdin: &stdin,
        validation: dstack::model::validate::Context { fake_backend: true },
    };
    let source = Arc::new(SourceText {
        name: "fuzz.dstack.yml".into(),
        text: text.to_string(),
    });
    let file = load_text(&source, "fuzz.dstack.yml", Some("fuzz"), &options);
    // Rendering every problem must not panic either (spans stay inside the text).
    let _ = dstack::config::diagnostic::render(&file.problems, false, 80);
}

/// Fragments of real configurations, so random combinations reach deep into the parsers.
const FRAGMENTS: &[&str] = &[
    "type: task\n",
    "type: service\n",
    "type: volume\n",
    "type: fleet\n",
    "type: tag\n",
    "type: dev-environment\n",
    "name: x1\n",
    "commands: [echo]\n",
    "port: 80\n",
    "backend: fake\n",
    "size: 10GB\n",
    "nodes: 0..2\n",
    "resources:\n  gpu: A100:80GB:2\n",
    "resources: {cpu: arm:4, memory: 8GB..}\n",
    "ports: [8080:22, '*:80']\n",
    "volumes: [data:/data, /a:/b]\n",
    "env: [A=1, B]\n",
    "env: {A: 1}\n",
    "max_duration: off\n",
    "retry: {on_events: []}\n",
    "replicas: 1..3\n",
    "scaling: {metric: rps, target: 1}\n",
    "groups: [{name: a, replicas: 1}]\n",
    "---\n",
    "python: 3.10\n",
    "image: x\n",
    "${{ var.x }}",
    "${{ env.Y",
    "$$",
    "{",
    "[",
    "]",
    "}",
    ":",
    "- ",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!int ",
    "!!str ",
    "\t",
    "\u{feff}",
    "é",
    "'",
    "\"",
    "|\n  x\n",
    ">\n  y\n",
    "? a\n: b\n",
    "0x1F",
    "1e3",
    ".inf",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(text in ".{0,200}") {
        load(&text);
    }

    #[test]
    fn random_configurations_never_panic(parts in proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..12)) {
        load(&parts.concat());
    }
}
