//! `plan`, `apply`, `delete` on the fake backend: every action, convergence, faults, crashes,
//! concurrency, saved plans, drift and secrets.

use std::time::{Duration, Instant};

use crate::common::{Run, TestContext, repo_root};
use crate::dstack_snapshot;

const VOLUME: &str = "type: volume\nname: data\nbackend: fake\nsize: 10GB\n";
const TASK: &str = "type: task\nname: train\nbackends: [fake]\ncommands:\n  - pip install -r requirements.txt\n  - python train.py\nvolumes:\n  - data:/data\n";

fn fake() -> TestContext {
    let mut context = TestContext::new();
    context.env("DSTACK_FAKE_BACKEND", "1");
    context
}

/// Filters for values that change from run to run (lineages, digests, timings).
fn json_filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[UUID]",
        ),
        (r"sha256:[0-9a-f]{64}", "[DIGEST]"),
        (
            r#""dstack_version": "[^"]+""#,
            r#""dstack_version": "[VERSION]""#,
        ),
        (r"\[\d+\.\ds\]", "[TIME]"),
    ]
}

fn world(context: &TestContext) -> serde_json::Value {
    let text = std::fs::read_to_string(context.root.join(".dstack/fake-backend.json"))
        .unwrap_or_else(|_| "{\"objects\": {}}".into());
    serde_json::from_str(&text).expect("fake world")
}

fn objects(context: &TestContext, kind: &str) -> usize {
    world(context)["objects"]
        .as_object()
        .map_or(0, |o| o.values().filter(|v| v["kind"] == kind).count())
}

fn state(context: &TestContext) -> serde_json::Value {
    let run = context.run(&["state", "pull"]);
    assert_eq!(run.code, 0, "{}", run.report());
    serde_json::from_str(&run.stdout).expect("state json")
}

fn assert_converged(context: &TestContext) {
    let run = context.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        run.code,
        0,
        "a second plan shows no changes:\n{}",
        run.report()
    );
}

fn validate_plan_json(plan: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("schemas/plan.schema.json")).expect("schema"),
    )
    .expect("json");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(plan)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

fn snapshot_all_formats(context: &TestContext, name: &str) {
    let text = context.run(&["plan", "--refresh=false"]);
    let json = context.run(&["plan", "--json", "--refresh=false"]);
    let markdown = context.run(&["plan", "--format", "markdown", "--refresh=false"]);
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).expect("plan json");
    validate_plan_json(&parsed);
    insta::with_settings!({filters => json_filters(), prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!(format!("{name}_text"), text.stdout);
        insta::assert_snapshot!(format!("{name}_json"), serde_json::to_string_pretty(&parsed).expect("json"));
        insta::assert_snapshot!(format!("{name}_markdown"), markdown.stdout);
    });
}

#[test]
fn plans_for_every_action_in_text_json_and_markdown() {
    let context = fake();
    context.write(
        "main.dstack.yml",
        &format!("{VOLUME}---\n{TASK}---\ntype: volume\nname: scratch\nbackend: fake\nsize: 1GB\n"),
    );
    snapshot_all_formats(&context, "plan_create");
    let run = context.run(&["apply", "-y", "-d"]);
    assert_eq!(run.code, 0, "{}", run.report());
    snapshot_all_formats(&context, "plan_no_op");
    // Grow the volume (update), change the commands (replace), drop `scratch` (delete).
    context.write(
        "main.dstack.yml",
        &format!(
            "{}---\n{}",
            VOLUME.replace("10GB", "20GB"),
            TASK.replace("python train.py", "python train.py --epochs 3")
        ),
    );
    snapshot_all_formats(&context, "plan_update_replace_delete");
    let run = context.run(&["apply", "-y", "-d"]);
    assert_eq!(
        run.code,
        1,
        "dropping `scratch` destroys data: {}",
        run.report()
    );
    let run = context.run(&["apply", "-y", "-d", "--allow-data-loss"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert_converged(&context);
    assert_eq!(
        objects(&context, "volume"),
        1,
        "scratch is gone, data is kept"
    );
}

#[test]
fn detailed_exit_codes() {
    let context = fake();
    context.write("main.dstack.yml", VOLUME);
    assert_eq!(context.run(&["plan", "--detailed-exitcode"]).code, 2);
    assert_eq!(context.run(&["plan"]).code, 0);
    assert_eq!(context.run(&["apply", "-y"]).code, 0);
    assert_eq!(context.run(&["plan", "--detailed-exitcode"]).code, 0);
    context.write(
        "main.dstack.yml",
        "type: volume\nname: data\nbackend: fake\n",
    );
    assert_eq!(
        context.run(&["plan", "--detailed-exitcode"]).code,
        1,
        "invalid input is 1"
    );
}

fn copy_examples_to_fake(context: &TestContext) {
    for entry in std::fs::read_dir(repo_root().join("examples")).expect("examples") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if !name.ends_with(".dstack.yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let mut switched = text
            .replace("backend: local", "backend: fake")
            .replace("backends: [aws]", "backends: [fake]");
        let is_run = ["type: task", "type: service", "type: dev-environment"]
            .iter()
            .any(|t| switched.contains(t));
        if is_run && !switched.contains("backends:") {
            switched.push_str("backends: [fake]\n");
        }
        context.write(&name, &switched);
    }
}

#[test]
fn every_example_converges_on_the_fake_backend() {
    let mut context = fake();
    context.env("HF_TOKEN", "hf_example_token");
    copy_examples_to_fake(&context);
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert_converged(&context);
    let run = context.run(&["delete", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert_eq!(
        world(&context)["objects"]
            .as_object()
            .map(serde_json::Map::len),
        Some(0),
        "nothing leaks"
    );
    assert_eq!(
        state(&context)["resources"]
            .as_object()
            .map(serde_json::Map::len),
        Some(0)
    );
}

#[test]
fn sensitive_values_never_reach_output_plan_files_or_state() {
    let secret = "s3cr3t-v4lue-9f8e7d";
    let mut context = fake();
    context.env("API_TOKEN", secret);
    context.write(
        "main.dstack.yml",
        "type: task\nname: job\nbackends: [fake]\nenv:\n  - TOKEN=${{ env.API_TOKEN }}\n  - OTHER=${{ secrets.API_TOKEN }}\ncommands:\n  - echo ${{ env.API_TOKEN }}\n",
    );
    let mut seen = Vec::new();
    for args in [
        &["plan"][..],
        &["plan", "--json"],
        &["plan", "--format", "markdown"],
        &["plan", "-o", "plan.out"],
        &["apply", "plan.out"],
        &["state", "pull"],
        &["state", "show", "run/job"],
        &["state", "list", "--json"],
    ] {
        let run = context.run(args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.report());
        seen.push((format!("{args:?}"), run.stdout + &run.stderr));
    }
    seen.push((
        "plan.out".into(),
        std::fs::read_to_string(context.root.join("plan.out")).expect("plan file"),
    ));
    let database = std::fs::read(context.root.join(".dstack/state.db")).expect("db");
    let wal = std::fs::read(context.root.join(".dstack/state.db-wal")).unwrap_or_default();
    seen.push((
        "state.db".into(),
        String::from_utf8_lossy(&[database, wal].concat()).into_owned(),
    ));
    for (what, text) in &seen {
        assert!(!text.contains(secret), "the secret leaked into {what}");
    }
    assert!(seen[0].1.contains("(sensitive)"), "{}", seen[0].1);
    // A changed secret is a change.
    context.env("API_TOKEN", "another-secret-value");
    assert_eq!(context.run(&["plan", "--detailed-exitcode"]).code, 2);
}

#[test]
fn plan_and_state_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let context = fake();
    context.write("main.dstack.yml", VOLUME);
    assert_eq!(context.run(&["plan", "-o", "plan.out"]).code, 0);
    assert_eq!(context.run(&["apply", "plan.out"]).code, 0);
    for file in ["plan.out", ".dstack/state.db"] {
        let mode = std::fs::metadata(context.root.join(file))
            .expect(file)
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
}

#[test]
fn a_fault_at_step_k_records_exactly_the_steps_before_it() {
    let mut context = fake();
    context.write(
        "main.dstack.yml",
        "type: volume\nname: vol-a\nbackend: fake\nsize: 1GB\n---\ntype: volume\nname: vol-b\nbackend: fake\nsize: 1GB\n---\ntype: volume\nname: vol-c\nbackend: fake\nsize: 1GB\n",
    );
    context.env("DSTACK_FAKE_FAIL_AT", "2");
    let run = context.run(&["apply", "-y", "--parallelism", "1"]);
    assert_eq!(run.code, 3, "partly applied: {}", run.report());
    assert!(
        run.stderr.contains("injected fault at call 2"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("running the command again converges"),
        "{}",
        run.stderr
    );
    let recorded = state(&context);
    let names: Vec<&String> = recorded["resources"]
        .as_object()
        .expect("resources")
        .keys()
        .collect();
    assert_eq!(names, ["volume/vol-a"], "exactly the step before the fault");
    assert_eq!(objects(&context, "volume"), 1, "no object without a record");
    let mut context = context;
    context.env("DSTACK_FAKE_FAIL_AT", "");
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert_converged(&context);
    assert_eq!(objects(&context, "volume"), 3);
    assert_eq!(
        state(&context)["intents"]
            .as_object()
            .map(serde_json::Map::len),
        Some(0)
    );
}

#[test]
fn a_fault_before_any_change_is_exit_1_and_transient_faults_are_retried() {
    let mut context = fake();
    context.write("main.dstack.yml", VOLUME);
    context.env("DSTACK_FAKE_FAIL_AT", "1");
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 1, "{}", run.report());
    // The failed create left an intent; recovery settles it (a transient fault is retried).
    context.env("DSTACK_FAKE_FAIL_KIND", "transient");
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert_converged(&context);
    let mut fresh = fake();
    fresh.write("main.dstack.yml", VOLUME);
    fresh
        .env("DSTACK_FAKE_FAIL_AT", "1")
        .env("DSTACK_FAKE_FAIL_KIND", "transient");
    let run = fresh.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(
        run.stderr.contains("volume/data: retrying (attempt 1)"),
        "{}",
        run.stderr
    );
    assert_converged(&fresh);
}

fn wait_until(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn lock_id(context: &TestContext) -> Option<String> {
    let run = context.run(&["state", "list", "--json"]);
    let listing: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
    listing["lock"]["id"].as_str().map(str::to_string)
}

#[test]
fn kill_9_mid_apply_leaves_nothing_duplicated_or_leaked() {
    let mut context = fake();
    context.write("main.dstack.yml", VOLUME);
    context.env("DSTACK_FAKE_LATENCY_MS", "4000");
    let mut child = context
        .command(&["apply", "-y"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // The fake backend writes the object, then waits: kill during the wait.
    assert!(
        wait_until(Duration::from_secs(20), || objects(&context, "volume") == 1),
        "the create started"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    child.wait().expect("wait");
    context.env("DSTACK_FAKE_LATENCY_MS", "0");
    // The dead process still holds the lock: it is reported as stale, with the way out.
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("stale lock") && run.stderr.contains("dstack state unlock"),
        "{}",
        run.stderr
    );
    let plan = context.run(&["plan"]);
    assert!(
        plan.stdout.contains("interrupted operation"),
        "the pending intent is shown: {}",
        plan.report()
    );
    let id = lock_id(&context).expect("lock id");
    assert_eq!(context.run(&["state", "unlock", &id]).code, 0);
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(
        run.stdout.contains("adopted volume/data"),
        "{}",
        run.report()
    );
    assert_eq!(objects(&context, "volume"), 1, "no duplicate create");
    assert_converged(&context);
    // Recovery of a create that never reached the backend just forgets it.
    let recover = context.run(&["state", "recover"]);
    assert_eq!(recover.code, 0);
    assert!(
        recover.stderr.contains("Nothing to recover"),
        "{}",
        recover.report()
    );
}

#[test]
fn a_second_concurrent_apply_names_the_lock_holder() {
    let mut context = fake();
    context.write("main.dstack.yml", VOLUME);
    context.env("DSTACK_FAKE_LATENCY_MS", "2500");
    let first = context
        .command(&["apply", "-y"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    assert!(
        wait_until(Duration::from_secs(20), || lock_id(&context).is_some()),
        "the first apply holds the lock"
    );
    let second = context.run(&["apply", "-y"]);
    assert_eq!(second.code, 1, "{}", second.report());
    assert!(
        second.stderr.contains("the state is locked by") && second.stderr.contains("`apply`"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains(&format!("pid {}", first.id())),
        "{}",
        second.stderr
    );
    let output = first.wait_with_output().expect("first");
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn saved_plans_are_refused_when_stale() {
    let context = fake();
    context.write("main.dstack.yml", VOLUME);
    assert_eq!(context.run(&["plan", "-o", "first.plan"]).code, 0);
    assert_eq!(context.run(&["plan", "-o", "second.plan"]).code, 0);
    let run = context.run(&["apply", "first.plan"]);
    assert_eq!(run.code, 0, "{}", run.report());
    // Applying the same plan again, or one made before the state moved: stale.
    let run = context.run(&["apply", "first.plan"]);
    assert_eq!(run.code, 1);
    dstack_snapshot!(context, run);
    let run = context.run(&["apply", "second.plan"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("stale"), "{}", run.stderr);
    // Configuration edited after planning: stale.
    assert_eq!(context.run(&["plan", "-o", "third.plan"]).code, 0);
    context.write("main.dstack.yml", &VOLUME.replace("10GB", "30GB"));
    let run = context.run(&["apply", "third.plan"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("the configuration files changed since"),
        "{}",
        run.stderr
    );
    // Planning flags cannot be mixed with a saved plan.
    assert_eq!(
        context
            .run(&["apply", "third.plan", "-f", "main.dstack.yml"])
            .code,
        1
    );
    assert_eq!(context.run(&["apply", "nope.plan"]).code, 1);
}

#[test]
fn drift_is_shown_and_planned_back() {
    let context = fake();
    context.write("main.dstack.yml", VOLUME);
    assert_eq!(context.run(&["apply", "-y"]).code, 0);
    // Delete the object behind dstack's back.
    let path = context.root.join(".dstack/fake-backend.json");
    let mut world = world(&context);
    world["objects"] = serde_json::json!({});
    std::fs::write(&path, world.to_string()).expect("write");
    let run = context.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stdout.contains("Objects have changed outside dstack")
            && run.stdout.contains("volume/data has been deleted"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("will be created (it was deleted outside dstack)"),
        "{}",
        run.stdout
    );
    let json: serde_json::Value =
        serde_json::from_str(&context.run(&["plan", "--json"]).stdout).expect("json");
    assert_eq!(json["drift"][0]["kind"], "deleted");
    assert_eq!(
        context
            .run(&["plan", "--refresh=false", "--detailed-exitcode"])
            .code,
        0,
        "--refresh=false is blind to drift"
    );
    assert_eq!(context.run(&["apply", "-y"]).code, 0);
    assert_converged(&context);
    assert_eq!(objects(&context, "volume"), 1);
}

#[test]
fn data_loss_needs_consent_and_prompts_need_a_terminal() {
    let context = fake();
    context.write("main.dstack.yml", VOLUME);
    let run = context.run(&["apply"]);
    assert_eq!(run.code, 1, "no terminal, no -y");
    assert!(
        run.stderr.contains("no terminal to ask") && run.stderr.contains("-y"),
        "{}",
        run.stderr
    );
    assert_eq!(context.run(&["apply", "-y"]).code, 0);
    context.write("main.dstack.yml", &format!("{VOLUME}region: elsewhere\n"));
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .contains("WARNING: this destroys the volume's data"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("refusing to destroy the data of volume/data")
            && run.stderr.contains("--allow-data-loss"),
        "{}",
        run.stderr
    );
    let run = context.run(&["apply", "-y", "--allow-data-loss"]);
    assert_eq!(run.code, 0, "{}", run.report());
    // Shrinking is refused outright.
    context.write(
        "main.dstack.yml",
        &format!("{}region: elsewhere\n", VOLUME.replace("10GB", "5GB")),
    );
    let run = context.run(&["plan"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("a volume cannot shrink"),
        "{}",
        run.stderr
    );
}

#[test]
fn targets_replace_and_file_scope() {
    let context = fake();
    context.write("a.dstack.yml", VOLUME);
    context.write(
        "b.dstack.yml",
        "type: volume\nname: other\nbackend: fake\nsize: 1GB\n",
    );
    let run = context.run(&["plan", "--target", "volume/other", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(plan["complete"], false);
    assert_eq!(plan["resource_changes"].as_array().map(Vec::len), Some(1));
    assert_eq!(context.run(&["apply", "-y"]).code, 0);
    // Applying one file leaves the other file's resources alone; removing a document deletes it.
    std::fs::remove_file(context.root.join("b.dstack.yml")).expect("remove");
    let run = context.run(&["plan", "-f", "a.dstack.yml", "--detailed-exitcode"]);
    assert_eq!(run.code, 0, "{}", run.report());
    let run = context.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stdout
            .contains("volume/other will be destroyed (its configuration was removed)"),
        "{}",
        run.stdout
    );
    let run = context.run(&["plan", "--replace", "volume/data"]);
    assert!(
        run.stdout.contains("replacement requested with --replace"),
        "{}",
        run.stdout
    );
    assert_eq!(context.run(&["plan", "--target", "nonsense"]).code, 1);
}

#[test]
fn runs_follow_to_the_end_and_failures_exit_4() {
    let context = fake();
    context.write(
        "ok.dstack.yml",
        "type: task\nname: ok-job\nbackends: [fake]\ncommands: [echo hi]\n",
    );
    let run = context.run(&["apply", "-y", "-f", "ok.dstack.yml"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(run.stderr.contains("ok-job-1: done"), "{}", run.stderr);
    assert_converged_files(&context, "ok.dstack.yml");
    context.write(
        "bad.dstack.yml",
        "type: task\nname: bad-job\nbackends: [fake]\ncommands: [\"false\"]\n",
    );
    let run = context.run(&["apply", "-y", "-f", "bad.dstack.yml"]);
    assert_eq!(run.code, 4, "{}", run.report());
    assert!(
        run.stderr.contains("bad-job-1: failed (exit code 1)"),
        "{}",
        run.stderr
    );
    // A failed run is replaced by the next apply.
    let run = context.run(&["plan", "-f", "bad.dstack.yml"]);
    assert!(
        run.stdout.contains("the last run bad-job-1 failed"),
        "{}",
        run.stdout
    );
    // An unchanged, done run is a no-op; --replace forces a new one.
    let run = context.run(&[
        "apply",
        "-y",
        "-f",
        "ok.dstack.yml",
        "--replace",
        "run/ok-job",
    ]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(run.stderr.contains("ok-job-2: done"), "{}", run.stderr);
}

fn assert_converged_files(context: &TestContext, file: &str) {
    let run = context.run(&["plan", "-f", file, "--detailed-exitcode"]);
    assert_eq!(run.code, 0, "{}", run.report());
}

#[test]
fn a_volume_in_use_cannot_be_deleted_and_registered_volumes_are_only_forgotten() {
    let context = fake();
    context.write("vol.dstack.yml", VOLUME);
    context.write("job.dstack.yml", TASK);
    assert_eq!(
        context.run(&["apply", "-y", "-f", "vol.dstack.yml"]).code,
        0
    );
    // Submit the run without following it, then make it last.
    let run = Run::from(
        context
            .command(&["apply", "-y", "-d", "-f", "job.dstack.yml"])
            .output()
            .expect("apply"),
    );
    assert_eq!(run.code, 0, "{}", run.report());
    let path = context.root.join(".dstack/fake-backend.json");
    let mut world = world(&context);
    for object in world["objects"]
        .as_object_mut()
        .expect("objects")
        .values_mut()
    {
        if object["kind"] == "run" {
            object["ends_at"] = serde_json::json!("2999-01-01T00:00:00Z");
        }
    }
    std::fs::write(&path, world.to_string()).expect("write");
    let run = context.run(&["delete", "-y", "-f", "vol.dstack.yml"]);
    assert_eq!(run.code, 1, "{}", run.report());
    assert!(
        run.stderr.contains("in use by the run train-1"),
        "{}",
        run.stderr
    );
    assert_eq!(objects(&context, "volume"), 1);
    // A registered volume is forgotten, never destroyed.
    context.write(
        "ext.dstack.yml",
        "type: volume\nname: ext\nbackend: fake\nvolume_id: vol-existing\n",
    );
    assert_eq!(
        context.run(&["apply", "-y", "-f", "ext.dstack.yml"]).code,
        0
    );
    let before = objects(&context, "volume");
    let run = context.run(&["delete", "-y", "-f", "ext.dstack.yml"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(run.stdout.contains("will be forgotten"), "{}", run.stdout);
    assert_eq!(objects(&context, "volume"), before, "not destroyed");
}

#[test]
fn an_interrupted_run_delete_whose_run_survives_is_not_forgotten() {
    // Recovery used to take every interrupted delete of a run resource as done, forgetting its
    // runs while their objects lived on: a leak the next plans could no longer see.
    let mut context = fake();
    context.write(
        "main.dstack.yml",
        "type: task\nname: job\nbackends: [fake]\ncommands: [echo hi]\n",
    );
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(run.stderr.contains("job-1: done"), "{}", run.stderr);
    assert_eq!(objects(&context, "run"), 1);
    // The run has ended, so the delete's backend calls are the search for orphans, then the
    // removal of the run: fail that. The delete intent stays, as after a crash, for the next plan
    // to resolve.
    context
        .env("DSTACK_FAKE_FAIL_AT", "2")
        .env("DSTACK_FAKE_FAIL_KIND", "internal");
    let run = context.run(&["delete", "-y"]);
    assert_ne!(run.code, 0, "{}", run.report());
    assert!(
        run.stderr
            .contains("injected fault at call 2 (remove run job-1)"),
        "{}",
        run.stderr
    );
    assert_eq!(
        state(&context)["intents"]
            .as_object()
            .map(serde_json::Map::len),
        Some(1),
        "the failed delete leaves its intent"
    );
    assert_eq!(objects(&context, "run"), 1, "the run object survived");
    context.env("DSTACK_FAKE_FAIL_AT", "");
    let run = context.run(&["delete", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(
        run.stdout
            .contains("run/job survived an interrupted delete; it is kept"),
        "{}",
        run.report()
    );
    assert!(
        run.stdout.contains("run/job will be destroyed"),
        "{}",
        run.stdout
    );
    assert_eq!(objects(&context, "run"), 0, "no run object is left behind");
    let recorded = state(&context);
    for part in ["resources", "runs", "intents"] {
        assert_eq!(
            recorded[part].as_object().map(serde_json::Map::len),
            Some(0),
            "{part}: {recorded}"
        );
    }
}
