//! Docker for the tests: the daemon the machine provides (checked, never assumed), a test image
//! built from Debian's `busybox-static` (`FROM scratch` + the busybox binary) through bollard's
//! build API, and a local registry (Debian's `docker-registry`) to pull from.

#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

/// The image every Docker test runs.
pub const IMAGE: &str = "dstack-test/busybox:latest";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// A Docker client; fails the test with a clear message when no daemon answers.
pub fn docker() -> bollard::Docker {
    runtime().block_on(async {
        match dstack::backend::local::docker::connect().await {
            Ok(docker) => docker,
            Err(error) => {
                panic!("these tests need the Docker daemon this machine provides: {error}")
            }
        }
    })
}

fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox").unwrap_or_else(|_| {
        panic!("the test image is built from Debian's busybox-static: `apt-get install busybox-static` (scripts/test and .ci/run do)")
    })
}

fn context_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let dockerfile = b"FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";
    for (name, bytes, mode) in [
        ("Dockerfile", dockerfile.to_vec(), 0o644),
        ("busybox", busybox(), 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .expect("tar");
    }
    builder.into_inner().expect("tar")
}

/// Build the test image once per test binary.
pub fn test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let docker = docker();
        runtime().block_on(async {
            let options = bollard::query_parameters::BuildImageOptions {
                t: Some(IMAGE.to_string()),
                rm: true,
                ..Default::default()
            };
            let body = bollard::body_full(bytes::Bytes::from(context_tar()));
            let mut stream = docker.build_image(options, None, Some(body));
            while let Some(item) = stream.next().await {
                let info = item.unwrap_or_else(|e| panic!("building {IMAGE} failed: {e}"));
                if let Some(error) = info.error_detail {
                    panic!("building {IMAGE} failed: {error:?}");
                }
            }
        });
    });
    IMAGE
}

/// A Docker registry on 127.0.0.1 (Debian's `docker-registry`), started once per test binary.
pub struct Registry {
    pub address: String,
}

pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let binary = ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| panic!("the pull test needs Debian's `docker-registry` package: `apt-get install docker-registry` (scripts/test and .ci/run do)"));
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let dir = std::env::temp_dir().join(format!("dstack-test-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("registry dir");
        let config = dir.join("config.yml");
        let mut file = std::fs::File::create(&config).expect("config");
        write!(
            file,
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        )
        .expect("write config");
        let parent = std::process::id();
        // A watchdog stops the registry by its own pid when the tests end.
        let script = format!("\"$0\" serve \"$1\" >/dev/null 2>&1 & r=$!; while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $r");
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(binary)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the registry");
        std::mem::forget(child);
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry { address }
    })
}

impl Registry {
    /// Push the test image as `REGISTRY/NAME:TAG` and remove it locally, so a run must pull it.
    pub fn publish(&self, name: &str, tag: &str) -> String {
        test_image();
        let reference = format!("{}/{name}:{tag}", self.address);
        let docker = docker();
        runtime().block_on(async {
            docker
                .tag_image(
                    IMAGE,
                    Some(bollard::query_parameters::TagImageOptions {
                        repo: Some(format!("{}/{name}", self.address)),
                        tag: Some(tag.to_string()),
                    }),
                )
                .await
                .expect("tag");
            let mut push = docker.push_image(
                &format!("{}/{name}", self.address),
                Some(bollard::query_parameters::PushImageOptions {
                    tag: Some(tag.to_string()),
                    ..Default::default()
                }),
                None,
            );
            while let Some(item) = push.next().await {
                let info = item.unwrap_or_else(|e| panic!("pushing {reference} failed: {e}"));
                if let Some(error) = info.error_detail {
                    panic!("pushing {reference} failed: {error:?}");
                }
            }
            docker
                .remove_image(
                    &reference,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await
                .expect("remove the local copy");
        });
        reference
    }
}

/// Inspect a container.
pub fn inspect(name: &str) -> bollard::models::ContainerInspectResponse {
    let docker = docker();
    runtime()
        .block_on(docker.inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        ))
        .expect("inspect")
}

/// Whether a Docker volume exists.
pub fn volume_exists(name: &str) -> bool {
    let docker = docker();
    runtime().block_on(docker.inspect_volume(name)).is_ok()
}

pub fn remove_volume(name: &str) {
    let docker = docker();
    runtime()
        .block_on(
            docker.remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>),
        )
        .expect("remove volume");
}

/// `docker` CLI, for checks that are simpler that way.
pub fn docker_cli(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
