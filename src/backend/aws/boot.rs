//! What EC2 instances boot (user-data): the runner binary of this dstack version, downloaded
//! through a presigned URL, Docker, and for NVIDIA GPUs the driver and the NVIDIA container
//! toolkit when the image lacks them.
//!
//! - A run's own instance runs its one job (`dstack runner --job URL`) and shuts down, which
//!   terminates it.
//! - A fleet node installs a systemd service, `dstack-runner`, that serves the node's queue
//!   (`dstack runner --node STORE --instance-id ID`) for as long as the node lives; runs that
//!   name the fleet are queued to an idle node (see [`super::runs`]).

use std::collections::BTreeMap;
use std::time::Duration;

use super::RunSettings;
use crate::backend::jobspec::job_error;
use crate::backend::{BackendError, ErrorKind};
use crate::runner::remote::RemoteJobs;

/// How long the presigned URL of the runner binary stays valid (the instance boots in minutes).
const BINARY_URL_LIFETIME: Duration = Duration::from_hours(6);
/// Where the runner binary and its work directory live on the instance.
pub const INSTANCE_HOME: &str = "/opt/dstack";

/// A value for a POSIX shell, single-quoted.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The architecture of an ELF executable as `uname -m` names it (`x86_64`, `aarch64`).
pub fn elf_arch(header: &[u8]) -> Option<&'static str> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return None;
    }
    match u16::from_le_bytes([header[18], header[19]]) {
        0x3E => Some("x86_64"),
        0xB7 => Some("aarch64"),
        _ => None,
    }
}

/// The NVIDIA container toolkit's apt repository (NVIDIA's published install steps).
const NVIDIA_REPO: &str = "https://nvidia.github.io/libnvidia-container";

/// Everything before the runner starts: log to a file, pick the binary for the machine, make
/// sure Docker (and on NVIDIA machines, the driver and the container toolkit) is there, and
/// download the binary. `$ok` is 1 when the binary is ready.
fn prelude(purpose: &str, binaries: &BTreeMap<String, String>) -> String {
    let mut cases = String::new();
    for (arch, url) in binaries {
        cases.push_str(&format!("  {arch}) url={} ;;\n", quote(url)));
    }
    format!(
        "#!/bin/sh\n\
         # dstack: {purpose}\n\
         exec >>/var/log/dstack-runner.log 2>&1\n\
         export AWS_EC2_METADATA_DISABLED=false DEBIAN_FRONTEND=noninteractive\n\
         mkdir -p {INSTANCE_HOME}/work\n\
         url=''\n\
         case \"$(uname -m)\" in\n{cases}esac\n\
         if ! command -v docker >/dev/null 2>&1; then\n\
         \x20 (apt-get update -y && apt-get install -y docker.io && systemctl start docker) || echo 'dstack: cannot install Docker'\n\
         fi\n\
         if lspci 2>/dev/null | grep -qi nvidia || [ -e /proc/driver/nvidia/version ]; then\n\
         \x20 if ! command -v nvidia-smi >/dev/null 2>&1; then\n\
         \x20   (apt-get update -y && apt-get install -y ubuntu-drivers-common && ubuntu-drivers install --gpgpu && modprobe nvidia) || echo 'dstack: cannot install the NVIDIA driver'\n\
         \x20 fi\n\
         \x20 if ! command -v nvidia-ctk >/dev/null 2>&1; then\n\
         \x20   (curl -fsSL {NVIDIA_REPO}/gpgkey | gpg --dearmor --yes -o /usr/share/keyrings/nvidia-container-toolkit.gpg \\\n\
         \x20     && curl -fsSL {NVIDIA_REPO}/stable/deb/nvidia-container-toolkit.list \\\n\
         \x20       | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit.gpg] https://#' \\\n\
         \x20       > /etc/apt/sources.list.d/nvidia-container-toolkit.list \\\n\
         \x20     && apt-get update -y && apt-get install -y nvidia-container-toolkit) || echo 'dstack: cannot install the NVIDIA container toolkit'\n\
         \x20 fi\n\
         \x20 (nvidia-ctk runtime configure --runtime=docker && systemctl restart docker) || echo 'dstack: cannot give Docker the NVIDIA runtime'\n\
         fi\n\
         ok=0\n\
         if [ -z \"$url\" ]; then\n\
         \x20 echo \"dstack: no runner binary for $(uname -m)\"\n\
         elif curl -fsSL --retry 5 -o {INSTANCE_HOME}/dstack \"$url\"; then\n\
         \x20 chmod +x {INSTANCE_HOME}/dstack\n\
         \x20 ok=1\n\
         else\n\
         \x20 echo 'dstack: cannot download the runner binary'\n\
         fi\n",
    )
}

fn connection_flags(region: &str, endpoint_url: Option<&str>) -> String {
    let endpoint = endpoint_url
        .map(|e| format!(" --endpoint-url {}", quote(e)))
        .unwrap_or_default();
    format!("--region {}{endpoint}", quote(region))
}

/// What a run's own instance boots: the prelude, the job, then shutdown (which terminates it).
pub fn run_user_data(
    binaries: &BTreeMap<String, String>,
    job_url: &str,
    region: &str,
    endpoint_url: Option<&str>,
) -> String {
    format!(
        "{}if [ \"$ok\" = 1 ]; then\n\
         \x20 {INSTANCE_HOME}/dstack runner --job {job} {flags} --work-dir {INSTANCE_HOME}/work\n\
         fi\n\
         shutdown -h now\n",
        prelude(
            "run one job, then shut down (the instance terminates on shutdown).",
            binaries
        ),
        job = quote(job_url),
        flags = connection_flags(region, endpoint_url),
    )
}

/// What a fleet node boots: the prelude, then the node's agent as a systemd service that serves
/// the jobs queued for this instance and restarts if it stops. The instance id comes from the
/// instance metadata service (`IMDSv2`).
pub fn node_user_data(
    binaries: &BTreeMap<String, String>,
    store_url: &str,
    region: &str,
    endpoint_url: Option<&str>,
) -> String {
    format!(
        "{}token=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token)\n\
         id=$(curl -fsS -H \"X-aws-ec2-metadata-token: $token\" http://169.254.169.254/latest/meta-data/instance-id)\n\
         if [ \"$ok\" = 1 ] && [ -n \"$id\" ]; then\n\
         \x20 cat >/etc/systemd/system/dstack-runner.service <<UNIT\n\
         [Unit]\n\
         Description=dstack runner (the agent of a fleet node)\n\
         After=network-online.target docker.service\n\
         Wants=network-online.target\n\
         [Service]\n\
         ExecStart={INSTANCE_HOME}/dstack runner --node {store} --instance-id $id {flags} --work-dir {INSTANCE_HOME}/work\n\
         Restart=always\n\
         RestartSec=5\n\
         [Install]\n\
         WantedBy=multi-user.target\n\
         UNIT\n\
         \x20 systemctl daemon-reload && systemctl enable --now dstack-runner\n\
         else\n\
         \x20 echo 'dstack: the node agent cannot start'\n\
         fi\n",
        prelude(
            "serve the runs queued for this fleet node (the dstack-runner service).",
            binaries
        ),
        store = quote(store_url),
        flags = connection_flags(region, endpoint_url),
    )
}

/// Upload the runner binary and presign its download, for each architecture the store has.
pub async fn binaries(
    jobs: &RemoteJobs,
    settings: &RunSettings,
) -> Result<BTreeMap<String, String>, BackendError> {
    let version = env!("CARGO_PKG_VERSION");
    let explicit = settings.runner_binary.clone();
    let local = match &explicit {
        Some(path) => Some(path.clone()),
        None if cfg!(target_os = "linux") => std::env::current_exe().ok(),
        None => None,
    };
    if let Some(path) = &local {
        let mut header = [0u8; 20];
        let read = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header));
        let arch = read.ok().and_then(|()| elf_arch(&header));
        match arch {
            Some(arch) => {
                jobs.upload_binary(&jobs.binary_key(version, arch), path)
                    .await
                    .map_err(|e| job_error(&e))?;
            }
            None if explicit.is_some() => {
                return Err(BackendError::new(
                    ErrorKind::Invalid,
                    format!(
                        "the runner binary {} is not a Linux x86_64 or aarch64 executable",
                        path.display()
                    ),
                )
                .with_hint("point DSTACK_RUNNER_BINARY at a Linux build of dstack"));
            }
            None => {}
        }
    }
    let mut urls = BTreeMap::new();
    for arch in ["x86_64", "aarch64"] {
        let key = jobs.binary_key(version, arch);
        if jobs.object_exists(&key).await.map_err(|e| job_error(&e))? {
            let url = jobs
                .presigned_get(&key, BINARY_URL_LIFETIME)
                .await
                .map_err(|e| job_error(&e))?;
            urls.insert(arch.to_string(), url);
        }
    }
    if urls.is_empty() {
        return Err(BackendError::new(
            ErrorKind::Invalid,
            format!("there is no Linux build of dstack {version} to run on the instance"),
        )
        .with_hint("set DSTACK_RUNNER_BINARY to a Linux build of this version; it is uploaded to the remote store"));
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_fetches_the_binary_for_the_machine_and_runs_the_job() {
        let urls = BTreeMap::from([(
            "x86_64".to_string(),
            "http://s3/bin?X-Amz-Signature=a&b=c".to_string(),
        )]);
        let script = run_user_data(
            &urls,
            "s3://b/p/jobs/l/train-1",
            "us-east-1",
            Some("http://127.0.0.1:5000"),
        );
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("  x86_64) url='http://s3/bin?X-Amz-Signature=a&b=c' ;;\n"));
        assert!(script.contains(
            "/opt/dstack/dstack runner --job 's3://b/p/jobs/l/train-1' --region 'us-east-1' --endpoint-url 'http://127.0.0.1:5000' --work-dir /opt/dstack/work\n"
        ));
        assert!(script.trim_end().ends_with("shutdown -h now"));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn elf_headers_name_their_architecture() {
        let mut header = [0u8; 20];
        header[..4].copy_from_slice(b"\x7fELF");
        header[18] = 0x3E;
        assert_eq!(elf_arch(&header), Some("x86_64"));
        header[18] = 0xB7;
        assert_eq!(elf_arch(&header), Some("aarch64"));
        assert_eq!(elf_arch(b"#!/bin/sh"), None);
    }

    #[test]
    fn a_node_boots_its_agent_as_a_service_with_its_instance_id() {
        let urls = BTreeMap::from([("aarch64".to_string(), "http://s3/bin".to_string())]);
        let script = node_user_data(&urls, "s3://b/p", "eu-west-1", None);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("  aarch64) url='http://s3/bin' ;;\n"));
        assert!(script.contains("latest/meta-data/instance-id"));
        assert!(script.contains(
            "ExecStart=/opt/dstack/dstack runner --node 's3://b/p' --instance-id $id --region 'eu-west-1' --work-dir /opt/dstack/work\n"
        ));
        assert!(
            script.contains("\nUNIT\n"),
            "the unit file's heredoc ends on its own line"
        );
        assert!(script.contains("systemctl enable --now dstack-runner"));
        assert!(!script.contains("shutdown"), "a node lives on after a run");
    }

    #[test]
    fn nvidia_machines_get_the_driver_and_container_toolkit_when_missing() {
        let script = run_user_data(&BTreeMap::new(), "s3://b/p/jobs/l/r-1", "us-east-1", None);
        assert!(script.contains("lspci 2>/dev/null | grep -qi nvidia"));
        assert!(script.contains("command -v nvidia-ctk"));
        assert!(script.contains("apt-get install -y nvidia-container-toolkit"));
        assert!(script.contains("nvidia-ctk runtime configure --runtime=docker"));
        // No binary for this machine: the job is not started, the instance still shuts down.
        assert!(script.contains("if [ \"$ok\" = 1 ]; then"));
        assert!(script.trim_end().ends_with("shutdown -h now"));
    }

    #[test]
    fn boot_scripts_are_valid_shell() {
        let urls = BTreeMap::from([("x86_64".to_string(), "http://s3/bin?a=b&c='d'".to_string())]);
        for script in [
            run_user_data(
                &urls,
                "s3://b/p/jobs/l/r-1",
                "us-east-1",
                Some("http://127.0.0.1:1"),
            ),
            node_user_data(&urls, "s3://b/p", "us-east-1", None),
        ] {
            let status = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .status()
                .expect("sh runs");
            assert!(status.success(), "{script}");
        }
    }
}
