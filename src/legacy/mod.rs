//! Legacy projects: `.dstack/workflows.yaml` and `.dstack/variables.yaml`, as dstack used them
//! from 2021 to mid-2023, run with `dstack run WORKFLOW [--VAR value]`.
//!
//! Files: `.dstack/workflows.yaml` (or `.yml`) and every `*.yaml` / `*.yml` in
//! `.dstack/workflows/`, each `{workflows: [...]}`. A workflow name defined twice, in one file or
//! two, is an error. Providers `bash` and `docker` are supported; the keys are those of legacy
//! dstack 0.1–0.9 ([`convert`] has the table). Every workflow becomes a typed `task`
//! [`crate::model::Resource`], so the backends run it unchanged, and its run is recorded like any
//! other run, with `workflow` set (`deps: [{workflow: W}]` finds W's runs that way).
//!
//! - this module reads the files into [`Definition`]s and checks their shape;
//! - [`interpolate`] fills in `${{ NAME }}` / `${{ var.NAME }}`, `${{ run.args }}`;
//! - [`convert`] turns a definition into a [`Workflow`] (the task and its `cache` paths);
//! - [`invocation`] reads `dstack run`'s arguments after the workflow name;
//! - [`names`] generates run names (`grumpy-zebra-1`);
//! - [`submit`] records and submits the run as the executor does (intent, backend call, record).
//!
//! Invariants: loading never panics on any input; every problem names `file:line:column`, and all
//! problems of all files are reported at once; every workflow is checked (with its default
//! variables), not only the one being run, as legacy dstack validated the whole file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::diagnostic::{Problem, SourceText};
use crate::config::project::Project;
use crate::config::variables::Variables;
use crate::config::yaml::{self, Node, Span, Value};

pub mod convert;
pub mod interpolate;
pub mod invocation;
pub mod names;
pub mod submit;

pub use convert::{Provider, Workflow};

/// A workflow as written: its name, and its mapping still to be interpolated and converted.
#[derive(Clone, Debug)]
pub struct Definition {
    pub name: String,
    pub help: Option<String>,
    /// The workflow's mapping in its file.
    pub node: Node,
    pub source: Arc<SourceText>,
    /// The file, relative to the project directory.
    pub file: String,
    /// Position of the workflow in its file's list.
    pub index: usize,
}

impl Definition {
    /// `file:line` of the workflow's name, for messages.
    pub fn location(&self) -> String {
        let span = self.node.get("name").map_or(self.node.span, |n| n.span);
        format!("{}:{}", self.source.name, span.line)
    }
}

/// Every workflow of a project, in file order, and the problems of the files' shape (a workflow
/// with a problem there has no definition).
#[derive(Clone, Debug, Default)]
pub struct Workflows {
    pub definitions: Vec<Definition>,
    pub problems: Vec<Problem>,
}

impl Workflows {
    pub fn get(&self, name: &str) -> Option<&Definition> {
        self.definitions.iter().find(|d| d.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.definitions.iter().map(|d| d.name.as_str()).collect()
    }
}

/// Errors reading workflows.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LegacyError {
    #[error("this project has no workflows: `{0}` does not exist")]
    #[diagnostic(help(
        "define workflows in .dstack/workflows.yaml (`workflows: [{{name: hello, provider: bash, commands: [echo hello]}}]`), or describe runs in `*.dstack.yml` files and use `dstack apply`"
    ))]
    NoWorkflows(String),
    #[error("cannot read `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The workflow files of a project: `.dstack/workflows.yaml|yml`, then `.dstack/workflows/*`.
pub fn files(dot_dir: &Path) -> Result<Vec<PathBuf>, LegacyError> {
    let mut files: Vec<PathBuf> = ["workflows.yaml", "workflows.yml"]
        .iter()
        .map(|name| dot_dir.join(name))
        .filter(|path| path.is_file())
        .collect();
    let dir = dot_dir.join("workflows");
    if dir.is_dir() {
        let entries = std::fs::read_dir(&dir).map_err(|source| LegacyError::Read {
            path: dir.display().to_string(),
            source,
        })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Show paths relative to the working directory when they are under it.
fn display_path(path: &Path, cwd: &Path) -> String {
    path.strip_prefix(cwd)
        .map_or_else(|_| path.display().to_string(), |p| p.display().to_string())
}

/// Read every workflow file of the project. Problems of the files' shape (names, duplicates,
/// the `workflows` list) are collected across all files in [`Workflows::problems`]; [`check`]
/// finds those of the workflows' contents.
pub fn load(project: &Project, cwd: &Path) -> Result<Workflows, LegacyError> {
    let dot_dir = project.dot_dir();
    let paths = files(&dot_dir)?;
    if paths.is_empty() {
        return Err(LegacyError::NoWorkflows(display_path(
            &dot_dir.join("workflows.yaml"),
            cwd,
        )));
    }
    let mut workflows = Workflows::default();
    let mut problems = Vec::new();
    for path in paths {
        let bytes = std::fs::read(&path).map_err(|source| LegacyError::Read {
            path: display_path(&path, cwd),
            source,
        })?;
        let name = display_path(&path, cwd);
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let source = Arc::new(SourceText {
                    name,
                    text: String::new(),
                });
                problems.push(Problem::new(
                    &source,
                    Span::default(),
                    "",
                    format!("the file is not UTF-8 text: {e}"),
                ));
                continue;
            }
        };
        let source = Arc::new(SourceText { name, text });
        parse_file(
            &source,
            &project.relative(&path),
            &mut workflows,
            &mut problems,
        );
    }
    workflows.problems = problems;
    Ok(workflows)
}

fn first_line(span: Span) -> Span {
    Span {
        len: span.len.max(1),
        line: span.line.max(1),
        column: span.column.max(1),
        ..span
    }
}

/// Read one file's workflows into `workflows`.
pub fn parse_file(
    source: &Arc<SourceText>,
    relative: &str,
    workflows: &mut Workflows,
    problems: &mut Vec<Problem>,
) {
    let start = Span {
        offset: 0,
        len: 0,
        line: 1,
        column: 1,
    };
    let documents = match yaml::parse(&source.text) {
        Ok(documents) => documents,
        Err(e) => {
            problems.push(Problem::new(
                source,
                e.span,
                "",
                format!("invalid YAML: {}", e.message),
            ));
            return;
        }
    };
    let mut documents: Vec<Node> = documents
        .into_iter()
        .map(|d| d.root)
        .filter(|root| !matches!(root.value, Value::Null))
        .collect();
    if documents.len() > 1 {
        problems.push(
            Problem::new(
                source,
                first_line(documents[1].span),
                "",
                "a workflows file holds one YAML document",
            )
            .with_hint("list every workflow under the one `workflows:` key"),
        );
        return;
    }
    let Some(root) = documents.pop() else {
        problems.push(
            Problem::new(source, start, "", "the file has no workflows")
                .with_hint("start it with `workflows:` and a list of workflows"),
        );
        return;
    };
    let Value::Map(entries) = &root.value else {
        problems.push(
            Problem::new(
                source,
                first_line(root.span),
                "",
                format!(
                    "expected a mapping with `workflows:`, found {}",
                    root.kind_name()
                ),
            )
            .with_hint("start the file with `workflows:` and a list of workflows"),
        );
        return;
    };
    for entry in entries.iter().filter(|e| e.key != "workflows") {
        problems.push(Problem::new(
            source,
            entry.key_span,
            entry.key.clone(),
            format!("unknown key `{}`: expected only `workflows`", entry.key),
        ));
    }
    let Some(list) = root.entry("workflows") else {
        problems.push(
            Problem::new(source, first_line(root.span), "", "missing `workflows`")
                .with_hint("list the workflows under `workflows:`"),
        );
        return;
    };
    let items = match &list.value.value {
        Value::Seq(items) if !items.is_empty() => items,
        Value::Seq(_) | Value::Null => {
            problems.push(Problem::new(
                source,
                list.key_span,
                "workflows",
                "`workflows` needs at least one workflow",
            ));
            return;
        }
        _ => {
            problems.push(Problem::new(
                source,
                list.value.span,
                "workflows",
                format!(
                    "`workflows` must be a list of workflows, found {}",
                    list.value.kind_name()
                ),
            ));
            return;
        }
    };
    for (index, item) in items.iter().enumerate() {
        let path = format!("workflows[{index}]");
        if !matches!(item.value, Value::Map(_)) {
            problems.push(Problem::new(
                source,
                first_line(item.span),
                path,
                format!(
                    "a workflow must be a mapping with `name` and `provider`, found {}",
                    item.kind_name()
                ),
            ));
            continue;
        }
        let name = match item.get("name") {
            None => {
                problems.push(
                    Problem::new(
                        source,
                        first_line(item.span),
                        path,
                        "missing required key `name`",
                    )
                    .with_hint("every workflow has a `name`, used by `dstack run NAME`"),
                );
                continue;
            }
            Some(node) => match check_name(node) {
                Ok(name) => name,
                Err(message) => {
                    problems.push(Problem::new(
                        source,
                        node.span,
                        format!("{path}.name"),
                        message,
                    ));
                    continue;
                }
            },
        };
        if let Some(first) = workflows.get(&name) {
            problems.push(
                Problem::new(
                    source,
                    item.get("name").map_or(item.span, |n| n.span),
                    format!("{path}.name"),
                    format!(
                        "the workflow `{name}` is defined twice (first at {})",
                        first.location()
                    ),
                )
                .with_hint("workflow names are unique across .dstack/workflows.yaml and .dstack/workflows/; rename one"),
            );
            continue;
        }
        workflows.definitions.push(Definition {
            name,
            help: item
                .get("help")
                .and_then(Node::scalar_text)
                .filter(|h| !h.is_empty()),
            node: item.clone(),
            source: Arc::clone(source),
            file: relative.to_string(),
            index,
        });
    }
}

/// A workflow name: text, non-empty, usable as `dstack run NAME` and as a directory name.
fn check_name(node: &Node) -> Result<String, String> {
    let Some(name) = node
        .scalar_text()
        .filter(|_| !matches!(node.value, Value::Null))
    else {
        return Err(format!(
            "a workflow name must be text, found {}",
            node.kind_name()
        ));
    };
    if name.is_empty() {
        return Err("a workflow name cannot be empty".into());
    }
    if name.starts_with(['-', '.'])
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '\\')
    {
        return Err(format!(
            "invalid workflow name `{name}`: use letters, digits, `-`, `_` and `.`, not starting with `-` or `.`"
        ));
    }
    Ok(name)
}

/// The variables a workflow sees, without overrides: `global`, then its own section.
pub fn variables_of(variables: &Variables, workflow: &str) -> BTreeMap<String, String> {
    variables.resolve(Some(workflow), &BTreeMap::new())
}

/// The variable a `--NAME` flag sets, if the workflow has one of that name (`_` and `-`
/// spellings are the same name, as in legacy dstack).
pub fn variable_for_flag(variables: &BTreeMap<String, String>, flag: &str) -> Option<String> {
    if variables.contains_key(flag) {
        return Some(flag.to_string());
    }
    let wanted = flag.replace('-', "_");
    variables
        .keys()
        .find(|key| key.replace('-', "_") == wanted)
        .cloned()
}

/// Convert one workflow with its variables (`global`, its section, then `overrides`, whose keys
/// are variable names as [`variable_for_flag`] found them).
pub fn convert(
    definition: &Definition,
    variables: &Variables,
    overrides: &BTreeMap<String, String>,
    run_args: Option<&str>,
) -> Result<Workflow, Vec<Problem>> {
    let vars = variables.resolve(Some(&definition.name), overrides);
    convert::convert(definition, &vars, run_args)
}

/// Convert every workflow with its default variables, except `skip` (which the caller converts
/// with its overrides): the problems of all of them.
pub fn check(workflows: &Workflows, variables: &Variables, skip: Option<&str>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for definition in &workflows.definitions {
        if Some(definition.name.as_str()) == skip {
            continue;
        }
        if let Err(found) = convert(definition, variables, &BTreeMap::new(), None) {
            problems.extend(found);
        }
    }
    problems
}

/// The workflow names in a message: `` `a`, `b` `` (at most 20).
pub fn list_names(names: &[&str]) -> String {
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    let mut shown: Vec<String> = unique.iter().take(20).map(|n| format!("`{n}`")).collect();
    if unique.len() > 20 {
        shown.push(format!("and {} more", unique.len() - 20));
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Workflows, Vec<Problem>) {
        let source = Arc::new(SourceText {
            name: ".dstack/workflows.yaml".into(),
            text: text.into(),
        });
        let mut workflows = Workflows::default();
        let mut problems = Vec::new();
        parse_file(
            &source,
            ".dstack/workflows.yaml",
            &mut workflows,
            &mut problems,
        );
        (workflows, problems)
    }

    fn messages(problems: &[Problem]) -> Vec<String> {
        problems
            .iter()
            .map(|p| format!("{}: {}", p.location(), p.message))
            .collect()
    }

    #[test]
    fn reads_names_in_order() {
        let (workflows, problems) = parse(
            "workflows:\n  - name: hello-txt\n    help: Writes a file\n    provider: bash\n    commands: [echo]\n  - name: cat_txt.2\n    provider: bash\n    commands: [cat]\n",
        );
        assert!(problems.is_empty(), "{:?}", messages(&problems));
        assert_eq!(workflows.names(), ["hello-txt", "cat_txt.2"]);
        let hello = workflows.get("hello-txt").expect("hello");
        assert_eq!(hello.help.as_deref(), Some("Writes a file"));
        assert_eq!(hello.location(), ".dstack/workflows.yaml:2");
        assert_eq!(workflows.get("cat_txt.2").map(|d| d.index), Some(1));
    }

    #[test]
    fn shape_problems_name_their_line_and_column() {
        let cases = [
            ("", ".dstack/workflows.yaml:1:1: the file has no workflows"),
            (
                "- a\n",
                ".dstack/workflows.yaml:1:1: expected a mapping with `workflows:`, found a list",
            ),
            (
                "workflows: []\n",
                ".dstack/workflows.yaml:1:1: `workflows` needs at least one workflow",
            ),
            (
                "workflows: 3\n",
                ".dstack/workflows.yaml:1:12: `workflows` must be a list of workflows, found an integer",
            ),
            (
                "workflows:\n  - name: a\njobs: []\n",
                ".dstack/workflows.yaml:3:1: unknown key `jobs`: expected only `workflows`",
            ),
            (
                "workflows:\n  - provider: bash\n",
                ".dstack/workflows.yaml:2:5: missing required key `name`",
            ),
            (
                "workflows:\n  - name: [a]\n",
                ".dstack/workflows.yaml:2:11: a workflow name must be text, found a list",
            ),
            (
                "workflows:\n  - name: a b\n",
                ".dstack/workflows.yaml:2:11: invalid workflow name `a b`: use letters, digits, `-`, `_` and `.`, not starting with `-` or `.`",
            ),
            (
                "workflows:\n  - name: --x\n",
                ".dstack/workflows.yaml:2:11: invalid workflow name `--x`: use letters, digits, `-`, `_` and `.`, not starting with `-` or `.`",
            ),
            (
                "workflows:\n  - 3\n",
                ".dstack/workflows.yaml:2:5: a workflow must be a mapping with `name` and `provider`, found an integer",
            ),
            ("workflows: [\n", ""),
        ];
        for (text, expected) in cases {
            let (_, problems) = parse(text);
            let found = messages(&problems);
            assert_eq!(found.len(), 1, "{text:?}: {found:?}");
            if expected.is_empty() {
                assert!(found[0].contains("invalid YAML"), "{found:?}");
            } else {
                assert_eq!(found[0], expected, "{text:?}");
            }
        }
    }

    #[test]
    fn a_name_defined_twice_is_an_error_at_the_second() {
        let (workflows, problems) =
            parse("workflows:\n  - name: a\n    provider: bash\n  - name: a\n    provider: bash\n");
        assert_eq!(workflows.names(), ["a"]);
        assert_eq!(
            messages(&problems),
            [
                ".dstack/workflows.yaml:4:11: the workflow `a` is defined twice (first at .dstack/workflows.yaml:2)"
            ]
        );
    }

    #[test]
    fn flags_find_variables_in_either_spelling() {
        let vars = BTreeMap::from([
            ("batch_size".to_string(), "1".to_string()),
            ("model".to_string(), "124M".to_string()),
        ]);
        assert_eq!(
            variable_for_flag(&vars, "batch-size").as_deref(),
            Some("batch_size")
        );
        assert_eq!(variable_for_flag(&vars, "model").as_deref(), Some("model"));
        assert_eq!(variable_for_flag(&vars, "epochs"), None);
    }

    #[test]
    fn files_are_found_in_both_places() {
        let temp = tempfile::tempdir().expect("temp");
        let dot = temp.path().join(".dstack");
        std::fs::create_dir_all(dot.join("workflows")).expect("dirs");
        assert!(files(&dot).expect("files").is_empty());
        for name in [
            "workflows.yml",
            "workflows/b.yaml",
            "workflows/a.yml",
            "workflows/c.txt",
        ] {
            std::fs::write(dot.join(name), "workflows: []\n").expect("write");
        }
        let found: Vec<String> = files(&dot)
            .expect("files")
            .iter()
            .map(|p| p.strip_prefix(&dot).expect("inside").display().to_string())
            .collect();
        assert_eq!(
            found,
            ["workflows.yml", "workflows/a.yml", "workflows/b.yaml"]
        );
    }
}
