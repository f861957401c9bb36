//! Legacy projects end to end: `.dstack/workflows.yaml` and `.dstack/variables.yaml`, run with
//! `dstack run WORKFLOW` on the local backend (real Docker, real SQLite, the artifact store and
//! the cache under the test's HOME). Workflows use the `docker` provider with the offline test
//! image; the `bash` provider's conversion is covered by the unit tests of `legacy::convert`.

use std::time::{Duration, Instant};

use crate::common::docker::test_image;
use crate::common::{Run, TestContext};
use crate::dstack_snapshot;

fn context() -> TestContext {
    test_image();
    TestContext::new()
}

/// `.dstack/workflows.yaml` with these workflow items (each starting `- name: ...`).
fn workflows(context: &TestContext, items: &str) {
    context.write(".dstack/workflows.yaml", &format!("workflows:\n{items}"));
}

/// A docker workflow running `commands` in the test image.
fn workflow(name: &str, commands: &[&str], extra: &str) -> String {
    let mut list = String::new();
    for command in commands {
        list.push_str("      - ");
        list.push_str(&serde_json::to_string(command).expect("json"));
        list.push('\n');
    }
    format!(
        "  - name: {name}\n    provider: docker\n    image: {}\n    commands:\n{list}{extra}",
        test_image()
    )
}

/// The seed's `hello-txt`, with the test image.
fn hello_txt() -> String {
    workflow(
        "hello-txt",
        &["echo \"Hello world\" > output/hello.txt"],
        "    artifacts:\n      - path: ./output\n",
    )
}

/// The generated name `dstack run` prints first on stdout.
fn run_name(run: &Run) -> String {
    let name = run.stdout.lines().next().unwrap_or_default().to_string();
    let parts: Vec<&str> = name.split('-').collect();
    assert!(
        parts.len() == 3
            && parts[..2]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
            && parts[2].parse::<u64>().is_ok(),
        "not a generated name: {name:?}\n{}",
        run.report()
    );
    name
}

fn run_record(context: &TestContext, name: &str) -> serde_json::Value {
    let runs: serde_json::Value =
        serde_json::from_str(&context.run(&["ps", "-a", "--json"]).stdout).expect("ps json");
    runs.as_array()
        .expect("runs")
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

fn state(context: &TestContext) -> serde_json::Value {
    serde_json::from_str(&context.run(&["state", "pull"]).stdout).expect("state")
}

#[test]
fn legacy_hello_txt_runs_under_a_generated_name_and_saves_its_artifacts() {
    let context = context();
    workflows(&context, &hello_txt());
    let run = context.run(&["run", "hello-txt"]);
    assert_eq!(run.code, 0, "{}", run.report());
    let name = run_name(&run);
    assert!(name.ends_with("-1"), "{name}");
    assert!(
        run.stderr.contains(&format!("{name}: done")),
        "{}",
        run.report()
    );
    let record = run_record(&context, &name);
    assert_eq!(record["workflow"], "hello-txt", "{record}");
    assert_eq!(record["status"], "done");
    assert!(record.get("resource").is_none(), "{record}");
    assert_eq!(record["type"], "task");
    assert_eq!(record["spec"]["image"], test_image());
    for part in ["spec", "code"] {
        assert!(record["inputs"][part].is_string(), "{record}");
    }
    // Nothing is left pending: the intent was removed with the run's record.
    assert_eq!(state(&context)["intents"], serde_json::json!({}));

    let ls = context.run(&["ls", &name]);
    assert_eq!(ls.code, 0, "{}", ls.report());
    let lines: Vec<Vec<&str>> = ls
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["PATH", "FILE", "SIZE"], "{}", ls.stdout);
    assert_eq!(lines[1], ["output", "hello.txt", "12B"], "{}", ls.stdout);
    // The workflow's name means its latest run, as a resource's name does.
    assert_eq!(context.run(&["ls", "hello-txt"]).stdout, ls.stdout);

    // A second run gets another name; the same prefix would count on.
    let again = context.run(&["run", "hello-txt"]);
    assert_eq!(again.code, 0, "{}", again.report());
    assert_ne!(run_name(&again), name);
}

#[test]
fn legacy_variables_come_from_global_the_workflow_section_and_flags() {
    let context = context();
    context.write(
        ".dstack/variables.yaml",
        "variables:\n  global:\n    greeting: hello\n    who: world\n    batch_size: 1\n  show-vars:\n    who: section\n",
    );
    workflows(
        &context,
        &workflow(
            "show-vars",
            &[
                "echo \"${{ greeting }} ${{ var.who }} bs=${{ batch_size }} args=${{ run.args }} name=${{ run.name }}\"",
            ],
            "",
        ),
    );
    let run = context.run(&["run", "show-vars"]);
    assert_eq!(run.code, 0, "{}", run.report());
    let name = run_name(&run);
    assert!(
        run.stdout
            .contains(&format!("hello section bs=1 args= name={name}\n")),
        "{}",
        run.report()
    );

    let run = context.run(&[
        "run",
        "show-vars",
        "--who",
        "flag",
        "--greeting=hi",
        "--batch-size",
        "8",
        "--",
        "--epochs",
        "3",
    ]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(
        run.stdout.contains("hi flag bs=8 args=--epochs 3 name="),
        "{}",
        run.report()
    );
}

#[test]
fn legacy_unknown_flags_are_errors_that_list_the_variables() {
    let context = TestContext::new();
    context.write(
        ".dstack/variables.yaml",
        "variables:\n  global:\n    model: 124M\n  train:\n    batch_size: 1\n",
    );
    workflows(
        &context,
        "  - name: train\n    provider: bash\n    commands: [python train.py]\n",
    );
    let run = context.run(&["run", "train", "--epochs", "3"]);
    dstack_snapshot!(context, run);
}

#[test]
fn legacy_workflow_help_shows_its_variables() {
    let context = TestContext::new();
    context.write(
        ".dstack/variables.yaml",
        "variables:\n  global:\n    model: 124M\n  train:\n    batch_size: 1\n",
    );
    workflows(
        &context,
        "  - name: train\n    help: Fine-tunes the model\n    provider: bash\n    commands: [python train.py]\n",
    );
    let run = context.run(&["run", "train", "--help"]);
    dstack_snapshot!(context, run);
}

#[test]
fn legacy_deps_on_a_workflow_place_its_latest_done_artifacts() {
    let context = context();
    let cat = workflow(
        "cat-txt",
        &["cat output/hello.txt"],
        "    deps:\n      - workflow: hello-txt\n",
    );
    workflows(&context, &format!("{}{cat}", hello_txt()));
    // No run of hello-txt yet: nothing to depend on, and nothing is submitted.
    let early = context.run(&["run", "cat-txt"]);
    assert_eq!(early.code, 1, "{}", early.report());
    assert!(
        early
            .stderr
            .contains("the workflow `hello-txt` has no run that ended `done`"),
        "{}",
        early.report()
    );
    assert!(
        early.stderr.contains("dstack run hello-txt"),
        "{}",
        early.report()
    );
    assert_eq!(state(&context)["runs"], serde_json::json!({}));

    let hello = context.run(&["run", "hello-txt"]);
    assert_eq!(hello.code, 0, "{}", hello.report());
    let producer = run_name(&hello);
    let run = context.run(&["run", "cat-txt"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(run.stdout.contains("Hello world\n"), "{}", run.report());
    let record = run_record(&context, &run_name(&run));
    assert!(record["inputs"]["deps"].is_string(), "{record}");
    assert_eq!(
        record["spec"]["deps"],
        serde_json::json!([{"task": "hello-txt"}])
    );
    assert_eq!(run_record(&context, &producer)["status"], "done");
}

#[test]
fn legacy_deps_wait_for_a_running_workflow() {
    let context = context();
    let slow = workflow(
        "slow-txt",
        &["sleep 2", "echo later > output/hello.txt"],
        "    artifacts: [output]\n",
    );
    let cat = workflow(
        "cat-txt",
        &["cat output/hello.txt"],
        "    deps: [{workflow: slow-txt}]\n",
    );
    workflows(&context, &format!("{slow}{cat}"));
    let producer = context.run(&["run", "slow-txt", "-d"]);
    assert_eq!(producer.code, 0, "{}", producer.report());
    let run = context.run(&["run", "cat-txt"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(
        run.stderr.contains(&format!(
            "cat-txt: waiting for {} to end (deps)",
            run_name(&producer)
        )),
        "{}",
        run.report()
    );
    assert!(run.stdout.contains("later\n"), "{}", run.report());
}

#[test]
fn legacy_cache_persists_between_runs_of_a_workflow() {
    let context = context();
    workflows(
        &context,
        &workflow(
            "counter",
            &[
                "echo run >> .cache/runs.txt",
                "echo \"count=$(wc -l < .cache/runs.txt)\"",
            ],
            "    cache:\n      - path: ./.cache\n",
        ),
    );
    for expected in ["count=1", "count=2"] {
        let run = context.run(&["run", "counter"]);
        assert_eq!(run.code, 0, "{}", run.report());
        assert!(
            run.stdout.contains(expected),
            "{expected}\n{}",
            run.report()
        );
    }
    let lineage = state(&context)["lineage"]
        .as_str()
        .expect("lineage")
        .to_string();
    let kept = context
        .home
        .join(".dstack/cache")
        .join(lineage)
        .join("counter/.cache/runs.txt");
    assert_eq!(
        std::fs::read_to_string(&kept).expect("the cache is kept"),
        "run\nrun\n"
    );
    // Another workflow does not see it.
    let mut both =
        std::fs::read_to_string(context.root.join(".dstack/workflows.yaml")).expect("workflows");
    both.push_str(&workflow(
        "other",
        &["test ! -e .cache/runs.txt && echo fresh"],
        "    cache: [.cache]\n",
    ));
    context.write(".dstack/workflows.yaml", &both);
    let run = context.run(&["run", "other"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(run.stdout.contains("fresh"), "{}", run.report());
}

#[test]
fn legacy_a_failed_run_exits_4_and_keeps_its_cache() {
    let context = context();
    workflows(
        &context,
        &workflow(
            "flaky",
            &[
                "cat .cache/note 2>/dev/null || true",
                "echo kept > .cache/note",
                "exit 3",
            ],
            "    cache: [.cache]\n",
        ),
    );
    let run = context.run(&["run", "flaky"]);
    assert_eq!(run.code, 4, "{}", run.report());
    let again = context.run(&["run", "flaky"]);
    assert_eq!(again.code, 4, "{}", again.report());
    assert!(again.stdout.contains("kept\n"), "{}", again.report());
    assert_eq!(run_record(&context, &run_name(&again))["exit_code"], 3);
}

#[test]
fn legacy_detach_returns_while_the_run_goes_on() {
    let context = context();
    workflows(&context, &workflow("sleepy", &["sleep 30"], ""));
    let started = Instant::now();
    let run = context.run(&["run", "sleepy", "-d"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let name = run_name(&run);
    assert_eq!(run.stdout.trim(), name, "only the name on stdout");
    assert!(run.stderr.contains("Submitted"), "{}", run.report());
    let status = run_record(&context, &name)["status"].clone();
    assert!(status == "running" || status == "provisioning", "{status}");
    let stop = context.run(&["stop", &name, "-x"]);
    assert_eq!(stop.code, 0, "{}", stop.report());
}

#[test]
fn legacy_bad_workflows_are_reported_with_file_line_and_column() {
    let context = TestContext::new();
    context.write(
        ".dstack/workflows.yaml",
        "workflows:\n  - name: ok\n    provider: bash\n    commands: [echo]\n  - name: broken\n    provider: docker\n    image: busybox\n    commands: [echo]\n    resources:\n      gpu: many\n    artfacts: [out]\n",
    );
    context.write(
        ".dstack/workflows/more.yml",
        "workflows:\n  - name: ok\n    provider: lab\n",
    );
    // Running the valid workflow still reports the others: the files are checked as a whole.
    let run = context.run(&["run", "ok"]);
    dstack_snapshot!(context, run);
}

#[test]
fn legacy_unknown_workflow_lists_the_known_ones() {
    let context = TestContext::new();
    workflows(
        &context,
        "  - name: hello-txt\n    provider: bash\n    commands: [echo]\n  - name: cat-txt\n    provider: bash\n    commands: [cat]\n",
    );
    let run = context.run(&["run", "hello-tx"]);
    dstack_snapshot!(context, run);
}

#[test]
fn legacy_a_project_without_workflows_is_a_clear_error() {
    let context = TestContext::new();
    let run = context.run(&["run", "hello-txt"]);
    dstack_snapshot!(context, run);
}
