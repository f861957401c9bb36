//! The S3 store: one JSON document at `s3://bucket/key`, shared by a team and its CI.
//!
//! - The lock is the object `KEY.lock`, created with `If-None-Match: *` and holding the holder's
//!   [`LockInfo`]. A retried create that finds its *own* lock counts as success (a retry after a
//!   lost response must not lock the writer out of its own state).
//! - Writes are compare-and-swap: `If-Match: <etag>` of the document that was read (or
//!   `If-None-Match: *` for the first one), after checking lineage and serial. A writer that lost
//!   the race is refused, never merged.
//! - The previous document is kept as `KEY.backup`; longer history comes from bucket versioning.
//! - If a write fails, the document that could not be written is saved locally (the project's
//!   `.dstack/errored-state.json`) and the error says how to push it.
//!
//! Credentials and endpoint come from the standard AWS chain (environment, profiles) unless the
//! state settings name them; addressing is path-style whenever the endpoint is overridden, so
//! S3-compatible stores work.

use std::path::PathBuf;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use super::url::S3Location;
use super::{
    Committed, LockInfo, Snapshot, StateError, StateStore, Step, check_expected, check_format,
    new_lineage,
};

/// Build an S3 client: see [`crate::aws`] for where credentials, region and endpoint come from.
pub async fn client(
    region: Option<&str>,
    profile: Option<&str>,
    endpoint_url: Option<&str>,
) -> Client {
    crate::aws::s3(&crate::aws::Connection {
        region: region.map(str::to_string),
        profile: profile.map(str::to_string),
        endpoint_url: endpoint_url.map(str::to_string),
    })
    .await
}

/// Turn an S3 error into a clear state error naming the object.
pub fn describe_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    error: &SdkError<E>,
    bucket: &str,
    what: &str,
) -> StateError {
    let code = error.code().unwrap_or_default();
    let detail = aws_sdk_s3::error::DisplayErrorContext(error).to_string();
    tracing::debug!("S3 error ({what}): {detail}");
    let (message, hint) = match (error, code) {
        (_, "NoSuchBucket") => (
            format!("the bucket `{bucket}` does not exist ({what})"),
            Some(format!("create it (`aws s3 mb s3://{bucket}`) or fix the state URL")),
        ),
        (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" | "ExpiredToken" | "InvalidToken") => (
            format!("S3 refused the credentials ({what}): {code}"),
            Some("check AWS_PROFILE, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws/credentials".into()),
        ),
        (_, _) if detail.contains("no credentials") || detail.contains("credentials provider") || detail.contains("identity") => (
            format!("no AWS credentials found ({what})"),
            Some("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a `profile` in the state settings".into()),
        ),
        (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _) => (
            format!("cannot reach S3 ({what})"),
            Some("check the network and `endpoint_url` / AWS_ENDPOINT_URL".into()),
        ),
        _ => (
            format!("S3 error ({what}): {}", error.message().map_or_else(|| format!("{error:?}"), str::to_string)),
            None,
        ),
    };
    StateError::Backend { message, hint }
}

fn is_precondition_failed<E: ProvideErrorMetadata>(error: &SdkError<E>) -> bool {
    error.code() == Some("PreconditionFailed")
        || error
            .raw_response()
            .is_some_and(|r| r.status().as_u16() == 412)
}

fn is_not_found<E: ProvideErrorMetadata>(error: &SdkError<E>) -> bool {
    matches!(error.code(), Some("NoSuchKey" | "NotFound"))
        || error
            .raw_response()
            .is_some_and(|r| r.status().as_u16() == 404)
            && error.code() != Some("NoSuchBucket")
}

/// State in an S3 object.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    location: S3Location,
    errored_path: Option<PathBuf>,
}

impl S3Store {
    pub async fn connect(location: S3Location) -> Result<Self, StateError> {
        let client = client(
            location.region.as_deref(),
            location.profile.as_deref(),
            location.endpoint_url.as_deref(),
        )
        .await;
        Ok(Self {
            client,
            location,
            errored_path: None,
        })
    }

    /// A store that uses an already configured client.
    pub fn with_client(client: Client, location: S3Location) -> Self {
        Self {
            client,
            location,
            errored_path: None,
        }
    }

    /// Where to save a document that could not be written.
    pub fn set_errored_path(&mut self, path: PathBuf) {
        self.errored_path = Some(path);
    }

    fn url(&self) -> String {
        format!("s3://{}/{}", self.location.bucket, self.location.key)
    }

    fn lock_key(&self) -> String {
        format!("{}.lock", self.location.key)
    }

    fn error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        error: &SdkError<E>,
        what: &str,
    ) -> StateError {
        describe_error(error, &self.location.bucket, what)
    }

    /// The object's bytes and `ETag`, or `None` when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, StateError> {
        let what = format!("reading s3://{}/{key}", self.location.bucket);
        match self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => {
                let etag = output.e_tag().unwrap_or_default().to_string();
                let bytes = output
                    .body
                    .collect()
                    .await
                    .map_err(|e| StateError::Backend {
                        message: format!("{what}: {e}"),
                        hint: Some("retry; check the network".into()),
                    })?;
                Ok(Some((bytes.into_bytes().to_vec(), etag)))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error(&e, &what)),
        }
    }

    fn parse(&self, bytes: &[u8]) -> Result<Snapshot, StateError> {
        let corrupt = |reason: String| StateError::Corrupt {
            location: self.url(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not JSON: {e}")))?;
        let format = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| corrupt("it has no `format_version`".into()))?;
        check_format(&self.url(), format)?;
        serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
    }

    async fn current(&self) -> Result<(Snapshot, Option<(Vec<u8>, String)>), StateError> {
        match self.get(&self.location.key).await? {
            Some((bytes, etag)) => Ok((self.parse(&bytes)?, Some((bytes, etag)))),
            None => Ok((Snapshot::empty(), None)),
        }
    }

    /// Write `snapshot` over the document read as `previous` (keeping it as the backup).
    async fn write(
        &self,
        snapshot: &Snapshot,
        previous: Option<&(Vec<u8>, String)>,
    ) -> Result<(), StateError> {
        let body = serde_json::to_vec_pretty(snapshot).unwrap_or_default();
        if let Some((old, _)) = previous {
            let backup = format!("{}.backup", self.location.key);
            if let Err(e) = self
                .client
                .put_object()
                .bucket(&self.location.bucket)
                .key(&backup)
                .body(ByteStream::from(old.clone()))
                .send()
                .await
            {
                return Err(self.save_errored(snapshot, &self.error(&e, "writing the backup")));
            }
        }
        let mut request = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .key(&self.location.key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        request = match previous {
            Some((_, etag)) => request.if_match(etag),
            None => request.if_none_match("*"),
        };
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_precondition_failed(&e) => {
                let (now, _) = self.current().await?;
                Err(StateError::Stale {
                    expected: snapshot.serial.saturating_sub(1),
                    found: now.serial,
                })
            }
            Err(e) => Err(self.save_errored(snapshot, &self.error(&e, "writing the state"))),
        }
    }

    fn save_errored(&self, snapshot: &Snapshot, error: &StateError) -> StateError {
        let Some(path) = &self.errored_path else {
            return StateError::Backend {
                message: error.to_string(),
                hint: None,
            };
        };
        let text = serde_json::to_string_pretty(snapshot).unwrap_or_default();
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| super::write_private(path, text.as_bytes()));
        match written {
            Ok(()) => StateError::Errored {
                message: error.to_string(),
                path: path.display().to_string(),
            },
            Err(e) => StateError::Backend {
                message: format!("{error}; saving it to `{}` failed too: {e}", path.display()),
                hint: None,
            },
        }
    }
}

#[async_trait::async_trait]
impl StateStore for S3Store {
    fn location(&self) -> String {
        self.url()
    }

    async fn load_unchecked(&self) -> Result<Snapshot, StateError> {
        Ok(self.current().await?.0)
    }

    async fn commit(
        &self,
        lineage: Option<&str>,
        expected_serial: u64,
        step: &Step,
    ) -> Result<Committed, StateError> {
        let (mut snapshot, previous) = self.current().await?;
        check_expected(&snapshot, lineage, expected_serial)?;
        let lineage = snapshot
            .lineage
            .clone()
            .or_else(|| lineage.map(str::to_string))
            .unwrap_or_else(new_lineage);
        snapshot.lineage = Some(lineage.clone());
        snapshot.format_version = super::FORMAT_VERSION;
        snapshot.apply(step);
        snapshot.serial += 1;
        self.write(&snapshot, previous.as_ref()).await?;
        Ok(Committed {
            lineage,
            serial: snapshot.serial,
        })
    }

    async fn lock_acquire(&self, info: &LockInfo) -> Result<(), StateError> {
        let body = serde_json::to_vec_pretty(info).unwrap_or_default();
        for _ in 0..3 {
            let result = self
                .client
                .put_object()
                .bucket(&self.location.bucket)
                .key(self.lock_key())
                .if_none_match("*")
                .content_type("application/json")
                .body(ByteStream::from(body.clone()))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) if is_precondition_failed(&e) => match self.lock_read().await? {
                    Some(holder) if holder.id == info.id => return Ok(()),
                    Some(holder) => {
                        return Err(StateError::Locked {
                            holder: Box::new(holder),
                        });
                    }
                    // Released between our attempt and our read: try again.
                    None => {}
                },
                Err(e) => return Err(self.error(&e, "taking the lock")),
            }
        }
        Err(StateError::Backend {
            message: format!("the lock `{}` keeps changing", self.lock_key()),
            hint: Some("retry".into()),
        })
    }

    async fn lock_release(&self, id: &str) -> Result<(), StateError> {
        let Some((bytes, etag)) = self.get(&self.lock_key()).await? else {
            return Err(StateError::NotLocked {
                id: id.into(),
                state: "not locked".into(),
            });
        };
        let holder: LockInfo = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            location: format!("s3://{}/{}", self.location.bucket, self.lock_key()),
            reason: e.to_string(),
        })?;
        if holder.id != id {
            return Err(StateError::NotLocked {
                id: id.into(),
                state: format!("locked by {holder}"),
            });
        }
        match self
            .client
            .delete_object()
            .bucket(&self.location.bucket)
            .key(self.lock_key())
            .if_match(etag)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_precondition_failed(&e) => Err(StateError::NotLocked {
                id: id.into(),
                state: "locked by someone else meanwhile".into(),
            }),
            Err(e) => Err(self.error(&e, "releasing the lock")),
        }
    }

    async fn lock_read(&self) -> Result<Option<LockInfo>, StateError> {
        match self.get(&self.lock_key()).await? {
            Some((bytes, _)) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        location: format!("s3://{}/{}", self.location.bucket, self.lock_key()),
                        reason: e.to_string(),
                    })
            }
            None => Ok(None),
        }
    }

    async fn replace(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        let (_, previous) = self.current().await?;
        let mut snapshot = snapshot.clone();
        if snapshot.lineage.is_none() {
            snapshot.lineage = Some(new_lineage());
        }
        self.write(&snapshot, previous.as_ref()).await
    }
}
