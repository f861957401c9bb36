//! Orphans: objects carrying this state's lineage that the state does not record (a state
//! restored from an old backup, a `state push --force`). `plan` shows them as drift; `dstack
//! state recover` lists them, `--adopt` records the declared ones, `--delete-orphans` deletes.

use crate::common::TestContext;

const VOLUMES: &str = "type: volume\nname: data\nbackend: fake\nsize: 10GB\n---\ntype: volume\nname: scratch\nbackend: fake\nsize: 5GB\n";
const DATA_ONLY: &str = "type: volume\nname: data\nbackend: fake\nsize: 10GB\n";

fn fake() -> TestContext {
    let mut context = TestContext::new();
    context.env("DSTACK_FAKE_BACKEND", "1");
    context
}

fn fake_volumes(context: &TestContext) -> Vec<String> {
    let text = std::fs::read_to_string(context.root.join(".dstack/fake-backend.json"))
        .expect("fake world");
    let world: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut names: Vec<String> = world["objects"]
        .as_object()
        .expect("objects")
        .values()
        .filter(|o| o["kind"] == "volume")
        .map(|o| {
            o["labels"]["dstack.name"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    names.sort();
    names
}

/// Apply both volumes, then put back a state that records neither: both are orphans.
fn orphaned_world() -> TestContext {
    let context = fake();
    context.write("volumes.dstack.yml", VOLUMES);
    let apply = context.run(&["apply", "-y"]);
    assert_eq!(apply.code, 0, "{}", apply.report());
    let pulled = context.run(&["state", "pull"]);
    let mut document: serde_json::Value = serde_json::from_str(&pulled.stdout).expect("state");
    document["resources"] = serde_json::json!({});
    let old = context.write(
        "old-state.json",
        &serde_json::to_string_pretty(&document).expect("json"),
    );
    let push = context.run(&["state", "push", "--force", old.to_str().expect("utf-8")]);
    assert_eq!(push.code, 0, "{}", push.report());
    assert_eq!(fake_volumes(&context), ["data", "scratch"]);
    context
}

#[test]
fn plan_shows_orphans_as_drift() {
    let context = orphaned_world();
    let plan = context.run(&["plan", "--json"]);
    assert_eq!(plan.code, 0, "{}", plan.report());
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).expect("plan json");
    let mut orphaned: Vec<&str> = plan["drift"]
        .as_array()
        .expect("drift")
        .iter()
        .filter(|d| d["kind"] == "orphaned")
        .map(|d| d["address"].as_str().unwrap_or_default())
        .collect();
    orphaned.sort_unstable();
    assert_eq!(orphaned, ["volume/data", "volume/scratch"], "{plan:#}");
    let text = context.run(&["plan"]);
    assert!(
        text.stdout.contains("volume/data")
            && format!("{}{}", text.stdout, text.stderr).contains("state recover --adopt"),
        "{}",
        text.report()
    );
    let list = context.run(&["state", "recover"]);
    assert_eq!(list.code, 0, "{}", list.report());
    assert!(
        list.stderr.contains("Orphaned: volume/data")
            && list.stderr.contains("Orphaned: volume/scratch"),
        "{}",
        list.report()
    );
    assert_eq!(
        fake_volumes(&context),
        ["data", "scratch"],
        "listing changes nothing"
    );
}

#[test]
fn recover_adopts_declared_orphans_and_deletes_the_rest() {
    let context = orphaned_world();
    // Only `data` is still declared: it is adopted, `scratch` is not.
    context.write("volumes.dstack.yml", DATA_ONLY);
    let adopt = context.run(&["state", "recover", "--adopt"]);
    assert_eq!(adopt.code, 0, "{}", adopt.report());
    assert!(
        adopt.stderr.contains("Adopted volume/data")
            && adopt.stderr.contains("Not adopted: volume/scratch"),
        "{}",
        adopt.report()
    );
    let plan = context.run(&["plan", "--detailed-exitcode", "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&plan.stdout).expect("plan json");
    assert_eq!(
        parsed["summary"]["add"], 0,
        "the adopted volume is not created again: {parsed:#}"
    );

    let delete = context.run(&["state", "recover", "--delete-orphans"]);
    assert_eq!(delete.code, 0, "{}", delete.report());
    assert!(
        delete.stderr.contains("Deleted volume/scratch"),
        "{}",
        delete.report()
    );
    assert_eq!(fake_volumes(&context), ["data"]);
    let converged = context.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(converged.code, 0, "{}", converged.report());
}

#[test]
fn adopt_and_delete_orphans_exclude_each_other() {
    let context = fake();
    let run = context.run(&["state", "recover", "--adopt", "--delete-orphans"]);
    assert_eq!(run.code, 1, "{}", run.report());
    assert!(
        run.stderr.contains("cannot be used with"),
        "{}",
        run.report()
    );
}
