//! An S3/EC2 API server (moto) on 127.0.0.1 for the tests, started once per test binary.
//!
//! The server is found at `DSTACK_TEST_MOTO_SERVER` (set by `scripts/test`), in
//! `target/test-venv/bin/moto_server`, or on `PATH`; when none exists the tests fail with a
//! message saying how to install it (they never skip). A watchdog stops the server by its own pid
//! when the test process exits. Tests share the server, so each uses its own bucket names.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running moto server.
pub struct Moto {
    pub endpoint: String,
    pub pid: u32,
}

fn find_server() -> PathBuf {
    if let Ok(path) = std::env::var("DSTACK_TEST_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let venv = super::repo_root().join("target/test-venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = PathBuf::from(dir).join("moto_server");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "moto_server not found: run the tests with `scripts/test` (it creates target/test-venv), \
         or `python3 -m venv target/test-venv && target/test-venv/bin/pip install 'moto[server]'`"
    );
}

/// The shared server, started on first use.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(start)
}

// The watchdog shell outlives this process's handle on purpose: it stops moto when the tests
// end, so the child is never waited for here.
#[allow(clippy::zombie_processes)]
fn start() -> Moto {
    let server = find_server();
    let parent = std::process::id();
    // The watchdog shell starts moto, then stops it by its own pid once this process is gone.
    let script = format!(
        "\"$0\" -H 127.0.0.1 -p 0 2>&1 & m=$!; echo \"pid $m\"; \
         while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $m 2>/dev/null; wait $m"
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(&server)
        .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
        .env("MOTO_ENABLE_AMI_VALIDATION", "true")
        .env("MOTO_ENABLE_KEYPAIR_VALIDATION", "true")
        .env("S3_UPLOAD_PART_MIN_SIZE", "1024")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut pid = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("pid ") {
                pid = p.trim().parse::<u32>().ok();
            }
            if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1) {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let _ = sender.send((pid, port));
            }
        }
    });
    let (pid, port) = receiver
        .recv_timeout(Duration::from_mins(1))
        .unwrap_or_else(|_| {
            panic!(
                "moto_server ({}) did not start within 60 s",
                server.display()
            )
        });
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reachable(&endpoint) {
            return Moto {
                endpoint,
                pid: pid.unwrap_or_default(),
            };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto_server at {endpoint} did not answer /moto-api/");
}

/// Whether `GET /moto-api/` answers 200.
fn reachable(endpoint: &str) -> bool {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://");
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request =
        format!("GET /moto-api/ HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}

impl Moto {
    /// Environment for clients of this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// An S3 client for the server (static test credentials, path-style addressing).
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await;
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(true)
                .build(),
        )
    }

    /// Create a bucket with a unique name for one test.
    pub async fn bucket(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
            .chars()
            .take(60)
            .collect::<String>();
        self.s3()
            .await
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .expect("create bucket");
        name
    }
}
