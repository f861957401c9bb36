//! Randomized apply sequences on the fake backend, with faults, latency and `kill -9`.
//!
//! Each of the 200 sequences starts from an empty project and takes a few steps. A step changes
//! the configuration at random — volumes, fleets, tasks (`backends: [fake]`) and tags are added,
//! edited (in place or forcing a replacement), removed, moved between files, or a whole file goes
//! — then runs `dstack apply -y` once or twice with faults from the fake backend
//! (`DSTACK_FAKE_FAIL_AT`, `DSTACK_FAKE_FAIL_KIND`, `DSTACK_FAKE_LATENCY_MS`) and/or a SIGKILL
//! after a random delay, clears the lock a killed process left, and runs a recovery
//! `dstack apply -y` without faults. Then [`check`] demands that the fake backend's objects and
//! the state's records agree exactly — no leak (an object without a record), no duplicate (two
//! objects for one resource or run), no lost record — and a new plan must show no changes. The
//! last step is a `dstack delete` under the same faults, after which nothing may remain.
//!
//! Reproducing: a failure prints the seed and writes the sequence's log (configurations,
//! commands, exit codes, output) to `target/tmp/torture/`. `DSTACK_TORTURE_SEED=N cargo test
//! --test torture sequences` runs that one sequence; the configurations and faults repeat
//! exactly, the kill points (wall-clock delays) approximately. `DSTACK_TORTURE_SEQUENCES=N`
//! changes the count, `DSTACK_TORTURE_JOBS=N` the sequences run at once (default 8).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dstack::backend::fake::{FakeBackend, World, world_path};
use dstack::model::Kind;
use dstack::state::{Snapshot, StateStore};

use crate::common::{Run, TestContext};
use crate::random::{Random, seed_of};

/// The base of every sequence's seed (fixed, so that a run of the suite is repeatable).
const BASE_SEED: u64 = 0x00d5_7ac4_7047_0001;
/// How many sequences run by default.
const SEQUENCES: usize = 200;
const FILES: usize = 3;

const VOLUMES: [&str; 3] = ["vol-a", "vol-b", "vol-c"];
const FLEETS: [&str; 2] = ["fleet-a", "fleet-b"];
const TASKS: [&str; 3] = ["task-a", "task-b", "task-c"];
const TAGS: [&str; 2] = ["tag-a", "tag-b"];

#[derive(Clone, Debug)]
struct Volume {
    file: usize,
    size: u64,
    region: Option<&'static str>,
    tags: Option<u64>,
}

#[derive(Clone, Debug)]
struct Fleet {
    file: usize,
    nodes: (u64, u64),
    cluster: bool,
    tags: Option<u64>,
}

#[derive(Clone, Debug)]
struct Task {
    file: usize,
    command: u64,
    volume: Option<&'static str>,
    fleet: Option<&'static str>,
    tags: Option<u64>,
}

#[derive(Clone, Debug)]
struct Tag {
    file: usize,
    run: &'static str,
}

/// The desired configuration of a sequence, rendered to `fN.dstack.yml` files.
#[derive(Clone, Debug, Default)]
struct Config {
    volumes: BTreeMap<&'static str, Volume>,
    fleets: BTreeMap<&'static str, Fleet>,
    tasks: BTreeMap<&'static str, Task>,
    tags: BTreeMap<&'static str, Tag>,
    /// The largest size each volume name has had: a volume never shrinks (that is refused by
    /// design), not even when it is removed and declared again before an apply.
    sizes: BTreeMap<&'static str, u64>,
}

fn absent<'a, T>(pool: &[&'static str], present: &BTreeMap<&'static str, T>) -> Vec<&'static str>
where
    T: 'a,
{
    pool.iter()
        .copied()
        .filter(|name| !present.contains_key(name))
        .collect()
}

fn tags_yaml(tags: Option<u64>) -> String {
    tags.map(|t| format!("tags: {{team: t{t}}}\n"))
        .unwrap_or_default()
}

impl Config {
    fn is_empty(&self) -> bool {
        self.volumes.is_empty()
            && self.fleets.is_empty()
            && self.tasks.is_empty()
            && self.tags.is_empty()
    }

    /// `kind/name` of every declared resource.
    fn addresses(&self) -> BTreeSet<String> {
        let volumes = self.volumes.keys().map(|n| format!("volume/{n}"));
        let fleets = self.fleets.keys().map(|n| format!("fleet/{n}"));
        let tasks = self.tasks.keys().map(|n| format!("run/{n}"));
        let tags = self.tags.keys().map(|n| format!("tag/{n}"));
        volumes.chain(fleets).chain(tasks).chain(tags).collect()
    }

    fn add(&mut self, random: &mut Random) {
        let file = random.below(FILES);
        let tags = random.chance(30).then(|| random.between(1, 3));
        match random.below(7) {
            0 | 1 => {
                if let Some(name) = pick_absent(random, &VOLUMES, &self.volumes) {
                    let region = random.chance(30).then_some("fake-2");
                    let floor = self.sizes.get(name).copied().unwrap_or(1);
                    let size = floor + random.between(0, 10);
                    self.sizes.insert(name, size);
                    self.volumes.insert(
                        name,
                        Volume {
                            file,
                            size,
                            region,
                            tags,
                        },
                    );
                }
            }
            2 => {
                if let Some(name) = pick_absent(random, &FLEETS, &self.fleets) {
                    let low = random.between(0, 2);
                    let nodes = (low, low + random.between(0, 2));
                    let cluster = random.chance(30);
                    self.fleets.insert(
                        name,
                        Fleet {
                            file,
                            nodes,
                            cluster,
                            tags,
                        },
                    );
                }
            }
            3..=5 => {
                if let Some(name) = pick_absent(random, &TASKS, &self.tasks) {
                    let volume = self.some_volume(random);
                    let fleet = self.some_fleet(random);
                    let command = random.between(1, 5);
                    self.tasks.insert(
                        name,
                        Task {
                            file,
                            command,
                            volume,
                            fleet,
                            tags,
                        },
                    );
                }
            }
            _ => {
                let tasks: Vec<&'static str> = self.tasks.keys().copied().collect();
                if !tasks.is_empty()
                    && let Some(name) = pick_absent(random, &TAGS, &self.tags)
                {
                    let run = *random.pick(&tasks);
                    self.tags.insert(name, Tag { file, run });
                }
            }
        }
    }

    fn some_volume(&self, random: &mut Random) -> Option<&'static str> {
        let names: Vec<&'static str> = self.volumes.keys().copied().collect();
        (!names.is_empty() && random.chance(50)).then(|| *random.pick(&names))
    }

    fn some_fleet(&self, random: &mut Random) -> Option<&'static str> {
        let names: Vec<&'static str> = self.fleets.keys().copied().collect();
        (!names.is_empty() && random.chance(40)).then(|| *random.pick(&names))
    }

    /// Every declared resource as `(kind index, name)`.
    fn members(&self) -> Vec<(usize, &'static str)> {
        let mut members = Vec::new();
        members.extend(self.volumes.keys().map(|n| (0, *n)));
        members.extend(self.fleets.keys().map(|n| (1, *n)));
        members.extend(self.tasks.keys().map(|n| (2, *n)));
        members.extend(self.tags.keys().map(|n| (3, *n)));
        members
    }

    fn edit(&mut self, random: &mut Random) {
        let members = self.members();
        if members.is_empty() {
            return;
        }
        let (kind, name) = *random.pick(&members);
        match kind {
            0 => {
                let volume = self.volumes.get_mut(name).expect("member");
                match random.below(3) {
                    // Volumes grow in place.
                    0 => {
                        volume.size += random.between(1, 5);
                        self.sizes.insert(name, volume.size);
                    }
                    // A new region replaces the volume (data loss: applies pass the flag).
                    1 => {
                        volume.region = match volume.region {
                            Some(_) => None,
                            None => Some("fake-2"),
                        }
                    }
                    _ => volume.tags = next_tags(random, volume.tags),
                }
            }
            1 => {
                let fleet = self.fleets.get_mut(name).expect("member");
                match random.below(3) {
                    0 => {
                        let low = random.between(0, 2);
                        fleet.nodes = (low, low + random.between(0, 2));
                    }
                    1 => fleet.cluster = !fleet.cluster,
                    _ => fleet.tags = next_tags(random, fleet.tags),
                }
            }
            2 => {
                let volume = self.some_volume(random);
                let fleet = self.some_fleet(random);
                let task = self.tasks.get_mut(name).expect("member");
                match random.below(4) {
                    0 => task.command += 1,
                    1 => task.volume = volume,
                    2 => task.fleet = fleet,
                    _ => task.tags = next_tags(random, task.tags),
                }
            }
            _ => {
                let tasks: Vec<&'static str> = self.tasks.keys().copied().collect();
                if !tasks.is_empty() {
                    self.tags.get_mut(name).expect("member").run = *random.pick(&tasks);
                }
            }
        }
    }

    fn remove(&mut self, random: &mut Random) {
        let members = self.members();
        if members.is_empty() {
            return;
        }
        let (kind, name) = *random.pick(&members);
        match kind {
            0 => drop(self.volumes.remove(name)),
            1 => drop(self.fleets.remove(name)),
            2 => drop(self.tasks.remove(name)),
            _ => drop(self.tags.remove(name)),
        }
    }

    fn set_file(&mut self, kind: usize, name: &str, file: usize) {
        match kind {
            0 => self.volumes.get_mut(name).expect("member").file = file,
            1 => self.fleets.get_mut(name).expect("member").file = file,
            2 => self.tasks.get_mut(name).expect("member").file = file,
            _ => self.tags.get_mut(name).expect("member").file = file,
        }
    }

    fn move_between_files(&mut self, random: &mut Random) {
        let members = self.members();
        if members.is_empty() {
            return;
        }
        let (kind, name) = *random.pick(&members);
        self.set_file(kind, name, random.below(FILES));
    }

    /// Delete one whole file: its resources go.
    fn remove_file(&mut self, random: &mut Random) {
        let file = random.below(FILES);
        self.volumes.retain(|_, v| v.file != file);
        self.fleets.retain(|_, v| v.file != file);
        self.tasks.retain(|_, v| v.file != file);
        self.tags.retain(|_, v| v.file != file);
    }

    /// Drop references to what is gone: a task mounts only declared volumes and targets only
    /// declared fleets, and a tag names a declared task.
    fn fix_references(&mut self) {
        let volumes: BTreeSet<&str> = self.volumes.keys().copied().collect();
        let fleets: BTreeSet<&str> = self.fleets.keys().copied().collect();
        for task in self.tasks.values_mut() {
            if task.volume.is_some_and(|v| !volumes.contains(v)) {
                task.volume = None;
            }
            if task.fleet.is_some_and(|f| !fleets.contains(f)) {
                task.fleet = None;
            }
        }
        let tasks: BTreeSet<&str> = self.tasks.keys().copied().collect();
        self.tags.retain(|_, tag| tasks.contains(tag.run));
    }

    fn mutate(&mut self, random: &mut Random, first: bool) {
        if first {
            for _ in 0..random.between(2, 7) {
                self.add(random);
            }
        } else {
            for _ in 0..random.between(1, 4) {
                match random.below(20) {
                    0..=6 => self.add(random),
                    7..=12 => self.edit(random),
                    13..=16 => self.remove(random),
                    17 | 18 => self.move_between_files(random),
                    _ => self.remove_file(random),
                }
            }
        }
        self.fix_references();
        // Without any configuration file, `apply` refuses to run (deleting everything is
        // `dstack delete`'s job, the last step).
        while self.is_empty() {
            self.add(random);
        }
    }

    /// The text of configuration file `file` (`None`: it declares nothing and must not exist).
    fn file_text(&self, file: usize) -> Option<String> {
        let mut documents = Vec::new();
        for (name, v) in self.volumes.iter().filter(|(_, v)| v.file == file) {
            let region = v
                .region
                .map(|r| format!("region: {r}\n"))
                .unwrap_or_default();
            documents.push(format!(
                "type: volume\nname: {name}\nbackend: fake\nsize: {}GB\n{region}{}",
                v.size,
                tags_yaml(v.tags)
            ));
        }
        for (name, f) in self.fleets.iter().filter(|(_, f)| f.file == file) {
            let placement = if f.cluster {
                "placement: cluster\n"
            } else {
                ""
            };
            documents.push(format!(
                "type: fleet\nname: {name}\nbackends: [fake]\nnodes: {}..{}\n{placement}{}",
                f.nodes.0,
                f.nodes.1,
                tags_yaml(f.tags)
            ));
        }
        for (name, t) in self.tasks.iter().filter(|(_, t)| t.file == file) {
            let volumes = t
                .volume
                .map(|v| format!("volumes: [{v}:/data]\n"))
                .unwrap_or_default();
            let fleets = t
                .fleet
                .map(|f| format!("fleets: [{f}]\n"))
                .unwrap_or_default();
            documents.push(format!(
                "type: task\nname: {name}\nbackends: [fake]\ncommands: [echo step {}]\n{volumes}{fleets}{}",
                t.command,
                tags_yaml(t.tags)
            ));
        }
        for (name, t) in self.tags.iter().filter(|(_, t)| t.file == file) {
            documents.push(format!("type: tag\nname: {name}\nrun: {}\n", t.run));
        }
        (!documents.is_empty()).then(|| documents.join("---\n"))
    }
}

fn pick_absent<T>(
    random: &mut Random,
    pool: &[&'static str],
    present: &BTreeMap<&'static str, T>,
) -> Option<&'static str> {
    let candidates = absent(pool, present);
    (!candidates.is_empty()).then(|| *random.pick(&candidates))
}

fn next_tags(random: &mut Random, tags: Option<u64>) -> Option<u64> {
    match tags {
        Some(_) if random.chance(40) => None,
        Some(t) => Some(t % 3 + 1),
        None => Some(random.between(1, 3)),
    }
}

/// When an attempt is killed.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// After a delay from the start: anywhere, startup and planning included.
    After(Duration),
    /// A delay after the fake backend's world changed `writes` times: in the middle of backend
    /// calls, between an object's creation and the record of it.
    AfterWrites { writes: u32, delay: Duration },
}

/// What one attempt injects.
#[derive(Clone, Debug, Default)]
struct Faults {
    latency_ms: u64,
    fail_at: Vec<u64>,
    fail_kind: &'static str,
    kill: Option<Kill>,
}

impl Faults {
    fn random(random: &mut Random) -> Self {
        let latency_ms = *random.pick(&[0, 5, 15, 30, 60]);
        let fail_at = if random.chance(55) {
            let mut calls = vec![random.between(1, 8)];
            if random.chance(30) {
                calls.push(random.between(1, 12));
            }
            calls
        } else {
            Vec::new()
        };
        // `not_found` is left out on purpose: a delete answered "not found" counts as done,
        // so injecting it while the object exists would fake a leak the engine cannot see.
        let fail_kind = *random.pick(&["internal", "transient", "conflict", "invalid"]);
        let kill = match random.below(10) {
            // The debug binary starts in ~50-100 ms; each backend call takes `latency_ms`.
            0..=2 => Some(Kill::After(Duration::from_millis(
                random.between(0, 150 + latency_ms * 8),
            ))),
            3..=6 => Some(Kill::AfterWrites {
                writes: random.between(1, 4) as u32,
                delay: Duration::from_millis(random.between(0, latency_ms)),
            }),
            _ => None,
        };
        Self {
            latency_ms,
            fail_at,
            fail_kind,
            kill,
        }
    }

    /// How the kill is shown in the log.
    fn kill_text(&self) -> Option<String> {
        match self.kill? {
            Kill::After(delay) => Some(format!("{}ms", delay.as_millis())),
            Kill::AfterWrites { writes, delay } => Some(format!(
                "{}ms-after-{writes}-world-writes",
                delay.as_millis()
            )),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("DSTACK_FAKE_LATENCY_MS", self.latency_ms.to_string())];
        if !self.fail_at.is_empty() {
            let calls: Vec<String> = self.fail_at.iter().map(ToString::to_string).collect();
            env.push(("DSTACK_FAKE_FAIL_AT", calls.join(",")));
            env.push(("DSTACK_FAKE_FAIL_KIND", self.fail_kind.to_string()));
        }
        env
    }
}

/// What the sequences went through, summed: a suite whose kills all landed before the first
/// backend call, or whose faults never fired, would prove nothing.
#[derive(Default)]
struct Stats {
    attempts: AtomicUsize,
    killed: AtomicUsize,
    faults_hit: AtomicUsize,
    adopted: AtomicUsize,
    forgotten: AtomicUsize,
}

impl Stats {
    fn count(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::Relaxed)
    }
}

/// One sequence: its project, its random source and its log.
struct Sequence<'s> {
    stats: &'s Stats,
    context: TestContext,
    random: Random,
    runtime: tokio::runtime::Runtime,
    log: String,
    problems: Vec<String>,
}

const LOG_OUTPUT_LIMIT: usize = 4000;

fn clip(text: &str) -> &str {
    if text.len() <= LOG_OUTPUT_LIMIT {
        return text;
    }
    let mut end = LOG_OUTPUT_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl<'s> Sequence<'s> {
    fn new(seed: u64, stats: &'s Stats) -> Self {
        let mut context = TestContext::new();
        context.env("DSTACK_FAKE_BACKEND", "1");
        Self {
            stats,
            context,
            random: Random::new(seed),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            log: String::new(),
            problems: Vec::new(),
        }
    }

    fn note(&mut self, text: &str) {
        self.log.push_str(text);
        self.log.push('\n');
    }

    fn problem(&mut self, step: usize, text: &str) {
        self.note(&format!("PROBLEM: {text}"));
        self.problems.push(format!("step {step}: {text}"));
    }

    fn record(&mut self, env: &[(&str, String)], args: &[&str], code: Option<i32>, run: &Run) {
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let code = code.map_or_else(|| "killed".to_string(), |c| c.to_string());
        let _ = writeln!(
            self.log,
            "$ {} dstack {}\n[exit {code}]\n{}{}",
            env.join(" "),
            args.join(" "),
            clip(&run.stdout),
            clip(&run.stderr)
        );
    }

    /// Run a command to its end.
    fn run(&mut self, args: &[&str]) -> Run {
        let run = self.context.run(args);
        self.record(&[], args, Some(run.code), &run);
        run
    }

    /// Run a command with faults; returns its exit code, `None` when it was killed.
    fn attempt(&mut self, args: &[&str], faults: &Faults) -> Option<i32> {
        let env = faults.env();
        let stdout = self.context.temp.path().join("attempt.out");
        let stderr = self.context.temp.path().join("attempt.err");
        let mut command = self.context.command(args);
        for (key, value) in &env {
            command.env(key, value);
        }
        let mut child = command
            .stdout(Stdio::from(std::fs::File::create(&stdout).expect("stdout")))
            .stderr(Stdio::from(std::fs::File::create(&stderr).expect("stderr")))
            .spawn()
            .expect("dstack starts");
        let mut killed = false;
        let due = match faults.kill {
            None => None,
            Some(Kill::After(delay)) => {
                std::thread::sleep(delay);
                Some(())
            }
            Some(Kill::AfterWrites { writes, delay }) => {
                self.wait_for_world_writes(&mut child, writes).then(|| {
                    std::thread::sleep(delay);
                })
            }
        };
        if due.is_some() && child.try_wait().expect("try_wait").is_none() {
            // `Child::kill` is SIGKILL on Unix: no handler runs, nothing is flushed.
            child.kill().expect("kill -9");
            killed = true;
        }
        let status = child.wait().expect("wait");
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&stderr).unwrap_or_default(),
        };
        let code = if killed { None } else { status.code() };
        Stats::count(&self.stats.attempts);
        if killed {
            Stats::count(&self.stats.killed);
        }
        if run.stderr.contains("injected fault") {
            Stats::count(&self.stats.faults_hit);
        }
        let mut shown = env.clone();
        if let Some(kill) = faults.kill_text() {
            shown.push(("kill-after", kill));
        }
        self.record(&shown, args, code, &run);
        code
    }

    /// Wait until the fake backend's world has changed `writes` times while `child` runs; false
    /// when the child ended (or 20 s passed) first.
    fn wait_for_world_writes(&self, child: &mut std::process::Child, writes: u32) -> bool {
        let path = world_path(&self.context.root.join(".dstack"));
        let version = || {
            std::fs::metadata(&path)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = version();
        let mut seen = 0;
        while Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            let now = version();
            if now != last {
                seen += 1;
                last = now;
                if seen >= writes {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// Release the lock a killed process left behind, as `dstack state unlock ID` would (the
    /// lock is reported as stale, never broken silently; doing it in-process saves two runs of
    /// the binary per kill).
    fn unlock_stale(&mut self) {
        let store = self.store();
        let holder = self
            .runtime
            .block_on(store.lock_read())
            .expect("the lock reads");
        if let Some(holder) = holder {
            assert!(
                holder.is_stale(),
                "the lock of a killed process is stale: {holder}"
            );
            self.note(&format!("(unlocked the stale lock of {holder})"));
            self.runtime
                .block_on(store.lock_release(&holder.id))
                .expect("unlock");
        }
    }

    fn write_config(&mut self, config: &Config) {
        for file in 0..FILES {
            let name = format!("f{file}.dstack.yml");
            let path = self.context.root.join(&name);
            match config.file_text(file) {
                Some(text) => {
                    self.note(&format!("--- {name}\n{text}"));
                    std::fs::write(&path, text).expect("write config");
                }
                None => {
                    if path.exists() {
                        self.note(&format!("--- {name} removed"));
                        std::fs::remove_file(&path).expect("remove config");
                    }
                }
            }
        }
    }

    fn store(&self) -> dstack::state::sqlite::SqliteStore {
        dstack::state::sqlite::SqliteStore::new(self.context.root.join(".dstack/state.db"))
    }

    fn snapshot(&self) -> Snapshot {
        self.runtime
            .block_on(self.store().load())
            .expect("the state reads")
    }

    fn world(&self) -> World {
        FakeBackend::load_world(&world_path(&self.context.root.join(".dstack")))
            .expect("the fake world reads")
    }

    /// One step: faulty attempts of `args`, a clean recovery, the checks.
    fn step(&mut self, step: usize, args: &[&str], config: &Config, delete: bool) {
        let attempts = if self.random.chance(25) { 2 } else { 1 };
        let mut killed = false;
        let mut longest_latency = 0;
        for _ in 0..attempts {
            let faults = Faults::random(&mut self.random);
            let mut command: Vec<&str> = args.to_vec();
            let parallelism = self.random.pick(&["1", "2", "10"]).to_string();
            command.extend(["--parallelism", parallelism.as_str()]);
            if !delete && self.random.chance(75) {
                command.push("-d");
            }
            longest_latency = longest_latency.max(faults.latency_ms);
            match self.attempt(&command, &faults) {
                None => {
                    killed = true;
                    self.unlock_stale();
                }
                Some(code) if faults.fail_at.is_empty() && code != 0 => self.problem(
                    step,
                    &format!(
                        "`dstack {}` without injected faults exited {code}",
                        command.join(" ")
                    ),
                ),
                Some(0 | 1 | 3) => {}
                Some(code) => self.problem(
                    step,
                    &format!(
                        "`dstack {}` exited {code}, which no fault explains",
                        command.join(" ")
                    ),
                ),
            }
        }
        // Fake runs end `latency` after they start: let the attempts' runs end, as a volume in
        // use by a running run cannot be deleted.
        std::thread::sleep(Duration::from_millis(longest_latency + 30));
        let recovery = self.run(args);
        let output = format!("{}{}", recovery.stdout, recovery.stderr);
        self.stats
            .adopted
            .fetch_add(output.matches("adopted ").count(), Ordering::Relaxed);
        self.stats
            .forgotten
            .fetch_add(output.matches("forgot ").count(), Ordering::Relaxed);
        if recovery.code != 0 {
            self.problem(
                step,
                &format!(
                    "the recovery `dstack {}` exited {} (killed before: {killed})",
                    args.join(" "),
                    recovery.code
                ),
            );
            return;
        }
        let problems = check(config, &self.snapshot(), &self.world(), delete);
        for problem in problems {
            self.problem(step, &problem);
        }
        if !delete {
            let plan = self.run(&["plan", "--detailed-exitcode"]);
            if plan.code != 0 {
                self.problem(
                    step,
                    &format!(
                        "the plan after the recovery is not empty (exit {})",
                        plan.code
                    ),
                );
            }
        }
    }

    fn play(&mut self) {
        let mut config = Config::default();
        let steps = self.random.between(2, 3) as usize;
        for step in 0..steps {
            config.mutate(&mut self.random, step == 0);
            self.note(&format!("=== step {step}: apply"));
            self.write_config(&config);
            self.step(step, &["apply", "-y", "--allow-data-loss"], &config, false);
            if !self.problems.is_empty() {
                return;
            }
        }
        if !config.is_empty() {
            self.note(&format!("=== step {steps}: delete"));
            self.step(steps, &["delete", "-y"], &Config::default(), true);
        }
    }
}

/// The invariants after a recovery: the state records exactly what `config` declares, and the
/// fake backend holds exactly the objects the state records.
fn check(config: &Config, snapshot: &Snapshot, world: &World, deleted: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if !snapshot.intents.is_empty() {
        let intents: Vec<String> = snapshot
            .intents
            .values()
            .map(|i| format!("{} {}", i.action, i.resource))
            .collect();
        problems.push(format!("unresolved intents remain: {intents:?}"));
    }
    let declared = config.addresses();
    let recorded: BTreeSet<String> = snapshot.resources.keys().cloned().collect();
    for address in declared.difference(&recorded) {
        problems.push(format!(
            "lost record: {address} is declared but not recorded"
        ));
    }
    for address in recorded.difference(&declared) {
        problems.push(format!(
            "{address} is recorded, but {}",
            if deleted {
                "`dstack delete` succeeded"
            } else {
                "no longer declared"
            }
        ));
    }
    // Who claims each backend object.
    let mut claims: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (address, record) in &snapshot.resources {
        match record.kind {
            Kind::Volume | Kind::Fleet => {
                let Some(id) = &record.backend_id else {
                    problems.push(format!("{address} is recorded without a backend id"));
                    continue;
                };
                claims.entry(id.clone()).or_default().push(address.clone());
                match world.objects.get(id) {
                    None => problems.push(format!(
                        "{address} is recorded as {id}, which the fake backend does not have"
                    )),
                    Some(object)
                        if object.kind != record.kind.to_string() || object.name != record.name =>
                    {
                        problems.push(format!(
                            "{address} is recorded as {id}, which is {} {}",
                            object.kind, object.name
                        ));
                    }
                    Some(_) => {}
                }
            }
            Kind::Run => {
                let run = record.attributes.get("run").and_then(|r| r.as_str());
                match run.and_then(|r| snapshot.runs.get(r)) {
                    None => problems.push(format!(
                        "{address} names the run {run:?}, which is not recorded"
                    )),
                    Some(latest) => {
                        let id = latest.job.get("backend_id").and_then(|i| i.as_str());
                        if record.backend_id.as_deref() != id {
                            problems.push(format!(
                                "{address} is recorded as {:?}, its run {} as {id:?}",
                                record.backend_id, latest.name
                            ));
                        }
                    }
                }
            }
            Kind::Tag => {
                if !snapshot.tags.contains_key(&record.name) {
                    problems.push(format!("{address} is recorded without its tag record"));
                }
            }
        }
    }
    for run in snapshot.runs.values() {
        match run.job.get("backend_id").and_then(|i| i.as_str()) {
            None => problems.push(format!("the run {} has no backend id", run.name)),
            Some(id) => {
                claims
                    .entry(id.to_string())
                    .or_default()
                    .push(format!("run {}", run.name));
                if !world.objects.contains_key(id) {
                    problems.push(format!(
                        "the run {} is recorded as {id}, which the fake backend does not have",
                        run.name
                    ));
                }
            }
        }
        let owner = run.resource.as_deref().map(|r| format!("run/{r}"));
        if !owner.is_some_and(|o| snapshot.resources.contains_key(&o)) {
            problems.push(format!(
                "the run {} belongs to no recorded resource ({:?})",
                run.name, run.resource
            ));
        }
    }
    for tag in snapshot.tags.values() {
        if !snapshot
            .resources
            .contains_key(&format!("tag/{}", tag.name))
        {
            problems.push(format!("the tag {} has no resource record", tag.name));
        }
        if !snapshot.runs.contains_key(&tag.run) {
            problems.push(format!(
                "the tag {} keeps the run {}, which is not recorded",
                tag.name, tag.run
            ));
        }
    }
    let lineage = snapshot.lineage.clone().unwrap_or_default();
    // One object per resource (volumes, fleets) and per run.
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, object) in &world.objects {
        match claims.get(id).map(Vec::len) {
            None | Some(0) => problems.push(format!(
                "leak: the {} object {id} ({}, labels {:?}) has no record",
                object.kind, object.name, object.labels
            )),
            Some(1) => {}
            Some(_) => problems.push(format!("{id} is claimed by {:?}", claims[id])),
        }
        if object.labels.get("dstack.lineage") != Some(&lineage) {
            problems.push(format!(
                "{id} carries the lineage {:?}, the state has {lineage}",
                object.labels.get("dstack.lineage")
            ));
        }
        let owner = if object.kind == "run" {
            format!(
                "run {}",
                object.labels.get("dstack.run").cloned().unwrap_or_default()
            )
        } else {
            format!("{}/{}", object.kind, object.name)
        };
        owners.entry(owner).or_default().push(id.clone());
    }
    for (owner, ids) in owners.iter().filter(|(_, ids)| ids.len() > 1) {
        problems.push(format!("duplicate: {owner} has the objects {ids:?}"));
    }
    problems
}

fn play(seed: u64, stats: &Stats) -> Result<(), String> {
    let mut sequence = Sequence::new(seed, stats);
    sequence.play();
    if sequence.problems.is_empty() {
        return Ok(());
    }
    let directory = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("torture");
    let _ = std::fs::create_dir_all(&directory);
    let log = directory.join(format!("seed-{seed}.log"));
    let _ = std::fs::write(&log, &sequence.log);
    Err(format!(
        "seed {seed}: {}\n  log: {}\n  reproduce: DSTACK_TORTURE_SEED={seed} cargo test --test torture sequences",
        sequence.problems.join("\n  "),
        log.display()
    ))
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn randomized_apply_sequences_with_faults_and_kill_9_converge_without_leaks() {
    let seeds: Vec<u64> = if let Some(seed) = env_number("DSTACK_TORTURE_SEED") {
        vec![seed]
    } else {
        let count = env_number("DSTACK_TORTURE_SEQUENCES").map_or(SEQUENCES, |n| n as usize);
        (0..count).map(|i| seed_of(BASE_SEED, i)).collect()
    };
    let jobs = env_number("DSTACK_TORTURE_JOBS").map_or(8, |n| n.max(1) as usize);
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let stats = Stats::default();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&seed) = seeds.get(index) else { break };
                    if let Err(failure) = play(seed, &stats) {
                        eprintln!("{failure}");
                        failures.lock().expect("failures").push(failure);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().expect("failures");
    eprintln!(
        "{} sequence(s) in {:.0?}, {} failed; {} faulty attempts: {} killed, {} hit an injected \
         fault; recoveries adopted {} and forgot {} interrupted operations",
        seeds.len(),
        started.elapsed(),
        failures.len(),
        Stats::get(&stats.attempts),
        Stats::get(&stats.killed),
        Stats::get(&stats.faults_hit),
        Stats::get(&stats.adopted),
        Stats::get(&stats.forgotten),
    );
    assert!(
        failures.is_empty(),
        "{} of {} sequences failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
    if seeds.len() >= 50 {
        // Kills that all land before the first backend call, or faults that never fire, would
        // leave nothing for recovery to do: the suite would pass without testing it.
        for (what, counter) in [
            ("killed attempts", &stats.killed),
            ("attempts that hit an injected fault", &stats.faults_hit),
            ("adopted creates", &stats.adopted),
            ("forgotten operations", &stats.forgotten),
        ] {
            assert!(
                Stats::get(counter) >= seeds.len() / 20,
                "too few {what} ({}) for {} sequences: retune the kill delays and fault calls",
                Stats::get(counter),
                seeds.len()
            );
        }
    }
}
