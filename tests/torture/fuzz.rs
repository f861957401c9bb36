//! The fuzz targets on stable Rust: the bodies of the cargo-fuzz targets (`fuzz/src/lib.rs`, the
//! same functions `cargo +nightly fuzz run TARGET` drives) fed their seed corpus and mutations of
//! it, made with a fixed seed; no input may panic.
//!
//! Seeds: `examples/` and `tests/fixtures/config/` for the configuration loader, and
//! `fuzz/seeds/TARGET/` for every target (plan files and state documents made by the real
//! binary; `DSTACK_FUZZ_WRITE_SEEDS=1 cargo test --test torture fuzz` makes them again). What a
//! nightly run found (`fuzz/corpus/TARGET/`, `fuzz/artifacts/TARGET/`) is replayed too, when present.
//!
//! `DSTACK_FUZZ_ITERATIONS=N` sets the mutated inputs per target (default 3000: seconds in CI);
//! a panicking input is saved under `target/tmp/fuzz-failures/` and named in the failure.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::common::{TestContext, repo_root};
use crate::fuzz_targets;
use crate::random::{Random, seed_of};

const BASE_SEED: u64 = 0x00f0_220d_57ac_0001;
const ITERATIONS: usize = 3000;

/// Bytes and words that reach corners of YAML, JSON, interpolation and our shorthands.
const TOKENS: &[&str] = &[
    "\n",
    "\n---\n",
    ": ",
    "- ",
    "  ",
    "\t",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "#",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!str ",
    "!!int ",
    "? ",
    "|\n  ",
    ">-\n  ",
    "${{ ",
    " }}",
    "${{ env.X }}",
    "${{ secrets.TOKEN }}",
    "${{ var.x }}",
    "${{ run.args }}",
    "${{ nope.x }}",
    "$$",
    "..",
    "../",
    "../../etc/passwd",
    "/workflow",
    "/",
    "~",
    "\\",
    "\0",
    "\u{feff}",
    "\u{202e}",
    "é",
    "null",
    "true",
    "~",
    "-1",
    "0",
    "1e999",
    "-0",
    "0x10",
    "0o17",
    ".inf",
    ".nan",
    "18446744073709551616",
    "9223372036854775807",
    "A100:80GB:2",
    "1..",
    "..8",
    "2..1",
    "1TB",
    "0GB",
    "*:8080",
    "80:8080",
    "65536",
    "vol:/data",
    "/a:/b",
    "type: task\n",
    "type: volume\n",
    "type: fleet\n",
    "type: tag\n",
    "type: service\n",
    "type: dev-environment\n",
    "backend: fake\n",
    "backends: [fake]\n",
    "\"format_version\": ",
    "\"lineage\": ",
    "\"serial\": ",
    "\"resources\": ",
    "\"intents\": ",
    "\"runs\": ",
    "\"kind\": \"run\"",
    "\"action\": \"delete\"",
    "\"change\": \"replace\"",
    "\"sensitive:sha256:",
    "\"2026-01-01T00:00:00Z\"",
];

/// Where the seeds of a target are.
fn seed_dirs(target: &str) -> Vec<PathBuf> {
    let root = repo_root();
    let mut dirs = vec![
        root.join("fuzz/seeds").join(target),
        root.join("fuzz/corpus").join(target),
        root.join("fuzz/artifacts").join(target),
    ];
    if target == "config_loader" {
        dirs.push(root.join("examples"));
        dirs.push(root.join("tests/fixtures/config"));
    }
    dirs
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut paths = Vec::new();
    for dir in seed_dirs(target) {
        files_under(&dir, &mut paths);
    }
    paths
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|bytes| (p, bytes)))
        .collect()
}

/// One byte-level mutation.
fn mutate_bytes(input: &mut Vec<u8>, random: &mut Random, other: &[u8]) {
    let at = random.below(input.len() + 1);
    match random.below(9) {
        0 if !input.is_empty() => {
            let i = random.below(input.len());
            input[i] ^= 1 << random.below(8);
        }
        1 if !input.is_empty() => {
            let i = random.below(input.len());
            input[i] = random.byte();
        }
        2 => input.insert(at, random.byte()),
        3 | 4 => {
            let token = random.pick(TOKENS).as_bytes();
            input.splice(at..at, token.iter().copied());
        }
        5 if !input.is_empty() => {
            let start = random.below(input.len());
            let end = (start + 1 + random.below(32)).min(input.len());
            input.drain(start..end);
        }
        6 if !input.is_empty() => {
            let start = random.below(input.len());
            let end = (start + 1 + random.below(64)).min(input.len());
            let copy = input[start..end].to_vec();
            input.splice(at..at, copy);
        }
        7 if !other.is_empty() => {
            // Splice: this input's head with another seed's tail.
            let from = random.below(other.len());
            input.truncate(at);
            input.extend_from_slice(&other[from..]);
        }
        _ => input.truncate(at),
    }
}

/// Values a hostile or broken document might hold.
fn odd_value(random: &mut Random, copy: Option<&Json>) -> Json {
    match random.below(14) {
        0 => Json::Null,
        1 => Json::Bool(random.chance(50)),
        2 => Json::from(-1),
        3 => Json::from(u64::MAX),
        4 => Json::from(1.5e300),
        5 => Json::String(String::new()),
        6 => Json::String("../../../outside".into()),
        7 => Json::String("/etc/passwd".into()),
        8 => Json::String("x".repeat(random.below(5000))),
        9 => Json::Array(Vec::new()),
        10 => Json::Object(serde_json::Map::new()),
        11 => Json::String("\u{0}\u{202e}é\n".into()),
        12 => Json::String("sensitive:sha256:zz".into()),
        _ => copy.cloned().unwrap_or(Json::Null),
    }
}

/// Every node of a JSON value, as paths of keys and indices.
fn paths(value: &Json, path: &mut Vec<Json>, out: &mut Vec<Vec<Json>>) {
    out.push(path.clone());
    match value {
        Json::Object(map) => {
            for (key, child) in map {
                path.push(Json::String(key.clone()));
                paths(child, path, out);
                path.pop();
            }
        }
        Json::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                path.push(Json::from(index));
                paths(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'v>(value: &'v mut Json, path: &[Json]) -> Option<&'v mut Json> {
    let mut node = value;
    for step in path {
        node = match step {
            Json::String(key) => node.get_mut(key.as_str())?,
            Json::Number(index) => node.get_mut(usize::try_from(index.as_u64()?).ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// One structural mutation of a JSON document: a node replaced, removed, duplicated or given
/// an unknown sibling.
fn mutate_json(input: &[u8], random: &mut Random) -> Option<Vec<u8>> {
    let mut value: Json = serde_json::from_slice(input).ok()?;
    let mut all = Vec::new();
    paths(&value, &mut Vec::new(), &mut all);
    let path = random.pick(&all).clone();
    let copy = {
        let other = random.pick(&all).clone();
        let mut snapshot = value.clone();
        node_mut(&mut snapshot, &other).map(|n| n.clone())
    };
    match random.below(4) {
        0 if !path.is_empty() => {
            let (last, parent) = path.split_last()?;
            match (node_mut(&mut value, parent)?, last) {
                (Json::Object(map), Json::String(key)) => drop(map.shift_remove(key)),
                (Json::Array(items), Json::Number(index)) => {
                    let index = usize::try_from(index.as_u64()?).ok()?;
                    if index < items.len() {
                        items.remove(index);
                    }
                }
                _ => {}
            }
        }
        1 => match node_mut(&mut value, &path)? {
            Json::Object(map) => {
                map.insert("unexpected".into(), odd_value(random, copy.as_ref()));
            }
            Json::Array(items) => items.push(odd_value(random, copy.as_ref())),
            _ => {}
        },
        _ => *node_mut(&mut value, &path)? = odd_value(random, copy.as_ref()),
    }
    let text = if random.chance(50) {
        serde_json::to_vec_pretty(&value)
    } else {
        serde_json::to_vec(&value)
    };
    text.ok()
}

/// One line-level mutation of a YAML text: lines deleted, duplicated, swapped, re-indented.
fn mutate_lines(input: &[u8], random: &mut Random) -> Vec<u8> {
    let text = String::from_utf8_lossy(input);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return input.to_vec();
    }
    let i = random.below(lines.len());
    match random.below(5) {
        0 => drop(lines.remove(i)),
        1 => lines.insert(i, lines[i].clone()),
        2 => {
            let j = random.below(lines.len());
            lines.swap(i, j);
        }
        3 => lines[i].insert_str(0, "  "),
        _ => {
            let line = lines[i].trim_start().to_string();
            lines[i] = line;
        }
    }
    (lines.join("\n") + "\n").into_bytes()
}

fn mutate(target: &str, seed: &[u8], other: &[u8], random: &mut Random) -> Vec<u8> {
    let mut input = seed.to_vec();
    for _ in 0..random.between(1, 4) {
        let structural = random.chance(40);
        input = match (structural, target) {
            (true, "config_loader") => mutate_lines(&input, random),
            (true, _) => mutate_json(&input, random).unwrap_or(input),
            (false, _) => {
                mutate_bytes(&mut input, random, other);
                input
            }
        };
    }
    input
}

/// Run `body` on every seed and on `iterations` mutations; returns the inputs that panicked,
/// saved to files.
fn fuzz(target: &str, body: fn(&[u8])) -> Vec<String> {
    let seeds = seeds(target);
    assert!(
        !seeds.is_empty(),
        "{target} has seeds: {:?}",
        seed_dirs(target)
    );
    let iterations = std::env::var("DSTACK_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(ITERATIONS);
    let failures_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let mut failures = Vec::new();
    let mut run = |input: &[u8], name: String| {
        if std::panic::catch_unwind(|| body(input)).is_err() {
            let _ = std::fs::create_dir_all(&failures_dir);
            let path = failures_dir.join(format!("{target}-{name}"));
            let _ = std::fs::write(&path, input);
            failures.push(format!(
                "{target} panicked on {} (replay: `cargo +nightly fuzz run {target} {}`)",
                path.display(),
                path.display()
            ));
        }
    };
    for (path, bytes) in &seeds {
        let name = path
            .file_name()
            .map(|n| format!("seed-{}", n.to_string_lossy()))
            .unwrap_or_default();
        run(bytes, name);
    }
    let mut random = Random::new(seed_of(BASE_SEED, target.len()));
    for iteration in 0..iterations {
        let (_, seed) = random.pick(&seeds);
        let (_, other) = random.pick(&seeds);
        let input = mutate(target, seed, other, &mut random);
        run(&input, format!("{iteration}.bin"));
    }
    failures
}

fn accepted(target: &str, read: fn(&Path) -> bool) -> usize {
    seeds(target)
        .iter()
        .filter(|(path, _)| path.starts_with(repo_root().join("fuzz/seeds")))
        .filter(|(path, _)| read(path))
        .count()
}

#[test]
fn the_configuration_loader_never_panics() {
    let failures = fuzz("config_loader", fuzz_targets::config_loader);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_plan_file_reader_never_panics() {
    write_seeds_if_asked();
    // Mutations start from plans the reader accepts, or they only ever test the first byte.
    assert!(
        accepted("plan_file", |p| dstack::cli::read_plan(p).is_ok()) >= 3,
        "fuzz/seeds/plan_file holds plans this version reads; make them again with \
         `DSTACK_FUZZ_WRITE_SEEDS=1 cargo test --test torture fuzz`"
    );
    let failures = fuzz("plan_file", fuzz_targets::plan_file);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_state_document_reader_never_panics() {
    write_seeds_if_asked();
    assert!(
        accepted("state_document", |p| dstack::cli::read_document(p).is_ok()) >= 3,
        "fuzz/seeds/state_document holds documents this version reads; make them again with \
         `DSTACK_FUZZ_WRITE_SEEDS=1 cargo test --test torture fuzz`"
    );
    let failures = fuzz("state_document", fuzz_targets::state_document);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Make the plan-file and state-document seeds with the real binary, once per test process.
fn write_seeds_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("DSTACK_FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    ONCE.call_once(write_seeds);
}

fn write_seeds() {
    let plans = repo_root().join("fuzz/seeds/plan_file");
    let states = repo_root().join("fuzz/seeds/state_document");
    for dir in [&plans, &states] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("seed dir");
    }
    let mut context = TestContext::new();
    context
        .env("DSTACK_FAKE_BACKEND", "1")
        .env("API_TOKEN", "seed-secret-value");
    let ok = |context: &TestContext, args: &[&str]| {
        let run = context.run(args);
        assert!(run.code == 0 || run.code == 2, "{args:?}: {}", run.report());
        run
    };
    let save_plan = |context: &TestContext, name: &str, extra: &[&str]| {
        let mut args = vec!["plan", "-o", "seed.plan"];
        args.extend(extra);
        ok(context, &args);
        std::fs::copy(context.root.join("seed.plan"), plans.join(name)).expect("copy plan");
    };
    let save_state = |context: &TestContext, name: &str| {
        let pulled = ok(context, &["state", "pull"]);
        std::fs::write(states.join(name), pulled.stdout).expect("write state");
    };
    save_state(&context, "empty.json");
    context.write(
        "main.dstack.yml",
        "type: volume\nname: data\nbackend: fake\nsize: 10GB\ntags: {team: ml}\n---\n\
         type: fleet\nname: gpus\nbackends: [fake]\nnodes: 0..2\n---\n\
         type: task\nname: train\nbackends: [fake]\nfleets: [gpus]\nvolumes: [data:/data]\n\
         env:\n  - TOKEN=${{ env.API_TOKEN }}\ncommands:\n  - python train.py\n  - echo done\n---\n\
         type: tag\nname: best\nrun: train\n",
    );
    save_plan(&context, "create.json", &[]);
    save_plan(&context, "target.json", &["--target", "run/train"]);
    ok(&context, &["apply", "-y", "-d"]);
    save_state(&context, "applied.json");
    save_plan(&context, "no-changes.json", &[]);
    context.write(
        "main.dstack.yml",
        "type: volume\nname: data\nbackend: fake\nsize: 20GB\nregion: fake-2\n---\n\
         type: fleet\nname: gpus\nbackends: [fake]\nnodes: 1\nplacement: cluster\n---\n\
         type: task\nname: train\nbackends: [fake]\ncommands:\n  - python train.py --epochs 2\n",
    );
    save_plan(&context, "update-replace-delete.json", &[]);
    save_plan(
        &context,
        "replace-by-request.json",
        &["--replace", "volume/data"],
    );
    ok(&context, &["apply", "-y", "-d", "--allow-data-loss"]);
    save_state(&context, "replaced.json");
    // An apply killed while the fake backend answers leaves intents behind.
    context.write(
        "more.dstack.yml",
        "type: volume\nname: extra\nbackend: fake\nsize: 1GB\n",
    );
    let mut child = context
        .command(&["apply", "-y", "-d"])
        .env("DSTACK_FAKE_LATENCY_MS", "3000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let world = context.root.join(".dstack/fake-backend.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(&world)
        .unwrap_or_default()
        .contains("\"extra\"")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    save_state(&context, "interrupted.json");
    // Runs with artifacts (manifests) on the local backend's host runtime.
    let local = TestContext::new();
    local.write(
        ".dstack/config.yml",
        "backends:\n  - type: local\n    runtime: host\n",
    );
    local.write(
        "job.dstack.yml",
        "type: task\nname: job\ncommands:\n  - mkdir -p out && echo hello > out/a.txt\nartifacts:\n  - path: out\n---\ntype: tag\nname: kept\nrun: job\n",
    );
    ok(&local, &["apply", "-y"]);
    save_state(&local, "artifacts.json");
}
