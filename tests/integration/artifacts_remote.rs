//! The remote artifact store against S3 on moto: push and pull round trips, resumption after
//! interruptions, and refusal of corrupt blobs on either side.

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use dstack::artifacts::Store;
use dstack::artifacts::remote::{
    Progress, RefKind, Remote, RemoteError, Side, TransferReport, Tuning,
};
use dstack::state::Manifest;

use crate::common::moto::moto;

const MIB: usize = 1024 * 1024;
const LINEAGE: &str = "lineage-1";

/// A bucket on moto, a remote store under a prefix in it, and a temp dir for local stores.
struct Fixture {
    dir: tempfile::TempDir,
    client: Client,
    bucket: String,
    remote: Remote,
}

impl Fixture {
    async fn new() -> Self {
        let moto = moto();
        let bucket = moto.bucket("artifacts").await;
        let client = moto.s3().await;
        let remote = Remote::with_client(client.clone(), &format!("s3://{bucket}/team/art"))
            .expect("remote");
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            client,
            bucket,
            remote,
        }
    }

    fn tuned(mut self, tuning: Tuning) -> Self {
        self.remote = self.remote.with_tuning(tuning);
        self
    }

    fn store(&self, name: &str) -> Store {
        Store::new(self.dir.path().join(name))
    }

    /// Save `files` (path, content) as artifact `out` of run `run` into `store`.
    fn save(&self, store: &Store, run: &str, files: &[(&str, Vec<u8>)]) -> Manifest {
        let source = self
            .dir
            .path()
            .join(format!("source-{}", uuid::Uuid::new_v4()));
        for (path, content) in files {
            let path = source.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, content).expect("write");
        }
        let manifest = Manifest {
            run: run.into(),
            files: store.put_directory("out", &source).expect("save"),
            created_at: chrono::Utc::now(),
        };
        store.put_manifest(LINEAGE, &manifest).expect("ref");
        manifest
    }

    async fn push(
        &self,
        store: &Store,
        manifest: &Manifest,
    ) -> Result<TransferReport, RemoteError> {
        self.remote
            .push(
                store,
                LINEAGE,
                RefKind::Run,
                &manifest.run,
                manifest,
                &Progress::hidden(),
            )
            .await
    }

    async fn pull(
        &self,
        store: &Store,
        run: &str,
    ) -> Result<(Manifest, TransferReport), RemoteError> {
        self.remote
            .pull(store, LINEAGE, RefKind::Run, run, &Progress::hidden())
            .await
    }

    /// Every key in the bucket.
    async fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            keys.extend(
                page.expect("list")
                    .contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        keys
    }

    async fn exists(&self, key: &str) -> bool {
        self.client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .is_ok()
    }

    async fn put(&self, key: &str, data: Vec<u8>) {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(data))
            .send()
            .await
            .expect("put");
    }

    async fn unfinished_uploads(&self) -> usize {
        self.client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .send()
            .await
            .expect("list uploads")
            .uploads()
            .len()
    }
}

/// `len` bytes that differ for every `seed` (xorshift), so no two test files share a blob.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Restore a manifest from a store and compare every file with `files`.
fn assert_restores(store: &Store, manifest: &Manifest, files: &[(&str, Vec<u8>)], dir: &Path) {
    let target = dir.join(format!("restored-{}", uuid::Uuid::new_v4()));
    store.materialize(manifest, &target).expect("materialize");
    for (path, content) in files {
        let restored = std::fs::read(target.join("out").join(path)).expect("restored file");
        assert!(restored == *content, "{path} differs after the round trip");
    }
}

fn blob_file(store: &Store, manifest: &Manifest, path: &str) -> std::path::PathBuf {
    let file = manifest
        .files
        .iter()
        .find(|f| f.path == path)
        .expect("file");
    store.blob_path(&file.digest)
}

fn digest_of(manifest: &Manifest, path: &str) -> String {
    manifest
        .files
        .iter()
        .find(|f| f.path == path)
        .expect("file")
        .digest
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_then_pull_into_an_empty_store_restores_every_file() {
    let fixture = Fixture::new().await;
    let source = fixture.store("source");
    let files = vec![
        ("model.bin", data(1, 300_000)),
        ("logs/train.log", b"epoch 1\nepoch 2\n".to_vec()),
        ("logs/copy.log", b"epoch 1\nepoch 2\n".to_vec()),
        ("empty", Vec::new()),
    ];
    let manifest = fixture.save(&source, "train-1", &files);
    let pushed = fixture.push(&source, &manifest).await.expect("push");
    assert_eq!(
        pushed,
        TransferReport {
            blobs_total: 3,
            blobs_transferred: 3,
            bytes_transferred: 300_000 + 16,
            blobs_skipped: 0,
        },
        "identical files are one blob"
    );
    let keys = fixture.keys().await;
    assert!(
        keys.contains(&"team/art/refs/lineage-1/train-1.json".to_string()),
        "{keys:?}"
    );
    let model = digest_of(&manifest, "model.bin");
    assert!(keys.contains(&fixture.remote.blob_key(&model)), "{keys:?}");
    assert!(
        fixture
            .remote
            .blob_key(&model)
            .starts_with("team/art/blobs/sha256/")
    );

    let target = fixture.store("target");
    let (pulled, report) = fixture.pull(&target, "train-1").await.expect("pull");
    assert_eq!(pulled, manifest);
    assert_eq!(report, pushed, "pull received what push sent");
    assert_eq!(target.manifest(LINEAGE, "train-1"), Some(manifest.clone()));
    for file in &manifest.files {
        assert!(target.blob_path(&file.digest).is_file(), "{}", file.path);
    }
    assert_restores(&target, &pulled, &files, fixture.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn re_pushing_unchanged_artifacts_sends_no_blob_bytes() {
    // Over 100 blobs: the remote's blobs are found by listing, not one HEAD each.
    let fixture = Fixture::new().await;
    let store = fixture.store("source");
    let names: Vec<String> = (0..130).map(|i| format!("shard-{i:03}.bin")).collect();
    let files: Vec<(&str, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (name.as_str(), data(i as u64 + 10, 1000 + i)))
        .collect();
    let manifest = fixture.save(&store, "train-1", &files);
    let first = fixture.push(&store, &manifest).await.expect("push");
    assert_eq!(first.blobs_transferred, 130);
    let again = fixture.push(&store, &manifest).await.expect("re-push");
    assert_eq!(
        again,
        TransferReport {
            blobs_total: 130,
            blobs_transferred: 0,
            bytes_transferred: 0,
            blobs_skipped: 130,
        }
    );
    // A few blobs: looked up one HEAD each.
    let small = Manifest {
        files: manifest.files[..3].to_vec(),
        ..manifest.clone()
    };
    let report = fixture.push(&store, &small).await.expect("re-push a few");
    assert_eq!((report.blobs_skipped, report.bytes_transferred), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_over_the_multipart_threshold_round_trips() {
    let fixture = Fixture::new().await;
    let store = fixture.store("source");
    // Default tuning: 8 MiB parts, so three parts, the last one short.
    let size = 20 * MIB + 12_345;
    let files = vec![
        ("weights.safetensors", data(7, size)),
        ("config.json", b"{}".to_vec()),
    ];
    let manifest = fixture.save(&store, "train-1", &files);
    let pushed = fixture.push(&store, &manifest).await.expect("push");
    assert_eq!(pushed.bytes_transferred, size as u64 + 2);
    assert_eq!(
        fixture.unfinished_uploads().await,
        0,
        "the upload was completed"
    );
    let head = fixture
        .client
        .head_object()
        .bucket(&fixture.bucket)
        .key(
            fixture
                .remote
                .blob_key(&digest_of(&manifest, "weights.safetensors")),
        )
        .send()
        .await
        .expect("blob");
    assert_eq!(head.content_length(), Some(size as i64));

    let target = fixture.store("target");
    let (pulled, report) = fixture.pull(&target, "train-1").await.expect("pull");
    assert_eq!(report.bytes_transferred, size as u64 + 2);
    assert_restores(&target, &pulled, &files, fixture.dir.path());
    let leftovers: Vec<_> = std::fs::read_dir(target.root.join("tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_push_resumes_with_only_what_is_missing() {
    let fixture = Fixture::new().await;
    let store = fixture.store("source");
    let names: Vec<String> = (0..10).map(|i| format!("file-{i}")).collect();
    let files: Vec<(&str, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (name.as_str(), data(100 + i as u64, 10_000 * (i + 1))))
        .collect();
    let manifest = fixture.save(&store, "train-1", &files);
    // The first push got half the blobs up, then stopped before the ref.
    let half = Manifest {
        files: manifest.files[..5].to_vec(),
        ..manifest.clone()
    };
    fixture.push(&store, &half).await.expect("first half");
    let ref_key = fixture.remote.ref_key(LINEAGE, RefKind::Run, "train-1");
    fixture
        .client
        .delete_object()
        .bucket(&fixture.bucket)
        .key(&ref_key)
        .send()
        .await
        .expect("delete ref");
    let error = fixture
        .pull(&fixture.store("early"), "train-1")
        .await
        .expect_err("no ref, no pull");
    assert!(matches!(error, RemoteError::NotFound { .. }), "{error}");

    let resumed = fixture.push(&store, &manifest).await.expect("resume");
    let rest: u64 = manifest.files[5..].iter().map(|f| f.size).sum();
    assert_eq!(
        resumed,
        TransferReport {
            blobs_total: 10,
            blobs_transferred: 5,
            bytes_transferred: rest,
            blobs_skipped: 5,
        }
    );
    assert!(fixture.exists(&ref_key).await);
    let target = fixture.store("target");
    let (pulled, _) = fixture.pull(&target, "train-1").await.expect("pull");
    assert_restores(&target, &pulled, &files, fixture.dir.path());
}

/// Small parts, one request at a time, so that a transfer can be stopped part-way.
fn one_mib_parts() -> Tuning {
    Tuning {
        multipart_threshold: MIB as u64,
        part_size: MIB as u64,
        concurrency: 1,
    }
}

/// Run `transfer` until `progress` passes `bytes`, then drop it, as an interrupted command
/// would stop.
async fn interrupt<T: std::fmt::Debug>(
    transfer: impl std::future::Future<Output = T>,
    progress: &Progress,
    bytes: usize,
) {
    let passed = async {
        while progress.position() < bytes as u64 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    tokio::select! {
        result = transfer => panic!("the transfer was not interrupted: {result:?}"),
        () = passed => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_multipart_upload_continues_from_its_parts() {
    let fixture = Fixture::new().await.tuned(one_mib_parts());
    let store = fixture.store("source");
    let size = 16 * MIB + 100;
    let files = vec![("big.bin", data(3, size))];
    let manifest = fixture.save(&store, "train-1", &files);
    let progress = Progress::hidden();
    interrupt(
        Box::pin(fixture.remote.push(
            &store,
            LINEAGE,
            RefKind::Run,
            "train-1",
            &manifest,
            &progress,
        )),
        &progress,
        4 * MIB,
    )
    .await;
    let key = fixture.remote.blob_key(&digest_of(&manifest, "big.bin"));
    assert!(
        !fixture.exists(&key).await,
        "a blob appeared before it was complete"
    );
    assert_eq!(fixture.unfinished_uploads().await, 1);

    let report = fixture.push(&store, &manifest).await.expect("resume");
    assert!(
        report.bytes_transferred <= (size - 4 * MIB) as u64,
        "parts already up were sent again: {report:?}"
    );
    assert_eq!(report.blobs_transferred, 1);
    assert_eq!(fixture.unfinished_uploads().await, 0);
    let target = fixture.store("target");
    let (pulled, _) = fixture.pull(&target, "train-1").await.expect("pull");
    assert_restores(&target, &pulled, &files, fixture.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parts_read_from_a_corrupt_blob_are_not_kept_when_it_is_repaired() {
    let fixture = Fixture::new().await.tuned(one_mib_parts());
    let store = fixture.store("source");
    let size = 12 * MIB;
    let content = data(4, size);
    let files = vec![("big.bin", content.clone())];
    let manifest = fixture.save(&store, "train-1", &files);
    let blob = blob_file(&store, &manifest, "big.bin");
    let mut corrupt = content.clone();
    corrupt[100] ^= 0xff;
    std::fs::write(&blob, &corrupt).expect("corrupt");
    // The push read the corrupt first part, sent a few parts, and stopped before it could
    // notice; then the blob was repaired.
    let progress = Progress::hidden();
    interrupt(
        Box::pin(fixture.remote.push(
            &store,
            LINEAGE,
            RefKind::Run,
            "train-1",
            &manifest,
            &progress,
        )),
        &progress,
        3 * MIB,
    )
    .await;
    std::fs::write(&blob, &content).expect("repair");
    let report = fixture.push(&store, &manifest).await.expect("push");
    assert!(
        report.bytes_transferred >= MIB as u64
            && report.bytes_transferred <= (size - 2 * MIB) as u64,
        "the corrupt part 1 is sent again, good parts are kept: {report:?}"
    );
    let target = fixture.store("target");
    let (pulled, _) = fixture.pull(&target, "train-1").await.expect("pull");
    assert_restores(&target, &pulled, &files, fixture.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_aborted_on_s3_starts_over() {
    let fixture = Fixture::new().await.tuned(one_mib_parts());
    let store = fixture.store("source");
    let size = 8 * MIB;
    let files = vec![("big.bin", data(8, size))];
    let manifest = fixture.save(&store, "train-1", &files);
    let progress = Progress::hidden();
    interrupt(
        Box::pin(fixture.remote.push(
            &store,
            LINEAGE,
            RefKind::Run,
            "train-1",
            &manifest,
            &progress,
        )),
        &progress,
        2 * MIB,
    )
    .await;
    // A lifecycle rule (or an operator) aborted the unfinished upload.
    let uploads = fixture
        .client
        .list_multipart_uploads()
        .bucket(&fixture.bucket)
        .send()
        .await
        .expect("list");
    for upload in uploads.uploads() {
        fixture
            .client
            .abort_multipart_upload()
            .bucket(&fixture.bucket)
            .key(upload.key().expect("key"))
            .upload_id(upload.upload_id().expect("id"))
            .send()
            .await
            .expect("abort");
    }
    let report = fixture.push(&store, &manifest).await.expect("push");
    assert_eq!(
        report.bytes_transferred, size as u64,
        "every part is sent again"
    );
    let target = fixture.store("target");
    let (pulled, _) = fixture.pull(&target, "train-1").await.expect("pull");
    assert_restores(&target, &pulled, &files, fixture.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_local_blob_is_refused_on_push() {
    for (label, tuning) in [
        ("one request", Tuning::default()),
        (
            "multipart",
            Tuning {
                multipart_threshold: MIB as u64,
                part_size: MIB as u64,
                concurrency: 4,
            },
        ),
    ] {
        let fixture = Fixture::new().await.tuned(tuning);
        let store = fixture.store("source");
        let files = vec![
            ("good.txt", b"fine".to_vec()),
            ("bad.bin", data(5, 3 * MIB)),
        ];
        let manifest = fixture.save(&store, "train-1", &files);
        let blob = blob_file(&store, &manifest, "bad.bin");
        let mut bytes = std::fs::read(&blob).expect("blob");
        bytes[2 * MIB + 7] ^= 0xff; // same size, different content
        std::fs::write(&blob, bytes).expect("corrupt");

        let error = fixture.push(&store, &manifest).await.expect_err(label);
        match &error {
            RemoteError::DigestMismatch { file, side, .. } => {
                assert_eq!(
                    (file.as_str(), *side),
                    ("out/bad.bin", Side::Local),
                    "{label}"
                );
            }
            other => panic!("{label}: expected a digest mismatch, got {other}"),
        }
        let message = error.to_string();
        assert!(
            message.contains("out/bad.bin") && message.contains("local"),
            "{message}"
        );
        let bad_key = fixture.remote.blob_key(&digest_of(&manifest, "bad.bin"));
        assert!(
            !fixture.exists(&bad_key).await,
            "{label}: the corrupt blob was uploaded"
        );
        assert!(
            !fixture
                .exists(&fixture.remote.ref_key(LINEAGE, RefKind::Run, "train-1"))
                .await,
            "{label}: a ref was written for blobs that are not there"
        );
        assert_eq!(
            fixture.unfinished_uploads().await,
            0,
            "{label}: the upload was aborted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_remote_blob_is_refused_on_pull() {
    for (label, tuning) in [
        ("one request", Tuning::default()),
        (
            "ranges",
            Tuning {
                multipart_threshold: MIB as u64,
                part_size: MIB as u64,
                concurrency: 4,
            },
        ),
    ] {
        let fixture = Fixture::new().await.tuned(tuning);
        let source = fixture.store("source");
        let files = vec![
            ("good.txt", b"fine".to_vec()),
            ("bad.bin", data(6, 3 * MIB)),
        ];
        let manifest = fixture.save(&source, "train-1", &files);
        fixture.push(&source, &manifest).await.expect("push");
        let digest = digest_of(&manifest, "bad.bin");
        let mut bytes = data(6, 3 * MIB);
        bytes[MIB + 3] ^= 0x01;
        fixture.put(&fixture.remote.blob_key(&digest), bytes).await;

        let target = fixture.store("target");
        let error = fixture.pull(&target, "train-1").await.expect_err(label);
        match &error {
            RemoteError::DigestMismatch { file, side, .. } => {
                assert_eq!(
                    (file.as_str(), *side),
                    ("out/bad.bin", Side::Remote),
                    "{label}"
                );
            }
            other => panic!("{label}: expected a digest mismatch, got {other}"),
        }
        assert!(
            !target.blob_path(&digest).exists(),
            "{label}: a corrupt blob entered the store"
        );
        assert_eq!(
            target.manifest(LINEAGE, "train-1"),
            None,
            "{label}: no ref without blobs"
        );
        let partials: Vec<_> = std::fs::read_dir(target.root.join("tmp"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            partials.is_empty(),
            "{label}: corrupt data kept: {partials:?}"
        );

        // A remote blob of the wrong size is refused too.
        fixture
            .put(&fixture.remote.blob_key(&digest), b"short".to_vec())
            .await;
        let error = fixture.pull(&target, "train-1").await.expect_err(label);
        assert!(
            matches!(
                error,
                RemoteError::DigestMismatch {
                    side: Side::Remote,
                    ..
                }
            ),
            "{label}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_fetches_only_the_blobs_the_store_lacks() {
    let fixture = Fixture::new().await;
    let source = fixture.store("source");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a", data(20, 40_000)),
        ("b", data(21, 50_000)),
        ("c", data(22, 60_000)),
    ];
    let manifest = fixture.save(&source, "train-1", &files);
    fixture.push(&source, &manifest).await.expect("push");
    // The target already has `a` (from some other run).
    let target = fixture.store("target");
    fixture.save(&target, "other-run", &files[..1]);
    let (pulled, report) = fixture.pull(&target, "train-1").await.expect("pull");
    assert_eq!(
        report,
        TransferReport {
            blobs_total: 3,
            blobs_transferred: 2,
            bytes_transferred: 110_000,
            blobs_skipped: 1,
        }
    );
    assert_restores(&target, &pulled, &files, fixture.dir.path());
    let (_, again) = fixture.pull(&target, "train-1").await.expect("pull again");
    assert_eq!((again.bytes_transferred, again.blobs_skipped), (0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_pull_continues_its_partial_download() {
    let fixture = Fixture::new().await.tuned(one_mib_parts());
    let source = fixture.store("source");
    let size = 16 * MIB;
    let files = vec![("big.bin", data(30, size))];
    let manifest = fixture.save(&source, "train-1", &files);
    fixture.push(&source, &manifest).await.expect("push");

    let target = fixture.store("target");
    let progress = Progress::hidden();
    interrupt(
        fixture
            .remote
            .pull(&target, LINEAGE, RefKind::Run, "train-1", &progress),
        &progress,
        4 * MIB,
    )
    .await;
    assert_eq!(target.manifest(LINEAGE, "train-1"), None);
    let (pulled, report) = fixture.pull(&target, "train-1").await.expect("resume");
    assert!(
        report.bytes_transferred <= (size - 4 * MIB) as u64,
        "the chunks already down were fetched again: {report:?}"
    );
    assert_eq!(report.blobs_transferred, 1);
    assert_restores(&target, &pulled, &files, fixture.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tags_round_trip_under_their_own_ref() {
    let fixture = Fixture::new().await;
    let source = fixture.store("source");
    let files = vec![("model.bin", data(40, 1000))];
    let manifest = fixture.save(&source, "train-7", &files);
    fixture
        .remote
        .push(
            &source,
            LINEAGE,
            RefKind::Tag,
            "best",
            &manifest,
            &Progress::hidden(),
        )
        .await
        .expect("push tag");
    assert!(
        fixture
            .exists("team/art/refs/lineage-1/tags/best.json")
            .await
    );
    let target = fixture.store("target");
    let (pulled, _) = fixture
        .remote
        .pull(&target, LINEAGE, RefKind::Tag, "best", &Progress::hidden())
        .await
        .expect("pull tag");
    assert_eq!(pulled.run, "train-7");
    assert_eq!(target.tag(LINEAGE, "best"), Some(manifest));
    assert_restores(&target, &pulled, &files, fixture.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_refs_and_buckets_are_clear_errors() {
    let fixture = Fixture::new().await;
    let store = fixture.store("store");
    let error = fixture
        .pull(&store, "train-9")
        .await
        .expect_err("no such run");
    assert!(matches!(error, RemoteError::NotFound { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "run `train-9` is not in the remote artifact store `s3://{}/team/art`",
            fixture.bucket
        )
    );
    let error = fixture
        .remote
        .pull(&store, LINEAGE, RefKind::Tag, "best", &Progress::hidden())
        .await
        .expect_err("no such tag");
    assert!(
        error.to_string().starts_with("tag `best` is not in"),
        "{error}"
    );

    let missing =
        Remote::with_client(fixture.client.clone(), "s3://no-such-bucket-here/x").expect("remote");
    let error = missing
        .pull(
            &store,
            LINEAGE,
            RefKind::Run,
            "train-9",
            &Progress::hidden(),
        )
        .await
        .expect_err("no bucket");
    assert!(
        matches!(error, RemoteError::BucketMissing { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "the bucket `no-such-bucket-here` does not exist"
    );
    let manifest = fixture.save(&store, "train-1", &[("a", b"a".to_vec())]);
    let error = missing
        .push(
            &store,
            LINEAGE,
            RefKind::Run,
            "train-1",
            &manifest,
            &Progress::hidden(),
        )
        .await
        .expect_err("no bucket");
    assert!(
        matches!(error, RemoteError::BucketMissing { .. }),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_refuses_what_it_cannot_push_whole() {
    let fixture = Fixture::new().await;
    let store = fixture.store("store");
    let manifest = fixture.save(
        &store,
        "train-1",
        &[("a", b"aaa".to_vec()), ("b", b"b".to_vec())],
    );
    std::fs::remove_file(blob_file(&store, &manifest, "b")).expect("lose a blob");
    let error = fixture
        .push(&store, &manifest)
        .await
        .expect_err("blob missing");
    assert!(
        matches!(error, RemoteError::LocalBlobMissing { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("out/b"), "{error}");
    assert!(
        fixture.keys().await.is_empty(),
        "nothing is sent before every blob is found"
    );

    let error = fixture
        .remote
        .push(
            &store,
            LINEAGE,
            RefKind::Run,
            "train-2",
            &manifest,
            &Progress::hidden(),
        )
        .await
        .expect_err("wrong run name");
    assert!(
        matches!(error, RemoteError::InvalidManifest { .. }),
        "{error}"
    );

    let error = Remote::open("gs://bucket/prefix", &dstack::aws::Connection::default())
        .await
        .expect_err("not s3");
    assert!(matches!(error, RemoteError::Url { .. }), "{error}");
}
