//! Runs through S3: the `pool` backend queues jobs in the remote artifact store (moto), and
//! `dstack runner --pool` agents on this machine's Docker claim and run them — the same code path
//! an EC2 instance's user-data starts.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::TestContext;
use crate::common::docker::test_image;
use crate::common::moto::moto;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// A project whose remote artifact store is a fresh moto bucket; returns it and the store URL.
fn pool_project() -> (TestContext, String) {
    test_image();
    let bucket = runtime().block_on(moto().bucket("pool"));
    let url = format!("s3://{bucket}/store");
    let mut context = TestContext::new();
    for (key, value) in moto().env() {
        context.env(key, &value);
    }
    context.write(
        ".dstack/config.yml",
        &format!(
            "artifacts:\n  remote: {url}\n  endpoint_url: {}\n",
            moto().endpoint
        ),
    );
    (context, url)
}

fn task(name: &str, commands: &[&str]) -> String {
    let commands: Vec<String> = commands.iter().map(|c| format!("  - {c}\n")).collect();
    format!(
        "type: task\nname: {name}\nimage: {}\nbackends: [pool]\ncommands:\n{}artifacts: [out]\n",
        test_image(),
        commands.concat()
    )
}

/// A pool runner that exits after `idle` without work.
fn start_runner(context: &TestContext, url: &str, work: &str, idle: &str) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dstack"));
    command
        .args([
            "runner",
            "--pool",
            url,
            "--endpoint-url",
            &moto().endpoint,
            "--idle-exit",
            idle,
            "--work-dir",
        ])
        .arg(context.temp.path().join(work))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &context.home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in moto().env() {
        command.env(key, value);
    }
    command.spawn().expect("runner starts")
}

fn ps(context: &TestContext) -> Vec<serde_json::Value> {
    let run = context.run(&["ps", "-a", "--json"]);
    assert_eq!(run.code, 0, "{}", run.report());
    serde_json::from_str::<serde_json::Value>(&run.stdout)
        .expect("ps json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn wait_for(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn two_pool_runners_run_four_jobs_each_exactly_once() {
    let (context, url) = pool_project();
    for n in 1..=4 {
        context.write(
            &format!("job{n}.dstack.yml"),
            &task(
                &format!("job{n}"),
                &[
                    "mkdir -p out",
                    &format!("echo output-of-job{n} | tee out/result.txt"),
                ],
            ),
        );
    }
    let apply = context.run(&["apply", "-y", "-d"]);
    assert_eq!(apply.code, 0, "{}", apply.report());
    let queued = ps(&context);
    assert_eq!(queued.len(), 4);
    assert!(
        queued.iter().all(|r| r["status"] == "submitted"),
        "nobody has claimed them yet: {queued:?}"
    );

    let mut runners = vec![
        start_runner(&context, &url, "runner-a", "4s"),
        start_runner(&context, &url, "runner-b", "4s"),
    ];
    wait_for("all four jobs to end", Duration::from_mins(2), || {
        ps(&context).iter().all(|r| r["status"] == "done")
    });
    for runner in &mut runners {
        let status = runner.wait().expect("runner exits when idle");
        assert!(status.success());
    }
    for n in 1..=4 {
        let logs = context.run(&["logs", &format!("job{n}")]);
        assert_eq!(
            logs.stdout.matches(&format!("output-of-job{n}")).count(),
            1,
            "job{n} ran exactly once: {}",
            logs.report()
        );
        let ls = context.run(&["ls", &format!("job{n}"), "--json"]);
        assert_eq!(ls.code, 0, "{}", ls.report());
        assert!(ls.stdout.contains("result.txt"), "{}", ls.stdout);
    }
    // Each runner kept its own work directory; both served (four jobs, two claimers) or one
    // served all — either way no job has two claims.
    let claims = runtime().block_on(async {
        let bucket = url
            .trim_start_matches("s3://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        moto()
            .s3()
            .await
            .list_objects_v2()
            .bucket(bucket)
            .prefix("store/pool/claims/")
            .send()
            .await
            .expect("list claims")
            .key_count()
            .unwrap_or(0)
    });
    assert_eq!(claims, 4);
    // The pulled artifacts are the ones the runner saved.
    let pull = context.run(&["pull", "job1"]);
    assert_eq!(pull.code, 0, "{}", pull.report());
}

#[test]
fn pool_jobs_stop_and_abort_through_s3() {
    let (context, url) = pool_project();
    context.write(
        "long.dstack.yml",
        &task(
            "long",
            &["mkdir -p out", "echo started > out/a.txt", "sleep 120"],
        ),
    );
    context.write(
        "queued.dstack.yml",
        &task("queued", &["echo should-not-run"]),
    );
    let apply = context.run(&["apply", "-y", "-d", "-f", "long.dstack.yml"]);
    assert_eq!(apply.code, 0, "{}", apply.report());
    let mut runner = start_runner(&context, &url, "runner", "3s");
    wait_for("the job to run", Duration::from_mins(1), || {
        ps(&context).iter().any(|r| r["status"] == "running")
    });
    let stop = context.run(&["stop", "-x", "long"]);
    assert_eq!(stop.code, 0, "{}", stop.report());
    assert_eq!(ps(&context)[0]["status"], "aborted");
    assert!(runner.wait().expect("runner exits").success());
    // Aborted before any runner took it: it ends without running, even when a runner comes
    // afterwards. (No runner is up in between, so none can take it before the abort.)
    let apply = context.run(&["apply", "-y", "-d", "-f", "queued.dstack.yml"]);
    assert_eq!(apply.code, 0, "{}", apply.report());
    let stop = context.run(&["stop", "-x", "queued"]);
    assert_eq!(stop.code, 0, "{}", stop.report());
    let mut runner = start_runner(&context, &url, "runner-late", "3s");
    assert!(runner.wait().expect("runner exits").success());
    let logs = context.run(&["logs", "queued"]);
    assert!(!logs.stdout.contains("should-not-run"), "{}", logs.report());
}
