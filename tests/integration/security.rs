//! Security: secrets stay out of plans, plan files, state and run logs; state and plan files are
//! private; configuration paths cannot leave their roots; a hostile state document or saved plan
//! cannot make the binary write outside the project.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::TestContext;
use crate::common::moto::moto;

/// Distinct values, so that any appearance is a leak and not a coincidence.
const API_TOKEN: &str = "tok-5e1f-a9c3-d4b2-secret";
const DB_PASSWORD: &str = "pw-77d2-0b4e-91fa-secret";
const LOCAL_ONLY: &str = "loc-3c9a-77aa-0d1e-secret";
const AWS_ACCESS_KEY_ID: &str = "AKIATORTURE7Q2XJ5LMN";
const AWS_SECRET_ACCESS_KEY: &str = "aws-sk-9f8e7d6c5b4a39281706-secret";
const AWS_SESSION_TOKEN: &str = "aws-st-1a2b3c4d5e6f7a8b9c0d-secret";

const SECRETS: [&str; 6] = [
    API_TOKEN,
    DB_PASSWORD,
    LOCAL_ONLY,
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
];

/// A volume and a task that take secrets every way there is: `${{ env.X }}`, `${{ secrets.X }}`
/// (in `env`, `commands` and volume `tags`) and a bare `env` name read from the environment.
const CONFIG: &str = "\
type: volume
name: data
backend: fake
size: 10GB
tags:
  owner: ${{ env.API_TOKEN }}
---
type: task
name: job
backends: [fake]
env:
  - TOKEN=${{ env.API_TOKEN }}
  - PASSWORD=${{ secrets.DB_PASSWORD }}
  - LOCAL_ONLY
commands:
  - echo ${{ secrets.DB_PASSWORD }} | login
  - echo token=${{ env.API_TOKEN }}
volumes: [data:/data]
";

fn with_secrets(context: &mut TestContext) {
    context
        .env("DSTACK_FAKE_BACKEND", "1")
        .env("API_TOKEN", API_TOKEN)
        .env("DB_PASSWORD", DB_PASSWORD)
        .env("LOCAL_ONLY", LOCAL_ONLY)
        .env("AWS_SESSION_TOKEN", AWS_SESSION_TOKEN);
}

/// Every file under `dir` as text, except those `skip` names.
fn files_under(dir: &Path, skip: &dyn Fn(&Path) -> bool, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if skip(&path) {
            continue;
        }
        if path.is_dir() {
            files_under(&path, skip, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
}

fn assert_no_secret(seen: &[(String, String)]) {
    for (what, text) in seen {
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "`{secret}` leaked into {what}:\n{text}"
            );
        }
    }
}

/// Run every command that shows or stores a plan or the state; collect what they print.
fn exercise(context: &mut TestContext, state: &[&str]) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let mut run = |context: &TestContext, args: &[&str], expected: &[i32]| {
        let mut full: Vec<&str> = state.to_vec();
        full.extend(args);
        let run = context.run(&full);
        assert!(expected.contains(&run.code), "{full:?}: {}", run.report());
        seen.push((
            format!("`dstack {}`", full.join(" ")),
            run.stdout + &run.stderr,
        ));
    };
    run(context, &["validate"], &[0]);
    run(context, &["validate", "--json"], &[0]);
    run(context, &["plan"], &[0]);
    run(context, &["plan", "--json"], &[0]);
    run(context, &["plan", "--format", "markdown"], &[0]);
    run(context, &["-vv", "plan", "-o", "plan.out"], &[0]);
    run(context, &["-vv", "apply", "plan.out"], &[0]);
    run(context, &["state", "pull"], &[0]);
    run(context, &["state", "show", "run/job", "--json"], &[0]);
    run(context, &["state", "show", "volume/data"], &[0]);
    run(context, &["state", "list", "--json"], &[0]);
    run(context, &["ps", "-a", "--json"], &[0]);
    run(context, &["ps", "-a", "-v"], &[0]);
    // A changed secret is a change, shown without its value; a failing apply names no value.
    context.env("API_TOKEN", &format!("{API_TOKEN}-rotated"));
    run(context, &["plan", "--detailed-exitcode"], &[2]);
    context.env("DSTACK_FAKE_FAIL_AT", "1,2,3,4,5,6");
    run(context, &["-vv", "apply", "-y"], &[1, 3]);
    context.env("DSTACK_FAKE_FAIL_AT", "");
    run(context, &["apply", "-y"], &[0]);
    run(context, &["state", "pull"], &[0]);
    run(context, &["delete", "-y"], &[0]);
    seen
}

fn plan_output_hides_secrets(plan: &str) {
    assert!(
        plan.contains("(sensitive)"),
        "sensitive values are shown as such: {plan}"
    );
}

#[test]
fn secrets_never_reach_plans_plan_files_or_sqlite_state() {
    let mut context = TestContext::new();
    with_secrets(&mut context);
    context
        .env("AWS_ACCESS_KEY_ID", AWS_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET_ACCESS_KEY);
    context.write("main.dstack.yml", CONFIG);
    plan_output_hides_secrets(&context.run(&["plan"]).stdout);
    let mut seen = exercise(&mut context, &[]);
    // Everything dstack wrote: the plan file, the database and its WAL, caches, the artifact
    // store in HOME. The fake backend's world stands for the cloud, which must get the values.
    let skip =
        |path: &Path| path.ends_with("fake-backend.json") || path.ends_with("main.dstack.yml");
    files_under(&context.root, &skip, &mut seen);
    files_under(&context.home, &skip, &mut seen);
    assert!(
        seen.iter().any(|(what, _)| what.ends_with("state.db")),
        "the database was read"
    );
    assert_no_secret(&seen);
}

#[test]
fn secrets_never_reach_the_s3_state_document_or_its_backup() {
    let moto = moto();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let bucket = runtime.block_on(moto.bucket("security"));
    let mut context = TestContext::new();
    for (key, value) in moto.env() {
        context.env(key, &value);
    }
    with_secrets(&mut context);
    // Moto takes any credentials: these are the ones that must not be written anywhere.
    context
        .env("AWS_ACCESS_KEY_ID", AWS_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET_ACCESS_KEY);
    context.write("main.dstack.yml", CONFIG);
    let url = format!("s3://{bucket}/team/state.json");
    let mut seen = exercise(&mut context, &["--state", &url]);
    let s3 = runtime.block_on(moto.s3());
    let objects = runtime
        .block_on(s3.list_objects_v2().bucket(&bucket).send())
        .expect("list");
    let keys: Vec<String> = objects
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert!(
        keys.contains(&"team/state.json".to_string())
            && keys.contains(&"team/state.json.backup".to_string()),
        "{keys:?}"
    );
    for key in keys {
        let body = runtime.block_on(async {
            let object = s3
                .get_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .expect("get");
            object.body.collect().await.expect("body").into_bytes()
        });
        seen.push((
            format!("s3://{bucket}/{key}"),
            String::from_utf8_lossy(&body).into_owned(),
        ));
    }
    files_under(
        &context.root,
        &|p: &Path| p.ends_with("fake-backend.json") || p.ends_with("main.dstack.yml"),
        &mut seen,
    );
    assert_no_secret(&seen);
}

/// A project whose runs execute as host processes (no Docker needed).
fn host_project() -> TestContext {
    let context = TestContext::new();
    context.write(
        ".dstack/config.yml",
        "backends:\n  - type: local\n    runtime: host\n",
    );
    context
}

/// Apply `job.dstack.yml` on the host runtime; everything the run and the CLI wrote or printed.
fn host_run(context: &TestContext) -> Vec<(String, String)> {
    let apply = context.run(&["apply", "-y"]);
    assert_eq!(apply.code, 0, "{}", apply.report());
    let logs = context.run(&["logs", "job"]);
    assert_eq!(logs.code, 0, "{}", logs.report());
    let job = context.root.join(".dstack/runs/job-1/job.json");
    let mode = std::fs::metadata(&job)
        .expect("job.json")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "job.json holds env values: it is private");
    let mut seen = vec![
        ("`dstack apply`".to_string(), apply.stdout + &apply.stderr),
        ("`dstack logs job`".to_string(), logs.stdout + &logs.stderr),
    ];
    // job.json must hold the env values (the runner needs them); it is 0600, checked above.
    files_under(
        &context.root.join(".dstack/runs"),
        &|p: &Path| p.ends_with("job.json") || p.ends_with("code"),
        &mut seen,
    );
    assert!(
        seen.iter().any(|(what, _)| what.ends_with("logs.txt")),
        "the run log was read: {seen:?}"
    );
    seen
}

#[test]
fn secrets_printed_by_a_run_are_redacted_from_its_logs() {
    let mut context = host_project();
    context
        .env("DB_PASSWORD", DB_PASSWORD)
        .env("API_TOKEN", API_TOKEN);
    context.write(
        "job.dstack.yml",
        "type: task\nname: job\nenv:\n  - PASSWORD=${{ secrets.DB_PASSWORD }}\n  - API_TOKEN\ncommands:\n  - echo \"password=$PASSWORD\"\n  - echo \"token=$API_TOKEN\" >&2\n  - env | grep -E '^(PASSWORD|API_TOKEN)=' | sort\n",
    );
    let seen = host_run(&context);
    assert_no_secret(&seen);
    let log = &seen[1].1;
    assert!(
        log.contains("password=(sensitive)") && log.contains("token=(sensitive)"),
        "the lines are there, with the values redacted:\n{log}"
    );
}

#[test]
fn a_secret_split_across_two_reads_of_the_output_is_still_redacted() {
    let mut context = host_project();
    context.env("DB_PASSWORD", DB_PASSWORD);
    // One write of 8190 spaces and the secret: the runner reads 8 KiB at a time, so the
    // secret's first two bytes end one read and the rest begins the next.
    context.write(
        "job.dstack.yml",
        "type: task\nname: job\nenv:\n  - PASSWORD=${{ secrets.DB_PASSWORD }}\ncommands:\n  - printf '%8190s%s\\n' '' \"$PASSWORD\" | dd obs=65536 status=none\n",
    );
    let seen = host_run(&context);
    assert_no_secret(&seen);
}

#[test]
fn host_runs_do_not_inherit_aws_credentials_from_the_cli() {
    let mut context = host_project();
    context
        .env("AWS_ACCESS_KEY_ID", AWS_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET_ACCESS_KEY)
        .env("AWS_SESSION_TOKEN", AWS_SESSION_TOKEN);
    context.write(
        "job.dstack.yml",
        "type: task\nname: job\ncommands:\n  - env | sort\n",
    );
    let seen = host_run(&context);
    assert!(
        seen[1].1.contains("DSTACK_RUN_NAME=job-1"),
        "the run's environment was printed:\n{}",
        seen[1].1
    );
    assert_no_secret(&seen);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn state_and_plan_files_are_created_private_even_over_existing_files() {
    let mut context = TestContext::new();
    context.env("DSTACK_FAKE_BACKEND", "1");
    context.write(
        "main.dstack.yml",
        "type: volume\nname: data\nbackend: fake\nsize: 1GB\n",
    );
    // A plan file that already exists, world-readable, is replaced by a private one.
    let existing = context.write("old.plan", "{}");
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    for out in ["new.plan", "old.plan"] {
        let run = context.run(&["plan", "-o", out]);
        assert_eq!(run.code, 0, "{}", run.report());
        assert_eq!(mode(&context.root.join(out)), 0o600, "{out}");
    }
    assert_eq!(context.run(&["apply", "new.plan"]).code, 0);
    for file in [
        ".dstack/state.db",
        ".dstack/state.db-wal",
        ".dstack/state.db-shm",
    ] {
        let path = context.root.join(file);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{file}");
        }
    }
    // A state created elsewhere by `state migrate` is private too.
    let run = context.run(&["state", "migrate", "--to", "sqlite:copy/state.db"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert_eq!(mode(&context.root.join("copy/state.db")), 0o600);
}

#[test]
fn configuration_paths_cannot_leave_their_roots() {
    let mut context = TestContext::new();
    context.env("DSTACK_FAKE_BACKEND", "1");
    let cases = [
        "artifacts: [{path: ../outside}]",
        "artifacts: [{path: a/../../outside}]",
        "artifacts: [{path: /etc}]",
        "artifacts: ['~/outside']",
        "volumes: ['data:data']",
        "volumes: ['data:/data/../../etc']",
        "volumes: ['/host/../etc:/x']",
        "volumes: [{instance_path: /host/../../etc, path: /x}]",
        "volumes: [{name: data, path: /x/../../y}]",
        "volumes: ['/tmp:/workflow']",
        "volumes: ['/tmp:/workflow/sub']",
        "working_dir: relative/dir",
        // On the host runtime the working directory is a directory of the run's copy of the
        // project: `..` would put (and create) it anywhere on the machine.
        "working_dir: /workflow/../../../../outside",
    ];
    let mut accepted = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let name = format!("case{index}.dstack.yml");
        context.write(
            &name,
            &format!("type: task\nname: job\nbackends: [fake]\ncommands: [echo]\n{case}\n"),
        );
        let run = context.run(&["validate", "-f", &name]);
        if run.code != 1 {
            accepted.push(format!("{case} (exit {}): {}", run.code, run.stdout));
        }
    }
    assert!(
        accepted.is_empty(),
        "paths that leave their root are rejected by validation; accepted:\n{}",
        accepted.join("\n")
    );
}

/// Every path under `root` except the project and the home directory, with its content: what
/// a command wrote outside the project shows up as a difference.
fn outside(context: &TestContext) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let skip = |p: &Path| p == context.root || p == context.home;
    files_under(context.temp.path(), &skip, &mut seen);
    seen.sort();
    seen
}

/// A pulled state with one more run of `run/train`, named `name`, as a hostile document would
/// have it.
fn state_with_run(context: &TestContext, name: &str, status: &str) -> String {
    let pulled = context.run(&["state", "pull"]);
    assert_eq!(pulled.code, 0, "{}", pulled.report());
    let mut state: serde_json::Value = serde_json::from_str(&pulled.stdout).expect("state");
    let runs = state["runs"].as_object_mut().expect("runs");
    let mut run = runs.values().next().expect("a run").clone();
    run["name"] = name.into();
    run["number"] = 99.into();
    run["status"] = status.into();
    runs.insert(name.to_string(), run);
    state["serial"] = (state["serial"].as_u64().expect("serial") + 1).into();
    serde_json::to_string_pretty(&state).expect("json")
}

#[test]
fn a_hostile_state_document_cannot_make_dstack_write_outside_the_project() {
    let context = host_project();
    context.write(
        "train.dstack.yml",
        "type: task\nname: train\ncommands: [echo hi]\n",
    );
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    let victim = context.temp.path().join("victim");
    std::fs::create_dir_all(&victim).expect("victim");
    std::fs::write(victim.join("precious.txt"), "keep me").expect("victim file");
    let absolute = victim.display().to_string();
    let before = outside(&context);
    // Run names that are paths: `.dstack/runs/NAME` must never resolve outside the project.
    let names = ["../../../victim", absolute.as_str()];
    for name in names {
        for (status, command) in [
            ("done", vec!["rm", "-y", name]),
            ("running", vec!["stop", name]),
            ("done", vec!["logs", name]),
        ] {
            context.write("hostile.json", &state_with_run(&context, name, status));
            let push = context.run(&["state", "push", "--force", "hostile.json"]);
            if push.code == 0 {
                let _ = context.run(&command);
            }
            assert_eq!(
                outside(&context),
                before,
                "`dstack {}` with a pushed run named `{name}` changed files outside the project",
                command.join(" ")
            );
        }
        // Deleting the run resource removes its runs, the hostile one included.
        context.write("hostile.json", &state_with_run(&context, name, "done"));
        let push = context.run(&["state", "push", "--force", "hostile.json"]);
        if push.code == 0 {
            let deleted = context.run(&["delete", "-y", "-f", "train.dstack.yml"]);
            assert_eq!(
                outside(&context),
                before,
                "`dstack delete` of a resource with a pushed run named `{name}` changed files outside the project:\n{}",
                deleted.report()
            );
            let run = context.run(&["apply", "-y"]);
            assert_eq!(run.code, 0, "{}", run.report());
        }
    }
    assert!(victim.join("precious.txt").exists());
}

/// A change made to a saved plan.
type PlanEdit = Box<dyn Fn(&mut serde_json::Value)>;

/// A saved plan, edited.
fn tampered_plan(context: &TestContext, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let run = context.run(&["plan", "-o", "plan.out"]);
    assert_eq!(run.code, 0, "{}", run.report());
    let mut plan: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(context.root.join("plan.out")).expect("plan"),
    )
    .expect("json");
    edit(&mut plan);
    context.write(
        "tampered.plan",
        &serde_json::to_string_pretty(&plan).expect("json"),
    )
}

#[test]
fn a_hostile_plan_file_cannot_make_dstack_write_outside_the_project() {
    let mut context = TestContext::new();
    context.env("DSTACK_FAKE_BACKEND", "1");
    context.write(
        "main.dstack.yml",
        "type: volume\nname: data\nbackend: fake\nsize: 1GB\n---\ntype: task\nname: job\nbackends: [fake]\ncommands: [echo]\n",
    );
    let elsewhere = context.temp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("elsewhere");
    std::fs::write(
        elsewhere.join("other.dstack.yml"),
        "type: volume\nname: other\nbackend: fake\nsize: 1GB\n",
    )
    .expect("other config");
    let before = outside(&context);
    let edits: Vec<(&str, PlanEdit)> = vec![
        (
            "an address with `..`",
            Box::new(|plan| {
                for change in plan["resource_changes"].as_array_mut().expect("changes") {
                    let name = format!("../../{}", change["name"].as_str().expect("name"));
                    change["address"] =
                        format!("{}/{name}", change["kind"].as_str().expect("kind")).into();
                    change["name"] = name.into();
                }
            }),
        ),
        (
            "an absolute name",
            Box::new(|plan| {
                for change in plan["resource_changes"].as_array_mut().expect("changes") {
                    change["name"] = "/tmp/outside".into();
                }
            }),
        ),
        (
            "a working directory outside the project",
            Box::new(|plan| plan["inputs"]["cwd"] = "../elsewhere".into()),
        ),
        (
            "files outside the project",
            Box::new(|plan| {
                plan["inputs"]["files"] = serde_json::json!(["../elsewhere/other.dstack.yml"]);
            }),
        ),
    ];
    for (what, edit) in edits {
        let plan = tampered_plan(&context, edit);
        let run = context.run(&["apply", plan.to_str().expect("path")]);
        assert_ne!(
            run.code,
            0,
            "a plan with {what} is not applied: {}",
            run.report()
        );
        assert_eq!(
            outside(&context),
            before,
            "applying a plan with {what} changed files outside the project"
        );
        let pulled = context.run(&["state", "pull"]);
        let state: serde_json::Value = serde_json::from_str(&pulled.stdout).expect("state");
        for (address, record) in state["resources"].as_object().into_iter().flatten() {
            let source = record["source"]["file"].as_str().unwrap_or_default();
            assert!(
                ["volume/data", "run/job"].contains(&address.as_str())
                    && !source.starts_with("..")
                    && !source.starts_with('/'),
                "a plan with {what} recorded {address} from `{source}`"
            );
        }
    }
    // The untampered plan still applies: the refusals above were about the tampering.
    let plan = tampered_plan(&context, |_| {});
    let run = context.run(&["apply", plan.to_str().expect("path")]);
    assert_eq!(run.code, 0, "{}", run.report());
}
