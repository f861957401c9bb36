//! Runs on aws against moto on 127.0.0.1: `apply` launches an EC2 instance whose user-data would
//! start `dstack runner --job s3://...`. Moto does not boot instances, so each test starts that
//! same command itself, on this machine's Docker with the local test image, and follows the run
//! through S3 as the CLI does on real AWS.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types as sdk;
use dstack::runner::devices::{is_blank, prepare};
use serde_json::Value as Json;

use crate::aws::{IMAGE_PATTERN, block_on, ec2, image};
use crate::common::docker::test_image;
use crate::common::moto::moto;
use crate::common::{Run, TestContext};

/// A project with the aws backend on moto and a fresh bucket as its remote artifact store.
fn project() -> (TestContext, String) {
    test_image();
    block_on(image());
    let bucket = block_on(moto().bucket("awsruns"));
    let mut context = TestContext::new();
    for (key, value) in moto().env() {
        context.env(key, &value);
    }
    context.write(
        ".dstack/config.yml",
        &format!(
            "backends:\n  - type: aws\n    regions: [us-east-1]\n    endpoint_url: {endpoint}\n    \
             image: {{name: \"{IMAGE_PATTERN}\", owner: self}}\n\
             artifacts:\n  remote: s3://{bucket}/store\n  endpoint_url: {endpoint}\n",
            endpoint = moto().endpoint
        ),
    );
    (context, bucket)
}

fn task(name: &str, commands: &[&str], extra: &str) -> String {
    let commands: Vec<String> = commands.iter().map(|c| format!("  - {c}\n")).collect();
    format!(
        "type: task\nname: {name}\nimage: {}\nbackends: [aws]\ninstance_types: [t3.large]\ncommands:\n{}artifacts: [out]\n{extra}",
        test_image(),
        commands.concat()
    )
}

fn ok(run: &Run) {
    assert_eq!(run.code, 0, "{}", run.report());
}

fn runs(context: &TestContext) -> Vec<Json> {
    let run = context.run(&["ps", "-a", "--json"]);
    ok(&run);
    serde_json::from_str::<Json>(&run.stdout)
        .expect("ps json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn run_named(context: &TestContext, name: &str) -> Json {
    runs(context)
        .into_iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no run {name}"))
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

async fn instance(id: &str) -> sdk::Instance {
    ec2()
        .await
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .expect("describe instance")
        .reservations()
        .iter()
        .flat_map(|r| r.instances().iter().cloned())
        .next()
        .expect("the instance")
}

fn state(instance: &sdk::Instance) -> String {
    instance
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_default()
}

fn tag(instance: &sdk::Instance, key: &str) -> Option<String> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value().map(str::to_string))
}

/// The boot script of an instance, decoded.
async fn user_data(id: &str) -> String {
    let encoded = ec2()
        .await
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(sdk::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("user data")
        .user_data()
        .and_then(|u| u.value().map(str::to_string))
        .expect("the instance has user data");
    let mut decode = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("base64 runs");
    std::io::Write::write_all(&mut decode.stdin.take().expect("stdin"), encoded.as_bytes())
        .expect("write");
    let output = decode.wait_with_output().expect("base64 -d");
    String::from_utf8(output.stdout).expect("utf-8 script")
}

/// The job URL the script passes to `dstack runner --job`.
fn job_url_of(script: &str) -> String {
    script
        .split("--job '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("the script runs a job")
        .to_string()
}

/// What the user-data would start: `dstack runner --job URL` (against moto, on this machine).
fn start_runner(context: &TestContext, job_url: &str, work: &str) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dstack"));
    command
        .args([
            "runner",
            "--job",
            job_url,
            "--region",
            "us-east-1",
            "--endpoint-url",
            &moto().endpoint,
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

fn instance_id(run: &Json) -> String {
    run["job"]["instance_id"]
        .as_str()
        .expect("the run records its instance")
        .to_string()
}

#[test]
fn an_aws_task_runs_on_its_instance_and_reports_through_s3() {
    let (context, bucket) = project();
    context.write(
        "hello.dstack.yml",
        &task(
            "hello",
            &["mkdir -p out", "echo hello-from-ec2 | tee out/result.txt"],
            "",
        ),
    );
    ok(&context.run(&["apply", "-y", "-d"]));
    let run = run_named(&context, "hello-1");
    assert_eq!(run["backend"], "aws");
    assert_eq!(run["status"], "provisioning", "{run}");
    assert_eq!(run["job"]["instance_type"], "t3.large");
    assert_eq!(run["job"]["region"], "us-east-1");
    assert!(run["job"]["availability_zone"].as_str().is_some(), "{run}");
    let price = run["job"]["price"].as_f64().expect("a recorded price");
    let table = context.run(&["ps", "-a"]);
    ok(&table);
    assert!(
        table.stdout.contains(&format!("${price}")),
        "ps shows the instance's price:\n{}",
        table.report()
    );
    let id = instance_id(&run);

    let (described, script) = block_on(async { (instance(&id).await, user_data(&id).await) });
    assert_eq!(state(&described), "running");
    assert_eq!(tag(&described, "owner").as_deref(), Some("dstack"));
    assert_eq!(tag(&described, "dstack_name").as_deref(), Some("hello"));
    assert_eq!(tag(&described, "dstack_run").as_deref(), Some("hello-1"));
    assert_eq!(tag(&described, "dstack_kind").as_deref(), Some("run"));
    let job_url = job_url_of(&script);
    assert_eq!(Some(job_url.as_str()), run["job"]["backend_id"].as_str());
    assert!(
        job_url.starts_with(&format!("s3://{bucket}/store/jobs/")),
        "{job_url}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        script.contains(&format!("/store/bin/{version}/x86_64/dstack?")),
        "the script downloads the binary through a presigned URL: {script}"
    );
    assert!(script.contains("X-Amz-Signature="), "{script}");
    assert!(
        script.contains(&format!("--endpoint-url '{}'", moto().endpoint)),
        "{script}"
    );
    assert!(script.trim_end().ends_with("shutdown -h now"), "{script}");
    // The binary the instance downloads is this one.
    let uploaded = block_on(async {
        moto()
            .s3()
            .await
            .head_object()
            .bucket(&bucket)
            .key(format!("store/bin/{version}/x86_64/dstack"))
            .send()
            .await
            .expect("the binary is in the store")
            .content_length()
    });
    let size = std::fs::metadata(env!("CARGO_BIN_EXE_dstack"))
        .expect("binary")
        .len();
    assert_eq!(uploaded, i64::try_from(size).ok());

    let mut runner = start_runner(&context, &job_url, "runner");
    assert!(runner.wait().expect("runner exits").success());
    let run = run_named(&context, "hello-1");
    assert_eq!(run["status"], "done", "{run}");
    let logs = context.run(&["logs", "hello"]);
    ok(&logs);
    assert!(logs.stdout.contains("hello-from-ec2"), "{}", logs.report());
    let ls = context.run(&["ls", "hello", "--json"]);
    ok(&ls);
    assert!(ls.stdout.contains("result.txt"), "{}", ls.report());
    let described = block_on(instance(&id));
    assert!(
        matches!(state(&described).as_str(), "terminated" | "shutting-down"),
        "the instance ends with its run: {}",
        state(&described)
    );
    // Converged: nothing to do for the finished run.
    let plan = context.run(&["plan"]);
    ok(&plan);
    assert!(!plan.stdout.contains("hello-2"), "{}", plan.report());
}

#[test]
fn aws_runs_stop_and_abort_through_s3() {
    let (context, _bucket) = project();
    context.write(
        "long.dstack.yml",
        &task(
            "long",
            &["mkdir -p out", "echo started > out/a.txt", "sleep 120"],
            "stop_duration: 5s\n",
        ),
    );
    ok(&context.run(&["apply", "-y", "-d", "-f", "long.dstack.yml"]));
    let run = run_named(&context, "long-1");
    let id = instance_id(&run);
    let job_url = run["job"]["backend_id"].as_str().expect("job").to_string();
    let mut runner = start_runner(&context, &job_url, "runner-long");
    wait_for("the run to start", Duration::from_mins(1), || {
        run_named(&context, "long-1")["status"] == "running"
    });
    let stop = context.run(&["stop", "long"]);
    ok(&stop);
    assert!(runner.wait().expect("runner exits").success());
    let run = run_named(&context, "long-1");
    assert_eq!(run["status"], "stopped", "{run}");
    // A graceful stop saves the artifacts.
    let ls = context.run(&["ls", "long-1", "--json"]);
    ok(&ls);
    assert!(ls.stdout.contains("a.txt"), "{}", ls.report());
    assert_eq!(state(&block_on(instance(&id))), "terminated");

    // Aborted before its runner started: it ends at once, its instance goes, and a runner that
    // starts late does not run it.
    context.write(
        "late.dstack.yml",
        &task("late", &["echo should-not-run"], ""),
    );
    ok(&context.run(&["apply", "-y", "-d", "-f", "late.dstack.yml"]));
    let run = run_named(&context, "late-1");
    let id = instance_id(&run);
    let job_url = run["job"]["backend_id"].as_str().expect("job").to_string();
    let abort = context.run(&["stop", "-x", "late"]);
    ok(&abort);
    assert_eq!(run_named(&context, "late-1")["status"], "aborted");
    assert_eq!(state(&block_on(instance(&id))), "terminated");
    let mut runner = start_runner(&context, &job_url, "runner-late");
    assert!(runner.wait().expect("runner exits").success());
    let logs = context.run(&["logs", "late"]);
    assert!(!logs.stdout.contains("should-not-run"), "{}", logs.report());
}

#[test]
fn an_aws_volume_is_attached_in_its_zone_and_a_lost_instance_aborts_the_run() {
    let (context, bucket) = project();
    context.write(
        "data.dstack.yml",
        "type: volume\nname: data\nbackend: aws\nregion: us-east-1\navailability_zone: us-east-1c\nsize: 1GB\n",
    );
    context.write(
        "train.dstack.yml",
        &task("train", &["ls /data"], "volumes: [data:/data]\n"),
    );
    ok(&context.run(&["apply", "-y", "-d"]));
    let run = run_named(&context, "train-1");
    assert_eq!(run["job"]["availability_zone"], "us-east-1c", "{run}");
    let id = instance_id(&run);
    let volume_id = {
        let shown = context.run(&["state", "show", "volume/data", "--json"]);
        ok(&shown);
        serde_json::from_str::<Json>(&shown.stdout).expect("json")["backend_id"]
            .as_str()
            .expect("volume id")
            .to_string()
    };
    let (described, volume) = block_on(async {
        let volume = ec2()
            .await
            .describe_volumes()
            .volume_ids(&volume_id)
            .send()
            .await
            .expect("volume")
            .volumes()
            .first()
            .cloned()
            .expect("the volume");
        (instance(&id).await, volume)
    });
    assert_eq!(
        described
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default(),
        "us-east-1c"
    );
    let attachment = volume.attachments().first().expect("attached");
    assert_eq!(attachment.instance_id(), Some(id.as_str()));
    assert_eq!(attachment.device(), Some("/dev/sdf"));
    // The job tells the runner which device to mount, and that dstack may format it.
    let job: Json = block_on(async {
        let url = run["job"]["backend_id"].as_str().expect("job url");
        let key = url
            .trim_start_matches(&format!("s3://{bucket}/"))
            .to_string();
        let object = moto()
            .s3()
            .await
            .get_object()
            .bucket(&bucket)
            .key(format!("{key}/job.json"))
            .send()
            .await
            .expect("job.json");
        let bytes = object.body.collect().await.expect("body").into_bytes();
        serde_json::from_slice(&bytes).expect("job json")
    });
    let mount = &job["mounts"][0];
    assert_eq!(mount["target"], "/data", "{job}");
    assert_eq!(mount["source"]["type"], "device", "{job}");
    assert_eq!(mount["source"]["device"], "/dev/sdf");
    assert_eq!(mount["source"]["volume_id"], volume_id.as_str());
    assert_eq!(mount["source"]["format"], true);

    // The instance dies before its runner reports: the run is aborted and says why.
    block_on(async {
        ec2()
            .await
            .terminate_instances()
            .instance_ids(&id)
            .send()
            .await
            .expect("terminate")
    });
    let run = run_named(&context, "train-1");
    assert_eq!(run["status"], "aborted", "{run}");
    let message = run["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&id) && message.contains("reported no end"),
        "{message}"
    );
}

/// The formatting rule on a real block device: a blank volume dstack created is formatted ext4
/// and mounted; formatting never happens twice, and a blank volume dstack did not create is
/// refused untouched.
#[test]
fn blank_dstack_volumes_are_formatted_and_others_never() {
    if Command::new("losetup").arg("--version").output().is_err() {
        eprintln!(
            "skipped: `losetup` is not installed, so no loop device can stand in for a volume"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let loop_device = |name: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, vec![0u8; 32 << 20]).expect("image file");
        let output = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output()
            .expect("losetup runs");
        assert!(
            output.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::path::PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    };
    let detach = |device: &std::path::Path| {
        let _ = Command::new("losetup").arg("-d").arg(device).status();
    };
    let unmount = |dir: &std::path::Path| {
        let _ = Command::new("umount").arg(dir).status();
    };
    let ours = loop_device("ours.img");
    let mount_dir = dir.path().join("mnt-ours");
    let first = prepare(&ours, "vol-ours", true, &mount_dir);
    let second = first.as_ref().ok().map(|_| {
        std::fs::write(mount_dir.join("kept.txt"), b"kept").expect("write on the volume");
        unmount(&mount_dir);
        prepare(&ours, "vol-ours", true, &mount_dir)
    });
    let kept = std::fs::read(mount_dir.join("kept.txt")).ok();
    unmount(&mount_dir);
    detach(&ours);
    assert_eq!(first.map(|p| p.formatted), Ok(true));
    assert_eq!(second.map(|r| r.map(|p| p.formatted)), Some(Ok(false)));
    assert_eq!(kept.as_deref(), Some(&b"kept"[..]), "not formatted again");

    let theirs = loop_device("theirs.img");
    let refused = prepare(&theirs, "vol-theirs", false, &dir.path().join("mnt-theirs"));
    let still_blank = is_blank(&theirs);
    detach(&theirs);
    let error = refused.expect_err("a blank volume dstack did not create is refused");
    assert!(
        error.contains("formats only the volumes it created"),
        "{error}"
    );
    assert_eq!(still_blank, Ok(true), "left untouched");
}

// --- Runs on the nodes of an aws fleet -----------------------------------------------------------

/// The live instances of the fleet recorded as `fleet/NAME`.
fn fleet_nodes(context: &TestContext, name: &str) -> Vec<sdk::Instance> {
    let shown = context.run(&["state", "show", &format!("fleet/{name}"), "--json"]);
    ok(&shown);
    let record: Json = serde_json::from_str(&shown.stdout).expect("json");
    let fleet = record["backend_id"].as_str().expect("fleet id").to_string();
    block_on(async {
        ec2()
            .await
            .describe_instances()
            .filters(
                sdk::Filter::builder()
                    .name("tag:dstack_fleet")
                    .values(&fleet)
                    .build(),
            )
            .filters(
                sdk::Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .build(),
            )
            .send()
            .await
            .expect("describe")
            .reservations()
            .iter()
            .flat_map(|r| r.instances().iter().cloned())
            .collect()
    })
}

/// What a fleet node's user-data starts: the agent serving the node's queue, exiting once idle.
fn start_agent(context: &TestContext, bucket: &str, instance: &str, work: &str) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dstack"));
    command
        .args([
            "runner",
            "--node",
            &format!("s3://{bucket}/store"),
            "--instance-id",
            instance,
            "--region",
            "us-east-1",
            "--endpoint-url",
            &moto().endpoint,
            "--idle-exit",
            "2s",
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
    command.spawn().expect("agent starts")
}

fn fleet_task(name: &str, fleet: &str, commands: &[&str], extra: &str) -> String {
    let commands: Vec<String> = commands.iter().map(|c| format!("  - {c}\n")).collect();
    format!(
        "type: task\nname: {name}\nimage: {}\nfleets: [{fleet}]\ncommands:\n{}artifacts: [out]\n{extra}",
        test_image(),
        commands.concat()
    )
}

async fn s3_text(bucket: &str, key: &str) -> Option<String> {
    let object = moto()
        .s3()
        .await
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .ok()?;
    let bytes = object.body.collect().await.ok()?.into_bytes();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[test]
fn runs_on_an_aws_fleet_take_an_idle_node_and_give_it_back() {
    let (context, bucket) = project();
    context.write(
        "fleet.dstack.yml",
        "type: fleet\nname: workers\nbackends: [aws]\nnodes: 1\ninstance_types: [t3.large]\n",
    );
    context.write(
        "first.dstack.yml",
        &fleet_task(
            "first",
            "workers",
            &["mkdir -p out", "echo first-on-node | tee out/result.txt"],
            "",
        ),
    );
    ok(&context.run(&["apply", "-y", "-d"]));
    let nodes = fleet_nodes(&context, "workers");
    assert_eq!(nodes.len(), 1);
    let node = nodes[0].instance_id().expect("id").to_string();
    assert_eq!(
        tag(&nodes[0], "dstack_agent").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    // The node boots the agent as a service serving its own queue.
    let script = block_on(user_data(&node));
    assert!(
        script.contains(&format!(
            "dstack runner --node 's3://{bucket}/store' --instance-id $id --region 'us-east-1' --endpoint-url '{}'",
            moto().endpoint
        )),
        "{script}"
    );
    assert!(
        script.contains("systemctl daemon-reload && systemctl enable --now dstack-runner"),
        "{script}"
    );

    let run = run_named(&context, "first-1");
    assert_eq!(run["backend"], "aws");
    assert_eq!(run["status"], "provisioning", "{run}");
    assert_eq!(run["job"]["instance_id"], node.as_str(), "{run}");
    assert_eq!(run["job"]["fleet"], "workers", "{run}");
    assert!(
        run["message"]
            .as_str()
            .unwrap_or_default()
            .contains("queued for node"),
        "{run}"
    );

    // The node is busy: a second run is refused, naming the run that holds it.
    context.write(
        "second.dstack.yml",
        &fleet_task("second", "workers", &["echo second-on-node"], ""),
    );
    let refused = context.run(&["apply", "-y", "-d", "-f", "second.dstack.yml"]);
    assert_eq!(refused.code, 1, "{}", refused.report());
    assert!(
        refused.stderr.contains("has no idle node") && refused.stderr.contains("first-1"),
        "{}",
        refused.report()
    );

    // The agent runs the queued job; the node stays, free again.
    let mut agent = start_agent(&context, &bucket, &node, "agent-1");
    assert!(agent.wait().expect("agent exits").success());
    let run = run_named(&context, "first-1");
    assert_eq!(run["status"], "done", "{run}");
    let logs = context.run(&["logs", "first"]);
    ok(&logs);
    assert!(logs.stdout.contains("first-on-node"), "{}", logs.report());
    let ls = context.run(&["ls", "first", "--json"]);
    ok(&ls);
    assert!(ls.stdout.contains("result.txt"), "{}", ls.report());
    assert_eq!(
        state(&block_on(instance(&node))),
        "running",
        "the node outlives its run"
    );
    assert_eq!(
        block_on(s3_text(&bucket, &format!("store/nodes/{node}/lease"))),
        None,
        "the run gave the node back"
    );
    assert!(block_on(s3_text(&bucket, &format!("store/nodes/{node}/released"))).is_some());

    // Now the second run gets the node.
    ok(&context.run(&["apply", "-y", "-d", "-f", "second.dstack.yml"]));
    assert_eq!(
        run_named(&context, "second-1")["job"]["instance_id"],
        node.as_str()
    );
    let mut agent = start_agent(&context, &bucket, &node, "agent-2");
    assert!(agent.wait().expect("agent exits").success());
    assert_eq!(run_named(&context, "second-1")["status"], "done");
    let logs = context.run(&["logs", "second"]);
    assert!(logs.stdout.contains("second-on-node"), "{}", logs.report());
    // Converged: the fleet and its finished runs need nothing.
    let plan = context.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.report());
    // Deleting the fleet terminates the node and clears what its agent kept in the store.
    ok(&context.run(&["delete", "-y"]));
    assert_eq!(state(&block_on(instance(&node))), "terminated");
    assert_eq!(
        block_on(s3_text(&bucket, &format!("store/nodes/{node}/released"))),
        None
    );
}

#[test]
fn a_fleet_run_gets_its_volumes_on_the_node_and_lets_them_go() {
    let (context, bucket) = project();
    context.write(
        "infra.dstack.yml",
        "type: fleet\nname: zone-c\nbackends: [aws]\nnodes: 1\ninstance_types: [t3.large]\navailability_zones: [us-east-1c]\n\
         ---\ntype: volume\nname: data\nbackend: aws\nregion: us-east-1\navailability_zone: us-east-1c\nsize: 1GB\n\
         ---\ntype: volume\nname: far\nbackend: aws\nregion: us-east-1\navailability_zone: us-east-1a\nsize: 1GB\n",
    );
    ok(&context.run(&["apply", "-y", "-f", "infra.dstack.yml"]));
    let node = fleet_nodes(&context, "zone-c")[0]
        .instance_id()
        .expect("id")
        .to_string();
    let volume_id = |name: &str| {
        let shown = context.run(&["state", "show", &format!("volume/{name}"), "--json"]);
        ok(&shown);
        serde_json::from_str::<Json>(&shown.stdout).expect("json")["backend_id"]
            .as_str()
            .expect("volume id")
            .to_string()
    };
    let data = volume_id("data");
    let attachments = |id: &str| {
        block_on(async {
            ec2()
                .await
                .describe_volumes()
                .volume_ids(id)
                .send()
                .await
                .expect("volume")
                .volumes()
                .first()
                .map(|v| {
                    v.attachments()
                        .iter()
                        .map(|a| {
                            (
                                a.instance_id().unwrap_or_default().to_string(),
                                a.device().unwrap_or_default().to_string(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
    };

    // A volume in another zone than every node: refused, naming the zones.
    context.write(
        "far.dstack.yml",
        &fleet_task("far", "zone-c", &["ls /data"], "volumes: [far:/data]\n"),
    );
    let refused = context.run(&["apply", "-y", "-d", "-f", "far.dstack.yml"]);
    assert_eq!(refused.code, 1, "{}", refused.report());
    assert!(
        refused
            .stderr
            .contains("not in the zone of the run's volumes (us-east-1a)"),
        "{}",
        refused.report()
    );

    context.write(
        "train.dstack.yml",
        &fleet_task("train", "zone-c", &["ls /data"], "volumes: [data:/data]\n"),
    );
    ok(&context.run(&["apply", "-y", "-d", "-f", "train.dstack.yml"]));
    assert_eq!(
        attachments(&data),
        vec![(node.clone(), "/dev/sdf".to_string())]
    );
    let run = run_named(&context, "train-1");
    assert_eq!(run["job"]["volumes"][0], data.as_str(), "{run}");

    // Aborted before the agent took it: off the queue, the volume detached, the node free.
    ok(&context.run(&["stop", "-x", "train"]));
    assert_eq!(run_named(&context, "train-1")["status"], "aborted");
    assert_eq!(attachments(&data), Vec::new());
    assert_eq!(state(&block_on(instance(&node))), "running");
    assert_eq!(
        block_on(s3_text(&bucket, &format!("store/nodes/{node}/lease"))),
        None
    );

    // A node whose agent went silent: its queued run is aborted and says why.
    context.write(
        "train.dstack.yml",
        &fleet_task(
            "train",
            "zone-c",
            &["ls /data", "echo again"],
            "volumes: [data:/data]\n",
        ),
    );
    ok(&context.run(&["apply", "-y", "-d", "-f", "train.dstack.yml"]));
    assert_eq!(attachments(&data).len(), 1);
    block_on(async {
        moto()
            .s3()
            .await
            .put_object()
            .bucket(&bucket)
            .key(format!("store/nodes/{node}/heartbeat"))
            .body(aws_sdk_s3::primitives::ByteStream::from_static(
                b"2026-01-01T00:00:00Z",
            ))
            .send()
            .await
            .expect("put heartbeat")
    });
    let run = run_named(&context, "train-2");
    assert_eq!(run["status"], "aborted", "{run}");
    let message = run["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&node) && message.contains("has not reported"),
        "{message}"
    );
    assert_eq!(attachments(&data), Vec::new());
    // An agent that starts late does not run it.
    let mut agent = start_agent(&context, &bucket, &node, "agent-late");
    assert!(agent.wait().expect("agent exits").success());
    let logs = context.run(&["logs", "train"]);
    assert!(!logs.stdout.contains("again"), "{}", logs.report());

    // A lease left by a CLI that died after taking the node and before queueing its job: its job
    // exists but is queued nowhere, and the lease is old. The next run takes the node over.
    let lineage = run["job"]["lineage"].as_str().expect("lineage").to_string();
    block_on(async {
        let s3 = moto().s3().await;
        for (key, body) in [
            (
                format!("store/jobs/{lineage}/ghost-1/job.json"),
                "{}".to_string(),
            ),
            (
                format!("store/nodes/{node}/lease"),
                format!("{lineage}/ghost-1\n2026-01-01T00:00:00Z\n"),
            ),
        ] {
            s3.put_object()
                .bucket(&bucket)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from(body.into_bytes()))
                .send()
                .await
                .expect("put");
        }
    });
    context.write(
        "after.dstack.yml",
        &fleet_task("after", "zone-c", &["echo after"], ""),
    );
    ok(&context.run(&["apply", "-y", "-d", "-f", "after.dstack.yml"]));
    assert_eq!(
        run_named(&context, "after-1")["job"]["instance_id"],
        node.as_str()
    );
}

#[test]
fn idle_fleet_nodes_above_min_are_terminated_by_apply() {
    let (context, bucket) = project();
    context.write(
        "fleet.dstack.yml",
        "type: fleet\nname: elastic\nbackends: [aws]\nnodes: {min: 1, target: 3}\ninstance_types: [t3.large]\nidle_duration: 3s\n\
         ---\ntype: fleet\nname: fixed\nbackends: [aws]\nnodes: 1\ninstance_types: [t3.large]\nidle_duration: 1s\n",
    );
    ok(&context.run(&["apply", "-y", "-f", "fleet.dstack.yml"]));
    let nodes = fleet_nodes(&context, "elastic");
    assert_eq!(nodes.len(), 3);
    // One node holds a run, so it is not idle.
    context.write(
        "job.dstack.yml",
        &fleet_task("job", "elastic", &["echo hi"], ""),
    );
    ok(&context.run(&["apply", "-y", "-d", "-f", "job.dstack.yml"]));
    let busy = run_named(&context, "job-1")["job"]["instance_id"]
        .as_str()
        .expect("node")
        .to_string();
    std::thread::sleep(Duration::from_secs(4));

    let plan = context.run(&["plan", "--detailed-exitcode", "-f", "fleet.dstack.yml"]);
    assert_eq!(plan.code, 2, "{}", plan.report());
    assert!(
        plan.stdout
            .contains("2 nodes are idle longer than its idle_duration"),
        "both idle nodes go; the busy one stays, which keeps nodes.min:\n{}",
        plan.report()
    );
    assert!(
        !plan.stdout.contains("fleet/fixed"),
        "nodes.min are never idle-terminated:\n{}",
        plan.report()
    );
    ok(&context.run(&["apply", "-y", "-f", "fleet.dstack.yml"]));
    let left: Vec<String> = fleet_nodes(&context, "elastic")
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    assert_eq!(left, vec![busy.clone()], "the busy node stays");
    assert_eq!(fleet_nodes(&context, "fixed").len(), 1);
    // The count stays where apply left it: nothing is launched again.
    let plan = context.run(&["plan", "--detailed-exitcode", "-f", "fleet.dstack.yml"]);
    assert_eq!(plan.code, 0, "{}", plan.report());

    // The run ends and its node idles, but the fleet is at nodes.min: it stays.
    let mut agent = start_agent(&context, &bucket, &busy, "agent");
    assert!(agent.wait().expect("agent exits").success());
    assert_eq!(run_named(&context, "job-1")["status"], "done");
    std::thread::sleep(Duration::from_secs(4));
    let plan = context.run(&["plan", "--detailed-exitcode", "-f", "fleet.dstack.yml"]);
    assert_eq!(plan.code, 0, "{}", plan.report());
    assert_eq!(fleet_nodes(&context, "elastic").len(), 1);
}

/// Make the state what it was when an apply stopped right after submitting the run `NAME-1`:
/// its intent (the one the job store recorded), not the run.
fn interrupt(context: &TestContext, bucket: &str, name: &str) {
    let intent = block_on(async {
        moto()
            .s3()
            .await
            .list_objects_v2()
            .bucket(bucket)
            .prefix("store/intents/")
            .send()
            .await
            .expect("list intents")
            .contents()
            .iter()
            .find_map(|o| o.key()?.strip_prefix("store/intents/").map(str::to_string))
            .expect("the run's intent is in the job store")
    });

    // Make the state what it was when the apply stopped: the run's intent, not the run.
    let pulled = context.run(&["state", "pull"]);
    ok(&pulled);
    let mut document: Json = serde_json::from_str(&pulled.stdout).expect("state json");
    let resource = document["resources"]
        .as_object_mut()
        .expect("resources")
        .remove(format!("run/{name}").as_str())
        .expect("the run resource");
    let mut run = document["runs"]
        .as_object_mut()
        .expect("runs")
        .remove(format!("{name}-1").as_str())
        .expect("the run");
    run["job"] = serde_json::json!({"intent": intent});
    run["status"] = "submitted".into();
    document["intents"] = serde_json::json!({
        intent.clone(): {
            "id": intent,
            "action": "create",
            "resource": {"kind": "run", "name": name},
            "backend": "aws",
            "labels": {"dstack.intent": intent},
            "record": resource,
            "run": run,
            "started_at": "2026-01-01T00:00:00Z",
        }
    });
    context.write("interrupted.json", &document.to_string());
    ok(&context.run(&["state", "push", "--force", "interrupted.json"]));
}

/// An apply interrupted after it queued a run to a fleet node, before it recorded the run: the
/// next plan finds the run by its intent (the job store keeps where it was placed) and records it
/// on its node, so it is neither lost nor taken for aborted.
#[test]
fn an_interrupted_fleet_run_is_recovered_on_its_node() {
    let (context, bucket) = project();
    context.write(
        "fleet.dstack.yml",
        "type: fleet\nname: workers\nbackends: [aws]\nnodes: 1\ninstance_types: [t3.large]\n",
    );
    context.write(
        "job.dstack.yml",
        &fleet_task("job", "workers", &["echo recovered-run"], ""),
    );
    ok(&context.run(&["apply", "-y", "-d"]));
    let node = fleet_nodes(&context, "workers")[0]
        .instance_id()
        .expect("id")
        .to_string();
    interrupt(&context, &bucket, "job");

    let plan = context.run(&["plan"]);
    ok(&plan);
    assert!(
        plan.stderr.contains("adopted run/job") || plan.stdout.contains("adopted run/job"),
        "{}",
        plan.report()
    );
    let run = run_named(&context, "job-1");
    assert_eq!(run["job"]["fleet"], "workers", "{run}");
    assert_eq!(run["job"]["instance_id"], node.as_str(), "{run}");
    assert_eq!(run["status"], "provisioning", "{run}");
    let mut agent = start_agent(&context, &bucket, &node, "agent");
    assert!(agent.wait().expect("agent exits").success());
    assert_eq!(run_named(&context, "job-1")["status"], "done");
    assert_eq!(
        block_on(s3_text(&bucket, &format!("store/nodes/{node}/lease"))),
        None
    );
}

#[test]
fn an_interrupted_aws_run_is_recovered_with_its_instance() {
    let (context, bucket) = project();
    context.write("solo.dstack.yml", &task("solo", &["echo solo"], ""));
    ok(&context.run(&["apply", "-y", "-d"]));
    let id = instance_id(&run_named(&context, "solo-1"));
    interrupt(&context, &bucket, "solo");
    let plan = context.run(&["plan"]);
    ok(&plan);
    assert!(
        plan.stdout.contains("adopted run/solo"),
        "{}",
        plan.report()
    );
    let run = run_named(&context, "solo-1");
    assert_eq!(run["job"]["instance_id"], id.as_str(), "{run}");
    assert_eq!(run["status"], "provisioning", "{run}");
    assert_eq!(state(&block_on(instance(&id))), "running");
}
