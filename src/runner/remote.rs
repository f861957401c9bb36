//! Jobs on S3: how the CLI hands a job to a runner on another machine (an EC2 instance, or any
//! machine of a runner pool), and how that runner reports back.
//!
//! Layout under the remote artifact store `s3://BUCKET/PREFIX`:
//!
//! ```text
//! jobs/LINEAGE/RUN/job.json       the job (paths relative to the runner's job directory)
//! jobs/LINEAGE/RUN/code.tar       the project snapshot (what /workflow gets)
//! jobs/LINEAGE/RUN/status.json    the runner's reports
//! jobs/LINEAGE/RUN/logs/OFFSET    log chunks, each named by the offset of its first byte
//! jobs/LINEAGE/RUN/control.json   stop / abort, written by the CLI
//! jobs/LINEAGE/RUN/manifest.json  the saved artifacts (their blobs are pushed to the store first)
//! pool/queue/LINEAGE.RUN          a job waiting for a pool runner
//! pool/claims/LINEAGE.RUN         the runner that took it: a conditional write, so exactly one
//! nodes/INSTANCE/queue/LINEAGE.RUN  a job for the agent of one fleet node (same as the pool's)
//! nodes/INSTANCE/claims/LINEAGE.RUN
//! nodes/INSTANCE/lease            the run that holds the node (`LINEAGE/RUN`), a conditional write
//! nodes/INSTANCE/released         when the node's last run let it go (its idle time counts from)
//! nodes/INSTANCE/heartbeat        when the node's agent last said it was alive
//! jobs/LINEAGE/RUN/heartbeat      when the runner last said it was alive (every 10 s)
//! jobs/LINEAGE/RUN/placement.json the fleet node the CLI queued the job to (for recovery)
//! intents/ID                      the job an apply's intent made (for recovery)
//! ```
//!
//! The runner executes the job exactly as on this machine, in a local job directory, while a
//! mirror copies its status, log and manifest to S3 and the control object back. The final status
//! is uploaded only after the artifacts are, so whoever sees the run end can list its artifacts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;

use super::job::{Control, JobSpec, JobStatus, JobStore};
use crate::artifacts::remote::RemoteUrl;
use crate::aws::Connection;
use crate::state::Manifest;

/// Errors of the S3 job store.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum JobError {
    #[error("the job store at {url}: {message}")]
    S3 {
        url: String,
        message: String,
        /// Worth retrying (throttling, 5xx, network).
        transient: bool,
        #[help]
        hint: Option<String>,
    },
    #[error("the job store URL: {0}")]
    Url(String),
    #[error("the job {0} is not valid: {1}")]
    Invalid(String, String),
    #[error("{0}")]
    Local(String),
}

impl JobError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::S3 {
                transient: true,
                ..
            }
        )
    }
}

/// How long a node's lease may name a job that is not queued to the node (the CLI is attaching
/// its volumes) before it counts as abandoned.
const LEASE_GRACE: Duration = Duration::from_mins(15);

/// How often a runner says it is alive while it runs a job.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// One job: the run of a project lineage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRef {
    pub lineage: String,
    pub run: String,
}

impl JobRef {
    fn queue_name(&self) -> String {
        format!("{}.{}", self.lineage, self.run)
    }

    fn from_queue_name(name: &str) -> Option<Self> {
        let (lineage, run) = name.split_once('.')?;
        (safe(lineage) && crate::model::is_valid_run_name(run)).then(|| Self {
            lineage: lineage.to_string(),
            run: run.to_string(),
        })
    }
}

/// A remote job store: the S3 bucket and prefix of the remote artifact store.
#[derive(Clone, Debug)]
pub struct RemoteJobs {
    client: Client,
    url: RemoteUrl,
    /// Where queued jobs wait: `pool`, or `nodes/INSTANCE` for the agent of one fleet node.
    queue: String,
}

/// The queue of one fleet node's agent.
pub fn node_queue(instance: &str) -> Result<String, JobError> {
    if instance.is_empty()
        || instance.len() > 64
        || !instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(JobError::Invalid(
            instance.to_string(),
            "an instance id has only letters, digits and dashes".into(),
        ));
    }
    Ok(format!("nodes/{instance}"))
}

fn parse_time(bytes: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = std::str::from_utf8(bytes).ok()?;
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Names in keys and local paths: only what a lineage (a UUID) or run name holds.
fn safe(name: &str) -> bool {
    crate::state::is_valid_lineage(name)
}

impl RemoteJobs {
    pub async fn open(url: &str, connection: &Connection) -> Result<Self, JobError> {
        let url = RemoteUrl::parse(url).map_err(|e| JobError::Url(e.to_string()))?;
        Ok(Self {
            client: crate::aws::s3(connection).await,
            url,
            queue: "pool".into(),
        })
    }

    pub fn with_client(client: Client, url: &str) -> Result<Self, JobError> {
        Ok(Self {
            client,
            url: RemoteUrl::parse(url).map_err(|e| JobError::Url(e.to_string()))?,
            queue: "pool".into(),
        })
    }

    /// The same store, queueing to (or serving) the agent of one fleet node.
    pub fn on_node(&self, instance: &str) -> Result<Self, JobError> {
        Ok(Self {
            queue: node_queue(instance)?,
            ..self.clone()
        })
    }

    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    fn key(&self, rest: &str) -> String {
        if self.url.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.url.prefix)
        }
    }

    fn job_key(&self, job: &JobRef, name: &str) -> Result<String, JobError> {
        if !safe(&job.lineage) || !safe(&job.run) {
            return Err(JobError::Invalid(
                format!("{}/{}", job.lineage, job.run),
                "its lineage or run name has characters a job key cannot hold".into(),
            ));
        }
        Ok(self.key(&format!("jobs/{}/{}/{name}", job.lineage, job.run)))
    }

    /// `s3://BUCKET/PREFIX/jobs/LINEAGE/RUN`, what `dstack runner --job` takes.
    pub fn job_url(&self, job: &JobRef) -> String {
        format!(
            "s3://{}/{}",
            self.url.bucket,
            self.key(&format!("jobs/{}/{}", job.lineage, job.run))
        )
    }

    fn error<E>(&self, error: &aws_sdk_s3::error::SdkError<E>, action: &str) -> JobError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let code = error.code().unwrap_or_default().to_string();
        let status = error.raw_response().map(|r| r.status().as_u16());
        let transient = status.is_none_or(|s| s >= 500 || s == 429)
            || matches!(code.as_str(), "SlowDown" | "Throttling" | "RequestTimeout");
        let hint = match code.as_str() {
            "NoSuchBucket" => Some(format!(
                "create the bucket `{}`, or fix `artifacts:` in .dstack/config.yml",
                self.url.bucket
            )),
            "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" => {
                Some("check the AWS credentials and their S3 permissions".into())
            }
            _ => None,
        };
        JobError::S3 {
            url: self.url.to_string(),
            message: format!(
                "{action}: {}",
                if code.is_empty() {
                    aws_sdk_s3::error::DisplayErrorContext(error).to_string()
                } else {
                    format!("{code} {}", error.message().unwrap_or_default())
                }
            ),
            transient,
            hint,
        }
    }

    /// Put an object; with `only_new`, only if absent (returns false when it exists).
    async fn put(&self, key: &str, bytes: Vec<u8>, only_new: bool) -> Result<bool, JobError> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.url.bucket)
            .key(key)
            .body(ByteStream::from(bytes));
        if only_new {
            request = request.if_none_match("*");
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if only_new
                    && matches!(
                        e.code(),
                        Some("PreconditionFailed" | "ConditionalRequestConflict")
                    ) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.error(&e, &format!("writing {key}"))),
        }
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), JobError> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| JobError::Local(format!("cannot read {}: {e}", path.display())))?;
        self.client
            .put_object()
            .bucket(&self.url.bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| self.error(&e, &format!("writing {key}")))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, JobError> {
        match self
            .client
            .get_object()
            .bucket(&self.url.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => {
                let bytes = object.body.collect().await.map_err(|e| JobError::S3 {
                    url: self.url.to_string(),
                    message: format!("reading {key}: {e}"),
                    transient: true,
                    hint: None,
                })?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) if matches!(e.code(), Some("NoSuchKey" | "NotFound")) => Ok(None),
            Err(e) => Err(self.error(&e, &format!("reading {key}"))),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<String>,
    ) -> Result<Vec<String>, JobError> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let mut request = self
                .client
                .list_objects_v2()
                .bucket(&self.url.bucket)
                .prefix(prefix);
            if let Some(after) = &start_after {
                request = request.start_after(after);
            }
            if let Some(token) = &token {
                request = request.continuation_token(token);
            }
            let page = request
                .send()
                .await
                .map_err(|e| self.error(&e, &format!("listing {prefix}")))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => return Ok(keys),
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), JobError> {
        self.client
            .delete_object()
            .bucket(&self.url.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error(&e, &format!("deleting {key}")))?;
        Ok(())
    }

    // --- The CLI's side ---------------------------------------------------------------------

    /// Hand a job over: its code, then its spec, then (for a pool) its queue entry.
    pub async fn submit(
        &self,
        job: &JobRef,
        spec: &JobSpec,
        code_tar: &Path,
        queue: bool,
    ) -> Result<(), JobError> {
        self.put_file(&self.job_key(job, "code.tar")?, code_tar)
            .await?;
        let spec = serde_json::to_vec_pretty(spec).unwrap_or_default();
        self.put(&self.job_key(job, "job.json")?, spec, false)
            .await?;
        if queue {
            self.enqueue(job).await?;
        }
        Ok(())
    }

    /// Queue a submitted job for this store's runners (the pool, or one fleet node's agent).
    pub async fn enqueue(&self, job: &JobRef) -> Result<(), JobError> {
        let entry = self.key(&format!("{}/queue/{}", self.queue, job.queue_name()));
        self.put(&entry, Vec::new(), false).await.map(drop)
    }

    /// Keep a small document with the job (`placement.json`: where the CLI put it).
    pub async fn put_extra(
        &self,
        job: &JobRef,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(), JobError> {
        self.put(&self.job_key(job, name)?, bytes, false)
            .await
            .map(drop)
    }

    /// A document kept with [`Self::put_extra`].
    pub async fn get_extra(&self, job: &JobRef, name: &str) -> Result<Option<Vec<u8>>, JobError> {
        self.get(&self.job_key(job, name)?).await
    }

    /// The runner's last report; `None` before it has accepted the job.
    pub async fn status(&self, job: &JobRef) -> Result<Option<JobStatus>, JobError> {
        let Some(bytes) = self.get(&self.job_key(job, "status.json")?).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| JobError::Invalid(job.run.clone(), format!("status.json: {e}")))
    }

    /// Whether the job was ever submitted.
    pub async fn exists(&self, job: &JobRef) -> Result<bool, JobError> {
        Ok(self.get(&self.job_key(job, "job.json")?).await?.is_some())
    }

    /// The manifest of the run's saved artifacts.
    pub async fn manifest(&self, job: &JobRef) -> Result<Option<Manifest>, JobError> {
        let Some(bytes) = self.get(&self.job_key(job, "manifest.json")?).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| JobError::Invalid(job.run.clone(), format!("manifest.json: {e}")))
    }

    /// The log from byte `offset` on, and the offset after it.
    pub async fn logs(&self, job: &JobRef, offset: u64) -> Result<(Vec<u8>, u64), JobError> {
        let prefix = self.job_key(job, "logs/")?;
        let start_after = offset
            .checked_sub(1)
            .map(|before| format!("{prefix}{before:016}"));
        let mut out = Vec::new();
        let mut next = offset;
        for key in self.list(&prefix, start_after).await? {
            let Some(start) = key
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if start != next {
                break; // a chunk not uploaded yet: read the rest next time
            }
            let Some(bytes) = self.get(&key).await? else {
                break;
            };
            next = start + bytes.len() as u64;
            out.extend(bytes);
        }
        Ok((out, next))
    }

    /// Ask the runner to stop (gracefully, or abort).
    pub async fn request(&self, job: &JobRef, control: Control) -> Result<(), JobError> {
        self.put(
            &self.job_key(job, "control.json")?,
            serde_json::to_vec(&control).unwrap_or_default(),
            false,
        )
        .await
        .map(drop)
    }

    /// Record the end of a job whose runner has not reported yet (stopped before it started).
    /// Returns false, writing nothing, when the runner has reported.
    pub async fn end_unstarted(&self, job: &JobRef, control: Control) -> Result<bool, JobError> {
        let status = JobStatus::ended_now(
            control.ended_status(),
            "stopped before its runner started",
            0,
        );
        self.put(
            &self.job_key(job, "status.json")?,
            serde_json::to_vec_pretty(&status).unwrap_or_default(),
            true,
        )
        .await
    }

    /// Whether an object exists.
    pub async fn object_exists(&self, key: &str) -> Result<bool, JobError> {
        match self
            .client
            .head_object()
            .bucket(&self.url.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(e.code(), Some("NotFound" | "NoSuchKey"))
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.error(&e, &format!("reading {key}"))),
        }
    }

    /// The region the store's client talks to.
    pub fn region(&self) -> Option<String> {
        self.client.config().region().map(ToString::to_string)
    }

    /// The key of the runner binary for a version and architecture (`bin/VERSION/ARCH/dstack`).
    pub fn binary_key(&self, version: &str, arch: &str) -> String {
        self.key(&format!("bin/{version}/{arch}/dstack"))
    }

    /// Upload the runner binary unless the store has it already (same SHA-256).
    pub async fn upload_binary(&self, key: &str, path: &Path) -> Result<(), JobError> {
        let digest = sha256_file(path)
            .map_err(|e| JobError::Local(format!("cannot read {}: {e}", path.display())))?;
        let existing = self
            .client
            .head_object()
            .bucket(&self.url.bucket)
            .key(key)
            .send()
            .await;
        match existing {
            Ok(head) if head.metadata().and_then(|m| m.get("sha256")) == Some(&digest) => {
                return Ok(());
            }
            Ok(_) => {}
            Err(e)
                if matches!(e.code(), Some("NotFound" | "NoSuchKey"))
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {}
            Err(e) => return Err(self.error(&e, &format!("reading {key}"))),
        }
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| JobError::Local(format!("cannot read {}: {e}", path.display())))?;
        self.client
            .put_object()
            .bucket(&self.url.bucket)
            .key(key)
            .metadata("sha256", digest)
            .body(body)
            .send()
            .await
            .map_err(|e| self.error(&e, &format!("writing {key}")))?;
        Ok(())
    }

    /// A URL that lets anyone GET the object for `expires` (what user-data downloads with).
    pub async fn presigned_get(&self, key: &str, expires: Duration) -> Result<String, JobError> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires)
            .map_err(|e| JobError::Local(format!("cannot presign {key}: {e}")))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.url.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| self.error(&e, &format!("presigning {key}")))?;
        Ok(request.uri().to_string())
    }

    /// Stop a job no runner has taken yet: claim it for nobody (the same conditional write the
    /// runners make, so it cannot race one) and record its end. Returns false when a runner has
    /// it (then [`Self::request`] tells that runner).
    pub async fn cancel_if_unclaimed(
        &self,
        job: &JobRef,
        control: Control,
    ) -> Result<bool, JobError> {
        let claim = self.key(&format!("{}/claims/{}", self.queue, job.queue_name()));
        if !self.put(&claim, b"cancelled".to_vec(), true).await? {
            return Ok(false);
        }
        let status =
            JobStatus::ended_now(control.ended_status(), "stopped before a runner took it", 0);
        self.put(
            &self.job_key(job, "status.json")?,
            serde_json::to_vec_pretty(&status).unwrap_or_default(),
            false,
        )
        .await?;
        self.delete(&self.key(&format!("{}/queue/{}", self.queue, job.queue_name())))
            .await?;
        Ok(true)
    }

    /// Remember which job an intent made, so recovery finds it (`intents/ID`).
    pub async fn record_intent(&self, intent: &str, job: &JobRef) -> Result<(), JobError> {
        if !safe(intent) {
            return Ok(());
        }
        let body = format!("{}/{}", job.lineage, job.run).into_bytes();
        self.put(&self.key(&format!("intents/{intent}")), body, false)
            .await
            .map(drop)
    }

    /// The job an intent made, if it made one.
    pub async fn intent(&self, intent: &str) -> Result<Option<JobRef>, JobError> {
        if !safe(intent) {
            return Ok(None);
        }
        let Some(bytes) = self.get(&self.key(&format!("intents/{intent}"))).await? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        Ok(text.split_once('/').and_then(|(lineage, run)| {
            (safe(lineage) && crate::model::is_valid_run_name(run)).then(|| JobRef {
                lineage: lineage.to_string(),
                run: run.to_string(),
            })
        }))
    }

    /// When the job's runner last said it was alive.
    pub async fn heartbeat(
        &self,
        job: &JobRef,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, JobError> {
        Ok(self
            .get(&self.job_key(job, "heartbeat")?)
            .await?
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.trim()).ok())
            .map(|t| t.with_timezone(&chrono::Utc)))
    }

    /// Remove everything of a job (not its artifacts, which the store's refs govern).
    pub async fn remove(&self, job: &JobRef) -> Result<(), JobError> {
        let prefix = self.job_key(job, "")?;
        for key in self.list(&prefix, None).await? {
            self.delete(&key).await?;
        }
        for side in ["queue", "claims"] {
            self.delete(&self.key(&format!("{}/{side}/{}", self.queue, job.queue_name())))
                .await?;
        }
        Ok(())
    }

    // --- Fleet nodes -------------------------------------------------------------------------

    fn node_key(&self, instance: &str, name: &str) -> Result<String, JobError> {
        Ok(self.key(&format!("{}/{name}", node_queue(instance)?)))
    }

    /// The run that holds a node, if one does.
    pub async fn node_lease(&self, instance: &str) -> Result<Option<JobRef>, JobError> {
        let Some(bytes) = self.get(&self.node_key(instance, "lease")?).await? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        let holder = text.lines().next().unwrap_or_default().trim();
        Ok(holder.split_once('/').and_then(|(lineage, run)| {
            (safe(lineage) && crate::model::is_valid_run_name(run)).then(|| JobRef {
                lineage: lineage.to_string(),
                run: run.to_string(),
            })
        }))
    }

    /// When a node's lease was taken (its second line).
    async fn lease_taken_at(
        &self,
        instance: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, JobError> {
        Ok(self
            .get(&self.node_key(instance, "lease")?)
            .await?
            .and_then(|b| parse_time(String::from_utf8_lossy(&b).lines().nth(1)?.as_bytes())))
    }

    /// Whether a job is queued to, or was claimed on, a node.
    async fn queued_on(&self, instance: &str, job: &JobRef) -> Result<bool, JobError> {
        let root = node_queue(instance)?;
        for side in ["queue", "claims"] {
            let key = self.key(&format!("{root}/{side}/{}", job.queue_name()));
            if self.object_exists(&key).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The run that holds a node, unless its lease is stale: the run has ended or is gone, or
    /// the CLI that took the node died before queueing the job ([`LEASE_GRACE`]).
    pub async fn live_lease(&self, instance: &str) -> Result<Option<JobRef>, JobError> {
        let Some(holder) = self.node_lease(instance).await? else {
            return Ok(None);
        };
        let ended = !self.exists(&holder).await?
            || self
                .status(&holder)
                .await?
                .is_some_and(|s| s.status.is_finished());
        if ended {
            return Ok(None);
        }
        let old = self
            .lease_taken_at(instance)
            .await?
            .is_none_or(|at| (chrono::Utc::now() - at).to_std().unwrap_or_default() > LEASE_GRACE);
        if old && !self.queued_on(instance, &holder).await? {
            return Ok(None);
        }
        Ok(Some(holder))
    }

    /// Take a node for a job: a conditional write, so of two runs only one gets it. A lease
    /// held by a job that has ended or no longer exists is stale and is taken over.
    pub async fn lease_node(&self, instance: &str, job: &JobRef) -> Result<bool, JobError> {
        let key = self.node_key(instance, "lease")?;
        let body = format!(
            "{}/{}\n{}\n",
            job.lineage,
            job.run,
            chrono::Utc::now().to_rfc3339()
        )
        .into_bytes();
        if self.put(&key, body.clone(), true).await? {
            return Ok(true);
        }
        match self.live_lease(instance).await? {
            Some(holder) if holder == *job => return Ok(true),
            Some(_) => return Ok(false),
            None => {}
        }
        self.delete(&key).await?;
        self.put(&key, body, true).await
    }

    /// Let a node go after `job`: drop its lease (if `job` holds it) and note when it became
    /// idle.
    pub async fn free_node(&self, instance: &str, job: &JobRef) -> Result<(), JobError> {
        if self.node_lease(instance).await?.as_ref() != Some(job) {
            return Ok(());
        }
        let now = chrono::Utc::now().to_rfc3339().into_bytes();
        self.put(&self.node_key(instance, "released")?, now, false)
            .await?;
        self.delete(&self.node_key(instance, "lease")?).await
    }

    /// When a node's last run let it go.
    pub async fn node_released_at(
        &self,
        instance: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, JobError> {
        Ok(self
            .get(&self.node_key(instance, "released")?)
            .await?
            .and_then(|b| parse_time(&b)))
    }

    /// When a node's agent last said it was alive.
    pub async fn node_heartbeat(
        &self,
        instance: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, JobError> {
        Ok(self
            .get(&self.node_key(instance, "heartbeat")?)
            .await?
            .and_then(|b| parse_time(&b)))
    }

    /// Forget everything of a node (it was terminated).
    pub async fn forget_node(&self, instance: &str) -> Result<(), JobError> {
        let prefix = self.key(&format!("{}/", node_queue(instance)?));
        for key in self.list(&prefix, None).await? {
            self.delete(&key).await?;
        }
        Ok(())
    }

    // --- The runner's side ------------------------------------------------------------------

    /// Say that this queue's agent is alive (the agent of a fleet node; pools have none).
    async fn beat(&self) -> Result<(), JobError> {
        if self.queue == "pool" {
            return Ok(());
        }
        let now = chrono::Utc::now().to_rfc3339().into_bytes();
        self.put(&self.key(&format!("{}/heartbeat", self.queue)), now, false)
            .await
            .map(drop)
    }

    /// Take the next queued job nobody has claimed; `None` when there is none.
    pub async fn claim_next(&self, runner: &str) -> Result<Option<JobRef>, JobError> {
        let queue = self.key(&format!("{}/queue/", self.queue));
        for key in self.list(&queue, None).await? {
            let Some(job) = key.strip_prefix(&queue).and_then(JobRef::from_queue_name) else {
                continue;
            };
            let claim = self.key(&format!("{}/claims/{}", self.queue, job.queue_name()));
            if self.put(&claim, runner.as_bytes().to_vec(), true).await? {
                self.delete(&key).await?;
                return Ok(Some(job));
            }
        }
        Ok(None)
    }

    /// Download a job into `dir` and return its local job store: the spec's paths now point
    /// into `dir`, the code is unpacked, and the artifacts go to `artifact_store`.
    pub async fn fetch(
        &self,
        job: &JobRef,
        dir: &Path,
        artifact_store: &Path,
    ) -> Result<JobStore, JobError> {
        let store = JobStore {
            dir: dir.to_path_buf(),
        };
        let local = |e: std::io::Error| JobError::Local(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(store.code_dir()).map_err(local)?;
        let spec = self
            .get(&self.job_key(job, "job.json")?)
            .await?
            .ok_or_else(|| JobError::Invalid(job.run.clone(), "job.json is missing".into()))?;
        let mut spec: JobSpec = serde_json::from_slice(&spec)
            .map_err(|e| JobError::Invalid(job.run.clone(), format!("job.json: {e}")))?;
        if spec.run_name != job.run || spec.lineage != job.lineage {
            return Err(JobError::Invalid(
                job.run.clone(),
                "job.json names another run".into(),
            ));
        }
        if let Some(code) = self.get(&self.job_key(job, "code.tar")?).await? {
            unpack(&code, &store.code_dir()).map_err(local)?;
        }
        spec.code_dir = store.code_dir();
        spec.artifact_store = Some(artifact_store.to_path_buf());
        store.write_spec(&spec).map_err(local)?;
        Ok(store)
    }

    /// Copy the local job store's status, log and manifest to S3 and the control object back,
    /// every `interval`, until the job has ended and everything is uploaded. The final status goes
    /// last. `before_end` runs once the job has ended, before its final status is uploaded (the
    /// runner pushes the artifacts there).
    pub async fn mirror<F, Fut>(
        &self,
        job: &JobRef,
        store: &JobStore,
        interval: Duration,
        before_end: F,
    ) -> Result<(), JobError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut uploaded_log = 0u64;
        let mut last_status: Option<Vec<u8>> = None;
        let mut before_end = Some(before_end);
        let mut last_beat: Option<tokio::time::Instant> = None;
        loop {
            if last_beat.is_none_or(|b| b.elapsed() >= HEARTBEAT) {
                let now = chrono::Utc::now().to_rfc3339().into_bytes();
                self.put(&self.job_key(job, "heartbeat")?, now, false)
                    .await?;
                last_beat = Some(tokio::time::Instant::now());
            }
            // Requests from the CLI.
            if let Some(bytes) = self.get(&self.job_key(job, "control.json")?).await?
                && let Ok(control) = serde_json::from_slice::<Control>(&bytes)
                && store.read_control() != Some(control)
            {
                store
                    .request(control)
                    .map_err(|e| JobError::Local(e.to_string()))?;
            }
            // New log bytes, as one chunk named by its offset.
            if let Ok(bytes) = std::fs::read(store.logs_path())
                && bytes.len() as u64 > uploaded_log
            {
                let chunk = bytes[uploaded_log as usize..].to_vec();
                let key = self.job_key(job, &format!("logs/{uploaded_log:016}"))?;
                self.put(&key, chunk.clone(), false).await?;
                uploaded_log += chunk.len() as u64;
            }
            let status = std::fs::read(store.status_path()).ok();
            let finished = status
                .as_deref()
                .and_then(|b| serde_json::from_slice::<JobStatus>(b).ok())
                .is_some_and(|s| s.status.is_finished());
            if finished {
                if let Some(hook) = before_end.take() {
                    hook().await;
                    continue; // upload what the hook wrote to the log, then the end
                }
                if let Ok(manifest) = std::fs::read(store.manifest_path()) {
                    self.put(&self.job_key(job, "manifest.json")?, manifest, false)
                        .await?;
                }
            }
            if status.is_some() && status != last_status {
                let bytes = status.clone().unwrap_or_default();
                self.put(&self.job_key(job, "status.json")?, bytes, false)
                    .await?;
                last_status = status;
            }
            if finished {
                return Ok(());
            }
            tokio::time::sleep(interval).await;
        }
    }
}

/// Split `s3://BUCKET/PREFIX/jobs/LINEAGE/RUN` into the store's URL and the job.
pub fn parse_job_url(url: &str) -> Result<(String, JobRef), JobError> {
    let invalid = || {
        JobError::Url(format!(
            "`{url}` is not a job: expected s3://BUCKET/PREFIX/jobs/LINEAGE/RUN"
        ))
    };
    let trimmed = url.trim_end_matches('/');
    let (store, rest) = trimmed.rsplit_once("/jobs/").ok_or_else(invalid)?;
    let (lineage, run) = rest.split_once('/').ok_or_else(invalid)?;
    if !safe(lineage) || !crate::model::is_valid_run_name(run) {
        return Err(invalid());
    }
    RemoteUrl::parse(store).map_err(|e| JobError::Url(e.to_string()))?;
    Ok((
        store.to_string(),
        JobRef {
            lineage: lineage.to_string(),
            run: run.to_string(),
        },
    ))
}

/// Execute one job of the store on this machine: fetch it, run it with the local runner while
/// mirroring its reports to S3, push its artifacts, report the end.
pub async fn run_job(
    jobs: &RemoteJobs,
    connection: &Connection,
    job: &JobRef,
    work: &Path,
) -> Result<(), JobError> {
    let dir = work.join(&job.lineage).join(&job.run);
    let _ = std::fs::remove_dir_all(&dir);
    let artifacts = work.join("artifacts");
    let store = jobs.fetch(job, &dir, &artifacts).await?;
    let spec = store.read_spec().map_err(JobError::Local)?;
    // A job stopped or aborted before any runner took it ends at once.
    let early = jobs
        .get(&jobs.job_key(job, "control.json")?)
        .await?
        .and_then(|b| serde_json::from_slice::<Control>(&b).ok());
    let runner = async {
        if let Some(control) = early {
            let _ = store.write_status(&JobStatus::ended_now(
                control.ended_status(),
                "stopped before it started",
                std::process::id(),
            ));
            return;
        }
        if let Err(error) = mount_devices(&spec, &store).await {
            fail(&store, &error);
            return;
        }
        if let Some(image) = &spec.image {
            let ready = async {
                let docker = crate::backend::local::docker::connect().await?;
                crate::backend::local::docker::ensure_image(&docker, image, false).await
            }
            .await;
            if let Err(error) = ready {
                fail(&store, &error.to_string());
                return;
            }
        }
        super::run(store.clone()).await;
    };
    let push = || async {
        // A fleet node outlives the job: its volumes are let go before the end is reported, so
        // whoever sees the end can detach them.
        if let Err(error) = unmount_devices(&spec) {
            let _ = store.append_log(format!("[dstack] {error}\n").as_bytes());
        }
        let Some(manifest) = store.read_manifest() else {
            return;
        };
        let result = async {
            let remote =
                crate::artifacts::remote::Remote::open(&jobs.url.to_string(), connection).await?;
            remote
                .push(
                    &crate::artifacts::Store::new(artifacts.clone()),
                    &job.lineage,
                    crate::artifacts::remote::RefKind::Run,
                    &job.run,
                    &manifest,
                    &crate::artifacts::remote::Progress::hidden(),
                )
                .await
        }
        .await;
        if let Err(error) = result {
            let _ = store
                .append_log(format!("[dstack] pushing artifacts failed: {error}\n").as_bytes());
            let _ = std::fs::remove_file(store.manifest_path());
        }
    };
    let mirror = jobs.mirror(job, &store, Duration::from_millis(500), push);
    let ((), mirrored) = tokio::join!(runner, mirror);
    mirrored
}

/// The SHA-256 of a file, in hex.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// End a job that could not start: log why and report it failed.
fn fail(store: &JobStore, error: &str) {
    let _ = store.append_log(format!("[dstack] {error}\n").as_bytes());
    let _ = store.write_status(&JobStatus::ended_now(
        crate::state::RunStatus::Failed,
        error,
        std::process::id(),
    ));
}

/// How long the runner waits for an attached volume to show up.
const DEVICE_TIMEOUT: Duration = Duration::from_mins(10);

/// Mount the job's block devices (EBS volumes attached to this instance), formatting the blank
/// ones dstack created (see [`super::devices`]).
async fn mount_devices(spec: &JobSpec, store: &JobStore) -> Result<(), String> {
    for mount in &spec.mounts {
        let super::job::MountSource::Device {
            device,
            volume_id,
            format,
            mount_dir,
        } = &mount.source
        else {
            continue;
        };
        let _ =
            store.append_log(format!("[dstack] waiting for the volume {volume_id}\n").as_bytes());
        let path = super::devices::wait_for(device, volume_id, DEVICE_TIMEOUT).await?;
        let prepared = super::devices::prepare(&path, volume_id, *format, mount_dir)?;
        let _ = store.append_log(
            format!(
                "[dstack] mounted {volume_id} ({}{}) at {}\n",
                path.display(),
                if prepared.formatted {
                    ", formatted ext4"
                } else {
                    ""
                },
                mount.target
            )
            .as_bytes(),
        );
    }
    Ok(())
}

/// Unmount the job's block devices after it ran.
fn unmount_devices(spec: &JobSpec) -> Result<(), String> {
    for mount in &spec.mounts {
        if let super::job::MountSource::Device { mount_dir, .. } = &mount.source {
            super::devices::unmount(mount_dir)?;
        }
    }
    Ok(())
}

/// Serve a runner pool: claim queued jobs one at a time and run them. With `idle_exit`, return
/// after that long without a job.
pub async fn serve_pool(
    jobs: &RemoteJobs,
    connection: &Connection,
    work: &Path,
    idle_exit: Option<Duration>,
) -> Result<usize, JobError> {
    let runner = format!(
        "{}:{}",
        hostname::get().map_or_else(|_| "?".into(), |h| h.to_string_lossy().into_owned()),
        std::process::id()
    );
    let mut idle_since = tokio::time::Instant::now();
    let mut served = 0;
    let mut last_beat: Option<tokio::time::Instant> = None;
    loop {
        if last_beat.is_none_or(|b| b.elapsed() >= HEARTBEAT) {
            match jobs.beat().await {
                Ok(()) => last_beat = Some(tokio::time::Instant::now()),
                Err(error) => tracing::warn!("{error}"),
            }
        }
        match jobs.claim_next(&runner).await {
            Ok(Some(job)) => {
                tracing::info!("running {} of the pool", job.run);
                if let Err(error) = Box::pin(run_job(jobs, connection, &job, work)).await {
                    tracing::warn!("{}: {error}", job.run);
                }
                served += 1;
                idle_since = tokio::time::Instant::now();
                last_beat = None;
            }
            Ok(None) => {
                if idle_exit.is_some_and(|d| idle_since.elapsed() >= d) {
                    return Ok(served);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) if error.is_transient() => {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Pack the project snapshot of a job into a tar file.
pub fn pack(code_dir: &Path, tar_path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(tar_path)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.follow_symlinks(false);
    builder.append_dir_all(".", code_dir)?;
    builder
        .into_inner()?
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)?;
    Ok(())
}

/// Unpack a job's snapshot; entries that would land outside `dir` are refused.
fn unpack(bytes: &[u8], dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path: PathBuf = entry.path()?.into_owned();
        if path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(std::io::Error::other(format!(
                "the snapshot has an entry outside the job: {}",
                path.display()
            )));
        }
        entry.unpack_in(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_round_trip_and_reject_odd_names() {
        let job = JobRef {
            lineage: "0b7e-11".into(),
            run: "train-3".into(),
        };
        assert_eq!(JobRef::from_queue_name(&job.queue_name()), Some(job));
        assert_eq!(JobRef::from_queue_name("x.../etc"), None);
        assert_eq!(JobRef::from_queue_name("nodot"), None);
        assert_eq!(JobRef::from_queue_name("/etc.train-1"), None);
    }

    #[test]
    fn snapshots_round_trip_and_traversal_is_refused() {
        let dir = tempfile::tempdir().expect("temp");
        let code = dir.path().join("code");
        std::fs::create_dir_all(code.join("sub")).expect("mkdir");
        std::fs::write(code.join("sub/train.py"), "print(1)").expect("write");
        let tar = dir.path().join("code.tar");
        pack(&code, &tar).expect("pack");
        let out = dir.path().join("out");
        unpack(&std::fs::read(&tar).expect("read"), &out).expect("unpack");
        assert_eq!(
            std::fs::read_to_string(out.join("sub/train.py")).expect("read"),
            "print(1)"
        );
        let mut evil = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        // `set_path` refuses `..`; write the raw name as a hostile archive would.
        let name = b"../escape.txt";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        evil.append(&header, &b"x"[..]).expect("append");
        let bytes = evil.into_inner().expect("tar");
        assert!(unpack(&bytes, &dir.path().join("evil")).is_err());
        assert!(!dir.path().join("escape.txt").exists());
    }
}
