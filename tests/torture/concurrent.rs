//! 16 `dstack apply` processes at once on one state: SQLite, then S3 (moto).
//!
//! Each process applies its own file (a volume of its own, on the fake backend), so every apply
//! that succeeds has a change that must survive. Round one: without `--lock-timeout`, every loser
//! exits 1 and names the holder — user, host, pid of one of the winners, operation — and the
//! state holds exactly the winners' volumes. Round two: with `--lock-timeout`, all 16 succeed
//! and every one of their volumes is in the final state: no update is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Output, Stdio};

use dstack::backend::fake::{FakeBackend, world_path};
use dstack::state::LockInfo;

use crate::common::TestContext;
use crate::common::moto::moto;

const CONTENDERS: usize = 16;

/// Where the state of a round lives, as global flags.
fn state_flags(url: Option<&str>) -> Vec<String> {
    url.map(|u| vec!["--state".to_string(), u.to_string()])
        .unwrap_or_default()
}

/// Start `CONTENDERS` applies of `PREFIX-NN.dstack.yml` at once; their pids and outputs.
fn contend(
    context: &TestContext,
    url: Option<&str>,
    prefix: &str,
    extra: &[&str],
) -> Vec<(u32, Output)> {
    for index in 0..CONTENDERS {
        context.write(
            &format!("{prefix}-{index:02}.dstack.yml"),
            &format!("type: volume\nname: {prefix}-{index:02}\nbackend: fake\nsize: 1GB\n"),
        );
    }
    let children: Vec<_> = (0..CONTENDERS)
        .map(|index| {
            let file = format!("{prefix}-{index:02}.dstack.yml");
            let mut args = state_flags(url);
            args.extend(extra.iter().map(ToString::to_string));
            args.extend(["apply", "-y", "-f", &file].map(String::from));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            context
                .command(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("dstack starts")
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let pid = child.id();
            (pid, child.wait_with_output().expect("dstack ends"))
        })
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The recorded resource addresses and the fake backend's volume names.
fn recorded_and_created(
    context: &TestContext,
    url: Option<&str>,
) -> (BTreeSet<String>, Vec<String>) {
    let mut args = state_flags(url);
    args.extend(["state", "pull"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pulled = context.run(&args);
    assert_eq!(pulled.code, 0, "{}", pulled.report());
    let state: serde_json::Value = serde_json::from_str(&pulled.stdout).expect("state json");
    assert_eq!(
        state["intents"].as_object().map(serde_json::Map::len),
        Some(0),
        "no intent is left: {}",
        pulled.stdout
    );
    let recorded = state["resources"]
        .as_object()
        .expect("resources")
        .keys()
        .cloned()
        .collect();
    let world =
        FakeBackend::load_world(&world_path(&context.root.join(".dstack"))).expect("fake world");
    let mut created: Vec<String> = world
        .objects
        .values()
        .filter(|o| o.kind == "volume")
        .map(|o| o.name.clone())
        .collect();
    created.sort();
    (recorded, created)
}

fn sixteen_concurrent_applies(context: &mut TestContext, url: Option<&str>) {
    context.env("DSTACK_FAKE_BACKEND", "1");
    // Slow enough that the applies overlap: each holds the lock for a few hundred ms.
    context.env("DSTACK_FAKE_LATENCY_MS", "150");
    let me = LockInfo::new("probe");
    let outcomes = contend(context, url, "first", &[]);
    let pids: BTreeMap<u32, i32> = outcomes
        .iter()
        .map(|(pid, output)| (*pid, output.status.code().unwrap_or(-1)))
        .collect();
    let winners: BTreeSet<u32> = pids
        .iter()
        .filter(|(_, code)| **code == 0)
        .map(|(pid, _)| *pid)
        .collect();
    assert!(!winners.is_empty(), "someone wins: {pids:?}");
    let mut expected = BTreeSet::new();
    for (index, (pid, output)) in outcomes.iter().enumerate() {
        let stderr = text(&output.stderr);
        match output.status.code() {
            Some(0) => {
                expected.insert(format!("volume/first-{index:02}"));
            }
            Some(1) => {
                let holder = format!("the state is locked by {}@{} (pid ", me.user, me.host);
                let start = stderr.find(&holder).unwrap_or_else(|| {
                    panic!("loser {pid} names the holder ({holder}...):\n{stderr}")
                });
                let rest = &stderr[start + holder.len()..];
                let holder_pid: u32 = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("a pid in: {stderr}"));
                assert!(
                    winners.contains(&holder_pid),
                    "loser {pid} names pid {holder_pid}, which is not one of the winners {winners:?}:\n{stderr}"
                );
                assert!(
                    rest.contains(", `apply` since "),
                    "loser {pid} names the holder's operation:\n{stderr}"
                );
            }
            code => panic!("contender {pid} exited {code:?}, expected 0 or 1:\n{stderr}"),
        }
    }
    let (recorded, created) = recorded_and_created(context, url);
    assert_eq!(
        recorded, expected,
        "the state holds exactly the winners' volumes"
    );
    let expected_names: Vec<String> = expected
        .iter()
        .map(|a| a.trim_start_matches("volume/").to_string())
        .collect();
    assert_eq!(
        created, expected_names,
        "one object per winner, none for losers"
    );

    // Round two: everyone waits for the lock; every change lands.
    let outcomes = contend(context, url, "second", &["--lock-timeout", "3m"]);
    for (pid, output) in &outcomes {
        assert_eq!(
            output.status.code(),
            Some(0),
            "contender {pid} waited for the lock and applied:\n{}",
            text(&output.stderr)
        );
    }
    for index in 0..CONTENDERS {
        expected.insert(format!("volume/second-{index:02}"));
    }
    let (recorded, created) = recorded_and_created(context, url);
    assert_eq!(recorded, expected, "no successful apply's change is lost");
    assert_eq!(
        created.len(),
        expected.len(),
        "one object per volume: {created:?}"
    );
}

#[test]
fn sixteen_concurrent_applies_on_one_sqlite_state() {
    let mut context = TestContext::new();
    sixteen_concurrent_applies(&mut context, None);
}

#[test]
fn sixteen_concurrent_applies_on_one_s3_state() {
    let moto = moto();
    let bucket = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(moto.bucket("torture"));
    let mut context = TestContext::new();
    for (key, value) in moto.env() {
        context.env(key, &value);
    }
    let url = format!("s3://{bucket}/team/state.json");
    sixteen_concurrent_applies(&mut context, Some(&url));
}
