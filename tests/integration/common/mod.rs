//! The shared test context: a temporary project directory, an isolated `HOME`, a fixed
//! environment, and a snapshot helper that records the exit code, stdout and stderr.

#![allow(dead_code)]

pub mod docker;
pub mod moto;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A temporary project with its own home directory.
pub struct TestContext {
    pub temp: tempfile::TempDir,
    pub root: PathBuf,
    pub home: PathBuf,
    env: Vec<(String, String)>,
}

impl TestContext {
    /// A project directory with `.dstack/` and an empty home.
    pub fn new() -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let root = temp.path().join("project");
        let home = temp.path().join("home");
        std::fs::create_dir_all(root.join(".dstack")).expect("project dir");
        std::fs::create_dir_all(&home).expect("home dir");
        Self {
            temp,
            root,
            home,
            env: Vec::new(),
        }
    }

    /// Write a file under the project directory, creating parent directories.
    pub fn write(&self, path: &str, contents: &str) -> PathBuf {
        let path = self.root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent dir");
        }
        std::fs::write(&path, contents).expect("write file");
        path
    }

    /// Set an environment variable for every command of this context.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// `dstack ARGS` in the project directory with a clean environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dstack"));
        command
            .args(args)
            .current_dir(&self.root)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100")
            .stdin(Stdio::null());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Run `dstack ARGS` and capture everything.
    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("dstack runs"))
    }

    /// Run `dstack ARGS` with `input` on standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dstack starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        Run::from(child.wait_with_output().expect("dstack runs"))
    }

    /// Filters that make snapshots independent of temporary paths.
    pub fn filters(&self) -> Vec<(String, String)> {
        vec![
            (
                regex_escape(&self.root.display().to_string()),
                "[PROJECT]".into(),
            ),
            (
                regex_escape(&self.home.display().to_string()),
                "[HOME]".into(),
            ),
            (
                regex_escape(&self.temp.path().display().to_string()),
                "[TEMP]".into(),
            ),
        ]
    }
}

fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The outcome of one command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// The text snapshots record.
    pub fn report(&self) -> String {
        format!(
            "exit_code: {}\n----- stdout -----\n{}\n----- stderr -----\n{}",
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Snapshot a [`Run`] with the context's path filters.
#[macro_export]
macro_rules! dstack_snapshot {
    ($context:expr, $run:expr) => {{
        let filters = $context.filters();
        let filters: Vec<(&str, &str)> = filters.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        insta::with_settings!({filters => filters, prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!($run.report());
        });
    }};
    ($context:expr, $run:expr, @$snapshot:literal) => {{
        let filters = $context.filters();
        let filters: Vec<(&str, &str)> = filters.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        insta::with_settings!({filters => filters, prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!($run.report(), @$snapshot);
        });
    }};
}

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
