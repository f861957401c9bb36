//! Artifacts, tags and deps end to end on the local backend (real Docker, real SQLite, the
//! artifact store under the test's HOME), and push/pull to S3 (moto).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::TestContext;
use crate::common::docker::test_image;

fn context() -> TestContext {
    test_image();
    TestContext::new()
}

fn store(context: &TestContext) -> PathBuf {
    context.home.join(".dstack/artifacts")
}

/// Every blob file in the store.
fn blobs(store: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![store.join("blobs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn ls_json(context: &TestContext, name: &str) -> serde_json::Value {
    let run = context.run(&["ls", name, "--json"]);
    assert_eq!(run.code, 0, "{}", run.report());
    serde_json::from_str(&run.stdout).expect("ls json")
}

fn wait_for(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn hello_txt() -> String {
    format!(
        "type: task\nname: hello-txt\nimage: {}\ncommands:\n  - mkdir -p output\n  - echo \"Hello world\" > output/hello.txt\nartifacts:\n  - path: ./output\n",
        test_image()
    )
}

#[test]
fn the_seed_000_scenario_run_ls_tag_delete_ls_by_tag() {
    let context = context();
    context.write("hello.dstack.yml", &hello_txt());
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());

    let ls = context.run(&["ls", "hello-txt-1"]);
    assert_eq!(ls.code, 0, "{}", ls.report());
    assert_eq!(
        ls.stdout, "PATH    FILE       SIZE\noutput  hello.txt  12B\n",
        "the table of seed 000"
    );
    let listed = ls_json(&context, "hello-txt");
    assert_eq!(
        listed["run"], "hello-txt-1",
        "a resource name means its latest run"
    );
    let digest = listed["files"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_string();

    let tag = context.run(&["tags", "add", "hello-txt-1", "awesome-tag"]);
    assert_eq!(tag.code, 0, "{}", tag.report());
    let tags = context.run(&["tags", "list"]);
    assert!(
        tags.stdout.contains("awesome-tag") && tags.stdout.contains("hello-txt-1"),
        "{}",
        tags.report()
    );
    // Run and tag names share one namespace.
    let clash = context.run(&["tags", "add", "hello-txt-1", "hello-txt"]);
    assert_eq!(clash.code, 1);
    assert!(
        clash.stderr.contains("already names a run"),
        "{}",
        clash.stderr
    );

    // The current run of a declared resource goes with the resource, not with `rm`.
    let refused = context.run(&["rm", "-y", "hello-txt-1"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("dstack delete -f hello.dstack.yml"),
        "{}",
        refused.stderr
    );

    let delete = context.run(&["delete", "-y"]);
    assert_eq!(delete.code, 0, "{}", delete.report());
    assert_eq!(
        context.run(&["ls", "hello-txt-1"]).code,
        1,
        "the run is gone"
    );
    let by_tag = ls_json(&context, "awesome-tag");
    assert_eq!(by_tag["files"][0]["digest"], digest.as_str());
    assert_eq!(blobs(&store(&context)).len(), 1, "the tag keeps the blob");

    let untag = context.run(&["tags", "delete", "awesome-tag"]);
    assert_eq!(untag.code, 0, "{}", untag.report());
    assert!(
        blobs(&store(&context)).is_empty(),
        "no ref points to the blob any more"
    );
}

#[test]
fn rm_deletes_an_old_run_and_collects_only_unreferenced_blobs() {
    let context = context();
    let spec = |text: &str| {
        format!(
            "type: task\nname: gen\nimage: {}\ncommands:\n  - mkdir -p out\n  - echo same > out/same.txt\n  - echo {text} > out/own.txt\nartifacts: [out]\n",
            test_image()
        )
    };
    context.write("gen.dstack.yml", &spec("first"));
    assert_eq!(context.run(&["apply", "-y"]).code, 0);
    context.write("gen.dstack.yml", &spec("second"));
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert_eq!(blobs(&store(&context)).len(), 3, "same.txt is stored once");
    let rm = context.run(&["rm", "-y", "gen-1"]);
    assert_eq!(rm.code, 0, "{}", rm.report());
    assert_eq!(
        blobs(&store(&context)).len(),
        2,
        "gen-1's own file goes; the shared one stays for gen-2"
    );
    assert_eq!(ls_json(&context, "gen")["run"], "gen-2");
    let unknown = context.run(&["rm", "-y", "gen-1"]);
    assert_eq!(unknown.code, 1);
}

#[test]
fn abort_saves_nothing_and_stop_saves_everything() {
    let context = context();
    let spec = |name: &str| {
        format!(
            "type: task\nname: {name}\nimage: {}\ncommands:\n  - mkdir -p out\n  - echo partial > out/a.txt\n  - sleep 60\nartifacts: [out]\n",
            test_image()
        )
    };
    context.write("aborted.dstack.yml", &spec("aborted"));
    context.write("stopped.dstack.yml", &spec("stopped"));
    let run = context.run(&["apply", "-y", "-d"]);
    assert_eq!(run.code, 0, "{}", run.report());
    for name in ["aborted-1", "stopped-1"] {
        wait_for("the runs to write", Duration::from_secs(30), || {
            context
                .root
                .join(".dstack/runs")
                .join(name)
                .join("code/out/a.txt")
                .exists()
        });
    }
    assert_eq!(context.run(&["stop", "-x", "aborted"]).code, 0);
    assert_eq!(context.run(&["stop", "stopped"]).code, 0);
    let aborted = context.run(&["ls", "aborted"]);
    assert_eq!(aborted.code, 1);
    assert!(
        aborted
            .stderr
            .contains("ended aborted, so its artifacts were not saved"),
        "{}",
        aborted.stderr
    );
    assert_eq!(ls_json(&context, "stopped")["files"][0]["path"], "a.txt");
}

#[test]
fn mounted_artifacts_are_saved_while_the_run_writes_them() {
    let mut context = context();
    context.env("DSTACK_MOUNT_INTERVAL_MS", "200");
    context.write(
        "ckpt.dstack.yml",
        &format!(
            "type: task\nname: ckpt\nimage: {}\ncommands:\n  - mkdir -p ckpt\n  - echo step-1 > ckpt/1.txt\n  - sleep 60\nartifacts:\n  - path: ckpt\n    mount: true\n",
            test_image()
        ),
    );
    let run = context.run(&["apply", "-y", "-d"]);
    assert_eq!(run.code, 0, "{}", run.report());
    wait_for(
        "the checkpoint in the store",
        Duration::from_secs(30),
        || {
            let ls = context.run(&["ls", "ckpt", "--json"]);
            ls.code == 0 && ls.stdout.contains("1.txt")
        },
    );
    let ps = context.run(&["ps", "--json"]);
    assert!(
        ps.stdout.contains("running"),
        "still running: {}",
        ps.report()
    );
    // An interrupted run keeps what was saved as it ran.
    assert_eq!(context.run(&["stop", "-x", "ckpt"]).code, 0);
    assert_eq!(ls_json(&context, "ckpt")["files"][0]["path"], "1.txt");
}

#[test]
fn deps_are_materialised_and_unchanged_inputs_converge() {
    let context = context();
    context.write(
        "prep.dstack.yml",
        &format!(
            "type: task\nname: prep\nimage: {}\ncommands:\n  - mkdir -p data\n  - echo prepared-data > data/input.txt\nartifacts: [data]\n",
            test_image()
        ),
    );
    context.write(
        "train.dstack.yml",
        &format!(
            "type: task\nname: train\nimage: {}\ncommands:\n  - cat data/input.txt\ndeps:\n  - task: prep\n",
            test_image()
        ),
    );
    context.write("train.py", "print(1)\n");
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(run.stdout.contains("prepared-data"), "{}", run.report());
    assert!(
        run.stderr.contains("waiting for prep-1"),
        "{}",
        run.report()
    );

    let plan = context.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "unchanged inputs: {}", plan.report());

    // Changed code replaces both, and the reason names the part.
    context.write("train.py", "print(2)\n");
    let plan = context.run(&["plan", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).expect("plan json");
    let changes = plan["resource_changes"].as_array().expect("changes");
    let train = changes
        .iter()
        .find(|c| c["address"] == "run/train")
        .expect("train");
    assert_eq!(train["actions"], serde_json::json!(["delete", "create"]));
    assert!(
        train["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("code"),
        "{train}"
    );
    // Editing another resource's configuration is not a code change.
    context.write("train.py", "print(1)\n");
    context.write(
        "vol.dstack.yml",
        "type: volume\nname: scratch\nbackend: local\nsize: 1GB\n",
    );
    let plan = context.run(&[
        "plan",
        "-f",
        "prep.dstack.yml",
        "-f",
        "train.dstack.yml",
        "--detailed-exitcode",
    ]);
    assert_eq!(plan.code, 0, "{}", plan.report());

    // A dependency submitted again takes its dependents with it.
    let plan = context.run(&[
        "plan",
        "--replace",
        "run/prep",
        "-f",
        "prep.dstack.yml",
        "-f",
        "train.dstack.yml",
    ]);
    assert!(
        plan.stdout
            .contains("its dependency run/prep is submitted again"),
        "{}",
        plan.report()
    );
}

#[test]
fn artifact_paths_that_escape_the_working_directory_are_rejected() {
    let context = context();
    for (file, path) in [("up.dstack.yml", "../outside"), ("abs.dstack.yml", "/etc")] {
        context.write(
            file,
            &format!(
                "type: task\nname: {}\nimage: {}\ncommands: [true]\nartifacts: ['{path}']\n",
                file.trim_end_matches(".dstack.yml"),
                test_image()
            ),
        );
        let run = context.run(&["validate", "-f", file]);
        assert_eq!(run.code, 1, "{path}: {}", run.report());
    }
    // A symlink out of the artifact directory fails the run instead of saving what it points at.
    context.write(
        "link.dstack.yml",
        &format!(
            "type: task\nname: link\nimage: {}\ncommands:\n  - mkdir -p out\n  - ln -s /etc/hostname out/host\nartifacts: [out]\n",
            test_image()
        ),
    );
    let run = context.run(&["apply", "-y", "-f", "link.dstack.yml"]);
    assert_eq!(run.code, 4, "{}", run.report());
    let logs = context.run(&["logs", "link"]);
    assert!(
        logs.stdout
            .contains("points outside the artifact directory"),
        "{}",
        logs.report()
    );
    assert!(blobs(&store(&context)).is_empty());
}

#[test]
fn seed_000_push_wipe_pull_and_re_push_sends_nothing() {
    let mut context = context();
    let bucket = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(crate::common::moto::moto().bucket("artifacts"));
    for (key, value) in crate::common::moto::moto().env() {
        context.env(key, &value);
    }
    context.write(
        ".dstack/config.yml",
        &format!(
            "artifacts:\n  remote: s3://{bucket}/team\n  endpoint_url: {}\n",
            crate::common::moto::moto().endpoint
        ),
    );
    context.write("hello.dstack.yml", &hello_txt());
    assert_eq!(context.run(&["apply", "-y"]).code, 0);
    assert_eq!(
        context
            .run(&["tags", "add", "hello-txt-1", "awesome-tag"])
            .code,
        0
    );
    let before = ls_json(&context, "awesome-tag");

    let push = context.run(&["push", "awesome-tag"]);
    assert_eq!(push.code, 0, "{}", push.report());
    assert!(push.stderr.contains("1 of 1 file(s)"), "{}", push.stderr);
    let again = context.run(&["push", "awesome-tag"]);
    assert!(
        again
            .stderr
            .contains("0 of 1 file(s), 0B transferred; 1 already there"),
        "re-pushing sends no blob bytes: {}",
        again.stderr
    );

    // Lose the local store entirely, then pull the tag back.
    std::fs::remove_dir_all(store(&context)).expect("wipe the store");
    let pull = context.run(&["pull", "awesome-tag"]);
    assert_eq!(pull.code, 0, "{}", pull.report());
    let after = ls_json(&context, "awesome-tag");
    assert_eq!(
        before["files"], after["files"],
        "same paths, sizes and digests"
    );
    let blob = blobs(&store(&context));
    assert_eq!(blob.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&blob[0]).expect("blob"),
        "Hello world\n"
    );
    // A name the remote does not have is a clear error.
    let missing = context.run(&["pull", "no-such-run"]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("no-such-run"), "{}", missing.stderr);
}
