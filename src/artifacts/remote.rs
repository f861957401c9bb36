//! The remote artifact store: push a run's or tag's artifacts from the local store to S3, and
//! pull them back.
//!
//! A remote store at `s3://BUCKET/PREFIX` has the layout of the local one, except that blobs are
//! not fanned out into two-letter directories (S3 has no directories to keep small):
//!
//! ```text
//! PREFIX/blobs/sha256/abcdef…          file contents, named by their SHA-256
//! PREFIX/refs/LINEAGE/RUN.json         the manifest of a run
//! PREFIX/refs/LINEAGE/tags/TAG.json    the manifest a tag keeps alive
//! ```
//!
//! Invariants:
//! - A remote ref never points to a missing blob: push writes the ref last, after every blob it
//!   names is complete. A blob key appears only when its whole content is there (one `PutObject`,
//!   or `CompleteMultipartUpload`), so an interrupted push leaves no half blob behind.
//! - Nothing corrupt crosses: push re-hashes every local blob while reading it for upload and
//!   refuses (aborting its multipart upload) one whose content does not match its digest; pull
//!   streams into `STORE/tmp/` and moves a blob into place only after its SHA-256 matched.
//! - Transfers resume: push sends only the blobs the remote lacks, and continues the multipart
//!   upload of a large blob that an interrupted push recorded in `STORE/tmp/push-ID.json` (a
//!   recorded part is kept only when the MD5 of the part read now matches its `ETag`, so parts
//!   read from a since-repaired blob are sent again); pull fetches only the blobs the local store
//!   lacks, and continues a large blob's partial download (`STORE/tmp/pull-HEX.partial`, its
//!   finished ranges listed in `pull-HEX.chunks`).
//! - Memory stays bounded: at most `concurrency` requests are in flight, each holding at most one
//!   part (or one small blob) in memory; large files are streamed from and to disk.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{Store, safe};
use crate::aws::Connection;
use crate::state::Manifest;

const MIB: u64 = 1024 * 1024;
/// S3 allows at most this many parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Up to this many blobs are looked up one `HeadObject` each; more are found by listing the
/// remote `blobs/` (1,000 keys per request, 16 key ranges listed at once), which is far fewer
/// requests for thousands of blobs.
const HEAD_LIMIT: usize = 100;
/// Unfinished multipart uploads of a blob older than this are aborted when a newer one is
/// continued: they belong to pushes that were interrupted and will never come back.
const STALE_UPLOAD_SECONDS: i64 = 24 * 60 * 60;

/// How transfers are cut up. The defaults match what S3 clients commonly use (`aws s3 cp`
/// uploads in 8 MiB parts, 10 at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Files larger than this are uploaded in parts and downloaded in ranges.
    pub multipart_threshold: u64,
    /// The size of a part (at least 1 MiB, grown for very large files so that no file needs
    /// more than 10,000 parts). Real S3 refuses parts under 5 MiB except the last.
    pub part_size: u64,
    /// Requests in flight at once (over all blobs of a transfer).
    pub concurrency: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            multipart_threshold: 8 * MIB,
            part_size: 8 * MIB,
            concurrency: 16,
        }
    }
}

/// The part size for a file of `size` bytes: `base`, or more when `base` would need over
/// 10,000 parts (rounded up to whole MiB, as S3 clients do); never under 1 MiB.
pub fn part_size(size: u64, base: u64) -> u64 {
    base.max(MIB)
        .max(size.div_ceil(MAX_PARTS).next_multiple_of(MIB))
}

/// Which kind of ref a transfer reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    /// `refs/LINEAGE/RUN.json`, named after the run.
    Run,
    /// `refs/LINEAGE/tags/TAG.json`.
    Tag,
}

impl RefKind {
    fn describe(self, name: &str) -> String {
        match self {
            Self::Run => format!("run `{name}`"),
            Self::Tag => format!("tag `{name}`"),
        }
    }
}

/// What a push or pull did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferReport {
    /// Distinct blobs the manifest names.
    pub blobs_total: usize,
    /// Blobs sent (push) or received (pull), including ones whose transfer was resumed.
    pub blobs_transferred: usize,
    /// Blob bytes sent or received in this call (parts or chunks kept from an interrupted
    /// transfer are not counted; the ref itself is not counted).
    pub bytes_transferred: u64,
    /// Blobs already on the other side.
    pub blobs_skipped: usize,
}

/// Byte progress of a transfer on stderr, or nothing.
#[derive(Clone, Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A progress bar on stderr, labelled `message`; hidden when stderr is not a terminal.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::hidden();
        }
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .map_or_else(
            |_| ProgressStyle::default_bar(),
            |s| s.progress_chars("=> "),
        );
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_message(message);
        Self { bar }
    }

    /// No output; the position is still counted.
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
        }
    }

    /// Bytes transferred so far.
    pub fn position(&self) -> u64 {
        self.bar.position()
    }

    /// Remove the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn start(&self, total: u64) {
        self.bar.set_length(total);
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    /// Take back `bytes` counted for a transfer that starts over.
    fn rewind(&self, bytes: u64) {
        self.bar
            .set_position(self.bar.position().saturating_sub(bytes));
    }
}

/// Which copy of a blob is corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Local,
    Remote,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Remote => "remote",
        })
    }
}

/// Errors of the remote artifact store.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RemoteError {
    #[error("`{url}` is not a remote artifact store: {reason}")]
    #[diagnostic(help("write it as `s3://BUCKET/PREFIX`, e.g. `s3://my-team-artifacts/dstack`"))]
    Url { url: String, reason: String },

    #[error("the bucket `{bucket}` does not exist")]
    #[diagnostic(help(
        "create it (`aws s3 mb s3://{bucket}`) or fix the remote artifact store URL"
    ))]
    BucketMissing { bucket: String },

    #[error("S3 refused access to `{url}` while {action} ({code})")]
    #[diagnostic(help(
        "check AWS_PROFILE, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws/credentials, and that they may read and write the bucket"
    ))]
    AccessDenied {
        url: String,
        action: String,
        code: String,
    },

    #[error("no AWS credentials found while {action}")]
    #[diagnostic(help(
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a `profile` in the artifact settings"
    ))]
    NoCredentials { action: String },

    #[error("{what} is not in the remote artifact store `{url}`")]
    #[diagnostic(help(
        "check the name and the URL; `dstack push` uploads a run's or tag's artifacts"
    ))]
    NotFound { what: String, url: String },

    #[error("{file}: the {side} blob does not match its digest {expected} ({found})")]
    DigestMismatch {
        file: String,
        side: Side,
        expected: String,
        found: String,
        #[help]
        hint: String,
    },

    #[error("the blob of {file} is missing from the local artifact store ({})", path.display())]
    #[diagnostic(help(
        "the local store lost it; pull the artifacts again from where they are complete, or save them again"
    ))]
    LocalBlobMissing { file: String, path: PathBuf },

    #[error("{whence} is not a valid manifest: {reason}")]
    InvalidManifest { whence: String, reason: String },

    #[error("cannot reach S3 while {action}: {detail}")]
    #[diagnostic(help(
        "check the network and `endpoint_url` / AWS_ENDPOINT_URL; re-running resumes the transfer"
    ))]
    Network { action: String, detail: String },

    #[error("unexpected answer from S3 while {action}: {detail}")]
    #[diagnostic(help(
        "re-running resumes the transfer; if it persists, the S3 endpoint misbehaves"
    ))]
    UnexpectedAnswer { action: String, detail: String },

    #[error("S3 error while {action}: {message}")]
    S3 { action: String, message: String },

    #[error("the local artifact store: {0}")]
    Local(String),
}

/// A parsed `s3://BUCKET/PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl RemoteUrl {
    /// Parse `s3://BUCKET/PREFIX` (or `s3://BUCKET` for the bucket's root; a trailing `/` is
    /// ignored).
    pub fn parse(url: &str) -> Result<Self, RemoteError> {
        let invalid = |reason: &str| RemoteError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = url.trim();
        let Some(rest) = trimmed.strip_prefix("s3://") else {
            return Err(match trimmed.split_once("://") {
                Some(("http" | "https", _)) => invalid(
                    "it is an HTTP URL; name the bucket as `s3://BUCKET/PREFIX` and the endpoint in `endpoint_url`",
                ),
                Some((scheme, _)) => invalid(&format!(
                    "unsupported scheme `{scheme}://` (only `s3://` is)"
                )),
                None => invalid("expected `s3://BUCKET/PREFIX`"),
            });
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("the bucket name is missing"));
        }
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !bucket_ok {
            return Err(invalid(&format!(
                "`{bucket}` is not a bucket name (3 to 63 letters, digits, `.`, `-`)"
            )));
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
        {
            return Err(invalid(
                "the prefix has a space, a control character, `?` or `#`",
            ));
        }
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(invalid("the prefix has an empty, `.` or `..` segment"));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The key of `rest` under the prefix.
    fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }
}

/// The hex of a `sha256:HEX` digest, when it is one (64 lowercase hex digits, as the store
/// writes them).
pub fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

/// One distinct blob of a manifest.
#[derive(Clone, Debug)]
struct Blob {
    digest: String,
    hex: String,
    size: u64,
    /// `ARTIFACT/PATH` of the first file with this content, to name it in errors.
    file: String,
}

/// The distinct blobs of a manifest, checked.
fn blobs_of(manifest: &Manifest, whence: &str) -> Result<Vec<Blob>, RemoteError> {
    let invalid = |reason: String| RemoteError::InvalidManifest {
        whence: whence.to_string(),
        reason,
    };
    let mut blobs: BTreeMap<&str, Blob> = BTreeMap::new();
    for file in &manifest.files {
        let name = format!("{}/{}", file.artifact, file.path);
        let hex = digest_hex(&file.digest)
            .ok_or_else(|| invalid(format!("{name} has the digest `{}`", file.digest)))?;
        match blobs.get(hex) {
            Some(blob) if blob.size != file.size => {
                return Err(invalid(format!(
                    "{} and {name} have the same digest but different sizes",
                    blob.file
                )));
            }
            Some(_) => {}
            None => {
                blobs.insert(
                    hex,
                    Blob {
                        digest: file.digest.clone(),
                        hex: hex.to_string(),
                        size: file.size,
                        file: name,
                    },
                );
            }
        }
    }
    Ok(blobs.into_values().collect())
}

fn check_name(what: &str, name: &str) -> Result<(), RemoteError> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(RemoteError::Local(format!(
            "`{name}` is not a valid {what}"
        )));
    }
    Ok(())
}

/// Run blocking work (file IO, hashing) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RemoteError> + Send + 'static,
) -> Result<T, RemoteError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RemoteError::Local(format!("a background task failed: {e}")))?
}

async fn permit(semaphore: &Semaphore) -> Result<SemaphorePermit<'_>, RemoteError> {
    semaphore
        .acquire()
        .await
        .map_err(|_| RemoteError::Local("the transfer was cancelled".into()))
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn local_corrupt(store: &Store, blob: &Blob, found: String) -> RemoteError {
    RemoteError::DigestMismatch {
        file: blob.file.clone(),
        side: Side::Local,
        expected: blob.digest.clone(),
        found,
        hint: format!(
            "the local artifact store is corrupt; nothing was uploaded for this file. Delete {} and pull or save the artifacts again",
            store.blob_path(&blob.digest).display()
        ),
    }
}

/// A multipart upload in progress, recorded in `STORE/tmp/push-ID.json` as its parts go up, so
/// that an interrupted push continues it. (Listing the upload's parts on S3 would need no
/// record, but `ListParts` is the call S3-compatible stores get wrong most often, moto among
/// them; a record of our own needs nothing from the endpoint.)
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Journal {
    bucket: String,
    key: String,
    upload_id: String,
    /// Part number → what was uploaded as that part.
    parts: BTreeMap<i32, JournalPart>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct JournalPart {
    size: u64,
    /// The `ETag` S3 gave, without quotes: the part's MD5 (unless the bucket encrypts with KMS,
    /// when the part is simply sent again).
    etag: String,
    crc32: Option<String>,
}

impl Journal {
    fn path(store: &Store, bucket: &str, key: &str) -> Result<PathBuf, RemoteError> {
        let id = sha256_hex(format!("{bucket}/{key}").as_bytes());
        Ok(store
            .temp_dir()
            .map_err(RemoteError::Local)?
            .join(format!("push-{}.json", &id[..32])))
    }

    /// The record at `path`, if it is one for this object.
    fn read(path: &Path, bucket: &str, key: &str) -> Option<Self> {
        let journal: Self = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        (journal.bucket == bucket && journal.key == key).then_some(journal)
    }

    /// Replace the record (through a temp file, so a reader never sees half of it). Not
    /// synced: after a crash the parts are checked again anyway.
    fn write(&self, path: &Path) -> Result<(), RemoteError> {
        let temp = path.with_extension(format!("json.{}", uuid::Uuid::new_v4().simple()));
        let bytes = serde_json::to_vec(self)
            .map_err(|e| RemoteError::Local(format!("cannot record an upload: {e}")))?;
        std::fs::write(&temp, bytes)
            .and_then(|()| std::fs::rename(&temp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&temp);
                RemoteError::Local(format!(
                    "cannot record an upload in {}: {e}",
                    path.display()
                ))
            })
    }
}

/// How one attempt at a multipart upload ended.
enum Attempt {
    /// The blob is complete; this many bytes were sent.
    Done(u64),
    /// The recorded upload no longer exists on S3 (aborted, or expired by a lifecycle rule);
    /// the attempt had counted this many bytes as progress.
    Gone { counted: u64 },
}

/// A failure inside a multipart upload.
enum Failure {
    Error(RemoteError),
    Gone,
}

impl From<RemoteError> for Failure {
    fn from(error: RemoteError) -> Self {
        Self::Error(error)
    }
}

/// A remote artifact store on S3.
#[derive(Clone, Debug)]
pub struct Remote {
    client: Client,
    url: RemoteUrl,
    tuning: Tuning,
}

impl Remote {
    /// Connect to the store at `url` (`s3://BUCKET/PREFIX`); see [`crate::aws`] for where
    /// credentials, region and endpoint come from. Nothing is sent until a transfer starts.
    pub async fn open(url: &str, connection: &Connection) -> Result<Self, RemoteError> {
        let url = RemoteUrl::parse(url)?;
        Ok(Self {
            client: crate::aws::s3(connection).await,
            url,
            tuning: Tuning::default(),
        })
    }

    /// The store at `url`, reached with an existing client.
    pub fn with_client(client: Client, url: &str) -> Result<Self, RemoteError> {
        Ok(Self {
            client,
            url: RemoteUrl::parse(url)?,
            tuning: Tuning::default(),
        })
    }

    /// Change how transfers are cut up.
    #[must_use]
    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = Tuning {
            multipart_threshold: tuning.multipart_threshold,
            part_size: tuning.part_size,
            concurrency: tuning.concurrency.max(1),
        };
        self
    }

    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    /// The key of a blob (`PREFIX/blobs/sha256/HEX`), for a `sha256:HEX` digest or its hex.
    pub fn blob_key(&self, digest: &str) -> String {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.url.key(&format!("blobs/sha256/{hex}"))
    }

    /// The key of a ref: `PREFIX/refs/LINEAGE/RUN.json` or `PREFIX/refs/LINEAGE/tags/TAG.json`,
    /// with names made safe as the local store makes them.
    pub fn ref_key(&self, lineage: &str, kind: RefKind, name: &str) -> String {
        match kind {
            RefKind::Run => self
                .url
                .key(&format!("refs/{}/{}.json", safe(lineage), safe(name))),
            RefKind::Tag => {
                self.url
                    .key(&format!("refs/{}/tags/{}.json", safe(lineage), safe(name)))
            }
        }
    }

    fn object_url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.url.bucket)
    }

    /// Turn an S3 error into a clear one.
    fn error<E>(&self, error: &SdkError<E>, action: &str) -> RemoteError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let code = error.code().unwrap_or_default().to_string();
        let status = error.raw_response().map(|r| r.status().as_u16());
        let detail = aws_sdk_s3::error::DisplayErrorContext(error).to_string();
        tracing::debug!("S3 error while {action}: {detail}");
        let action = action.to_string();
        if code == "NoSuchBucket" {
            return RemoteError::BucketMissing {
                bucket: self.url.bucket.clone(),
            };
        }
        if matches!(
            code.as_str(),
            "AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "AllAccessDisabled"
        ) || status == Some(403)
        {
            return RemoteError::AccessDenied {
                url: self.url.to_string(),
                action,
                code: if code.is_empty() {
                    "403 Forbidden".into()
                } else {
                    code
                },
            };
        }
        if detail.contains("no credentials")
            || detail.contains("credentials provider")
            || detail.contains("failed to load credentials")
        {
            return RemoteError::NoCredentials { action };
        }
        match error {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                RemoteError::Network { action, detail }
            }
            SdkError::ResponseError(_) => RemoteError::UnexpectedAnswer { action, detail },
            _ => RemoteError::S3 {
                action,
                message: error.message().map_or(detail, str::to_string),
            },
        }
    }

    fn is_not_found<E: ProvideErrorMetadata>(error: &SdkError<E>) -> bool {
        error.code() != Some("NoSuchBucket")
            && (matches!(error.code(), Some("NoSuchKey" | "NotFound"))
                || error
                    .raw_response()
                    .is_some_and(|r| r.status().as_u16() == 404))
    }

    /// Upload the artifacts of a manifest and then its ref, skipping blobs the remote has.
    ///
    /// For [`RefKind::Run`], `name` must be the manifest's run. The ref is written last, so an
    /// interrupted push leaves no ref pointing to missing blobs, and re-running it uploads only
    /// what is still missing.
    pub async fn push(
        &self,
        store: &Store,
        lineage: &str,
        kind: RefKind,
        name: &str,
        manifest: &Manifest,
        progress: &Progress,
    ) -> Result<TransferReport, RemoteError> {
        check_name("lineage", lineage)?;
        check_name(if kind == RefKind::Run { "run" } else { "tag" }, name)?;
        let whence = format!("the manifest of {}", manifest.run);
        if kind == RefKind::Run && manifest.run != name {
            return Err(RemoteError::InvalidManifest {
                whence,
                reason: format!("it is pushed as run `{name}`"),
            });
        }
        let blobs = blobs_of(manifest, &whence)?;
        for blob in &blobs {
            let path = store.blob_path(&blob.digest);
            match std::fs::metadata(&path) {
                Ok(metadata) if metadata.is_file() => {
                    if metadata.len() != blob.size {
                        return Err(local_corrupt(
                            store,
                            blob,
                            format!("it has {} bytes, not {}", metadata.len(), blob.size),
                        ));
                    }
                }
                _ => {
                    return Err(RemoteError::LocalBlobMissing {
                        file: blob.file.clone(),
                        path,
                    });
                }
            }
        }
        let remote_sizes = self.remote_sizes(&blobs).await?;
        let missing: Vec<&Blob> = blobs
            .iter()
            .filter(|b| remote_sizes.get(&b.hex) != Some(&b.size))
            .collect();
        progress.start(missing.iter().map(|b| b.size).sum());
        let semaphore = Semaphore::new(self.tuning.concurrency);
        let sent: Vec<u64> = stream::iter(missing.iter().copied())
            .map(|blob| self.upload(store, blob, &semaphore, progress))
            .buffer_unordered(self.tuning.concurrency)
            .try_collect()
            .await?;
        let key = self.ref_key(lineage, kind, name);
        let body = serde_json::to_vec_pretty(manifest)
            .map_err(|e| RemoteError::Local(format!("cannot serialize {whence}: {e}")))?;
        self.client
            .put_object()
            .bucket(&self.url.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.error(&e, &format!("writing {}", self.object_url(&key))))?;
        Ok(TransferReport {
            blobs_total: blobs.len(),
            blobs_transferred: missing.len(),
            bytes_transferred: sent.iter().sum(),
            blobs_skipped: blobs.len() - missing.len(),
        })
    }

    /// The sizes of the blobs the remote has, of those named.
    async fn remote_sizes(&self, blobs: &[Blob]) -> Result<HashMap<String, u64>, RemoteError> {
        if blobs.len() <= HEAD_LIMIT {
            let found: Vec<Option<(String, u64)>> = stream::iter(blobs)
                .map(|blob| async move {
                    let key = self.blob_key(&blob.hex);
                    match self
                        .client
                        .head_object()
                        .bucket(&self.url.bucket)
                        .key(&key)
                        .send()
                        .await
                    {
                        // A size S3 does not give is unknown: upload again.
                        Ok(head) => Ok(head
                            .content_length()
                            .and_then(|l| u64::try_from(l).ok())
                            .map(|size| (blob.hex.clone(), size))),
                        Err(e) if Self::is_not_found(&e) => Ok(None),
                        Err(e) => {
                            Err(self.error(&e, &format!("looking up {}", self.object_url(&key))))
                        }
                    }
                })
                .buffer_unordered(self.tuning.concurrency)
                .try_collect()
                .await?;
            return Ok(found.into_iter().flatten().collect());
        }
        let wanted: BTreeSet<&str> = blobs.iter().map(|b| b.hex.as_str()).collect();
        let base = self.url.key("blobs/sha256/");
        let shards: Vec<Vec<(String, u64)>> = stream::iter("0123456789abcdef".chars())
            .map(|shard| {
                let prefix = format!("{base}{shard}");
                let base = &base;
                let wanted = &wanted;
                async move {
                    let mut found = Vec::new();
                    let mut pages = self
                        .client
                        .list_objects_v2()
                        .bucket(&self.url.bucket)
                        .prefix(&prefix)
                        .into_paginator()
                        .send();
                    while let Some(page) = pages.next().await {
                        let page = page.map_err(|e| {
                            self.error(&e, &format!("listing {}", self.object_url(&prefix)))
                        })?;
                        for object in page.contents() {
                            let Some(hex) =
                                object.key().and_then(|k| k.strip_prefix(base.as_str()))
                            else {
                                continue;
                            };
                            if let (true, Some(size)) = (
                                wanted.contains(hex),
                                object.size().and_then(|s| u64::try_from(s).ok()),
                            ) {
                                found.push((hex.to_string(), size));
                            }
                        }
                    }
                    Ok::<_, RemoteError>(found)
                }
            })
            .buffer_unordered(self.tuning.concurrency)
            .try_collect()
            .await?;
        Ok(shards.into_iter().flatten().collect())
    }

    /// Upload one blob; returns the bytes sent.
    async fn upload(
        &self,
        store: &Store,
        blob: &Blob,
        semaphore: &Semaphore,
        progress: &Progress,
    ) -> Result<u64, RemoteError> {
        if blob.size > self.tuning.multipart_threshold {
            return self
                .upload_multipart(store, blob, semaphore, progress)
                .await;
        }
        let _permit = permit(semaphore).await?;
        let path = store.blob_path(&blob.digest);
        let (data, actual) = blocking(move || {
            let data = std::fs::read(&path)
                .map_err(|e| RemoteError::Local(format!("cannot read {}: {e}", path.display())))?;
            let actual = sha256_hex(&data);
            Ok((data, actual))
        })
        .await?;
        if data.len() as u64 != blob.size || actual != blob.hex {
            return Err(local_corrupt(
                store,
                blob,
                format!("it has {} bytes and hashes to sha256:{actual}", data.len()),
            ));
        }
        let key = self.blob_key(&blob.hex);
        self.client
            .put_object()
            .bucket(&self.url.bucket)
            .key(&key)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| {
                self.error(
                    &e,
                    &format!("uploading {} to {}", blob.file, self.object_url(&key)),
                )
            })?;
        progress.advance(blob.size);
        Ok(blob.size)
    }

    /// Abort the unfinished multipart uploads of `key` other than `keep` that are older than a
    /// day: they belong to pushes that were interrupted and never came back. Best effort.
    /// Returns whether `keep` is still there (`None` when the endpoint cannot list uploads).
    async fn abort_stale_uploads(&self, key: &str, keep: &str) -> Option<bool> {
        let Ok(listed) = self
            .client
            .list_multipart_uploads()
            .bucket(&self.url.bucket)
            .prefix(key)
            .send()
            .await
            .inspect_err(|e| tracing::debug!("cannot list the uploads of {key}: {e}"))
        else {
            return None;
        };
        let now = chrono::Utc::now().timestamp();
        let mut kept = false;
        for upload in listed.uploads() {
            let (Some(id), Some(initiated)) = (upload.upload_id(), upload.initiated()) else {
                continue;
            };
            kept |= upload.key() == Some(key) && id == keep;
            if upload.key() == Some(key)
                && id != keep
                && now - initiated.secs() > STALE_UPLOAD_SECONDS
            {
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.url.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await;
            }
        }
        Some(kept)
    }

    /// Start a multipart upload of `key`.
    async fn create_upload(&self, key: &str, action: &str) -> Result<String, RemoteError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.url.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| self.error(&e, action))?;
        created
            .upload_id()
            .map(str::to_string)
            .ok_or_else(|| RemoteError::UnexpectedAnswer {
                action: action.to_string(),
                detail: "CreateMultipartUpload gave no upload id".into(),
            })
    }

    /// Upload a large blob in parts, continuing the upload an interrupted push recorded. The
    /// blob appears only when the upload completes, after its digest matched; on a mismatch
    /// the upload is aborted.
    async fn upload_multipart(
        &self,
        store: &Store,
        blob: &Blob,
        semaphore: &Semaphore,
        progress: &Progress,
    ) -> Result<u64, RemoteError> {
        let key = self.blob_key(&blob.hex);
        let action = format!("uploading {} to {}", blob.file, self.object_url(&key));
        let journal_path = Journal::path(store, &self.url.bucket, &key)?;
        let recorded = {
            let (path, bucket, key) = (journal_path.clone(), self.url.bucket.clone(), key.clone());
            blocking(move || Ok(Journal::read(&path, &bucket, &key))).await?
        };
        if let Some(journal) = recorded {
            tracing::debug!(
                "continuing the upload of {key} ({} parts up)",
                journal.parts.len()
            );
            let attempt = if self.abort_stale_uploads(&key, &journal.upload_id).await == Some(false)
            {
                // Aborted on S3 (by a lifecycle rule, or by hand) since it was recorded.
                Attempt::Gone { counted: 0 }
            } else {
                self.upload_parts(store, blob, journal, &journal_path, semaphore, progress)
                    .await?
            };
            match attempt {
                Attempt::Done(sent) => return Ok(sent),
                Attempt::Gone { counted } => {
                    tracing::debug!("the recorded upload of {key} is gone: starting over");
                    progress.rewind(counted);
                }
            }
        }
        let journal = Journal {
            bucket: self.url.bucket.clone(),
            key: key.clone(),
            upload_id: self.create_upload(&key, &action).await?,
            parts: BTreeMap::new(),
        };
        let _ = self.abort_stale_uploads(&key, &journal.upload_id).await;
        match self
            .upload_parts(store, blob, journal, &journal_path, semaphore, progress)
            .await?
        {
            Attempt::Done(sent) => Ok(sent),
            Attempt::Gone { .. } => Err(RemoteError::UnexpectedAnswer {
                action,
                detail: "the multipart upload vanished while in progress".into(),
            }),
        }
    }

    /// One attempt at a multipart upload: read the blob once, in order, hashing as it goes;
    /// send the parts in parallel, keeping the ones `journal` records when their MD5 matches.
    async fn upload_parts(
        &self,
        store: &Store,
        blob: &Blob,
        journal: Journal,
        journal_path: &Path,
        semaphore: &Semaphore,
        progress: &Progress,
    ) -> Result<Attempt, RemoteError> {
        let key = journal.key.clone();
        let upload_id = journal.upload_id.clone();
        let action = format!("uploading {} to {}", blob.file, self.object_url(&key));
        let size = blob.size;
        let part = part_size(size, self.tuning.part_size);
        let count = size.div_ceil(part);
        let path = store.blob_path(&blob.digest);
        let file = Arc::new(
            std::fs::File::open(&path)
                .map_err(|e| RemoteError::Local(format!("cannot read {}: {e}", path.display())))?,
        );
        let hasher = Arc::new(Mutex::new(Sha256::new()));
        let existing = journal.parts.clone();
        let journal = Arc::new(Mutex::new(journal));
        let counted = AtomicU64::new(0);
        let count_progress = |bytes: u64| {
            counted.fetch_add(bytes, Ordering::Relaxed);
            progress.advance(bytes);
        };
        let (existing, action, key, upload_id) = (&existing, &action, &key, &upload_id);
        let count_progress = &count_progress;
        // Parts are read in order (`then` runs one at a time), so the digest sees the file in
        // order; each read holds a request permit, which bounds the parts held in memory.
        let parts: Result<Vec<(CompletedPart, u64)>, Failure> = stream::iter(0..count)
            .then(|index| {
                let file = Arc::clone(&file);
                let hasher = Arc::clone(&hasher);
                let path = path.clone();
                let (store, blob) = (store.clone(), blob.clone());
                async move {
                    let permit = permit(semaphore).await?;
                    let offset = index * part;
                    let length = part.min(size - offset);
                    let data = blocking(move || {
                        let mut data = vec![0u8; length as usize];
                        file.read_exact_at(&mut data, offset).map_err(|e| {
                            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                                local_corrupt(&store, &blob, "it is shorter than its size".into())
                            } else {
                                RemoteError::Local(format!("cannot read {}: {e}", path.display()))
                            }
                        })?;
                        hasher
                            .lock()
                            .map_err(|_| RemoteError::Local("a hashing task failed".into()))?
                            .update(&data);
                        Ok(data)
                    })
                    .await?;
                    Ok::<_, Failure>((index, data, permit))
                }
            })
            .map_ok(|(index, data, permit)| {
                let journal = Arc::clone(&journal);
                let journal_path = journal_path.to_path_buf();
                async move {
                    let _permit = permit;
                    let number = (index + 1) as i32;
                    let length = data.len() as u64;
                    let data = Bytes::from(data);
                    if let Some(kept) = existing.get(&number)
                        && kept.size == length
                    {
                        let md5 = {
                            let data = data.clone();
                            blocking(move || Ok(hex::encode(md5::Md5::digest(&data)))).await?
                        };
                        if md5 == kept.etag {
                            count_progress(length);
                            let completed = CompletedPart::builder()
                                .part_number(number)
                                .e_tag(format!("\"{}\"", kept.etag))
                                .set_checksum_crc32(kept.crc32.clone())
                                .build();
                            return Ok((completed, 0));
                        }
                    }
                    let uploaded = self
                        .client
                        .upload_part()
                        .bucket(&self.url.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .checksum_algorithm(ChecksumAlgorithm::Crc32)
                        .body(ByteStream::from(data))
                        .send()
                        .await
                        .map_err(|e| {
                            if e.code() == Some("NoSuchUpload") {
                                Failure::Gone
                            } else {
                                Failure::Error(self.error(&e, action))
                            }
                        })?;
                    let etag = uploaded
                        .e_tag()
                        .ok_or_else(|| RemoteError::UnexpectedAnswer {
                            action: action.clone(),
                            detail: format!("UploadPart {number} gave no ETag"),
                        })?
                        .to_string();
                    let crc32 = uploaded.checksum_crc32().map(str::to_string);
                    let recorded = JournalPart {
                        size: length,
                        etag: etag.trim_matches('"').to_ascii_lowercase(),
                        crc32: crc32.clone(),
                    };
                    blocking(move || {
                        let mut journal = journal
                            .lock()
                            .map_err(|_| RemoteError::Local("an upload task failed".into()))?;
                        journal.parts.insert(number, recorded);
                        journal.write(&journal_path)
                    })
                    .await?;
                    count_progress(length);
                    let completed = CompletedPart::builder()
                        .part_number(number)
                        .e_tag(etag)
                        .set_checksum_crc32(crc32)
                        .build();
                    Ok((completed, length))
                }
            })
            .try_buffer_unordered(self.tuning.concurrency)
            .try_collect()
            .await;
        let forget = || {
            let path = journal_path.to_path_buf();
            blocking(move || {
                let _ = std::fs::remove_file(&path);
                Ok(())
            })
        };
        let abort = || async {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.url.bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await;
            forget().await
        };
        let mut parts = match parts {
            Ok(parts) => parts,
            Err(Failure::Gone) => {
                forget().await?;
                return Ok(Attempt::Gone {
                    counted: counted.load(Ordering::Relaxed),
                });
            }
            Err(Failure::Error(
                error @ (RemoteError::Local(_) | RemoteError::DigestMismatch { .. }),
            )) => {
                // The local blob is unreadable or shorter than its size: what was uploaded is
                // no use.
                abort().await?;
                return Err(error);
            }
            // Network and S3 errors leave the upload recorded, for the next push to continue.
            Err(Failure::Error(error)) => return Err(error),
        };
        let actual = hasher
            .lock()
            .map_err(|_| RemoteError::Local("a hashing task failed".into()))?
            .clone()
            .finalize();
        let actual = hex::encode(actual);
        if actual != blob.hex {
            abort().await?;
            return Err(local_corrupt(
                store,
                blob,
                format!("it hashes to sha256:{actual}"),
            ));
        }
        parts.sort_by_key(|(p, _)| p.part_number());
        let sent = parts.iter().map(|(_, sent)| sent).sum();
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(parts.into_iter().map(|(p, _)| p).collect()))
            .build();
        let result = self
            .client
            .complete_multipart_upload()
            .bucket(&self.url.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send()
            .await;
        if let Err(error) = result {
            // Another push of the same blob may have completed this upload first.
            let head = self
                .client
                .head_object()
                .bucket(&self.url.bucket)
                .key(key)
                .send()
                .await;
            if !head.is_ok_and(|h| h.content_length() == i64::try_from(size).ok()) {
                if matches!(error.code(), Some("NoSuchUpload" | "InvalidPart")) {
                    // The upload, or a part the record names, is gone from S3.
                    forget().await?;
                    return Ok(Attempt::Gone {
                        counted: counted.load(Ordering::Relaxed),
                    });
                }
                return Err(self.error(&error, action));
            }
        }
        forget().await?;
        Ok(Attempt::Done(sent))
    }

    /// Download the artifacts of a run or tag into the local store, skipping blobs it has, and
    /// then write the local ref. Returns the manifest.
    pub async fn pull(
        &self,
        store: &Store,
        lineage: &str,
        kind: RefKind,
        name: &str,
        progress: &Progress,
    ) -> Result<(Manifest, TransferReport), RemoteError> {
        check_name("lineage", lineage)?;
        check_name(if kind == RefKind::Run { "run" } else { "tag" }, name)?;
        let key = self.ref_key(lineage, kind, name);
        let ref_url = self.object_url(&key);
        let read = self
            .client
            .get_object()
            .bucket(&self.url.bucket)
            .key(&key)
            .send()
            .await;
        let body = match read {
            Ok(output) => output
                .body
                .collect()
                .await
                .map_err(|e| RemoteError::Network {
                    action: format!("reading {ref_url}"),
                    detail: e.to_string(),
                })?
                .into_bytes(),
            Err(e) if Self::is_not_found(&e) => {
                return Err(RemoteError::NotFound {
                    what: kind.describe(name),
                    url: self.url.to_string(),
                });
            }
            Err(e) => return Err(self.error(&e, &format!("reading {ref_url}"))),
        };
        let manifest: Manifest =
            serde_json::from_slice(&body).map_err(|e| RemoteError::InvalidManifest {
                whence: ref_url.clone(),
                reason: e.to_string(),
            })?;
        if kind == RefKind::Run && manifest.run != name {
            return Err(RemoteError::InvalidManifest {
                whence: ref_url,
                reason: format!("it is the manifest of run `{}`", manifest.run),
            });
        }
        let blobs = blobs_of(&manifest, &ref_url)?;
        // Blobs added are unreferenced until the ref is written: keep garbage collection off.
        let _adding = store.adding().map_err(RemoteError::Local)?;
        let missing: Vec<&Blob> = blobs
            .iter()
            .filter(|b| {
                std::fs::metadata(store.blob_path(&b.digest))
                    .map_or(true, |m| !m.is_file() || m.len() != b.size)
            })
            .collect();
        progress.start(missing.iter().map(|b| b.size).sum());
        let semaphore = Semaphore::new(self.tuning.concurrency);
        let received: Vec<u64> = stream::iter(missing.iter().copied())
            .map(|blob| self.download(store, blob, &semaphore, progress))
            .buffer_unordered(self.tuning.concurrency)
            .try_collect()
            .await?;
        match kind {
            RefKind::Run => store.put_manifest(lineage, &manifest),
            RefKind::Tag => store.put_tag(lineage, name, &manifest),
        }
        .map_err(RemoteError::Local)?;
        let report = TransferReport {
            blobs_total: blobs.len(),
            blobs_transferred: missing.len(),
            bytes_transferred: received.iter().sum(),
            blobs_skipped: blobs.len() - missing.len(),
        };
        Ok((manifest, report))
    }

    fn remote_corrupt(&self, blob: &Blob, found: String) -> RemoteError {
        RemoteError::DigestMismatch {
            file: blob.file.clone(),
            side: Side::Remote,
            expected: blob.digest.clone(),
            found,
            hint: format!(
                "the remote copy is corrupt; nothing of it was kept locally. Delete {} and push the artifacts again from a store that has them",
                self.object_url(&self.blob_key(&blob.hex))
            ),
        }
    }

    /// Read a `GetObject` body, refusing more than `limit` bytes.
    async fn read_body(
        &self,
        mut body: ByteStream,
        limit: u64,
        blob: &Blob,
        action: &str,
    ) -> Result<Vec<u8>, RemoteError> {
        let mut data = Vec::with_capacity(limit as usize);
        while let Some(chunk) = body.try_next().await.map_err(|e| RemoteError::Network {
            action: action.to_string(),
            detail: e.to_string(),
        })? {
            if (data.len() + chunk.len()) as u64 > limit {
                return Err(self.remote_corrupt(
                    blob,
                    format!("S3 sent more than the {limit} bytes asked for"),
                ));
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }

    /// Download one blob into the store; returns the bytes received.
    async fn download(
        &self,
        store: &Store,
        blob: &Blob,
        semaphore: &Semaphore,
        progress: &Progress,
    ) -> Result<u64, RemoteError> {
        if blob.size > self.tuning.multipart_threshold {
            return self.download_ranges(store, blob, semaphore, progress).await;
        }
        let key = self.blob_key(&blob.hex);
        let action = format!("downloading {} from {}", blob.file, self.object_url(&key));
        let _permit = permit(semaphore).await?;
        let output = self
            .client
            .get_object()
            .bucket(&self.url.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| {
                if Self::is_not_found(&e) {
                    self.remote_corrupt(blob, "the blob is missing from the remote store".into())
                } else {
                    self.error(&e, &action)
                }
            })?;
        let data = self
            .read_body(output.body, blob.size, blob, &action)
            .await?;
        if data.len() as u64 != blob.size {
            return Err(self.remote_corrupt(
                blob,
                format!("it has {} bytes, not {}", data.len(), blob.size),
            ));
        }
        let (store_copy, digest) = (store.clone(), blob.digest.clone());
        let actual = blocking(move || {
            let actual = sha256_hex(&data);
            if Some(actual.as_str()) == digest_hex(&digest) {
                store_copy.insert_bytes(&digest, &data)?;
            }
            Ok(actual)
        })
        .await?;
        if actual != blob.hex {
            return Err(self.remote_corrupt(blob, format!("it hashes to sha256:{actual}")));
        }
        progress.advance(blob.size);
        Ok(blob.size)
    }

    /// Download a large blob in ranges, in parallel, into `STORE/tmp/pull-HEX.partial`; the
    /// ranges that arrived are recorded in `pull-HEX.chunks`, so an interrupted pull continues
    /// where it stopped. The file becomes the blob only after its digest matched.
    async fn download_ranges(
        &self,
        store: &Store,
        blob: &Blob,
        semaphore: &Semaphore,
        progress: &Progress,
    ) -> Result<u64, RemoteError> {
        let key = self.blob_key(&blob.hex);
        let action = format!("downloading {} from {}", blob.file, self.object_url(&key));
        let size = blob.size;
        let chunk = part_size(size, self.tuning.part_size);
        let count = size.div_ceil(chunk);
        let temp = store.temp_dir().map_err(RemoteError::Local)?;
        let partial_path = temp.join(format!("pull-{}.partial", blob.hex));
        let record_path = temp.join(format!("pull-{}.chunks", blob.hex));
        let blob_path = store.blob_path(&blob.digest);
        let prepared = {
            let (partial_path, record_path, blob_path) =
                (partial_path.clone(), record_path.clone(), blob_path.clone());
            blocking(move || prepare_partial(&partial_path, &record_path, &blob_path, size, count))
                .await?
        };
        let Some((partial, record, done)) = prepared else {
            // Another pull of this blob finished while this one waited for it.
            progress.advance(size);
            return Ok(0);
        };
        progress.advance(done.iter().map(|i| chunk.min(size - i * chunk)).sum());
        let partial = Arc::new(partial);
        let record = Arc::new(Mutex::new(record));
        let action = &action;
        let key = &key;
        let received: Vec<u64> = stream::iter((0..count).filter(|i| !done.contains(i)))
            .map(|index| {
                let partial = Arc::clone(&partial);
                let record = Arc::clone(&record);
                async move {
                    let _permit = permit(semaphore).await?;
                    let start = index * chunk;
                    let length = chunk.min(size - start);
                    let output = self
                        .client
                        .get_object()
                        .bucket(&self.url.bucket)
                        .key(key)
                        .range(format!("bytes={start}-{}", start + length - 1))
                        .send()
                        .await
                        .map_err(|e| {
                            if Self::is_not_found(&e) {
                                self.remote_corrupt(
                                    blob,
                                    "the blob is missing from the remote store".into(),
                                )
                            } else if e.code() == Some("InvalidRange")
                                || e.raw_response().is_some_and(|r| r.status().as_u16() == 416)
                            {
                                self.remote_corrupt(
                                    blob,
                                    format!("it is shorter than {size} bytes"),
                                )
                            } else {
                                self.error(&e, action)
                            }
                        })?;
                    if let Some(total) = output
                        .content_range()
                        .and_then(|r| r.rsplit_once('/'))
                        .and_then(|(_, total)| total.parse::<u64>().ok())
                        && total != size
                    {
                        return Err(
                            self.remote_corrupt(blob, format!("it has {total} bytes, not {size}"))
                        );
                    }
                    let data = self.read_body(output.body, length, blob, action).await?;
                    if data.len() as u64 != length {
                        return Err(RemoteError::UnexpectedAnswer {
                            action: action.clone(),
                            detail: format!(
                                "asked for {length} bytes at {start}, got {}",
                                data.len()
                            ),
                        });
                    }
                    blocking(move || {
                        partial.write_all_at(&data, start).map_err(|e| {
                            RemoteError::Local(format!("cannot write a partial download: {e}"))
                        })?;
                        let mut record = record
                            .lock()
                            .map_err(|_| RemoteError::Local("a download task failed".into()))?;
                        writeln!(record, "{index}").map_err(|e| {
                            RemoteError::Local(format!("cannot write a partial download: {e}"))
                        })
                    })
                    .await?;
                    progress.advance(length);
                    Ok(length)
                }
            })
            .buffer_unordered(self.tuning.concurrency)
            .try_collect()
            .await?;
        let (digest, partial_copy) = (blob.digest.clone(), Arc::clone(&partial));
        let store_copy = store.clone();
        let actual = blocking(move || {
            let actual = hash_file(&partial_copy)?;
            if Some(actual.as_str()) == digest_hex(&digest) {
                store_copy
                    .insert_verified_file(&partial_path, &digest)
                    .map_err(RemoteError::Local)?;
            } else {
                // A corrupt partial must not be continued: start over next time.
                let _ = std::fs::remove_file(&partial_path);
            }
            let _ = std::fs::remove_file(&record_path);
            Ok(actual)
        })
        .await?;
        if actual != blob.hex {
            return Err(self.remote_corrupt(blob, format!("it hashes to sha256:{actual}")));
        }
        Ok(received.iter().sum())
    }
}

/// Open (or continue) a partial download under an exclusive lock, so that two pulls of one
/// blob do not interleave. Returns the file, the chunk record and the chunks already there;
/// `None` when the blob is in the store already.
fn prepare_partial(
    partial_path: &Path,
    record_path: &Path,
    blob_path: &Path,
    size: u64,
    count: u64,
) -> Result<Option<(std::fs::File, std::fs::File, BTreeSet<u64>)>, RemoteError> {
    let local = |e: std::io::Error| {
        RemoteError::Local(format!(
            "cannot write a partial download ({}): {e}",
            partial_path.display()
        ))
    };
    let partial = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(partial_path)
        .map_err(local)?;
    partial.lock().map_err(local)?;
    if std::fs::metadata(blob_path).is_ok_and(|m| m.len() == size) {
        return Ok(None);
    }
    let mut done = BTreeSet::new();
    let current = partial.metadata().map_err(local)?.len();
    if current == size {
        if let Ok(mut file) = std::fs::File::open(record_path) {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            // A torn last line (an interrupted write) does not parse and is skipped.
            done.extend(
                text.lines()
                    .filter_map(|l| l.trim().parse::<u64>().ok())
                    .filter(|i| *i < count),
            );
        }
    } else {
        let _ = std::fs::remove_file(record_path);
        partial.set_len(0).map_err(local)?;
        partial.set_len(size).map_err(local)?;
    }
    let record = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(record_path)
        .map_err(local)?;
    Ok(Some((partial, record, done)))
}

fn hash_file(file: &std::fs::File) -> Result<String, RemoteError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1024 * 1024];
    let mut offset = 0u64;
    loop {
        let read = file
            .read_at(&mut buffer, offset)
            .map_err(|e| RemoteError::Local(format!("cannot read a partial download: {e}")))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        offset += read as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Helpers the remote store needs from the local one.
impl Store {
    /// `STORE/tmp`, where files are written before they become blobs.
    fn temp_dir(&self) -> Result<PathBuf, String> {
        let temp = self.root.join("tmp");
        std::fs::create_dir_all(&temp)
            .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
        Ok(temp)
    }

    /// Move `temp` (inside `STORE/tmp`, its content verified to hash to `digest`) into place as
    /// that blob.
    fn insert_verified_file(&self, temp: &Path, digest: &str) -> Result<(), String> {
        let blob = self.blob_path(digest);
        if let Some(parent) = blob.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::rename(temp, &blob).map_err(|e| format!("cannot write {}: {e}", blob.display()))
    }

    /// Write verified bytes as the blob `digest` (through a temp file, so the blob appears
    /// whole or not at all).
    fn insert_bytes(&self, digest: &str, data: &[u8]) -> Result<(), RemoteError> {
        let temp = self
            .temp_dir()
            .map_err(RemoteError::Local)?
            .join(format!("pull-{}", uuid::Uuid::new_v4()));
        let written = std::fs::File::create(&temp)
            .and_then(|mut file| file.write_all(data))
            .map_err(|e| RemoteError::Local(format!("cannot write {}: {e}", temp.display())));
        let result = written.and_then(|()| {
            self.insert_verified_file(&temp, digest)
                .map_err(RemoteError::Local)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_an_optional_prefix() {
        let url = RemoteUrl::parse("s3://team-artifacts/dstack/main/").expect("url");
        assert_eq!(url.bucket, "team-artifacts");
        assert_eq!(url.prefix, "dstack/main");
        assert_eq!(url.to_string(), "s3://team-artifacts/dstack/main");
        assert_eq!(url.key("blobs/sha256/ab"), "dstack/main/blobs/sha256/ab");
        let root = RemoteUrl::parse("s3://team-artifacts").expect("url");
        assert_eq!(root.prefix, "");
        assert_eq!(root.key("refs/x.json"), "refs/x.json");
        assert_eq!(RemoteUrl::parse("s3://team-artifacts/").expect("url"), root);
    }

    #[test]
    fn other_urls_are_refused_with_the_reason() {
        for (url, reason) in [
            ("gs://bucket/prefix", "unsupported scheme `gs://`"),
            ("https://s3.amazonaws.com/b", "HTTP URL"),
            ("bucket/prefix", "expected `s3://BUCKET/PREFIX`"),
            ("s3://", "bucket name is missing"),
            ("s3:///prefix", "bucket name is missing"),
            ("s3://ab/prefix", "not a bucket name"),
            ("s3://bad bucket/p", "not a bucket name"),
            ("s3://bucket/a//b", "empty"),
            ("s3://bucket/a/../b", "`..`"),
            ("s3://bucket/a b", "space"),
        ] {
            let error = RemoteUrl::parse(url).expect_err(url).to_string();
            assert!(error.contains(reason), "{url}: {error}");
            assert!(error.contains(url.trim()), "{url}: {error}");
        }
    }

    #[test]
    fn parts_grow_only_past_ten_thousand() {
        assert_eq!(part_size(100 * MIB, 8 * MIB), 8 * MIB);
        assert_eq!(part_size(80_000 * MIB, 8 * MIB), 8 * MIB);
        // 100,000 MiB in 8 MiB parts would be 12,500 parts: 10 MiB parts make 10,000.
        assert_eq!(part_size(100_000 * MIB, 8 * MIB), 10 * MIB);
        let huge = 5 * 1024 * 1024 * MIB; // 5 TiB, the S3 maximum
        let size = part_size(huge, 8 * MIB);
        assert!(huge.div_ceil(size) <= MAX_PARTS);
        assert_eq!(size % MIB, 0);
        assert_eq!(
            part_size(10, 0),
            MIB,
            "a zero part size cannot loop forever"
        );
    }

    #[test]
    fn digests_are_sha256_of_64_lowercase_hex_digits() {
        let hex = "a".repeat(64);
        assert_eq!(digest_hex(&format!("sha256:{hex}")), Some(hex.as_str()));
        assert_eq!(digest_hex(&hex), None);
        assert_eq!(digest_hex(&format!("sha256:{}", "A".repeat(64))), None);
        assert_eq!(digest_hex("sha256:../../etc/passwd"), None);
        assert_eq!(digest_hex(&format!("md5:{hex}")), None);
    }

    #[test]
    fn refs_use_the_local_layout_and_safe_names() {
        let remote = Remote {
            client: Client::from_conf(
                aws_sdk_s3::Config::builder()
                    .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                    .build(),
            ),
            url: RemoteUrl::parse("s3://bucket/team").expect("url"),
            tuning: Tuning::default(),
        };
        assert_eq!(
            remote.ref_key("lin-1", RefKind::Run, "train-3"),
            "team/refs/lin-1/train-3.json"
        );
        assert_eq!(
            remote.ref_key("lin-1", RefKind::Tag, "best/model"),
            "team/refs/lin-1/tags/best_model.json"
        );
        assert_eq!(
            remote.blob_key(&format!("sha256:{}", "0".repeat(64))),
            format!("team/blobs/sha256/{}", "0".repeat(64))
        );
    }

    #[test]
    fn a_manifest_with_one_digest_of_two_sizes_is_invalid() {
        let file = |path: &str, size: u64| crate::state::ManifestFile {
            artifact: "out".into(),
            path: path.into(),
            size,
            digest: format!("sha256:{}", "b".repeat(64)),
            mode: 0o644,
        };
        let mut manifest = Manifest {
            run: "r-1".into(),
            files: vec![file("a", 3), file("b", 3)],
            created_at: chrono::Utc::now(),
        };
        assert_eq!(blobs_of(&manifest, "m").expect("valid").len(), 1);
        manifest.files.push(file("c", 4));
        let error = blobs_of(&manifest, "m").expect_err("invalid").to_string();
        assert!(error.contains("out/a and out/c"), "{error}");
    }
}
