//! Running a job as host processes (the local backend's `host` runtime).
//!
//! The script runs in the run's own copy of the project, in its own process group, so that
//! stopping the run stops everything it started, and background processes (`cmd &`) end with the
//! main command. The job inherits the runner's environment (`PATH`, `HOME`, the locale) but not
//! the CLI's credentials (`AWS_*`, `DSTACK_*`, tokens, passwords), which a container would not
//! see either: a run that needs one passes it in its own `env`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use super::job::JobSpec;
use super::redact::LogRedactor;
use super::{Ending, Reporter, wait_for_request};
use crate::state::RunStatus;

fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Whether an inherited variable could carry the CLI's credentials or settings: the job must not
/// see those unless its own `env` passes them (`env: [HF_TOKEN]`), as a container would not.
fn is_credential(name: &str) -> bool {
    const PREFIXES: [&str; 3] = ["AWS_", "DSTACK_", "AZURE_"];
    const NAMES: [&str; 4] = [
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_OAUTH_ACCESS_TOKEN",
        "CLOUDSDK_AUTH_ACCESS_TOKEN",
        "KUBECONFIG",
    ];
    const SUFFIXES: [&str; 6] = [
        "_TOKEN",
        "_SECRET",
        "_SECRET_KEY",
        "_ACCESS_KEY",
        "_API_KEY",
        "_PASSWORD",
    ];
    let upper = name.to_ascii_uppercase();
    PREFIXES.iter().any(|p| upper.starts_with(p))
        || NAMES.contains(&upper.as_str())
        || SUFFIXES.iter().any(|s| upper.ends_with(s))
}

/// The environment of a host job: what the runner inherited from the CLI (`PATH`, `HOME`, the
/// locale, ...) without credentials, nor any variable holding one of the run's secret values,
/// then the run's own `env`, which wins.
fn job_environment(
    inherited: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    spec: &JobSpec,
) -> BTreeMap<std::ffi::OsString, std::ffi::OsString> {
    let secret = |value: &std::ffi::OsStr| {
        value.to_str().is_some_and(|value| {
            spec.secrets
                .iter()
                .any(|s| !s.is_empty() && value.contains(s.as_str()))
        })
    };
    let mut environment: BTreeMap<_, _> = inherited
        .into_iter()
        .filter(|(name, value)| {
            // A name that is not UTF-8 is nothing dstack or a cloud SDK sets: keep it.
            !name.to_str().is_some_and(is_credential) && !secret(value)
        })
        .collect();
    environment.extend(
        spec.env
            .iter()
            .map(|(name, value)| (name.into(), value.into())),
    );
    environment
}

/// Run one attempt of the job on the host.
pub async fn attempt(
    spec: &JobSpec,
    reporter: &Reporter<'_>,
    deadline: Option<tokio::time::Instant>,
) -> Ending {
    let Some(workdir) = spec.local_working_dir() else {
        return Ending::Error(format!(
            "the working directory `{}` leaves the run's copy of the project: `..` is not allowed in `working_dir`",
            spec.working_dir
        ));
    };
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
        .env_clear()
        .envs(job_environment(std::env::vars_os(), spec))
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
        let mut redactor = LogRedactor::new(&spec.secrets);
        streams.push(tokio::spawn(async move {
            let mut buffer = vec![0u8; 8192];
            loop {
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => {
                        let _ = store.append_log(&redactor.push(&buffer[..read]));
                    }
                }
            }
            let _ = store.append_log(&redactor.finish());
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

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn spec(working_dir: &str, env: &[(&str, &str)], secrets: &[&str]) -> JobSpec {
        let mut spec: JobSpec = serde_json::from_value(serde_json::json!({
            "run_name": "job-1", "resource": "job", "project": "p", "lineage": "l",
            "run_type": "task", "runtime": "host", "image": null, "shell": "/bin/sh",
            "script": "", "keep_alive": false, "env": {}, "working_dir": working_dir,
            "code_dir": "/project/.dstack/runs/job-1/code", "mounts": [], "ports": [],
            "limits": {}, "user": null, "privileged": false, "entrypoint": null,
            "max_duration_secs": null, "stop_duration_secs": 0,
            "retry": {"on_error": false, "duration_secs": 0}, "replicas": 1,
            "readiness": null, "labels": {}, "artifacts": [],
            "submitted_at": "2024-01-01T00:00:00Z"
        }))
        .expect("job spec");
        spec.env = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        spec.secrets = secrets.iter().map(|s| (*s).to_string()).collect();
        spec
    }

    fn environment(inherited: &[(&str, &str)], spec: &JobSpec) -> Vec<(String, String)> {
        job_environment(
            inherited
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
            spec,
        )
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect()
    }

    #[test]
    fn host_jobs_do_not_inherit_the_clis_credentials() {
        let inherited = [
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/home/me"),
            ("LANG", "C.UTF-8"),
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "sk"),
            ("AWS_SESSION_TOKEN", "st"),
            ("AWS_PROFILE", "prod"),
            ("DSTACK_STATE", "s3://bucket/state.json"),
            ("HF_TOKEN", "hf"),
            ("OPENAI_API_KEY", "oa"),
            ("DB_PASSWORD", "pw"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "/key.json"),
            ("ORIGINAL_NAME", "value-of-a-secret"),
        ];
        let job = spec("/workflow", &[], &["value-of-a-secret"]);
        assert_eq!(
            environment(&inherited, &job),
            [
                ("HOME".to_string(), "/home/me".to_string()),
                ("LANG".into(), "C.UTF-8".into()),
                ("PATH".into(), "/usr/bin:/bin".into()),
            ]
        );
    }

    #[test]
    fn a_runs_own_env_may_pass_credentials_and_wins_over_inherited_values() {
        let inherited = [("AWS_ACCESS_KEY_ID", "from-cli"), ("PATH", "/bin")];
        let job = spec(
            "/workflow",
            &[("AWS_ACCESS_KEY_ID", "from-run"), ("PATH", "/opt/bin")],
            &["from-run"],
        );
        assert_eq!(
            environment(&inherited, &job),
            [
                ("AWS_ACCESS_KEY_ID".to_string(), "from-run".to_string()),
                ("PATH".into(), "/opt/bin".into()),
            ]
        );
    }

    #[test]
    fn the_host_working_directory_stays_in_the_runs_copy_of_the_project() {
        let code = std::path::Path::new("/project/.dstack/runs/job-1/code");
        let local = |dir: &str| spec(dir, &[], &[]).local_working_dir();
        assert_eq!(local("/workflow"), Some(code.into()));
        assert_eq!(local("/workflow/sub/./dir"), Some(code.join("sub/dir")));
        for escaping in [
            "/workflow/../../../../outside",
            "/workflow/a/../../b",
            "/../x",
        ] {
            assert_eq!(local(escaping), None, "{escaping}");
        }
    }
}
