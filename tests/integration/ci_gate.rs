//! The CI gate of `examples/ci/`: the GitHub Actions workflow itself, read from its YAML file,
//! with its jobs played step by step against S3 state on moto and the fake backend.
//!
//! Every `run:` script that invokes `dstack` is executed as GitHub executes it (`bash
//! --noprofile --norc -eo pipefail`, with `RUNNER_TEMP`, `GITHUB_OUTPUT` and
//! `GITHUB_STEP_SUMMARY`), in the order of its job; artifact uploads and downloads are copies;
//! the other `uses:` steps (checkout, credentials, comments) have nothing to do here. So the
//! test and the workflow cannot drift apart: edit a command in the workflow and this test runs
//! the edited command (and [`PLAN_JOB_COMMANDS`] / [`APPLY_JOB_COMMANDS`] say what changed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value as Json;

use crate::common::moto::moto;
use crate::common::{TestContext, repo_root};

const WORKFLOW: &str = "examples/ci/.github/workflows/dstack.yml";

/// The dstack commands of the `plan` job, in order.
const PLAN_JOB_COMMANDS: &[&str] = &[
    r#"dstack plan --detailed-exitcode --format markdown -o "$RUNNER_TEMP/plan.out" >"$RUNNER_TEMP/plan.md" 2>"$RUNNER_TEMP/plan.err""#,
];

/// The dstack commands of the `apply` job, in order (the plan only without a reviewed one).
const APPLY_JOB_COMMANDS: &[&str] = &[
    r#"dstack plan -o "$RUNNER_TEMP/plan.out""#,
    r#"dstack apply --lock-timeout 10m -d "$RUNNER_TEMP/plan.out""#,
];

const VOLUME: &str = "type: volume\nname: data\nbackend: fake\nsize: 10GB\n";
const TASK: &str = "type: task\nname: train\nbackends: [fake]\ncommands:\n  - python train.py\nvolumes:\n  - data:/data\n";
const SCRATCH: &str = "type: volume\nname: scratch\nbackend: fake\nsize: 1GB\n";

/// The workflow, read with dstack's own YAML 1.2 reader (so `on:` stays the text `on`).
fn workflow() -> Json {
    let text = std::fs::read_to_string(repo_root().join(WORKFLOW)).expect("the workflow exists");
    let documents = dstack::config::yaml::parse(&text).expect("the workflow is valid YAML");
    assert_eq!(documents.len(), 1, "one YAML document");
    documents[0].root.to_json()
}

fn steps<'a>(workflow: &'a Json, job: &str) -> &'a [Json] {
    workflow["jobs"][job]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("job `{job}` has steps"))
}

/// The lines of a `run:` script that invoke dstack.
fn dstack_lines(script: &str) -> Vec<String> {
    script
        .lines()
        .map(str::trim)
        .filter(|line| line.split_whitespace().next() == Some("dstack"))
        .map(String::from)
        .collect()
}

fn job_commands(workflow: &Json, job: &str) -> Vec<String> {
    steps(workflow, job)
        .iter()
        .filter_map(|step| step["run"].as_str())
        .flat_map(dstack_lines)
        .collect()
}

/// What happened in one job.
#[derive(Debug)]
struct JobRun {
    /// The step that failed and its exit code.
    failed: Option<(String, i32)>,
    /// `GITHUB_OUTPUT` values by step id.
    outputs: BTreeMap<String, BTreeMap<String, String>>,
    /// The directory of the artifact the job uploaded.
    artifact: Option<PathBuf>,
    /// The job's `RUNNER_TEMP`.
    temp: PathBuf,
    /// Output of the `run:` steps.
    log: String,
    /// `GITHUB_STEP_SUMMARY`.
    summary: String,
}

impl JobRun {
    fn output(&self, step: &str, key: &str) -> Option<&str> {
        self.outputs.get(step)?.get(key).map(String::as_str)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.temp.join(name)).unwrap_or_default()
    }
}

/// A repository checkout with S3 state, and a runner that plays the workflow's jobs in it.
struct Gate {
    context: TestContext,
    workflow: Json,
    state_url: String,
    /// More environment for every step (fake-backend latency, ...).
    extra_env: Vec<(String, String)>,
    jobs: AtomicUsize,
}

impl Gate {
    fn new() -> Self {
        let moto = moto();
        let bucket = tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(moto.bucket("ci-gate"));
        let context = TestContext::new();
        // The checkout holds no `.dstack/config.yml`: the state comes from DSTACK_STATE.
        Self {
            context,
            workflow: workflow(),
            state_url: format!("s3://{bucket}/state/main.json"),
            extra_env: Vec::new(),
            jobs: AtomicUsize::new(0),
        }
    }

    /// The environment of the workflow, with the state in the test bucket.
    fn environment(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for (key, value) in self.workflow["env"].as_object().expect("workflow env") {
            let value = value.as_str().expect("text values");
            assert!(
                !value.contains("${{"),
                "{key}: the test cannot evaluate `{value}`"
            );
            if key == "DSTACK_STATE" {
                assert!(value.starts_with("s3://"), "the workflow uses S3 state");
                env.push((key.clone(), self.state_url.clone()));
            } else {
                env.push((key.clone(), value.to_string()));
            }
        }
        for (key, value) in moto().env() {
            env.push((key.to_string(), value));
        }
        env.push(("DSTACK_FAKE_BACKEND".into(), "1".into()));
        env.extend(self.extra_env.iter().cloned());
        env.push(("GITHUB_ACTIONS".into(), "true".into()));
        env.push(("CI".into(), "true".into()));
        env
    }

    /// Play `job`: `reviewed` is the artifact the `apply` job finds for the merged pull request.
    fn run_job(&self, job: &str, reviewed: Option<&Path>) -> JobRun {
        let number = self.jobs.fetch_add(1, Ordering::SeqCst) + 1;
        let temp = self.context.temp.path().join(format!("runner-{number}"));
        std::fs::create_dir_all(&temp).expect("runner temp");
        let summary = temp.join("step-summary.md");
        let bin = Path::new(env!("CARGO_BIN_EXE_dstack"))
            .parent()
            .expect("bin dir");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let runner_temp = |text: &str| text.replace("${{ runner.temp }}", &temp.to_string_lossy());
        let mut run = JobRun {
            failed: None,
            outputs: BTreeMap::new(),
            artifact: None,
            temp: temp.clone(),
            log: String::new(),
            summary: String::new(),
        };
        for (index, step) in steps(&self.workflow, job).iter().enumerate() {
            let name = step["name"]
                .as_str()
                .or(step["uses"].as_str())
                .unwrap_or("step")
                .to_string();
            let uses = step["uses"].as_str().unwrap_or_default();
            if let Some(script) = step["run"].as_str() {
                if dstack_lines(script).is_empty() {
                    continue; // installing dstack: the test has it already
                }
                assert!(
                    step.get("if").is_none() && step.get("env").is_none(),
                    "`{name}`: steps that run dstack take no `if:` or `env:` (the test plays them unconditionally)"
                );
                let script_path = temp.join(format!("step-{index}.sh"));
                std::fs::write(&script_path, script).expect("script");
                let output_path = temp.join(format!("output-{index}"));
                std::fs::write(&output_path, "").expect("GITHUB_OUTPUT");
                let mut command = Command::new("bash");
                command
                    .args(["--noprofile", "--norc", "-eo", "pipefail"])
                    .arg(&script_path)
                    .current_dir(&self.context.root)
                    .env_clear()
                    .env("PATH", &path)
                    .env("HOME", &self.context.home)
                    .env("RUNNER_TEMP", &temp)
                    .env("GITHUB_OUTPUT", &output_path)
                    .env("GITHUB_STEP_SUMMARY", &summary)
                    .envs(self.environment())
                    .stdin(Stdio::null());
                let output = command.output().expect("bash runs");
                run.log.push_str(&format!(
                    "--- {name}\n{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
                if let Some(id) = step["id"].as_str() {
                    let text = std::fs::read_to_string(&output_path).expect("outputs");
                    let values = text
                        .lines()
                        .filter_map(|line| line.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    run.outputs.insert(id.to_string(), values);
                }
                if !output.status.success() {
                    // Later steps run only on `!cancelled()` / `always()`: the comment, which
                    // has nothing to do here.
                    run.failed = Some((name, output.status.code().unwrap_or(-1)));
                    break;
                }
            } else if uses.starts_with("actions/upload-artifact@") {
                let with = &step["with"];
                let file = PathBuf::from(runner_temp(with["path"].as_str().expect("path")));
                if !file.is_file() {
                    assert_eq!(with["if-no-files-found"], "error", "`{name}`");
                    run.failed = Some((name, 1));
                    break;
                }
                let artifact = self
                    .context
                    .temp
                    .path()
                    .join(format!("artifacts/{number}"))
                    .join(with["name"].as_str().expect("artifact name"));
                std::fs::create_dir_all(&artifact).expect("artifact dir");
                std::fs::copy(&file, artifact.join(file.file_name().expect("file name")))
                    .expect("upload");
                run.artifact = Some(artifact);
            } else if uses.starts_with("actions/download-artifact@") {
                assert_eq!(
                    step["if"], "steps.reviewed.outputs.run-id != ''",
                    "the download depends on the reviewed plan being found"
                );
                let Some(reviewed) = reviewed else { continue };
                let with = &step["with"];
                assert_eq!(
                    reviewed.file_name().and_then(|n| n.to_str()),
                    with["name"].as_str(),
                    "the apply job downloads the artifact the plan job uploads"
                );
                let into = PathBuf::from(runner_temp(with["path"].as_str().expect("path")));
                for entry in std::fs::read_dir(reviewed).expect("artifact") {
                    let entry = entry.expect("entry");
                    std::fs::copy(entry.path(), into.join(entry.file_name())).expect("download");
                }
            }
        }
        run.summary = std::fs::read_to_string(&summary).unwrap_or_default();
        run
    }

    /// A pull request's workflow run: its working tree is what main holds after the merge.
    fn pull_request(&self) -> JobRun {
        self.run_job("plan", None)
    }

    /// The workflow run of a push to main that merged a pull request planned in `planned`.
    fn merge(&self, planned: &JobRun) -> JobRun {
        let artifact = planned.artifact.as_deref().expect("the plan was uploaded");
        self.run_job("apply", Some(artifact))
    }

    /// A manual run on main (or a direct push): no reviewed plan.
    fn dispatch(&self) -> JobRun {
        self.run_job("apply", None)
    }

    /// The state document in S3.
    fn state(&self) -> Json {
        let output = Command::new(env!("CARGO_BIN_EXE_dstack"))
            .args(["state", "pull"])
            .current_dir(&self.context.root)
            .env_clear()
            .env("HOME", &self.context.home)
            .envs(self.environment())
            .output()
            .expect("dstack runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("state json")
    }
}

fn assert_passed(run: &JobRun) {
    assert!(run.failed.is_none(), "{:?}\n{}", run.failed, run.log);
}

fn snapshot_markdown(gate: &Gate, name: &str, markdown: &str) {
    let filters = gate.context.filters();
    let filters: Vec<(&str, &str)> = filters
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    insta::with_settings!({filters => filters, prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!(name, markdown);
    });
}

#[test]
fn the_workflow_gates_pull_requests_and_applies_main() {
    let workflow = workflow();
    assert!(workflow["on"]["pull_request"].is_object());
    assert_eq!(
        workflow["on"]["push"]["branches"],
        serde_json::json!(["main"])
    );
    assert!(workflow["on"].get("workflow_dispatch").is_some());
    assert_eq!(workflow["defaults"]["run"]["shell"], "bash");
    // Drift between the workflow and what the README and this test promise.
    assert_eq!(job_commands(&workflow, "plan"), PLAN_JOB_COMMANDS);
    assert_eq!(job_commands(&workflow, "apply"), APPLY_JOB_COMMANDS);
    let jobs = &workflow["jobs"];
    assert!(
        jobs["plan"]["if"]
            .as_str()
            .is_some_and(|c| c.contains("github.event_name == 'pull_request'"))
    );
    assert!(
        jobs["apply"]["if"]
            .as_str()
            .is_some_and(|c| c.contains("github.ref == 'refs/heads/main'"))
    );
    // Applies queue up across the repository and are never cancelled halfway.
    assert_eq!(
        jobs["apply"]["concurrency"],
        serde_json::json!({"group": "dstack-apply", "cancel-in-progress": false})
    );
    assert_eq!(jobs["plan"]["concurrency"]["cancel-in-progress"], false);
    for job in ["plan", "apply"] {
        assert_eq!(jobs[job]["permissions"]["id-token"], "write", "{job}: OIDC");
    }
    // The comment is posted for failed plans too, and edited rather than added on every push.
    let comment = steps(&workflow, "plan")
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/github-script@"))
        })
        .expect("a comment step");
    assert!(
        comment["if"]
            .as_str()
            .is_some_and(|c| c.contains("!cancelled()"))
    );
    let script = comment["with"]["script"].as_str().expect("script");
    for needle in ["<!-- dstack-plan -->", "updateComment", "createComment"] {
        assert!(script.contains(needle), "the comment script has `{needle}`");
    }
    assert_eq!(jobs["plan"]["permissions"]["pull-requests"], "write");
}

#[test]
fn pull_requests_are_planned_and_merges_apply_the_reviewed_plan() {
    let gate = Gate::new();
    gate.context
        .write("main.dstack.yml", &format!("{VOLUME}---\n{TASK}"));

    // A pull request with changes: exit 2 passes the gate; the plan is the comment and an
    // artifact.
    let planned = gate.pull_request();
    assert_passed(&planned);
    assert_eq!(
        planned.output("plan", "exitcode"),
        Some("2"),
        "{}",
        planned.log
    );
    let markdown = planned.read("plan.md");
    snapshot_markdown(&gate, "ci_gate_pull_request_with_changes", &markdown);
    assert!(
        planned.summary.contains(&markdown),
        "the run summary shows the plan"
    );
    assert!(planned.artifact.is_some());
    assert_eq!(gate.state()["serial"], 0, "planning changes nothing");

    // The merge applies exactly the reviewed plan.
    let merged = gate.merge(&planned);
    assert_passed(&merged);
    assert!(
        !merged.log.contains("planning now"),
        "the reviewed plan is used: {}",
        merged.log
    );
    assert!(merged.log.contains("Apply complete"), "{}", merged.log);
    let state = gate.state();
    let recorded: Vec<&String> = state["resources"]
        .as_object()
        .expect("resources")
        .keys()
        .collect();
    assert_eq!(recorded.len(), 2, "{recorded:?}");

    // The next pull request without changes: exit 0 passes the gate.
    let unchanged = gate.pull_request();
    assert_passed(&unchanged);
    assert_eq!(
        unchanged.output("plan", "exitcode"),
        Some("0"),
        "{}",
        unchanged.log
    );
    snapshot_markdown(
        &gate,
        "ci_gate_pull_request_without_changes",
        &unchanged.read("plan.md"),
    );
    // Merging it applies nothing.
    let serial = gate.state()["serial"].clone();
    let merged = gate.merge(&unchanged);
    assert_passed(&merged);
    assert_eq!(gate.state()["serial"], serial);
    // The jobs leave the checkout as they found it (it is a run input: see the workflow).
    let mut files: Vec<String> = std::fs::read_dir(&gate.context.root)
        .expect("checkout")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, [".dstack", "main.dstack.yml"]);
}

#[test]
fn a_broken_configuration_fails_the_plan_job() {
    let gate = Gate::new();
    gate.context.write(
        "main.dstack.yml",
        "type: volume\nname: data\nbackend: fake\nsize: ten\n",
    );
    let run = gate.pull_request();
    assert_eq!(run.failed, Some(("Plan".into(), 1)), "{}", run.log);
    assert_eq!(run.output("plan", "exitcode"), Some("1"));
    assert!(run.artifact.is_none(), "a failed plan is not uploaded");
    let errors = run.read("plan.err");
    assert!(errors.contains("main.dstack.yml:4"), "{errors}");
    // The comment and the run summary say why.
    assert!(
        run.summary.contains("### dstack plan failed (exit code 1)"),
        "{}",
        run.summary
    );
    assert!(run.summary.contains("main.dstack.yml:4"), "{}", run.summary);
}

#[test]
fn a_plan_made_before_another_merge_is_refused_as_stale() {
    let gate = Gate::new();
    gate.context.write("main.dstack.yml", VOLUME);
    let base = gate.pull_request();
    assert_passed(&gate.merge(&base));

    // Two pull requests planned against the same main: one grows the volume, one adds another.
    gate.context
        .write("main.dstack.yml", &VOLUME.replace("10GB", "20GB"));
    let grow = gate.pull_request();
    assert_eq!(grow.output("plan", "exitcode"), Some("2"), "{}", grow.log);
    gate.context.write("main.dstack.yml", VOLUME);
    gate.context.write("scratch.dstack.yml", SCRATCH);
    let add = gate.pull_request();
    assert_eq!(add.output("plan", "exitcode"), Some("2"), "{}", add.log);

    // The first merge applies; the second one's plan was made for a state that has moved on.
    std::fs::remove_file(gate.context.root.join("scratch.dstack.yml")).expect("remove");
    gate.context
        .write("main.dstack.yml", &VOLUME.replace("10GB", "20GB"));
    assert_passed(&gate.merge(&grow));
    let serial = gate.state()["serial"].clone();
    gate.context.write("scratch.dstack.yml", SCRATCH);
    let stale = gate.merge(&add);
    assert_eq!(stale.failed, Some(("Apply".into(), 1)), "{}", stale.log);
    assert!(
        stale.log.contains("is stale: the state changed since"),
        "{}",
        stale.log
    );
    assert_eq!(gate.state()["serial"], serial, "nothing was applied");

    // A manual run on main plans what main holds now, and applies it.
    let dispatched = gate.dispatch();
    assert_passed(&dispatched);
    assert!(
        dispatched.log.contains("planning now"),
        "{}",
        dispatched.log
    );
    let after = gate.pull_request();
    assert_eq!(after.output("plan", "exitcode"), Some("0"), "{}", after.log);
}

#[test]
fn two_merges_applying_the_same_plan_at_once_apply_it_once() {
    // GitHub's concurrency group queues applies; should two run anyway (a re-run, a second
    // workflow), the state lock serializes them and the second finds its plan stale.
    let mut gate = Gate::new();
    gate.extra_env
        .push(("DSTACK_FAKE_LATENCY_MS".into(), "300".into()));
    gate.context.write("main.dstack.yml", VOLUME);
    let planned = gate.pull_request();
    assert_eq!(
        planned.output("plan", "exitcode"),
        Some("2"),
        "{}",
        planned.log
    );
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| gate.merge(&planned));
        let second = scope.spawn(|| gate.merge(&planned));
        (
            first.join().expect("first apply"),
            second.join().expect("second apply"),
        )
    });
    let (applied, refused) = match (&first.failed, &second.failed) {
        (None, Some(_)) => (&first, &second),
        (Some(_), None) => (&second, &first),
        _ => panic!("exactly one apply succeeds:\n{}\n{}", first.log, second.log),
    };
    assert!(applied.log.contains("Apply complete"), "{}", applied.log);
    assert_eq!(refused.failed, Some(("Apply".into(), 1)), "{}", refused.log);
    assert!(
        refused.log.contains("is stale: the state changed since"),
        "{}",
        refused.log
    );
    let world: Json = serde_json::from_str(
        &std::fs::read_to_string(gate.context.root.join(".dstack/fake-backend.json"))
            .expect("fake world"),
    )
    .expect("json");
    let volumes = world["objects"]
        .as_object()
        .expect("objects")
        .values()
        .filter(|o| o["kind"] == "volume")
        .count();
    assert_eq!(volumes, 1, "the volume is created once");
}
