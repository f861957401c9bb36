//! Conformance with real dstack: `tests/fixtures/config/<group>/<case>.dstack.yml` hold one
//! valid and one invalid case per rule of dstack's configuration language, and `cases.json`
//! records, per case, the verdict of dstack's own parser (`dstack`, refreshed by
//! `scripts/oracle-fixtures`, never run here) and what we must do (`expect`), which differs from
//! dstack's verdict only where `difference` names a deliberate difference (README,
//! "Compatibility with dstack").
//!
//! The binary validates each group directory once (`--json`); every case whose `ok` is not its
//! `expect` is reported, all at once. The diagnostics of the invalid cases are snapshotted, one
//! snapshot per group, so that the error text is reviewed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::common::{TestContext, repo_root};

/// One entry of `cases.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// `group/case.dstack.yml`, relative to the fixtures directory.
    file: String,
    dstack: Verdict,
    expect: Expect,
    difference: Option<String>,
}

/// What real dstack decides.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Verdict {
    /// Its parser accepts the file.
    ok: bool,
    /// Its server and later CLI steps raise nothing (local-machine checks aside).
    server_ok: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Accept,
    Reject,
}

fn fixtures_dir() -> PathBuf {
    repo_root().join("tests/fixtures/config")
}

fn load_cases() -> Vec<Case> {
    let path = fixtures_dir().join("cases.json");
    let text = std::fs::read_to_string(&path).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json parses")
}

/// The fixture files on disk, `group/case.dstack.yml`, sorted.
fn fixture_files() -> Vec<String> {
    let mut files = Vec::new();
    for group in std::fs::read_dir(fixtures_dir()).expect("fixtures dir") {
        let group = group.expect("entry").path();
        if !group.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&group).expect("group dir") {
            let file = file.expect("entry").path();
            let name = file
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            if name.ends_with(".dstack.yml") {
                let group = group.file_name().expect("name").to_string_lossy();
                files.push(format!("{group}/{name}"));
            }
        }
    }
    files.sort();
    files
}

/// Cases by group, in file order.
fn by_group(cases: &[Case]) -> BTreeMap<&str, Vec<&Case>> {
    let mut groups: BTreeMap<&str, Vec<&Case>> = BTreeMap::new();
    for case in cases {
        let (group, _) = case.file.split_once('/').expect("group/case");
        groups.entry(group).or_default().push(case);
    }
    groups
}

/// A project with a copy of every fixture group at `<group>/`, so that diagnostics name
/// `group/case.dstack.yml`.
fn context_with_fixtures(groups: &BTreeMap<&str, Vec<&Case>>) -> TestContext {
    let context = TestContext::new();
    for cases in groups.values() {
        for case in cases {
            let text = std::fs::read_to_string(fixtures_dir().join(&case.file)).expect("fixture");
            context.write(&case.file, &text);
        }
    }
    context
}

#[test]
fn the_corpus_is_consistent() {
    let cases = load_cases();
    let listed: Vec<&str> = cases.iter().map(|c| c.file.as_str()).collect();
    let on_disk = fixture_files();
    let mut problems = Vec::new();
    for file in &on_disk {
        if !listed.contains(&file.as_str()) {
            problems.push(format!(
                "{file}: not in cases.json (run scripts/oracle-fixtures)"
            ));
        }
    }
    for (i, case) in cases.iter().enumerate() {
        if !on_disk.contains(&case.file) {
            problems.push(format!("{}: in cases.json, but no such file", case.file));
        }
        if listed[..i].contains(&case.file.as_str()) {
            problems.push(format!("{}: listed twice", case.file));
        }
        let dstack_accepts = case.dstack.ok && case.dstack.server_ok;
        let agrees = (case.expect == Expect::Accept) == dstack_accepts;
        match &case.difference {
            None if !agrees => problems.push(format!(
                "{}: expects {:?} but dstack {} it, and no `difference` says why",
                case.file,
                case.expect,
                if dstack_accepts { "accepts" } else { "rejects" }
            )),
            Some(reason) if reason.trim().is_empty() => {
                problems.push(format!("{}: empty `difference`", case.file));
            }
            _ => {}
        }
    }
    assert!(
        problems.is_empty(),
        "tests/fixtures/config/cases.json:\n{}",
        problems.join("\n")
    );
    let groups = by_group(&cases);
    for (group, cases) in &groups {
        let accept = cases.iter().filter(|c| c.expect == Expect::Accept).count();
        assert!(
            accept > 0 && accept < cases.len(),
            "group `{group}` needs valid and invalid cases"
        );
    }
}

#[test]
fn we_accept_and_reject_what_dstack_does_except_the_documented_differences() {
    let cases = load_cases();
    let groups = by_group(&cases);
    let context = context_with_fixtures(&groups);
    let mut mismatches = Vec::new();
    for (group, cases) in &groups {
        let run = context.run(&["validate", "--json", "-f", group]);
        let report: Vec<serde_json::Value> = match serde_json::from_str(&run.stdout) {
            Ok(report) => report,
            Err(e) => {
                mismatches.push(format!("{group}: no JSON report ({e}):\n{}", run.report()));
                continue;
            }
        };
        let results: BTreeMap<String, &serde_json::Value> = report
            .iter()
            .map(|file| (file["file"].as_str().unwrap_or_default().to_string(), file))
            .collect();
        for case in cases {
            let Some(result) = results.get(&case.file) else {
                mismatches.push(format!("{}: not in the report", case.file));
                continue;
            };
            let accepted = result["ok"] == true;
            if accepted != (case.expect == Expect::Accept) {
                let why = match &case.difference {
                    Some(reason) => format!(" ({reason})"),
                    None => String::new(),
                };
                let errors: Vec<String> = result["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        let text =
                            |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                        format!("{}: {}", text(&e["path"]), text(&e["message"]))
                    })
                    .collect();
                mismatches.push(format!(
                    "{}: expected {:?}{why}, got {}{}",
                    case.file,
                    case.expect,
                    if accepted { "accept" } else { "reject" },
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", errors.join("; "))
                    }
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases disagree with tests/fixtures/config/cases.json:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[test]
fn diagnostics_of_the_invalid_cases() {
    let cases = load_cases();
    let groups = by_group(&cases);
    let context = context_with_fixtures(&groups);
    let filters = context.filters();
    let filters: Vec<(&str, &str)> = filters
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    for (group, cases) in &groups {
        let mut args = vec!["validate"];
        for case in cases.iter().filter(|c| c.expect == Expect::Reject) {
            args.extend(["-f", case.file.as_str()]);
        }
        let run = context.run(&args);
        assert_eq!(run.code, 1, "{group}: {}", run.report());
        insta::with_settings!({filters => filters.clone(), prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!(format!("conformance__{group}"), run.report());
        });
    }
}
