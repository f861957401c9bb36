//! Running a job in Docker containers (one per replica).

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, LogsOptions, RemoveContainerOptions,
    StopContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;

use super::job::{JobSpec, MountSource};
use super::redact::LogRedactor;
use super::{Ending, Reporter, wait_for_request};
use crate::backend::local::docker;
use crate::state::RunStatus;

/// The Docker container name of a replica.
pub fn container_name(lineage: &str, run: &str, replica: u32, attempt: u32) -> String {
    let lineage: String = lineage
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let safe: String = run
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("dstack-{lineage}-{safe}-{replica}-{attempt}")
}

fn config(spec: &JobSpec, replica: u32) -> ContainerCreateBody {
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("DSTACK_RUN_NAME={}", spec.run_name));
    env.push(format!("DSTACK_REPLICA_NUM={replica}"));
    let mut binds = vec![format!("{}:/workflow", spec.code_dir.display())];
    for mount in &spec.mounts {
        match &mount.source {
            MountSource::Volume { name } => binds.push(format!("{name}:{}", mount.target)),
            MountSource::Bind { path }
            | MountSource::Device {
                mount_dir: path, ..
            } => {
                binds.push(format!("{}:{}", path.display(), mount.target));
            }
        }
    }
    let mut port_bindings = HashMap::new();
    let mut exposed = Vec::new();
    for port in &spec.ports {
        let key = format!("{}/tcp", port.container);
        exposed.push(key.clone());
        // The first replica takes the published ports; the others get free ones.
        let host_port = if replica == 0 {
            port.local.to_string()
        } else {
            String::new()
        };
        port_bindings.insert(
            key,
            Some(vec![PortBinding {
                host_ip: Some("0.0.0.0".into()),
                host_port: Some(host_port),
            }]),
        );
    }
    let device_requests = spec.limits.gpus.map(|count| {
        vec![DeviceRequest {
            driver: Some("nvidia".into()),
            count: Some(count as i64),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..DeviceRequest::default()
        }]
    });
    let mut script = spec.script.clone();
    if spec.keep_alive {
        // A dev environment stays up after `init` until it is stopped.
        script.push_str("\nwhile true; do sleep 3600; done\n");
    }
    let (entrypoint, cmd) = match (&spec.entrypoint, script.trim().is_empty()) {
        (Some(entrypoint), true) => (Some(shell_words(entrypoint)), None),
        (Some(entrypoint), false) => (Some(shell_words(entrypoint)), Some(vec![script.clone()])),
        (None, true) if !spec.keep_alive => (None, None),
        (None, _) => (
            Some(vec![spec.shell.clone(), "-c".into()]),
            Some(vec![script.clone()]),
        ),
    };
    ContainerCreateBody {
        image: spec.image.clone(),
        entrypoint,
        cmd,
        env: Some(env),
        working_dir: Some(spec.working_dir.clone()),
        user: spec.user.clone(),
        labels: Some(docker::labels(&spec.labels)),
        exposed_ports: Some(exposed),
        host_config: Some(HostConfig {
            binds: Some(binds),
            port_bindings: Some(port_bindings),
            memory: spec.limits.memory_bytes.map(|b| b as i64),
            nano_cpus: spec.limits.cpus.map(|c| (c * 1e9) as i64),
            shm_size: spec.limits.shm_bytes.map(|b| b as i64),
            device_requests,
            privileged: Some(spec.privileged),
            init: Some(true),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

/// Split an entrypoint on whitespace, honouring simple quotes.
fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quote = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (None, c) if c.is_whitespace() => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            (_, c) => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

async fn wait_exit(docker: &Docker, name: &str) -> i32 {
    let mut stream = docker.wait_container(name, Some(WaitContainerOptions::default()));
    match stream.next().await {
        Some(Ok(response)) => response.status_code as i32,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code as i32,
        Some(Err(_)) | None => docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.exit_code)
            .map_or(-1, |c| c as i32),
    }
}

async fn probe(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut stream)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let Ok(Ok(read)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head)).await
    else {
        return false;
    };
    let line = String::from_utf8_lossy(&head[..read]);
    line.starts_with("HTTP/1.") && line.get(9..10) == Some("2")
}

/// Run one attempt of the job.
pub async fn attempt(
    spec: &JobSpec,
    reporter: &Reporter<'_>,
    attempt: u32,
    deadline: Option<tokio::time::Instant>,
) -> Ending {
    let docker = match docker::connect().await {
        Ok(docker) => docker,
        Err(error) => return Ending::Error(error.to_string()),
    };
    if let Some(image) = &spec.image
        && let Err(error) = docker::ensure_image(&docker, image, false).await
    {
        return Ending::Error(error.to_string());
    }
    let mut names = Vec::new();
    for replica in 0..spec.replicas.max(1) {
        let name = container_name(&spec.lineage, &spec.run_name, replica, attempt);
        let _ = docker
            .remove_container(
                &name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                config(spec, replica),
            )
            .await;
        if let Err(error) = created {
            cleanup(&docker, &names).await;
            return Ending::Error(docker::error("cannot create the container", &error).message);
        }
        names.push(name.clone());
        if let Err(error) = docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            cleanup(&docker, &names).await;
            return Ending::Error(docker::error("cannot start the container", &error).message);
        }
    }
    reporter.update(|s| {
        s.status = RunStatus::Running;
        s.containers.clone_from(&names);
        s.message = None;
    });
    let mut log_tasks = Vec::new();
    for (replica, name) in names.iter().enumerate() {
        let docker = docker.clone();
        let name = name.clone();
        let store = reporter.store.clone();
        // One redactor per stream: Docker interleaves stdout and stderr frames, and a secret
        // split between two frames is split within one of them.
        let mut stdout_redactor = LogRedactor::new(&spec.secrets);
        let mut stderr_redactor = LogRedactor::new(&spec.secrets);
        let prefix = (names.len() > 1).then(|| format!("[replica {replica}] "));
        log_tasks.push(tokio::spawn(async move {
            let options = LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            };
            let mut logs = docker.logs(&name, Some(options));
            let write = |bytes: Vec<u8>| {
                if bytes.is_empty() {
                    return;
                }
                let _ = match &prefix {
                    Some(prefix) => store.append_log(
                        super::prefix_lines(&String::from_utf8_lossy(&bytes), prefix).as_bytes(),
                    ),
                    None => store.append_log(&bytes),
                };
            };
            while let Some(Ok(output)) = logs.next().await {
                let redacted = match output {
                    LogOutput::StdErr { message } => stderr_redactor.push(&message),
                    other => stdout_redactor.push(&other.into_bytes()),
                };
                write(redacted);
            }
            write(stdout_redactor.finish());
            write(stderr_redactor.finish());
        }));
    }
    let readiness = spec.readiness.clone().and_then(|r| {
        let local = spec
            .ports
            .iter()
            .find(|p| p.container == r.container_port)?
            .local;
        Some((local, r.path))
    });
    let ready = async {
        if let Some((port, path)) = &readiness {
            loop {
                if probe(*port, path).await {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        std::future::pending::<bool>().await
    };
    let exits =
        futures_util::future::select_all(names.iter().map(|n| Box::pin(wait_exit(&docker, n))));
    let ending = {
        tokio::pin!(ready);
        let mut exits = exits;
        let request = wait_for_request(reporter.store, deadline);
        tokio::pin!(request);
        loop {
            tokio::select! {
                (code, _, _) = &mut exits => break Ending::Exited(code),
                ending = &mut request => break ending,
                true = &mut ready => {
                    reporter.note(&format!("ready: http://127.0.0.1:{}{}", readiness.as_ref().map_or(0, |r| r.0), readiness.as_ref().map_or("/", |r| r.1.as_str())));
                    reporter.update(|s| s.message = Some("ready".into()));
                }
            }
        }
    };
    match ending {
        Ending::Stopped | Ending::MaxDuration => {
            let timeout = i32::try_from(spec.stop_duration_secs).unwrap_or(i32::MAX);
            for name in &names {
                let _ = docker
                    .stop_container(
                        name,
                        Some(StopContainerOptions {
                            t: Some(timeout),
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        }
        Ending::Aborted => {
            for name in &names {
                let _ = docker
                    .kill_container(
                        name,
                        Some(KillContainerOptions {
                            signal: "SIGKILL".into(),
                        }),
                    )
                    .await;
            }
        }
        Ending::Exited(_) | Ending::Error(_) => {}
    }
    // Let the log streams drain (they end with the containers).
    for task in log_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    cleanup(&docker, &names).await;
    ending
}

async fn cleanup(docker: &Docker, names: &[String]) {
    for name in names {
        let _ = docker
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    v: false,
                    ..Default::default()
                }),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoints_split_like_a_shell() {
        assert_eq!(
            shell_words("python -m 'http.server' \"8000\""),
            ["python", "-m", "http.server", "8000"]
        );
        assert_eq!(
            container_name("0b6f-1234-x", "train-3", 0, 1),
            "dstack-0b6f1234-train-3-0-1"
        );
    }
}
