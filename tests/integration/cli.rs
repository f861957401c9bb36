//! The command line itself: version, help, schemas, exit codes for bad flags.

use crate::common::TestContext;
use crate::dstack_snapshot;

#[test]
fn version_prints_the_version() {
    let context = TestContext::new();
    let run = context.run(&["--version"]);
    assert_eq!(run.code, 0);
    assert_eq!(
        run.stdout.trim(),
        format!("dstack {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_commands_and_flags_exit_1() {
    let context = TestContext::new();
    assert_eq!(context.run(&["frobnicate"]).code, 1);
    assert_eq!(context.run(&["validate", "--frobnicate"]).code, 1);
}

#[test]
fn schema_prints_valid_json_schemas() {
    let context = TestContext::new();
    for name in [
        "task",
        "dev-environment",
        "service",
        "volume",
        "fleet",
        "tag",
        "config",
    ] {
        let run = context.run(&["schema", name]);
        assert_eq!(run.code, 0, "{name}: {}", run.report());
        let schema: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["$id"], format!("urn:dstack:schema:{name}"));
    }
    let root: serde_json::Value =
        serde_json::from_str(&context.run(&["schema"]).stdout).expect("json");
    assert_eq!(root["required"], serde_json::json!(["type"]));
    assert_eq!(context.run(&["schema", "gateway"]).code, 1);
}

#[test]
fn the_root_schema_dispatches_on_type() {
    // An editor uses the root schema; it must accept a valid file and reject a typo.
    let root: serde_json::Value =
        serde_json::from_str(&TestContext::new().run(&["schema"]).stdout).expect("json");
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .expect("root schema compiles");
    assert!(validator.is_valid(&serde_json::json!({"type": "task", "commands": ["echo hi"]})));
    assert!(
        validator
            .is_valid(&serde_json::json!({"type": "volume", "backend": "local", "size": "10GB"}))
    );
    assert!(!validator.is_valid(&serde_json::json!({"type": "task", "comands": ["echo hi"]})));
    assert!(
        !validator.is_valid(&serde_json::json!({"type": "volume", "backend": "aws", "size": 10}))
    );
    assert!(!validator.is_valid(&serde_json::json!({"type": "gateway"})));
}

#[test]
fn help_lists_only_working_commands() {
    let context = TestContext::new();
    let run = context.run(&["--help"]);
    dstack_snapshot!(context, run);
}
