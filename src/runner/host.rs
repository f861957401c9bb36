//! Running a job as host processes (the local backend's `host` runtime).
//!
//! The script runs in the run's own copy of the project, in its own process group, so that
//! stopping the run stops everything it started, and background processes (`cmd &`) end with the
//! main command.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use super::job::JobSpec;
use super::{Ending, Reporter, wait_for_request};
use crate::state::RunStatus;

fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Run one attempt of the job on the host.
pub async fn attempt(
    spec: &JobSpec,
    reporter: &Reporter<'_>,
    deadline: Option<tokio::time::Instant>,
) -> Ending {
    let workdir = spec.code_dir.join(
        spec.working_dir
            .trim_start_matches("/workflow")
            .trim_start_matches('/'),
    );
    if let Err(error) = std::fs::create_dir_all(&workdir) {
        return Ending::Error(format!(
            "cannot create the working directory {}: {error}",
            workdir.display()
        ));
    }
    let mut script = spec.script.clone();
    if spec.keep_alive {
        script.push_str("\nwhile true; do sleep 3600; done\n");
    }
    let mut command = tokio::process::Command::new(&spec.shell);
    command
        .arg("-c")
        .arg(&script)
        .current_dir(&workdir)
        .envs(&spec.env)
        .env("DSTACK_RUN_NAME", &spec.run_name)
        .env("DSTACK_REPLICA_NUM", "0")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return Ending::Error(format!("cannot start `{}`: {error}", spec.shell)),
    };
    let pid = child.id().unwrap_or_default();
    reporter.update(|s| {
        s.status = RunStatus::Running;
        s.containers = vec![format!("pid {pid}")];
    });
    let mut streams = Vec::new();
    for mut reader in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let store = reporter.store.clone();
        let secrets = spec.secrets.clone();
        streams.push(tokio::spawn(async move {
            let mut buffer = vec![0u8; 8192];
            loop {
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => {
                        let text = crate::plan::sensitive::redact(
                            &String::from_utf8_lossy(&buffer[..read]),
                            &secrets,
                        );
                        let _ = store.append_log(text.as_bytes());
                    }
                }
            }
        }));
    }
    let ending = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => Ending::Exited(status.code().unwrap_or(-1)),
            Err(error) => Ending::Error(format!("waiting for the process failed: {error}")),
        },
        ending = wait_for_request(reporter.store, deadline) => ending,
    };
    match ending {
        Ending::Stopped | Ending::MaxDuration => {
            signal_group(pid, Signal::SIGTERM);
            if tokio::time::timeout(Duration::from_secs(spec.stop_duration_secs), child.wait())
                .await
                .is_err()
            {
                signal_group(pid, Signal::SIGKILL);
                let _ = child.wait().await;
            }
        }
        Ending::Aborted => {
            signal_group(pid, Signal::SIGKILL);
            let _ = child.wait().await;
        }
        Ending::Exited(_) | Ending::Error(_) => {}
    }
    // Background processes end with the main command.
    signal_group(pid, Signal::SIGKILL);
    for stream in streams {
        let _ = tokio::time::timeout(Duration::from_secs(5), stream).await;
    }
    ending
}
