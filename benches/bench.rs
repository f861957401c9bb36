//! Every benchmark, in release mode, as one table: each figure, its target, and its ratio to a
//! baseline measured in the same run. Run with `cargo bench` (or `cargo bench -- FILTER`).
//!
//! Baselines: real dstack 0.22.5 from the oracle's venv (`../shared/tools/dstack-oracle/
//! setup_oracle.sh`, found at `$ORACLE_VENV` or `~/.cache/dstack-oracle/venv`; never on PATH
//! beside ours). A baseline that is not installed is reported as `n/a`, never invented.
//!
//! The artifact rows (`cargo bench -- artifacts`) compare saving into the local store with
//! `cp -r`, and push/pull to S3 with `aws s3 cp --recursive` (awscli from PyPI, installed into
//! `target/bench-venv`), both against one moto server on 127.0.0.1 (from `target/test-venv`, as
//! `scripts/test` installs it). Nothing is sent anywhere but 127.0.0.1.

// The table is this program's output.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/integration/common/docker.rs"]
mod docker;
#[path = "../tests/integration/common/moto.rs"]
mod moto;

use dstack::state::contract::record;
use dstack::state::sqlite::SqliteStore;
use dstack::state::{Change, Snapshot, StateStore, Step};

/// One row of the table.
struct Row {
    name: String,
    value: Duration,
    target: Option<Duration>,
    baseline: Option<(String, Duration)>,
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time(runs: usize, mut work: impl FnMut()) -> Duration {
    work(); // warm up caches
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                work();
                start.elapsed()
            })
            .collect(),
    )
}

fn run_quiet(command: &mut Command) {
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("command runs");
    assert!(status.code().is_some(), "command was killed");
}

fn dstack() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dstack"))
}

fn oracle_venv() -> Option<PathBuf> {
    let venv = std::env::var_os("ORACLE_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/dstack-oracle/venv"))
        })?;
    venv.join("bin/dstack").exists().then_some(venv)
}

fn oracle_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/dstack-oracle/dstack_oracle.py")
}

fn task_documents(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).expect("dir");
    for i in 0..count {
        let text = format!(
            "type: task\nname: task-{i}\npython: \"3.12\"\nenv:\n  - EPOCHS={i}\ncommands:\n  - pip install -r requirements.txt\n  - python train.py --epochs $EPOCHS\nresources:\n  gpu: A100:80GB:2\n  memory: 32GB..\nports:\n  - 8080\nvolumes:\n  - data:/data\nmax_duration: 2h\n"
        );
        std::fs::write(dir.join(format!("task-{i}.dstack.yml")), text).expect("write");
    }
}

fn bench_validate(rows: &mut Vec<Row>, temp: &Path) {
    let venv = oracle_venv();
    for count in [10, 100, 1000] {
        let dir = temp.join(format!("validate-{count}"));
        task_documents(&dir, count);
        let ours = time(5, || run_quiet(dstack().args(["validate", "-f"]).arg(&dir)));
        let baseline = venv
            .as_ref()
            .filter(|_| oracle_script().exists())
            .map(|venv| {
                let theirs = time(1, || {
                    run_quiet(
                        Command::new(venv.join("bin/python"))
                            .arg(oracle_script())
                            .arg(&dir),
                    );
                });
                ("dstack 0.22.5 parser".to_string(), theirs)
            });
        let target = (count == 1000).then(|| Duration::from_millis(50));
        rows.push(Row {
            name: format!("validate {count} task documents"),
            value: ours,
            target,
            baseline,
        });
    }
}

fn bench_startup(rows: &mut Vec<Row>) {
    let ours = time(20, || run_quiet(dstack().arg("--version")));
    let baseline = oracle_venv().map(|venv| {
        (
            "dstack --help".to_string(),
            time(3, || {
                run_quiet(Command::new(venv.join("bin/dstack")).arg("--help"));
            }),
        )
    });
    rows.push(Row {
        name: "dstack --version".into(),
        value: ours,
        target: Some(Duration::from_millis(5)),
        baseline,
    });
}

fn bench_state(rows: &mut Vec<Row>, temp: &Path) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = SqliteStore::new(temp.join("state/state.db"));
    let mut snapshot = Snapshot::empty();
    snapshot.lineage = Some("bench".into());
    for i in 0..10_000 {
        let mut r = record(&format!("vol-{i}"), "active");
        r.spec = serde_json::json!({"type": "volume", "backend": "fake", "size": "100GB", "region": "us-east-1", "tags": {"team": "ml", "index": i.to_string()}});
        snapshot.resources.insert(r.id().to_string(), r);
    }
    snapshot.serial = 1;
    runtime.block_on(store.replace(&snapshot)).expect("seed");
    let load = time(5, || {
        let loaded = runtime.block_on(store.load()).expect("load");
        assert_eq!(loaded.resources.len(), 10_000);
    });
    rows.push(Row {
        name: "state load, 10,000 resources (SQLite)".into(),
        value: load,
        target: Some(Duration::from_millis(50)),
        baseline: None,
    });
    let mut serial = 1;
    let commit = time(20, || {
        let step =
            Step::new("bench").with(Change::PutResource(Box::new(record("vol-0", "active"))));
        serial = runtime
            .block_on(store.commit(Some("bench"), serial, &step))
            .expect("commit")
            .serial;
    });
    rows.push(Row {
        name: "state commit, one step (SQLite, fsync)".into(),
        value: commit,
        target: Some(Duration::from_millis(5)),
        baseline: None,
    });
}

/// A project of `count` fake volumes, 100 documents per file.
fn volume_project(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir.join(".dstack")).expect("project");
    for file in 0..count.div_ceil(100) {
        let mut text = String::new();
        for i in file * 100..((file + 1) * 100).min(count) {
            text.push_str(&format!(
                "---\ntype: volume\nname: vol-{i}\nbackend: fake\nsize: 10GB\nregion: fake-1\n"
            ));
        }
        std::fs::write(dir.join(format!("vols-{file}.dstack.yml")), text).expect("write");
    }
}

/// Record every volume of a project as applied, without calling a backend: the state a
/// converged apply leaves (same specs and digests as the planner computes).
fn seed_applied(dir: &Path) {
    use dstack::config::load::{LoadOptions, load};
    use dstack::config::project::{Project, ProjectConfig};
    let project = Project {
        root: dir.to_path_buf(),
        name: "bench".into(),
        config: ProjectConfig::default(),
    };
    let env = |_: &str| None;
    let stdin = || Ok(String::new());
    let loaded = load(&LoadOptions {
        inputs: Vec::new(),
        cwd: dir.to_path_buf(),
        project: &project,
        vars: std::collections::BTreeMap::new(),
        run_args: None,
        env: &env,
        stdin: &stdin,
        validation: dstack::model::validate::Context { fake_backend: true },
    })
    .expect("load");
    let resources: Vec<_> = loaded.resources().cloned().collect();
    let configured = ["fake".to_string(), "local".to_string()]
        .into_iter()
        .collect();
    let mut snapshot = Snapshot::empty();
    snapshot.lineage = Some("bench-lineage".into());
    let runs = std::collections::BTreeMap::new();
    let context = dstack::plan::desired::Context {
        configured: &configured,
        salt: "bench-lineage",
        snapshot: &snapshot,
        run_parts: &runs,
    };
    let desired = dstack::plan::desired::resolve(&resources, &context).expect("resolve");
    let now = chrono::Utc::now();
    for d in desired {
        let r = dstack::state::ResourceRecord {
            kind: d.id.kind,
            name: d.id.name.clone(),
            config_type: d.config_type,
            source: d.source.clone(),
            spec: d.spec.clone(),
            digest: d.digest.clone(),
            backend: d.backend.clone(),
            backend_id: Some(format!("fake-{}", d.id.name)),
            attributes: std::collections::BTreeMap::new(),
            status: "active".into(),
            external: false,
            created_at: now,
            updated_at: now,
        };
        snapshot.resources.insert(d.id.to_string(), r);
    }
    snapshot.serial = 1;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime
        .block_on(SqliteStore::new(dir.join(".dstack/state.db")).replace(&snapshot))
        .expect("seed");
}

/// Peak resident memory of the children run so far, in MB.
fn children_max_rss_mb() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map_or(0.0, |u| u.max_rss() as f64 / 1024.0)
}

fn bench_plan(rows: &mut Vec<Row>, temp: &Path) {
    let mut times = Vec::new();
    for count in [100, 1000, 10_000] {
        let dir = temp.join(format!("plan-{count}"));
        volume_project(&dir, count);
        seed_applied(&dir);
        let value = time(3, || {
            let status = dstack()
                .args(["plan", "--refresh=false", "--detailed-exitcode"])
                .current_dir(&dir)
                .env("DSTACK_FAKE_BACKEND", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("plan");
            assert_eq!(
                status.code(),
                Some(0),
                "the seeded state matches the configuration"
            );
        });
        times.push(value);
        let target = (count == 10_000).then(|| Duration::from_millis(500));
        rows.push(Row {
            name: format!("plan {count} unchanged resources"),
            value,
            target,
            baseline: None,
        });
    }
    let ratio = times[2].as_secs_f64() / times[1].as_secs_f64();
    println!(
        "plan scaling: 10x more resources cost {ratio:.1}x the time (target <= 12x); peak RSS {:.0} MB (target <= 150 MB)",
        children_max_rss_mb()
    );
}

fn bench_apply(rows: &mut Vec<Row>, temp: &Path) {
    let value = time(2, || {
        let dir = temp.join(format!("apply-{}", uuid::Uuid::new_v4()));
        volume_project(&dir, 100);
        let status = dstack()
            .args(["apply", "-y", "--parallelism", "10"])
            .current_dir(&dir)
            .env("DSTACK_FAKE_BACKEND", "1")
            .env("DSTACK_FAKE_LATENCY_MS", "100")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("apply");
        assert_eq!(status.code(), Some(0));
    });
    rows.push(Row {
        name: "apply 100 resources, 100 ms/call, parallelism 10".into(),
        value,
        target: Some(Duration::from_millis(1500)),
        baseline: Some(("100 calls x 100 ms / 10".into(), Duration::from_secs(1))),
    });
}

fn bench_docker(rows: &mut Vec<Row>, temp: &Path) {
    let image = docker::test_image();
    let baseline = time(5, || {
        let status = Command::new("docker")
            .args(["run", "--rm", image, "sh", "-c", "echo hello"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("docker run");
        assert_eq!(status.code(), Some(0));
    });
    let value = time(5, || {
        let dir = temp.join(format!("docker-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join(".dstack")).expect("project");
        std::fs::write(
            dir.join("task.dstack.yml"),
            format!("type: task\nname: trivial\nimage: {image}\ncommands:\n  - echo hello\n"),
        )
        .expect("task");
        let status = dstack()
            .args(["apply", "-y", "-f", "task.dstack.yml"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("apply");
        assert_eq!(status.code(), Some(0));
    });
    // Overhead allowed: 1.5x docker run, or 300 ms, whichever is larger.
    let target = (baseline.mul_f64(1.5)).max(baseline + Duration::from_millis(300));
    rows.push(Row {
        name: "apply -y -f trivial task (local Docker)".into(),
        value,
        target: Some(target),
        baseline: Some(("docker run --rm, same image".into(), baseline)),
    });
}

/// The repository root: the moto harness finds its server under `target/test-venv`.
fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `len` pseudo-random bytes (xorshift), different for every seed, so no two files share a blob.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `count` files of `size` bytes under `dir`, ten to a subdirectory.
fn write_files(dir: &Path, count: usize, size: usize, seed: u64) {
    for i in 0..count {
        let sub = dir.join(format!("part-{}", i / 10));
        std::fs::create_dir_all(&sub).expect("dir");
        std::fs::write(
            sub.join(format!("file-{i:04}.bin")),
            noise(seed + i as u64, size),
        )
        .expect("write");
    }
}

/// Flush dirty pages, so that one measurement does not pay for the previous one's writes.
fn sync_disk() {
    run_quiet(&mut Command::new("sync"));
}

/// The median of `runs` timings of `work` after one warm-up; `reset` runs untimed after each.
fn time_reset(runs: usize, mut work: impl FnMut(), mut reset: impl FnMut()) -> Duration {
    work();
    reset();
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                work();
                let elapsed = start.elapsed();
                reset();
                elapsed
            })
            .collect(),
    )
}

fn remove_dir(path: &Path) {
    if path.exists() {
        std::fs::remove_dir_all(path).expect("remove");
    }
}

fn bench_artifacts_save(rows: &mut Vec<Row>, temp: &Path) {
    let source = temp.join("save-source");
    write_files(&source, 1000, 1024 * 1024, 1);
    sync_disk();
    let store_root = temp.join("save-store");
    let ours = time_reset(
        3,
        || {
            let files = dstack::artifacts::Store::new(store_root.clone())
                .put_directory("out", &source)
                .expect("save");
            assert_eq!(files.len(), 1000);
        },
        || {
            remove_dir(&store_root);
            sync_disk();
        },
    );
    let parallel = time_reset(
        3,
        || {
            let files = dstack::artifacts::Store::new(store_root.clone())
                .put_directory_parallel("out", &source)
                .expect("save");
            assert_eq!(files.len(), 1000);
        },
        || {
            remove_dir(&store_root);
            sync_disk();
        },
    );
    let copy = temp.join("save-copy");
    let cp = time_reset(
        3,
        || {
            let status = Command::new("cp")
                .arg("-r")
                .arg(&source)
                .arg(&copy)
                .status()
                .expect("cp");
            assert_eq!(status.code(), Some(0));
        },
        || {
            remove_dir(&copy);
            sync_disk();
        },
    );
    rows.push(Row {
        name: "artifacts: save 1 GiB, one thread".into(),
        value: ours,
        target: Some(cp * 2),
        baseline: Some(("cp -r, same disk".into(), cp)),
    });
    rows.push(Row {
        name: "artifacts: save 1 GiB in 1,000 files".into(),
        value: parallel,
        target: Some(cp * 2),
        baseline: Some(("cp -r, same disk".into(), cp)),
    });
    remove_dir(&source);
}

/// Whether a Python venv has `program`, creating it with `packages` from PyPI when it does not.
fn venv_with(venv: &Path, program: &str, packages: &[&str]) -> Option<PathBuf> {
    let path = venv.join("bin").join(program);
    if !path.exists() {
        println!(
            "note: installing {} into {} (pip)",
            packages.join(" "),
            venv.display()
        );
        let created = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if created {
            let _ = Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check"])
                .args(packages)
                .stdout(Stdio::null())
                .status();
        }
    }
    path.exists().then_some(path)
}

/// Whether the moto harness will find a server (see `tests/integration/common/moto.rs`).
fn moto_server_found() -> bool {
    std::env::var_os("DSTACK_TEST_MOTO_SERVER").is_some()
        || venv_with(
            &repo_root().join("target/test-venv"),
            "moto_server",
            &["moto[server]==5.2.5"],
        )
        .is_some()
}

/// An empty bucket on moto.
fn new_bucket(runtime: &tokio::runtime::Runtime, prefix: &str) -> String {
    runtime.block_on(moto::moto().bucket(prefix))
}

/// Delete a bucket and everything in it.
fn drop_bucket(runtime: &tokio::runtime::Runtime, client: &aws_sdk_s3::Client, bucket: &str) {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    runtime.block_on(async {
        loop {
            let listed = client
                .list_objects_v2()
                .bucket(bucket)
                .send()
                .await
                .expect("list");
            let keys: Vec<ObjectIdentifier> = listed
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .map(|k| ObjectIdentifier::builder().key(k).build().expect("id"))
                .collect();
            if keys.is_empty() {
                break;
            }
            client
                .delete_objects()
                .bucket(bucket)
                .delete(
                    Delete::builder()
                        .set_objects(Some(keys))
                        .build()
                        .expect("delete"),
                )
                .send()
                .await
                .expect("delete objects");
        }
        client
            .delete_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("delete bucket");
    });
}

/// `aws s3 cp --recursive FROM TO` against moto, with test credentials and no user config.
fn aws_cp(aws: &Path, endpoint: &str, home: &Path, from: &str, to: &str) {
    let status = Command::new(aws)
        .args([
            "s3",
            "cp",
            "--recursive",
            "--only-show-errors",
            "--no-progress",
        ])
        .args(["--endpoint-url", endpoint])
        .args([from, to])
        .env_clear()
        .env("HOME", home)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", home.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("aws-credentials"))
        .status()
        .expect("aws runs");
    assert_eq!(status.code(), Some(0), "aws s3 cp {from} {to}");
}

fn bench_artifacts_remote(rows: &mut Vec<Row>, temp: &Path) {
    use dstack::artifacts::Store;
    use dstack::artifacts::remote::{Progress, RefKind, Remote};

    if !moto_server_found() {
        println!("note: no moto_server (run scripts/test once): artifact push/pull rows are n/a");
        return;
    }
    let aws = venv_with(&repo_root().join("target/bench-venv"), "aws", &["awscli"]);
    if aws.is_none() {
        println!("note: awscli could not be installed: its baselines are n/a");
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let endpoint = moto::moto().endpoint.clone();
    let client = runtime.block_on(moto::moto().s3());
    let home = temp.join("aws-home");
    std::fs::create_dir_all(&home).expect("home");

    // 200 MiB: 100 files of 1.5 MiB and one of 50 MiB (in parts).
    let source = temp.join("remote-source");
    write_files(&source, 100, 3 * 512 * 1024, 1000);
    std::fs::write(source.join("model.safetensors"), noise(7, 50 << 20)).expect("write");
    let store = Store::new(temp.join("remote-store"));
    let manifest = dstack::state::Manifest {
        run: "bench-1".into(),
        files: store.put_directory("out", &source).expect("save"),
        created_at: chrono::Utc::now(),
    };
    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    let lineage = "bench-lineage";
    let push = |bucket: &str| {
        let remote =
            Remote::with_client(client.clone(), &format!("s3://{bucket}/bench")).expect("remote");
        runtime
            .block_on(remote.push(
                &store,
                lineage,
                RefKind::Run,
                "bench-1",
                &manifest,
                &Progress::hidden(),
            ))
            .expect("push")
    };
    sync_disk();

    let bucket = std::cell::RefCell::new(new_bucket(&runtime, "bench-push"));
    let next_bucket = || {
        drop_bucket(&runtime, &client, &bucket.borrow());
        *bucket.borrow_mut() = new_bucket(&runtime, "bench-push");
    };
    let ours_push = time_reset(
        3,
        || assert_eq!(push(&bucket.borrow()).bytes_transferred, total),
        next_bucket,
    );
    let aws_push = aws.as_ref().map(|aws| {
        time_reset(
            3,
            || {
                aws_cp(
                    aws,
                    &endpoint,
                    &home,
                    &source.display().to_string(),
                    &format!("s3://{}/awscli/", bucket.borrow()),
                );
            },
            next_bucket,
        )
    });

    // Pull from one bucket (the fresh one the last reset made) holding both copies.
    let pulled_from = bucket.borrow().clone();
    push(&pulled_from);
    let start = Instant::now();
    let again = push(&pulled_from);
    let repush = start.elapsed();
    if let Some(aws) = &aws {
        aws_cp(
            aws,
            &endpoint,
            &home,
            &source.display().to_string(),
            &format!("s3://{pulled_from}/awscli/"),
        );
    }
    let remote =
        Remote::with_client(client.clone(), &format!("s3://{pulled_from}/bench")).expect("remote");
    let target = temp.join("remote-target");
    let ours_pull = time_reset(
        3,
        || {
            let (_, report) = runtime
                .block_on(remote.pull(
                    &Store::new(target.clone()),
                    lineage,
                    RefKind::Run,
                    "bench-1",
                    &Progress::hidden(),
                ))
                .expect("pull");
            assert_eq!(report.bytes_transferred, total);
        },
        || {
            remove_dir(&target);
            sync_disk();
        },
    );
    let aws_pull = aws.as_ref().map(|aws| {
        time_reset(
            3,
            || {
                aws_cp(
                    aws,
                    &endpoint,
                    &home,
                    &format!("s3://{pulled_from}/awscli/"),
                    &target.display().to_string(),
                );
            },
            || {
                remove_dir(&target);
                sync_disk();
            },
        )
    });
    drop_bucket(&runtime, &client, &pulled_from);

    let name = "aws s3 cp --recursive".to_string();
    rows.push(Row {
        name: "artifacts: push 200 MiB, 101 files (moto)".into(),
        value: ours_push,
        target: aws_push,
        baseline: aws_push.map(|t| (name.clone(), t)),
    });
    rows.push(Row {
        name: "artifacts: pull 200 MiB, 101 files (moto)".into(),
        value: ours_pull,
        target: aws_pull,
        baseline: aws_pull.map(|t| (name.clone(), t)),
    });
    rows.push(Row {
        name: format!(
            "artifacts: re-push unchanged, {} B sent",
            again.bytes_transferred
        ),
        value: repush,
        target: None,
        baseline: None,
    });
    println!(
        "re-push of unchanged artifacts: {} blob bytes sent, {} of {} blobs skipped (target: 0 bytes) {}",
        again.bytes_transferred,
        again.blobs_skipped,
        again.blobs_total,
        if again.bytes_transferred == 0 {
            "met"
        } else {
            "NOT MET"
        }
    );
}

fn format_duration(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    } else if d < Duration::from_secs(10) {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected =
        |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let temp = tempfile::tempdir().expect("temp dir");
    let mut rows = Vec::new();
    if selected("validate") {
        bench_validate(&mut rows, temp.path());
    }
    if selected("startup") || selected("version") {
        bench_startup(&mut rows);
    }
    if selected("state") {
        bench_state(&mut rows, temp.path());
    }
    if selected("plan") {
        bench_plan(&mut rows, temp.path());
    }
    if selected("apply") {
        bench_apply(&mut rows, temp.path());
    }
    if selected("docker") {
        bench_docker(&mut rows, temp.path());
    }
    if selected("artifacts save") {
        bench_artifacts_save(&mut rows, temp.path());
    }
    if selected("artifacts push pull remote") {
        bench_artifacts_remote(&mut rows, temp.path());
    }
    println!(
        "{:<44} {:>10} {:>10} {:>5}  {:<28} {:>10} {:>8}",
        "BENCHMARK", "VALUE", "TARGET", "MET", "BASELINE", "BASE", "RATIO"
    );
    for row in &rows {
        let target = row.target.map_or_else(|| "-".into(), format_duration);
        let met = row
            .target
            .map_or("-", |t| if row.value <= t { "yes" } else { "NO" });
        let (base_name, base, ratio) = match &row.baseline {
            Some((name, base)) => (
                name.clone(),
                format_duration(*base),
                format!("{:.3}x", row.value.as_secs_f64() / base.as_secs_f64()),
            ),
            None => ("n/a".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<44} {:>10} {:>10} {:>5}  {:<28} {:>10} {:>8}",
            row.name,
            format_duration(row.value),
            target,
            met,
            base_name,
            base,
            ratio
        );
    }
}
