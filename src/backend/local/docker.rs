//! Docker through `bollard`: connecting (honouring `DOCKER_HOST`), volumes, images (pulled with
//! a progress bar), and the errors worth explaining.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::Docker;
use futures_util::StreamExt;

use crate::backend::{BackendError, ErrorKind};

/// Connect to the daemon and agree on an API version. An unreachable daemon is an error that says
/// what to do.
pub async fn connect() -> Result<Docker, BackendError> {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let unreachable = |detail: String| {
        BackendError::new(ErrorKind::Unauthorized, format!("cannot reach the Docker daemon at {host}: {detail}"))
            .with_hint("start Docker (e.g. `sudo systemctl start docker`), set DOCKER_HOST, or use `runtime: host` for the local backend in .dstack/config.yml")
    };
    let docker = Docker::connect_with_defaults().map_err(|e| unreachable(e.to_string()))?;
    let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
        .await
        .map_err(|_| unreachable("no answer within 10 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::time::timeout(Duration::from_secs(10), docker.ping())
        .await
        .map_err(|_| unreachable("no answer within 10 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
}

/// Whether a daemon answers (for `runtime: auto`).
pub async fn available() -> bool {
    tokio::time::timeout(Duration::from_secs(3), connect())
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Map a Docker error to a backend error kind.
pub fn error(what: &str, error: &bollard::errors::Error) -> BackendError {
    use bollard::errors::Error as E;
    match error {
        E::DockerResponseServerError {
            status_code,
            message,
        } => {
            let kind = match status_code {
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                400 | 406 => ErrorKind::Invalid,
                401 | 403 => ErrorKind::Unauthorized,
                500..=599 => ErrorKind::Transient,
                _ => ErrorKind::Internal,
            };
            BackendError::new(kind, format!("{what}: {}", message.trim()))
        }
        E::RequestTimeoutError | E::HyperResponseError { .. } | E::IOError { .. } => {
            BackendError::new(ErrorKind::Transient, format!("{what}: {error}"))
        }
        other => BackendError::new(ErrorKind::Internal, format!("{what}: {other}")),
    }
}

/// Labels as Docker wants them.
pub fn labels(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Make sure `image` is present, pulling it (with progress on a terminal) when it is not.
pub async fn ensure_image(
    docker: &Docker,
    image: &str,
    show_progress: bool,
) -> Result<(), BackendError> {
    if docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    let (name, tag) = split_image(image);
    let options = bollard::query_parameters::CreateImageOptions {
        from_image: Some(name),
        tag: Some(tag),
        ..Default::default()
    };
    let bar = if show_progress {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "pulling {msg} [{bar:30}] {bytes}/{total_bytes}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(image.to_string());
        Some(bar)
    } else {
        eprintln_safe(&format!("pulling {image}..."));
        None
    };
    let mut layers: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut stream = docker.create_image(Some(options), None, None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail {
                    return Err(pull_error(
                        image,
                        detail.message.as_deref().unwrap_or("unknown error"),
                    ));
                }
                if let (Some(id), Some(progress)) = (info.id, info.progress_detail)
                    && let (Some(current), Some(total)) = (progress.current, progress.total)
                {
                    layers.insert(id, (current, total));
                }
                if let Some(bar) = &bar {
                    let (current, total) = layers
                        .values()
                        .fold((0, 0), |(c, t), (lc, lt)| (c + lc, t + lt));
                    bar.set_length(total.max(0) as u64);
                    bar.set_position(current.max(0) as u64);
                }
            }
            Err(e) => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                let message = match &e {
                    bollard::errors::Error::DockerResponseServerError { message, .. } => {
                        message.clone()
                    }
                    other => other.to_string(),
                };
                return Err(pull_error(image, &message));
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    eprintln_safe(&format!("pulled {image}"));
    Ok(())
}

fn eprintln_safe(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn pull_error(image: &str, message: &str) -> BackendError {
    BackendError::new(ErrorKind::Invalid, format!("cannot pull the image `{image}`: {}", message.trim())).with_hint(
        "check the image name and tag, log in to its registry (`docker login`), or build it locally; without `image`, runs use `python:3.X-slim` (or the local backend's `default_image`)",
    )
}

/// `registry/name:tag` → (`registry/name`, `tag`), `latest` by default.
pub fn split_image(image: &str) -> (String, String) {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_string(), tag.to_string()),
        _ => (without_digest.to_string(), "latest".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn image_names() {
        assert_eq!(split_image("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(
            split_image("python:3.12-slim"),
            ("python".into(), "3.12-slim".into())
        );
        assert_eq!(
            split_image("127.0.0.1:5000/x/y"),
            ("127.0.0.1:5000/x/y".into(), "latest".into())
        );
        assert_eq!(
            split_image("127.0.0.1:5000/x/y:v1"),
            ("127.0.0.1:5000/x/y".into(), "v1".into())
        );
    }
}
