//! `dstack validate`: loading, identity, interpolation and diagnostics.

use crate::common::TestContext;
use crate::dstack_snapshot;

#[test]
fn diagnostics_name_file_line_column_and_report_every_error() {
    let context = TestContext::new();
    context.write(
        "bad.dstack.yml",
        "type: task\nname: Bad_Name\ncomands:\n  - echo hi\nresources:\n  gpu: A100:2:3\n  cpu: lots\nports:\n  - 10001\nmax_duration: forever\nvolumes:\n  - data:/workflow/data\n",
    );
    let run = context.run(&["validate"]);
    assert_eq!(run.code, 1);
    dstack_snapshot!(context, run);
}

#[test]
fn semantic_errors_are_reported_with_positions() {
    let context = TestContext::new();
    context.write(
        "job.dstack.yml",
        "type: task\nname: job\nimage: ubuntu\npython: \"3.11\"\ncommands: [make]\nports:\n  - 10001\nvolumes:\n  - data:/workflow/data\n  - /tmp:/data\nworking_dir: relative/dir\n",
    );
    let run = context.run(&["validate"]);
    assert_eq!(run.code, 1);
    dstack_snapshot!(context, run);
}

#[test]
fn json_output_lists_files_resources_and_errors() {
    let context = TestContext::new();
    context.write("ok.dstack.yml", "type: volume\nname: data\nbackend: local\nsize: 10GB\n---\ntype: task\nname: job\ncommands: [echo]\n");
    context.write("bad.dstack.yml", "type: fleet\nname: f\n");
    let run = context.run(&["validate", "--json"]);
    assert_eq!(run.code, 1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    insta::assert_json_snapshot!(report);
}

#[test]
fn unnamed_documents_take_the_file_stem_and_two_are_an_error() {
    let context = TestContext::new();
    context.write("train.dstack.yml", "type: task\ncommands: [echo]\n");
    context.write(
        "two.dstack.yml",
        "type: task\ncommands: [echo]\n---\ntype: volume\nbackend: local\nsize: 1GB\n",
    );
    let run = context.run(&["validate", "-f", "train.dstack.yml"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(run.stdout.contains("run/train"), "{}", run.stdout);
    let run = context.run(&["validate", "-f", "two.dstack.yml"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("two documents without `name` in one file"),
        "{}",
        run.stderr
    );
}

#[test]
fn duplicates_across_files_are_errors() {
    let context = TestContext::new();
    context.write("a.dstack.yml", "type: task\nname: job\ncommands: [echo]\n");
    context.write("b.dstack.yml", "type: service\nname: job\nport: 80\ncommands: [echo]\n---\ntype: tag\nname: job\nrun: job\n");
    let run = context.run(&["validate"]);
    assert_eq!(run.code, 1);
    dstack_snapshot!(context, run);
}

#[test]
fn files_directories_and_stdin() {
    let context = TestContext::new();
    context.write(
        "sub/a.dstack.yml",
        "type: task\nname: alpha\ncommands: [echo]\n",
    );
    context.write(
        "sub/b.dstack.yaml",
        "type: task\nname: beta\ncommands: [echo]\n",
    );
    context.write("sub/notes.yml", "this is not a configuration: [\n");
    context.write(
        "c.dstack.yml",
        "type: task\nname: gamma\ncommands: [echo]\n",
    );
    let run = context.run(&["validate", "-f", "sub", "-f", "c.dstack.yml"]);
    assert_eq!(run.code, 0, "{}", run.report());
    assert_eq!(run.stdout.lines().count(), 3, "{}", run.stdout);
    let run = context.run_with_stdin(
        &["validate", "-f", "-"],
        "type: task\nname: piped\ncommands: [echo]\n",
    );
    assert_eq!(run.code, 0, "{}", run.report());
    assert!(
        run.stdout.contains("<stdin>: ok (run/piped)"),
        "{}",
        run.stdout
    );
    let run = context.run_with_stdin(&["validate", "-f", "-"], "type: task\ncommands: [echo]\n");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("standard input needs `name`"),
        "{}",
        run.stderr
    );
    let run = context.run(&["validate", "-f", "missing.dstack.yml"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("`missing.dstack.yml` does not exist"),
        "{}",
        run.stderr
    );
}

#[test]
fn no_files_in_the_directory_is_an_error_with_a_hint() {
    let context = TestContext::new();
    let run = context.run(&["validate"]);
    assert_eq!(run.code, 1);
    dstack_snapshot!(context, run);
}

#[test]
fn yaml_1_2_values_mean_what_was_written() {
    let context = TestContext::new();
    context.write(
        "yaml.dstack.yml",
        "type: task\nname: yaml\npython: 3.10\nports: [8080:22]\nmax_duration: off\nprivileged: yes\ncommands: [echo]\nenv:\n  CODE: 010\n",
    );
    let run = context.run(&["validate", "--json"]);
    assert_eq!(run.code, 0, "{}", run.report());
}

#[test]
fn interpolation_of_variables_environment_and_unknown_namespaces() {
    let mut context = TestContext::new();
    context.write(
        ".dstack/variables.yaml",
        "variables:\n  global:\n    gpus: 2\n",
    );
    context.write(
        "job.dstack.yml",
        "type: task\nname: job\ncommands:\n  - echo ${{ env.WHO }} ${{ var.greeting }}\nresources:\n  gpu: ${{ var.gpus }}\nenv:\n  - TOKEN=${{ secrets.TOKEN }}\n",
    );
    context.env("WHO", "world").env("TOKEN", "s3cr3t");
    let run = context.run(&["validate", "--var", "greeting=hi"]);
    assert_eq!(run.code, 0, "{}", run.report());
    let run = context.run(&["validate"]);
    assert_eq!(run.code, 1);
    dstack_snapshot!(context, run);
    context.write(
        "job.dstack.yml",
        "type: task\nname: job\ncommands:\n  - echo ${{ foo.bar }}\n",
    );
    let run = context.run(&["validate", "--var", "greeting=hi"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("unknown namespace `foo`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("job.dstack.yml:4:10"), "{}", run.stderr);
}

#[test]
fn unsupported_types_and_backends() {
    let mut context = TestContext::new();
    context.write(
        "x.dstack.yml",
        "type: gateway\nname: gw\nbackend: aws\nregion: us-east-1\n---\ntype: volume\nname: vol\nbackend: fake\nsize: 1GB\n---\ntype: volume\nname: gcpvol\nbackend: gcp\nregion: us-central1\nsize: 10GB\n",
    );
    let run = context.run(&["validate"]);
    assert_eq!(run.code, 1);
    dstack_snapshot!(context, run);
    context.env("DSTACK_FAKE_BACKEND", "1");
    context.write("x.dstack.yml", "type: volume\nname: vol\nbackend: fake\nsize: 1GB\n---\ntype: volume\nname: gcpvol\nbackend: gcp\nregion: us-central1\nsize: 10GB\n");
    let run = context.run(&["validate"]);
    assert_eq!(run.code, 0, "{}", run.report());
}

#[test]
fn broken_files_never_crash() {
    let context = TestContext::new();
    for (name, text) in [
        ("empty.dstack.yml", ""),
        ("list.dstack.yml", "- a\n- b\n"),
        ("syntax.dstack.yml", "type: task\ncommands: [echo\n"),
        ("scalar.dstack.yml", "hello\n"),
        ("tabs.dstack.yml", "type: task\n\tcommands: [echo]\n"),
        ("deep.dstack.yml", &"[".repeat(5000)),
        ("dupkey.dstack.yml", "type: task\ntype: task\n"),
    ] {
        context.write(name, text);
        let run = context.run(&["validate", "-f", name]);
        assert_eq!(run.code, 1, "{name}: {}", run.report());
        assert!(!run.stderr.contains("panicked"), "{name}: {}", run.stderr);
    }
    std::fs::write(context.root.join("binary.dstack.yml"), [0xff, 0xfe, 0x00]).expect("write");
    let run = context.run(&["validate", "-f", "binary.dstack.yml"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("not UTF-8"), "{}", run.stderr);
}
