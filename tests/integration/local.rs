//! The local backend against the real Docker daemon: volumes, runs, logs, stop, abort, ports,
//! resources, pulls from a local registry, the host runtime, and runs that outlive the CLI.

use std::time::{Duration, Instant};

use crate::common::TestContext;
use crate::common::docker::{
    docker_cli, inspect, registry, remove_volume, test_image, volume_exists,
};

fn context() -> TestContext {
    test_image();
    TestContext::new()
}

fn state(context: &TestContext) -> serde_json::Value {
    serde_json::from_str(&context.run(&["state", "pull"]).stdout).expect("state")
}

fn run_record(context: &TestContext, run: &str) -> serde_json::Value {
    let runs: serde_json::Value =
        serde_json::from_str(&context.run(&["ps", "-a", "--json"]).stdout).expect("ps json");
    runs.as_array()
        .expect("runs")
        .iter()
        .find(|r| r["name"] == run)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

fn job_status(context: &TestContext, run: &str) -> serde_json::Value {
    let path = context
        .root
        .join(".dstack/runs")
        .join(run)
        .join("status.json");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn wait_for(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn volume_name(context: &TestContext, name: &str) -> String {
    state(context)["resources"][format!("volume/{name}")]["backend_id"]
        .as_str()
        .expect("volume id")
        .to_string()
}

#[test]
fn volumes_are_created_refreshed_and_deleted() {
    let context = context();
    context.write(
        "vol.dstack.yml",
        "type: volume\nname: data\nbackend: local\nsize: 1GB\n",
    );
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    let name = volume_name(&context, "data");
    assert!(volume_exists(&name));
    let labels = docker_cli(&["volume", "inspect", "--format", "{{json .Labels}}", &name]);
    for label in ["dstack.lineage", "dstack.name", "dstack.project"] {
        assert!(labels.contains(label), "{labels}");
    }
    assert_eq!(
        context.run(&["plan", "--detailed-exitcode"]).code,
        0,
        "converged"
    );
    // Removed outside dstack: drift, planned back.
    remove_volume(&name);
    let run = context.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stdout.contains("volume/data has been deleted"),
        "{}",
        run.stdout
    );
    assert_eq!(context.run(&["apply", "-y"]).code, 0);
    let name = volume_name(&context, "data");
    assert!(volume_exists(&name));
    let run = context.run(&["delete", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(!volume_exists(&name));
}

#[test]
fn a_task_writes_to_a_volume_and_a_second_task_reads_it() {
    let context = context();
    context.write(
        "vol.dstack.yml",
        "type: volume\nname: shared\nbackend: local\nsize: 1GB\n",
    );
    context.write(
        "write.dstack.yml",
        &format!("type: task\nname: writer\nimage: {}\ncommands:\n  - echo written-by-writer > /data/note.txt\nvolumes:\n  - shared:/data\n", test_image()),
    );
    context.write(
        "read.dstack.yml",
        &format!("type: task\nname: reader\nimage: {}\ncommands:\n  - cat /data/note.txt\nvolumes:\n  - shared:/data\n", test_image()),
    );
    let run = context.run(&[
        "apply",
        "-y",
        "-f",
        "vol.dstack.yml",
        "-f",
        "write.dstack.yml",
    ]);
    assert_eq!(run.code, 0, "{}", run.report());
    let run = context.run(&["apply", "-y", "-f", "read.dstack.yml"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(run.stdout.contains("written-by-writer"), "{}", run.report());
    let logs = context.run(&["logs", "reader"]);
    assert_eq!(logs.stdout.trim(), "written-by-writer");
    let run = context.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(run.code, 0, "applying twice converges: {}", run.report());
}

#[test]
fn env_ports_working_dir_and_limits_reach_the_container() {
    let context = context();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    context.write(
        "job.dstack.yml",
        &format!(
            "type: task\nname: inspected\nimage: {}\nenv:\n  GREETING: hello\nworking_dir: /workflow/sub\nports:\n  - {port}:8080\n  - '*:9090'\ncommands:\n  - mkdir -p /workflow/sub\n  - sleep 60\nresources:\n  cpu: 1..2\n  memory: 1GB..2GB\n  shm_size: 256MB\nstop_duration: 1s\n",
            test_image()
        ),
    );
    let run = context.run(&["apply", "-y", "-d"]);
    assert_eq!(run.code, 0, "{}", run.report());
    wait_for("the container", Duration::from_secs(30), || {
        job_status(&context, "inspected-1")["status"] == "running"
    });
    let container = job_status(&context, "inspected-1")["containers"][0]
        .as_str()
        .expect("container")
        .to_string();
    let info = inspect(&container);
    let config = info.config.expect("config");
    assert!(
        config
            .env
            .unwrap_or_default()
            .contains(&"GREETING=hello".to_string())
    );
    assert_eq!(config.working_dir.as_deref(), Some("/workflow/sub"));
    let labels = config.labels.unwrap_or_default();
    assert_eq!(
        labels.get("dstack.run").map(String::as_str),
        Some("inspected-1")
    );
    assert_eq!(
        labels.get("dstack.name").map(String::as_str),
        Some("inspected")
    );
    let host = info.host_config.expect("host config");
    assert_eq!(host.memory, Some(2 * 1024 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(2_000_000_000));
    assert_eq!(host.shm_size, Some(256 * 1024 * 1024));
    let bindings = host.port_bindings.unwrap_or_default();
    let published = bindings
        .get("8080/tcp")
        .cloned()
        .flatten()
        .unwrap_or_default();
    assert_eq!(
        published[0].host_port.as_deref(),
        Some(port.to_string().as_str())
    );
    let random = bindings
        .get("9090/tcp")
        .cloned()
        .flatten()
        .unwrap_or_default();
    assert!(
        random[0]
            .host_port
            .as_deref()
            .is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0)),
        "{random:?}"
    );
    let ps = context.run(&["ps"]);
    assert!(
        ps.stdout.contains("inspected-1")
            && ps.stdout.contains("local (docker)")
            && ps.stdout.contains("running"),
        "{}",
        ps.stdout
    );
    let stop = context.run(&["stop", "inspected"]);
    assert_eq!(stop.code, 0, "{}", stop.report());
    assert_eq!(run_record(&context, "inspected-1")["status"], "stopped");
}

#[test]
fn stop_saves_artifacts_and_abort_does_not() {
    let context = context();
    let home = context.home.clone();
    let task = |name: &str| {
        format!(
            "type: task\nname: {name}\nimage: {}\ncommands:\n  - mkdir -p out\n  - echo partial > out/state.txt\n  - sleep 60\nartifacts:\n  - out\nstop_duration: 2s\n",
            test_image()
        )
    };
    context.write("stopped.dstack.yml", &task("stopped"));
    context.write("aborted.dstack.yml", &task("aborted"));
    assert_eq!(context.run(&["apply", "-y", "-d"]).code, 0);
    for run in ["stopped-1", "aborted-1"] {
        wait_for("the run", Duration::from_secs(30), || {
            job_status(&context, run)["status"] == "running"
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(context.run(&["stop", "stopped"]).code, 0);
    assert_eq!(context.run(&["stop", "-x", "aborted"]).code, 0);
    assert_eq!(run_record(&context, "stopped-1")["status"], "stopped");
    assert_eq!(run_record(&context, "aborted-1")["status"], "aborted");
    let refs = walk(&home.join(".dstack/artifacts/refs"));
    assert!(
        refs.iter().any(|p| p.ends_with("stopped-1.json")),
        "{refs:?}"
    );
    assert!(
        !refs.iter().any(|p| p.ends_with("aborted-1.json")),
        "abort saves nothing: {refs:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path().display().to_string());
            }
        }
    }
    out
}

#[test]
fn a_failing_command_fails_the_run_and_apply_exits_4() {
    let context = context();
    context.write("fail.dstack.yml", &format!("type: task\nname: failing\nimage: {}\ncommands:\n  - echo about to fail\n  - exit 3\n  - echo never\n", test_image()));
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 4, "{}", run.report());
    assert!(run.stdout.contains("about to fail"), "{}", run.report());
    let logs = context.run(&["logs", "failing"]);
    assert!(
        logs.stdout.contains("about to fail") && !logs.stdout.contains("never"),
        "set -e stops at the failure: {}",
        logs.stdout
    );
    assert!(
        run.stderr.contains("failing-1: failed (exit code 3)"),
        "{}",
        run.stderr
    );
    let ps = context.run(&["ps", "-a"]);
    assert!(ps.stdout.contains("exited (3)"), "{}", ps.stdout);
}

#[test]
fn background_processes_end_with_the_main_command() {
    let context = context();
    context.write("bg.dstack.yml", &format!("type: task\nname: background\nimage: {}\ncommands:\n  - sleep 300 &\n  - echo main done\n", test_image()));
    let started = Instant::now();
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(
        started.elapsed() < Duration::from_mins(1),
        "the background sleep did not hold the run"
    );
    assert!(run.stdout.contains("main done"), "{}", run.report());
}

#[test]
fn the_run_finishes_after_the_cli_is_killed() {
    let context = context();
    context.write(
        "slow.dstack.yml",
        &format!(
            "type: task\nname: slow\nimage: {}\ncommands:\n  - sleep 3\n  - echo finished\n",
            test_image()
        ),
    );
    let mut child = context
        .command(&["apply", "-y"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("apply");
    wait_for("the run to start", Duration::from_secs(30), || {
        job_status(&context, "slow-1")["status"] == "running"
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    child.wait().expect("wait");
    wait_for("the run to finish", Duration::from_mins(1), || {
        job_status(&context, "slow-1")["status"] == "done"
    });
    // The dead CLI's lock is stale: the run's status reaches state at the next refresh.
    let listing: serde_json::Value =
        serde_json::from_str(&context.run(&["state", "list", "--json"]).stdout).expect("json");
    if let Some(id) = listing["lock"]["id"].as_str() {
        assert_eq!(context.run(&["state", "unlock", id]).code, 0);
    }
    assert_eq!(run_record(&context, "slow-1")["status"], "done");
    assert!(context.run(&["logs", "slow"]).stdout.contains("finished"));
}

#[test]
fn max_duration_stops_the_run() {
    let context = context();
    context.write("long.dstack.yml", &format!("type: task\nname: long\nimage: {}\ncommands:\n  - sleep 120\nmax_duration: 2s\nstop_duration: 1s\n", test_image()));
    let started = Instant::now();
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 4, "{}", run.report());
    assert!(started.elapsed() < Duration::from_mins(1));
    assert!(
        run.stderr.contains("max_duration (2s) exceeded"),
        "{}",
        run.stderr
    );
    assert_eq!(run_record(&context, "long-1")["status"], "stopped");
}

#[test]
fn missing_images_are_pulled_and_bad_ones_are_clear_errors() {
    let context = context();
    let image = registry().publish("dstack-pull-test", &format!("v{}", std::process::id()));
    context.write(
        "pull.dstack.yml",
        &format!("type: task\nname: pulled\nimage: {image}\ncommands:\n  - echo pulled-ok\n"),
    );
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(
        run.stderr.contains(&format!("pulled {image}")),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("pulled-ok"), "{}", run.stdout);
    context.write(
        "missing.dstack.yml",
        &format!(
            "type: task\nname: missing\nimage: {}/no/such-image:v1\ncommands: [echo]\n",
            registry().address
        ),
    );
    let run = context.run(&["apply", "-y", "-f", "missing.dstack.yml"]);
    assert_eq!(run.code, 1, "{}", run.report());
    assert!(
        run.stderr.contains("cannot pull the image") && run.stderr.contains("hint:"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_host_runtime_runs_processes_and_refuses_images() {
    let context = TestContext::new();
    context.write(
        ".dstack/config.yml",
        "backends:\n  - type: local\n    runtime: host\n",
    );
    context.write("data.txt", "from the project\n");
    context.write(
        "host.dstack.yml",
        "type: task\nname: on-host\ncommands:\n  - cat data.txt\n  - echo running in $PWD\n",
    );
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(run.stdout.contains("from the project"), "{}", run.report());
    let ps = context.run(&["ps", "-a"]);
    assert!(ps.stdout.contains("local (host)"), "{}", ps.stdout);
    context.write(
        "image.dstack.yml",
        "type: task\nname: with-image\nimage: busybox\ncommands: [echo]\n",
    );
    let run = context.run(&["apply", "-y", "-f", "image.dstack.yml"]);
    assert_eq!(run.code, 1, "{}", run.report());
    assert!(
        run.stderr.contains("names the image `busybox`") && run.stderr.contains("start Docker"),
        "{}",
        run.stderr
    );
}

#[test]
fn resources_the_machine_lacks_are_clear_errors() {
    let context = context();
    context.write(
        "gpu.dstack.yml",
        &format!(
            "type: task\nname: wants-gpu\nimage: {}\ncommands: [echo]\nresources:\n  gpu: 1\n",
            test_image()
        ),
    );
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("this machine has none"),
        "{}",
        run.stderr
    );
    context.write(
        "gpu.dstack.yml",
        &format!(
            "type: task\nname: wants-cpus\nimage: {}\ncommands: [echo]\nresources:\n  cpu: 4096\n",
            test_image()
        ),
    );
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("needs 4096 CPUs"), "{}", run.stderr);
}

#[test]
fn a_volume_in_use_cannot_be_deleted() {
    let context = context();
    context.write(
        "vol.dstack.yml",
        "type: volume\nname: busy\nbackend: local\nsize: 1GB\n",
    );
    context.write("job.dstack.yml", &format!("type: task\nname: user\nimage: {}\ncommands: [sleep 60]\nvolumes: [busy:/data]\nstop_duration: 1s\n", test_image()));
    assert_eq!(context.run(&["apply", "-y", "-d"]).code, 0);
    wait_for("the run", Duration::from_secs(30), || {
        job_status(&context, "user-1")["status"] == "running"
    });
    let run = context.run(&["delete", "-y", "-f", "vol.dstack.yml"]);
    assert_eq!(run.code, 1, "{}", run.report());
    assert!(
        run.stderr.contains("is in use by run user-1"),
        "{}",
        run.stderr
    );
    assert_eq!(context.run(&["stop", "user"]).code, 0);
    let run = context.run(&["delete", "-y"]);
    assert_eq!(run.code, 0, "{}", run.report());
}

#[test]
fn services_start_replicas_and_report_readiness() {
    let context = context();
    context.write(
        "svc.dstack.yml",
        &format!(
            "type: service\nname: web\nimage: {}\nport: 8000\nreplicas: 2\ncommands:\n  - mkdir -p /www && echo ok > /www/index.html\n  - httpd -f -p 8000 -h /www\nstop_duration: 1s\n",
            test_image()
        ),
    );
    assert_eq!(context.run(&["apply", "-y", "-d"]).code, 0);
    wait_for("readiness", Duration::from_secs(30), || {
        job_status(&context, "web-1")["message"] == "ready"
    });
    let status = job_status(&context, "web-1");
    assert_eq!(status["containers"].as_array().map(Vec::len), Some(2));
    assert_eq!(context.run(&["stop", "web"]).code, 0);
}

#[test]
fn dev_environments_stay_up_and_can_be_attached() {
    let context = context();
    context.write("dev.dstack.yml", &format!("type: dev-environment\nname: dev\nimage: {}\ninit:\n  - echo ready-for-you > /workflow/marker\nstop_duration: 1s\n", test_image()));
    assert_eq!(context.run(&["apply", "-y", "-d"]).code, 0);
    wait_for("the environment", Duration::from_secs(30), || {
        job_status(&context, "dev-1")["status"] == "running"
    });
    std::thread::sleep(Duration::from_millis(500));
    let run = context.run(&["attach", "dev", "--", "cat", "/workflow/marker"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(run.stdout.contains("ready-for-you"), "{}", run.report());
    assert_eq!(context.run(&["stop", "dev"]).code, 0);
    let run = context.run(&["attach", "dev", "--", "true"]);
    assert_eq!(run.code, 1, "a stopped environment cannot be attached");
    context.write(
        "dev.dstack.yml",
        "type: dev-environment\nname: dev\nide: vscode\n",
    );
    let run = context.run(&["apply", "-y", "-d"]);
    assert!(
        run.stderr
            .contains("needs an editor server downloaded from the internet"),
        "{}",
        run.report()
    );
}

#[test]
fn an_unreachable_docker_daemon_is_a_clear_error() {
    let mut context = TestContext::new();
    context.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    context.write(
        ".dstack/config.yml",
        "backends:\n  - type: local\n    runtime: docker\n",
    );
    context.write(
        "job.dstack.yml",
        "type: task\nname: job\nimage: busybox\ncommands: [echo]\n",
    );
    let run = context.run(&["apply", "-y"]);
    assert_eq!(run.code, 1, "{}", run.report());
    assert!(
        run.stderr
            .contains("cannot reach the Docker daemon at unix:///nonexistent/docker.sock"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("runtime: host"), "{}", run.stderr);
}
