//! The runner: the agent that executes one run and reports through its job store.
//!
//! `dstack runner --job-dir DIR` is a mode of the same binary. `apply` starts it detached (its
//! own process group, so Ctrl-C in the terminal does not reach it) and returns once it has
//! accepted the job; the runner then owns the run: it starts the container(s) or host process,
//! streams logs to `logs.txt` (secrets redacted, [`redact`]), enforces `max_duration`, obeys `stop` / `abort` requests from
//! `control.json`, retries on failure when the run asks for it, saves artifacts, and writes the
//! final status. It outlives the CLI, so a run finishes even if `apply` is killed.

use std::time::Duration;

use chrono::Utc;

use crate::state::RunStatus;

pub mod cache;
pub mod code;
pub mod container;
pub mod devices;
pub mod host;
pub mod job;
pub mod redact;
pub mod remote;

use job::{Control, JobSpec, JobStatus, JobStore, Runtime};

/// Prefix every line of `text` (output of one of several runs or replicas).
pub fn prefix_lines(text: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(text.len() + prefix.len() * 8);
    for line in text.lines() {
        out.push_str(prefix);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Stopped,
    Aborted,
    MaxDuration,
    Error(String),
}

/// What the runtime-specific code needs to report and to check for requests.
pub struct Reporter<'a> {
    pub store: &'a JobStore,
    pub status: std::sync::Mutex<JobStatus>,
}

impl Reporter<'_> {
    pub fn update(&self, change: impl FnOnce(&mut JobStatus)) {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut status);
        status.updated_at = Utc::now();
        if let Err(e) = self.store.write_status(&status) {
            tracing::warn!("cannot write the run status: {e}");
        }
    }

    pub fn note(&self, line: &str) {
        let _ = self
            .store
            .append_log(format!("[dstack] {line}\n").as_bytes());
    }
}

/// Wait for a stop or abort request, or for `max_duration`.
pub async fn wait_for_request(store: &JobStore, deadline: Option<tokio::time::Instant>) -> Ending {
    loop {
        match store.read_control() {
            Some(Control::Stop) => return Ending::Stopped,
            Some(Control::Abort) => return Ending::Aborted,
            None => {}
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Ending::MaxDuration;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Execute the job of `store`. Never returns an error to the caller: every failure becomes the
/// run's final status.
pub async fn run(store: JobStore) {
    let spec = match store.read_spec() {
        Ok(spec) => spec,
        Err(message) => {
            let _ = store.write_status(&JobStatus::ended_now(
                RunStatus::Failed,
                &message,
                std::process::id(),
            ));
            return;
        }
    };
    let now = Utc::now();
    let reporter = Reporter {
        store: &store,
        status: std::sync::Mutex::new(JobStatus {
            status: RunStatus::Provisioning,
            exit_code: None,
            message: None,
            runner_pid: std::process::id(),
            containers: Vec::new(),
            ports: spec.ports.clone(),
            attempt: 1,
            started_at: now,
            finished_at: None,
            updated_at: now,
        }),
    };
    reporter.update(|_| {});
    if let Err(error) = cache::restore(&spec) {
        reporter.note(&error);
    }
    let deadline = spec
        .max_duration_secs
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let retry_until =
        spec.submitted_at + chrono::Duration::seconds(spec.retry.duration_secs as i64);
    let stop_watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = spec.artifacts.iter().any(|a| a.mount).then(|| {
        tokio::spawn(crate::artifacts::live::watch(
            spec.clone(),
            mount_interval(),
            stop_watching.clone(),
        ))
    });
    let mut attempt = 1;
    let ending = loop {
        let ending = match spec.runtime {
            Runtime::Docker => container::attempt(&spec, &reporter, attempt, deadline).await,
            Runtime::Host => host::attempt(&spec, &reporter, deadline).await,
        };
        let failed = matches!(ending, Ending::Exited(code) if code != 0)
            || matches!(ending, Ending::Error(_));
        if failed
            && spec.retry.on_error
            && Utc::now() < retry_until
            && store.read_control().is_none()
        {
            attempt += 1;
            reporter.note(&format!(
                "the run failed ({ending:?}); retrying (attempt {attempt})"
            ));
            reporter.update(|s| {
                s.attempt = attempt;
                s.status = RunStatus::Provisioning;
                s.message = Some(format!("retrying after {ending:?}"));
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        break ending;
    };
    stop_watching.store(true, std::sync::atomic::Ordering::SeqCst);
    let saver = match watcher {
        Some(handle) => handle.await.ok(),
        None => None,
    };
    finish(&spec, &reporter, &ending, saver);
}

/// How often `mount: true` artifacts are saved (`DSTACK_MOUNT_INTERVAL_MS`, default 1 s).
fn mount_interval() -> Duration {
    std::env::var("DSTACK_MOUNT_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis)
}

fn finish(
    spec: &JobSpec,
    reporter: &Reporter<'_>,
    ending: &Ending,
    saver: Option<crate::artifacts::live::LiveSaver>,
) {
    let (mut status, exit_code, mut message) = match ending {
        Ending::Exited(0) => (RunStatus::Done, Some(0), None),
        Ending::Exited(code) => (
            RunStatus::Failed,
            Some(*code),
            Some(format!("exited ({code})")),
        ),
        Ending::Stopped => (RunStatus::Stopped, None, Some("stopped".to_string())),
        Ending::Aborted => (RunStatus::Aborted, None, Some("aborted".to_string())),
        Ending::MaxDuration => (
            RunStatus::Stopped,
            None,
            Some(format!(
                "max_duration ({}) exceeded",
                crate::model::quantity::Duration(spec.max_duration_secs.unwrap_or(0) as i64)
            )),
        ),
        Ending::Error(message) => (RunStatus::Failed, None, Some(message.clone())),
    };
    if let Some(message) = &message {
        reporter.note(message);
    }
    // Done or stopped: every artifact is saved. Failed: what `mount: true` artifacts hold now
    // (checkpoints). Aborted: nothing more.
    if matches!(status, RunStatus::Done | RunStatus::Stopped) {
        if let Err(error) = crate::artifacts::save_job_artifacts(spec) {
            let error = format!("saving artifacts failed: {error}");
            reporter.note(&error);
            // A run whose results could not be kept did not succeed.
            if status == RunStatus::Done {
                status = RunStatus::Failed;
                message = Some(error);
            }
        }
    } else if status == RunStatus::Failed
        && let Some(mut saver) = saver
        && let Err(error) = saver.sync(spec)
    {
        reporter.note(&format!("saving mounted artifacts failed: {error}"));
    }
    // Kept before the final status, so a run started once this one has ended finds it.
    if status != RunStatus::Aborted
        && let Err(error) = cache::save(spec)
    {
        reporter.note(&error);
    }
    reporter.update(|s| {
        s.status = status;
        s.exit_code = exit_code;
        s.message.clone_from(&message);
        s.finished_at = Some(Utc::now());
    });
}
