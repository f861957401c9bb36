//! `dstack state` commands against real SQLite files and S3 on moto.

use dstack::state::contract::record;
use dstack::state::sqlite::SqliteStore;
use dstack::state::{Change, LockInfo, StateStore, Step};

use crate::common::TestContext;
use crate::common::moto::moto;
use crate::dstack_snapshot;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// Record two volumes in the project's default state; returns the lineage.
fn seed(context: &TestContext) -> String {
    let store = SqliteStore::new(context.root.join(".dstack/state.db"));
    runtime().block_on(async {
        let first = store
            .commit(
                None,
                0,
                &Step::new("create").with(Change::PutResource(Box::new(record("data", "active")))),
            )
            .await
            .expect("commit");
        store
            .commit(
                Some(&first.lineage),
                1,
                &Step::new("create").with(Change::PutResource(Box::new(record("logs", "active")))),
            )
            .await
            .expect("commit");
        first.lineage
    })
}

#[test]
fn list_show_and_pull() {
    let context = TestContext::new();
    let run = context.run(&["state", "list"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(
        run.stderr.contains("No resources recorded"),
        "{}",
        run.stderr
    );
    let lineage = seed(&context);
    let run = context.run(&["state", "list"]);
    assert_eq!(run.code, 0, "{}", run.report());
    dstack_snapshot!(context, run);
    let run = context.run(&["state", "list", "--json"]);
    let listing: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(listing["serial"], 2);
    assert_eq!(listing["lineage"], lineage.as_str());
    assert_eq!(listing["resources"].as_array().map(Vec::len), Some(2));
    let run = context.run(&["state", "show", "volume/data"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(
        run.stdout.contains("name: data") && run.stdout.contains("backend_id: fake-data"),
        "{}",
        run.stdout
    );
    let run = context.run(&["state", "show", "volume/data", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(shown["status"], "active");
    assert_eq!(context.run(&["state", "show", "volume/nope"]).code, 1);
    assert_eq!(context.run(&["state", "show", "nonsense"]).code, 1);

    // The pulled document is described by schemas/state.schema.json.
    let run = context.run(&["state", "pull"]);
    assert_eq!(run.code, 0);
    let document: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::common::repo_root().join("schemas/state.schema.json"))
            .expect("schema"),
    )
    .expect("json");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn state_file_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let context = TestContext::new();
    seed(&context);
    let mode = std::fs::metadata(context.root.join(".dstack/state.db"))
        .expect("db")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn push_checks_lineage_and_serial() {
    let context = TestContext::new();
    seed(&context);
    let pulled = context.run(&["state", "pull"]).stdout;
    let mut document: serde_json::Value = serde_json::from_str(&pulled).expect("json");

    // Same lineage, newer serial: accepted.
    document["serial"] = 3.into();
    document["resources"]["volume/data"]["status"] = "pushed".into();
    context.write("newer.json", &document.to_string());
    let run = context.run(&["state", "push", "newer.json"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(
        context
            .run(&["state", "show", "volume/data"])
            .stdout
            .contains("status: pushed")
    );

    // Older serial: refused, nothing changes.
    document["serial"] = 1.into();
    context.write("older.json", &document.to_string());
    let run = context.run(&["state", "push", "older.json"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("has serial 1") && run.stderr.contains("at serial 3"),
        "{}",
        run.stderr
    );

    // Another lineage: refused unless forced.
    document["serial"] = 9.into();
    document["lineage"] = "some-other-lineage".into();
    context.write("other.json", &document.to_string());
    let run = context.run(&["state", "push", "other.json"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("lineage"), "{}", run.stderr);
    let run = context.run(&["state", "push", "other.json", "--force"]);
    assert_eq!(run.code, 0, "{}", run.report());
    let listing: serde_json::Value =
        serde_json::from_str(&context.run(&["state", "list", "--json"]).stdout).expect("json");
    assert_eq!(
        (listing["lineage"].as_str(), listing["serial"].as_u64()),
        (Some("some-other-lineage"), Some(9))
    );
}

#[test]
fn bad_state_input_is_a_clear_error_and_nothing_is_overwritten() {
    let context = TestContext::new();
    seed(&context);
    // A truncated state file.
    context.write("truncated.json", "{\"format_version\": 1, \"lineage\": ");
    let run = context.run(&["state", "push", "truncated.json"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("is not a valid dstack state"),
        "{}",
        run.stderr
    );
    // A document from a newer version.
    context.write("future.json", "{\"format_version\": 7, \"serial\": 99}");
    let run = context.run(&["state", "push", "future.json"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("newer version of dstack"),
        "{}",
        run.stderr
    );
    // A hand-edited database.
    let db = context.root.join(".dstack/state.db");
    drop(
        rusqlite::Connection::open(&db)
            .and_then(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")),
    );
    let before = std::fs::read(&db).expect("db");
    let connection = rusqlite::Connection::open(&db).expect("open");
    connection
        .execute(
            "UPDATE resources SET record = '{broken' WHERE id = 'volume/data'",
            [],
        )
        .expect("edit");
    connection
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    drop(connection);
    let edited = std::fs::read(&db).expect("db");
    assert_ne!(before, edited);
    let run = context.run(&["state", "list"]);
    assert_eq!(run.code, 1);
    dstack_snapshot!(context, run);
    assert_eq!(std::fs::read(&db).expect("db"), edited, "never overwritten");
    // Not a database at all.
    std::fs::write(
        &db,
        "garbage garbage garbage garbage garbage garbage garbage garbage",
    )
    .expect("write");
    let _ = std::fs::remove_file(db.with_extension("db-wal"));
    let _ = std::fs::remove_file(db.with_extension("db-shm"));
    let run = context.run(&["state", "list"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("is not a valid dstack state"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read(&db).expect("db"),
        b"garbage garbage garbage garbage garbage garbage garbage garbage"
    );
    // An invalid URL.
    let run = context.run(&["--state", "ftp://x/y", "state", "list"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("invalid state URL"), "{}", run.stderr);
}

#[test]
fn stale_locks_are_reported_with_the_command_that_clears_them() {
    let context = TestContext::new();
    seed(&context);
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let dead = child.id();
    child.wait().expect("wait");
    let mut lock = LockInfo::new("apply");
    lock.pid = dead;
    let store = SqliteStore::new(context.root.join(".dstack/state.db"));
    runtime().block_on(store.lock_acquire(&lock)).expect("lock");
    context.write("doc.json", &context.run(&["state", "pull"]).stdout);
    let run = context.run(&["state", "push", "doc.json"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("stale lock"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("dstack state unlock {}", lock.id)),
        "{}",
        run.stderr
    );
    let run = context.run(&["state", "list"]);
    assert!(
        run.stderr.contains("stale: the process is gone"),
        "{}",
        run.stderr
    );
    let run = context.run(&["state", "unlock", &lock.id]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert_eq!(context.run(&["state", "push", "doc.json"]).code, 0);
}

#[test]
fn a_live_lock_names_its_holder_and_lock_timeout_waits() {
    let context = TestContext::new();
    seed(&context);
    let lock = LockInfo::new("apply");
    let store = SqliteStore::new(context.root.join(".dstack/state.db"));
    runtime().block_on(store.lock_acquire(&lock)).expect("lock");
    context.write("doc.json", &context.run(&["state", "pull"]).stdout);
    let run = context.run(&["state", "push", "doc.json"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(&format!("locked by {}", lock.user)) && run.stderr.contains(&lock.id),
        "{}",
        run.stderr
    );
    // Release it while a second push waits with --lock-timeout.
    let waiting = context
        .command(&["--lock-timeout", "20s", "state", "push", "doc.json"])
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(700));
    runtime()
        .block_on(store.lock_release(&lock.id))
        .expect("release");
    let output = waiting.wait_with_output().expect("wait");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn migrate_to_s3_and_back_keeps_lineage_and_serial() {
    let moto = moto();
    let bucket = runtime().block_on(moto.bucket("migrate"));
    let mut context = TestContext::new();
    for (key, value) in moto.env() {
        context.env(key, &value);
    }
    let lineage = seed(&context);
    let url = format!("s3://{bucket}/team/state.json");
    let run = context.run(&["state", "migrate", "--to", &url]);
    assert_eq!(run.code, 0, "{}", run.report());
    let run = context.run(&["--state", &url, "state", "list", "--json"]);
    assert_eq!(run.code, 0, "{}", run.report());
    let listing: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(
        (listing["lineage"].as_str(), listing["serial"].as_u64()),
        (Some(lineage.as_str()), Some(2))
    );
    // DSTACK_STATE selects it too, and the flag wins over the variable.
    context.env("DSTACK_STATE", &url);
    let listing: serde_json::Value =
        serde_json::from_str(&context.run(&["state", "list", "--json"]).stdout).expect("json");
    assert_eq!(listing["location"], url.as_str());
    let listing: serde_json::Value = serde_json::from_str(
        &context
            .run(&[
                "--state",
                "sqlite:.dstack/state.db",
                "state",
                "list",
                "--json",
            ])
            .stdout,
    )
    .expect("json");
    assert!(
        listing["location"]
            .as_str()
            .unwrap_or_default()
            .starts_with("sqlite:")
    );
    // Migrating onto an existing state needs --force.
    let run = context.run(&["state", "migrate", "--to", "sqlite:.dstack/state.db"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("already holds a state"),
        "{}",
        run.stderr
    );
    let run = context.run(&["state", "migrate", "--to", "sqlite:.dstack/copy.db"]);
    assert_eq!(run.code, 0, "{}", run.report());
    // The previous document is kept as KEY.backup after a push.
    context.write("doc.json", &context.run(&["state", "pull"]).stdout);
    assert_eq!(context.run(&["state", "push", "doc.json"]).code, 0);
    let s3 = runtime().block_on(moto.s3());
    let backup = runtime().block_on(
        s3.head_object()
            .bucket(&bucket)
            .key("team/state.json.backup")
            .send(),
    );
    assert!(backup.is_ok(), "KEY.backup exists");
}

#[test]
fn s3_state_in_config_yml_and_a_missing_bucket() {
    let moto = moto();
    let mut context = TestContext::new();
    for (key, value) in moto.env() {
        context.env(key, &value);
    }
    context.write(
        ".dstack/config.yml",
        "state:\n  url: s3://no-such-bucket-here/state.json\n  region: us-east-1\n",
    );
    let run = context.run(&["state", "list"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("the bucket `no-such-bucket-here` does not exist"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("aws s3 mb"), "{}", run.stderr);
    context.write(
        ".dstack/config.yml",
        "state: s3://x/state.json\nstate_dir: nope\n",
    );
    let run = context.run(&["state", "list"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("unknown property `state_dir`"),
        "{}",
        run.stderr
    );
}

#[test]
fn unreachable_endpoint_is_one_clear_error() {
    let mut context = TestContext::new();
    context
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    let run = context.run(&["--state", "s3://bucket/state.json", "state", "list"]);
    assert_eq!(run.code, 1);
    dstack_snapshot!(context, run);
}
