//! Every example in `examples/` validates.

use crate::common::{TestContext, repo_root};

#[test]
fn every_example_validates() {
    let context = TestContext::new();
    let examples = repo_root().join("examples");
    let run = context.run(&["validate", "-f", &examples.display().to_string(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.report());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let files = report.as_array().expect("array");
    let count = std::fs::read_dir(&examples)
        .expect("examples dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".dstack.yml"))
        .count();
    assert_eq!(files.len(), count, "every example file is loaded");
    for file in files {
        assert_eq!(file["ok"], true, "{file}");
        assert!(
            !file["resources"].as_array().expect("resources").is_empty(),
            "{file}"
        );
    }
}

#[test]
fn there_is_an_example_of_every_type() {
    let context = TestContext::new();
    let examples = repo_root().join("examples");
    let run = context.run(&["validate", "-f", &examples.display().to_string(), "--json"]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let mut types: Vec<String> = report
        .as_array()
        .expect("array")
        .iter()
        .flat_map(|f| f["resources"].as_array().cloned().unwrap_or_default())
        .map(|r| r["type"].as_str().unwrap_or_default().to_string())
        .collect();
    types.sort();
    types.dedup();
    assert_eq!(
        types,
        [
            "dev-environment",
            "fleet",
            "service",
            "tag",
            "task",
            "volume"
        ]
    );
}
