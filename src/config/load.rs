//! Loading `*.dstack.yml` files into typed resources.
//!
//! Inputs are `-f FILE` (repeatable), `-f DIR` (its `*.dstack.yml` / `*.dstack.yaml` files),
//! `-f -` (standard input), or, without `-f`, those files of the current directory. Each document
//! goes through: YAML 1.2 → interpolation → schema → typed model → semantic checks. Problems are
//! collected per file and all reported; a file's valid documents still load, so `validate` can
//! list them.
//!
//! The loader also records the *scope* of the load — the files and directories it covered — so
//! that the planner can delete resources recorded as coming from a file that no longer declares
//! them, and leave every other file's resources alone (DESIGN §3).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::de;
use super::diagnostic::{Problem, SourceText};
use super::interpolate::{self, Context as InterpolationContext};
use super::project::{Project, pointer_to_path};
use super::schema::suggest;
use super::yaml::{self, KeyKind, Node, Span, Value};
use crate::model::validate::{self, Context as ValidationContext};
use crate::model::{
    ConfigType, FleetSpec, Kind, Resource, ResourceId, RunSpec, SourceRef, Spec, TagSpec,
    VolumeSpec, run,
};

/// The display name of standard input.
pub const STDIN: &str = "<stdin>";

/// What the user asked to load and how to resolve values.
pub struct LoadOptions<'a> {
    /// `-f` arguments; empty means the current directory.
    pub inputs: Vec<String>,
    pub cwd: PathBuf,
    pub project: &'a Project,
    /// `var.*`: variables.yaml `global` merged with `--var`.
    pub vars: BTreeMap<String, String>,
    /// `run.args`.
    pub run_args: Option<String>,
    /// `env.*` / `secrets.*` lookups (shared by the threads that load files).
    pub env: &'a (dyn Fn(&str) -> Option<String> + Sync),
    /// Reads standard input (only called for `-f -`).
    pub stdin: &'a (dyn Fn() -> std::io::Result<String> + Sync),
    pub validation: ValidationContext,
}

/// One part of what a load covered.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// A file, relative to the project directory.
    File(String),
    /// The configuration files directly in a directory, relative to the project directory (`""`
    /// is the root). Subdirectories are not loaded, so they are not covered either: a plan never
    /// deletes what it did not read.
    Dir(String),
}

impl Scope {
    /// Whether a resource recorded as coming from `file` is covered.
    pub fn covers(&self, file: &str) -> bool {
        match self {
            Self::File(f) => f == file,
            Self::Dir(d) if d.is_empty() => file != STDIN && !file.contains('/'),
            Self::Dir(d) => file
                .strip_prefix(d.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|name| !name.contains('/')),
        }
    }
}

/// One file and what came of it.
#[derive(Debug)]
pub struct LoadedFile {
    pub source: Arc<SourceText>,
    /// Relative to the project directory, `/`-separated (`<stdin>` for standard input).
    pub relative: String,
    pub resources: Vec<Resource>,
    pub problems: Vec<Problem>,
}

/// Everything loaded.
#[derive(Debug, Default)]
pub struct Loaded {
    pub files: Vec<LoadedFile>,
    pub scope: Vec<Scope>,
}

impl Loaded {
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.files.iter().flat_map(|f| f.resources.iter())
    }

    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.files.iter().flat_map(|f| f.problems.iter())
    }

    pub fn is_ok(&self) -> bool {
        self.problems().next().is_none()
    }

    /// Whether a resource recorded from `file` is in scope of this load.
    pub fn covers(&self, file: &str) -> bool {
        self.scope.iter().any(|s| s.covers(file))
    }
}

/// Errors that stop loading before any file is read.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LoadError {
    #[error("`{0}` does not exist")]
    #[diagnostic(help("pass an existing file or directory with `-f`"))]
    NotFound(String),
    #[error("cannot read `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no configuration files in `{0}`")]
    #[diagnostic(help(
        "configuration files end in `.dstack.yml` or `.dstack.yaml`; pass one with `-f FILE`"
    ))]
    NoFiles(String),
}

/// Whether a file name is a configuration file name.
pub fn is_config_file(name: &str) -> bool {
    name.ends_with(".dstack.yml") || name.ends_with(".dstack.yaml")
}

/// The default name of unnamed documents: the file name without `.dstack.yml` (or extension).
pub fn file_stem(name: &str) -> String {
    for suffix in [".dstack.yml", ".dstack.yaml", ".yml", ".yaml"] {
        if let Some(stem) = name.strip_suffix(suffix) {
            return stem.to_string();
        }
    }
    name.to_string()
}

fn config_files_in(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    // Names first, then the file type the directory listing already has (a symbolic link is
    // followed, as `Path::is_file` does): no `stat` per entry.
    let mut files: Vec<(std::ffi::OsString, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| is_config_file(&e.file_name().to_string_lossy()))
        .filter(|e| match e.file_type() {
            Ok(t) if !t.is_symlink() => t.is_file(),
            _ => e.path().is_file(),
        })
        .map(|e| (e.file_name(), e.path()))
        .collect();
    // Every path has the same parent, so ordering by name is ordering by path, without
    // comparing path components.
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// Show paths relative to the working directory when they are under it.
fn display_path(path: &Path, cwd: &Path) -> String {
    path.strip_prefix(cwd)
        .map_or_else(|_| path.display().to_string(), |p| p.display().to_string())
}

enum Input {
    File(PathBuf),
    Stdin,
}

/// Load the given inputs.
pub fn load(options: &LoadOptions<'_>) -> Result<Loaded, LoadError> {
    let mut inputs = Vec::new();
    let mut scope = Vec::new();
    let project = options.project;
    let relative_dir = |dir: &Path| project.relative(dir).trim_end_matches('/').to_string();
    if options.inputs.is_empty() {
        let files = config_files_in(&options.cwd)?;
        if files.is_empty() {
            return Err(LoadError::NoFiles(options.cwd.display().to_string()));
        }
        scope.push(Scope::Dir(relative_dir(&options.cwd)));
        inputs.extend(files.into_iter().map(Input::File));
    }
    for input in &options.inputs {
        if input == "-" {
            scope.push(Scope::File(STDIN.into()));
            inputs.push(Input::Stdin);
            continue;
        }
        let path = options.cwd.join(input);
        if path.is_dir() {
            let path = path.canonicalize().unwrap_or(path);
            scope.push(Scope::Dir(relative_dir(&path)));
            let files = config_files_in(&path)?;
            if files.is_empty() {
                return Err(LoadError::NoFiles(input.clone()));
            }
            inputs.extend(files.into_iter().map(Input::File));
        } else if path.is_file() {
            let path = path.canonicalize().unwrap_or(path);
            scope.push(Scope::File(project.relative(&path)));
            inputs.push(Input::File(path));
        } else {
            return Err(LoadError::NotFound(input.clone()));
        }
    }
    // A set, not a list: with a thousand files a linear `contains` per file dominated the load.
    let mut seen_files = std::collections::HashSet::new();
    inputs.retain(|input| match input {
        Input::File(path) => seen_files.insert(path.clone()),
        Input::Stdin => true,
    });
    // Files load independently of each other, so they load in parallel. The results keep the
    // order of the inputs, the first error in that order is the one reported, and standard
    // input is read in its turn, only once every input before it has loaded.
    let files = parallel_map(&inputs, |input| match input {
        Input::File(path) => Some(load_file(path, options)),
        Input::Stdin => None,
    });
    let mut loaded = Loaded {
        files: Vec::new(),
        scope,
    };
    for file in files {
        loaded.files.push(match file {
            Some(file) => file?,
            None => load_stdin(options)?,
        });
    }
    check_across_files(&mut loaded);
    Ok(loaded)
}

fn load_stdin(options: &LoadOptions<'_>) -> Result<LoadedFile, LoadError> {
    let text = (options.stdin)().map_err(|source| LoadError::Read {
        path: STDIN.into(),
        source,
    })?;
    let source = Arc::new(SourceText {
        name: STDIN.to_string(),
        text,
    });
    Ok(load_text(&source, STDIN, None, options))
}

fn load_file(path: &Path, options: &LoadOptions<'_>) -> Result<LoadedFile, LoadError> {
    let project = options.project;
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: display_path(path, &options.cwd),
        source,
    })?;
    let display = display_path(path, &options.cwd);
    let stem = path.file_name().map(|n| file_stem(&n.to_string_lossy()));
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let source = Arc::new(SourceText {
                name: display,
                text: String::new(),
            });
            let problem = Problem::new(
                &source,
                Span::default(),
                "",
                format!("the file is not UTF-8 text: {e}"),
            );
            return Ok(LoadedFile {
                source,
                relative: project.relative(path),
                resources: Vec::new(),
                problems: vec![problem],
            });
        }
    };
    let source = Arc::new(SourceText {
        name: display,
        text,
    });
    Ok(load_text(
        &source,
        &project.relative(path),
        stem.as_deref(),
        options,
    ))
}

/// Fewest files worth a thread of their own: starting one costs about as much as loading a
/// few files.
const FILES_PER_THREAD: usize = 4;

/// `work` applied to every item, results in the order of the items, on up to one thread per
/// core. Threads take the next item as they finish one, so uneven files balance out.
fn parallel_map<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(items.len() / FILES_PER_THREAD);
    if threads <= 1 {
        return items.iter().map(work).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let drain = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            done.push((i, work(item)));
        }
    };
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    std::thread::scope(|scope| {
        // The main thread's stack size: deep documents recurse as deeply here as there. A
        // thread that cannot be started leaves its share to the others.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .stack_size(8 << 20)
                    .spawn_scoped(scope, drain)
                    .ok()
            })
            .collect();
        let mut done = drain();
        for helper in helpers {
            done.extend(
                helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        for (i, result) in done {
            slots[i] = Some(result);
        }
    });
    slots.into_iter().flatten().collect()
}

/// Load one file's text.
pub fn load_text(
    source: &Arc<SourceText>,
    relative: &str,
    stem: Option<&str>,
    options: &LoadOptions<'_>,
) -> LoadedFile {
    let mut file = LoadedFile {
        source: Arc::clone(source),
        relative: relative.to_string(),
        resources: Vec::new(),
        problems: Vec::new(),
    };
    let documents = match yaml::parse(&source.text) {
        Ok(documents) => documents,
        Err(e) => {
            file.problems.push(Problem::new(
                source,
                e.span,
                "",
                format!("invalid YAML: {}", e.message),
            ));
            return file;
        }
    };
    if documents
        .iter()
        .all(|d| matches!(d.root.value, Value::Null))
    {
        let span = Span {
            offset: 0,
            len: 0,
            line: 1,
            column: 1,
        };
        file.problems.push(
            Problem::new(source, span, "", "the file has no configuration")
                .with_hint("a configuration is a mapping with `type:`, e.g. `type: task`"),
        );
        return file;
    }
    let mut unnamed_seen: Option<usize> = None;
    for document in documents {
        if matches!(document.root.value, Value::Null) {
            continue;
        }
        if let Some(resource) = load_document(
            source,
            relative,
            stem,
            document.index,
            document.root,
            options,
            &mut unnamed_seen,
            &mut file.problems,
        ) {
            file.resources.push(resource);
        }
    }
    file.problems
        .sort_by_key(|p| (p.span.offset, p.line, p.column));
    file
}

/// The span doc-level problems point at: the `type` key, else the document's first line.
fn anchor(root: &Node) -> Span {
    if let Some(entry) = root.entry("type") {
        return entry.key_span;
    }
    match &root.value {
        Value::Map(entries) if !entries.is_empty() => entries[0].key_span,
        _ => Span {
            len: 1,
            ..root.span
        },
    }
}

/// The span for a JSON pointer into `root`, falling back to the document anchor.
fn locate(root: &Node, pointer: &str) -> Span {
    if pointer.is_empty() {
        return anchor(root);
    }
    let (span, found) = root.locate(pointer, false);
    if found { span } else { anchor(root) }
}

#[allow(clippy::too_many_arguments)]
fn load_document(
    source: &Arc<SourceText>,
    relative: &str,
    stem: Option<&str>,
    index: usize,
    mut root: Node,
    options: &LoadOptions<'_>,
    unnamed_seen: &mut Option<usize>,
    problems: &mut Vec<Problem>,
) -> Option<Resource> {
    let start = problems.len();
    let Value::Map(_) = &root.value else {
        problems.push(
            Problem::new(
                source,
                Span {
                    len: 1,
                    ..root.span
                },
                "",
                format!(
                    "a configuration must be a mapping, found {}",
                    root.kind_name()
                ),
            )
            .with_hint("start the document with `type:`, e.g. `type: task`"),
        );
        return None;
    };
    // The type decides the schema.
    let config_type = match root.entry("type") {
        None => {
            problems.push(
                Problem::new(
                    source,
                    anchor(&root),
                    "",
                    "missing required property `type`",
                )
                .with_hint("one of `task`, `dev-environment`, `service`, `volume`, `fleet`, `tag`"),
            );
            return None;
        }
        Some(entry) => {
            let text = entry.value.scalar_text().unwrap_or_default();
            match ConfigType::parse(&text) {
                Some(t) => t,
                None if text == "gateway" || text == "preset" => {
                    problems.push(
                        Problem::new(source, entry.value.span, "type", format!("`type: {text}` is not supported by this tool"))
                            .with_hint("supported types: `task`, `dev-environment`, `service`, `volume`, `fleet`, `tag`"),
                    );
                    return None;
                }
                None => {
                    let known: Vec<String> = ConfigType::ALL
                        .iter()
                        .map(|t| t.as_str().to_string())
                        .collect();
                    let found = match entry.value.scalar_text() {
                        Some(_) => format!("unknown type `{text}`"),
                        None => format!("`type` must be text, found {}", entry.value.kind_name()),
                    };
                    let mut problem = Problem::new(
                        source,
                        entry.value.span,
                        "type",
                        format!(
                            "{found}: expected one of `task`, `dev-environment`, `service`, `volume`, `fleet`, `tag`"
                        ),
                    );
                    if let Some(s) = suggest(&text, &known) {
                        problem = problem.with_hint(format!("did you mean `{s}`?"));
                    }
                    problems.push(problem);
                    return None;
                }
            }
        }
    };

    // Interpolation comes before validation so that the schema sees the real values.
    let mut errors = Vec::new();
    let context = InterpolationContext {
        vars: &options.vars,
        env: options.env,
        run_args: options.run_args.as_deref(),
    };
    let sensitive = interpolate::interpolate(&mut root, &source.text, &context, &mut errors);
    for error in errors {
        let mut problem = Problem::new(
            source,
            error.span,
            pointer_to_path(&error.pointer),
            error.message,
        );
        if let Some(hint) = error.hint {
            problem = problem.with_hint(hint);
        }
        problems.push(problem);
    }

    check_key_kinds(source, &root, config_type, problems);

    // Identity.
    let (name, name_pointer) = match root.get("name").filter(|n| !matches!(n.value, Value::Null)) {
        Some(node) => (node.scalar_text().unwrap_or_default(), "/name"),
        None => {
            if let Some(stem) = stem {
                if let Some(first) = *unnamed_seen {
                    problems.push(
                    Problem::new(source, anchor(&root), "", format!("two documents without `name` in one file (the first is document {})", first + 1))
                        .with_hint("give each document a `name:`"),
                );
                }
                *unnamed_seen = Some(index);
                (stem.to_string(), "")
            } else {
                problems.push(
                    Problem::new(
                        source,
                        anchor(&root),
                        "",
                        "a document read from standard input needs `name`",
                    )
                    .with_hint("add `name:` to the document"),
                );
                return None;
            }
        }
    };

    // Schema.
    let validator = crate::model::schema::validator(config_type);
    let schema_problems = validator.problems(&root);
    let schema_ok = schema_problems.is_empty();
    let pruned_keys: std::collections::BTreeSet<String> = schema_problems
        .iter()
        .map(|p| {
            p.pointer
                .split('/')
                .nth(1)
                .unwrap_or_default()
                .replace("~1", "/")
                .replace("~0", "~")
        })
        .collect();
    let pruned_keys: std::collections::BTreeSet<&str> =
        pruned_keys.iter().map(String::as_str).collect();
    for p in schema_problems {
        let span = if p.pointer.is_empty() {
            anchor(&root)
        } else {
            p.span
        };
        let mut problem = Problem::new(source, span, pointer_to_path(&p.pointer), p.message);
        if let Some(hint) = p.hint {
            problem = problem.with_hint(hint);
        }
        problems.push(problem);
    }
    // A name that is not a scalar is the schema's error; checking its text would add noise.
    let name_is_scalar = root.get("name").is_none_or(|n| n.scalar_text().is_some());
    if let Some(issue) = validate::check_name(&name, name_pointer).filter(|_| name_is_scalar) {
        push_issue(source, &root, issue, problems);
    }
    if !schema_ok {
        // Report the semantic problems of the rest of the document too: drop the top-level keys
        // the schema rejected, read what remains, and keep issues about the keys left.
        if !pruned_keys.is_empty() && !pruned_keys.contains("") {
            let mut rest = root.clone();
            if let Value::Map(entries) = &mut rest.value {
                entries.retain(|e| !pruned_keys.contains(e.key.as_str()));
            }
            if let Ok(spec) = read_spec(config_type, &rest) {
                for issue in validate::check(&spec, options.validation) {
                    let top = issue.pointer.split('/').nth(1).unwrap_or_default();
                    // An issue naming a dropped key (`replicas` needs `scaling`) is about that
                    // key's invalid value, already reported.
                    let names_pruned = pruned_keys
                        .iter()
                        .any(|key| issue.message.contains(&format!("`{key}`")));
                    if !top.is_empty() && !pruned_keys.contains(top) && !names_pruned {
                        push_issue(source, &root, issue, problems);
                    }
                }
            }
        }
        return None;
    }

    // Typed model.
    let spec = match read_spec(config_type, &root) {
        Ok(spec) => spec,
        Err(e) => {
            let span = e.span.unwrap_or_else(|| anchor(&root));
            problems.push(Problem::new(
                source,
                span,
                de::path_string(&e.path),
                e.message,
            ));
            return None;
        }
    };
    for issue in validate::check(&spec, options.validation) {
        push_issue(source, &root, issue, problems);
    }
    if problems.len() > start {
        return None;
    }
    Some(Resource {
        id: ResourceId::new(config_type.kind(), name),
        spec,
        source: SourceRef {
            file: relative.to_string(),
            document: index,
        },
        sensitive,
    })
}

/// Mapping keys dstack cannot read as text, which our schemas (whose keys are all text) cannot
/// see: a tag key must be text (dstack crashes on others); an `env` name may be a number, read
/// as text, but not a boolean or null.
fn check_key_kinds(
    source: &Arc<SourceText>,
    root: &Node,
    config_type: ConfigType,
    problems: &mut Vec<Problem>,
) {
    let checks: [(&str, &[KeyKind], &str); 2] = [
        ("tags", &[KeyKind::Text], "a tag name"),
        (
            "env",
            &[KeyKind::Text, KeyKind::Number],
            "an environment variable name",
        ),
    ];
    for (field, allowed, what) in checks {
        if config_type == ConfigType::Tag || (field == "env" && config_type == ConfigType::Volume) {
            continue;
        }
        let Some(Value::Map(entries)) = root.get(field).map(|n| &n.value) else {
            continue;
        };
        for entry in entries {
            if !allowed.contains(&entry.key_kind) {
                let found = match entry.key_kind {
                    KeyKind::Number => "a number",
                    KeyKind::Bool => "a boolean",
                    _ => "null",
                };
                problems.push(
                    Problem::new(
                        source,
                        entry.key_span,
                        format!("{field}.{}", entry.key),
                        format!("{what} must be text, found {found} (`{}`)", entry.key),
                    )
                    .with_hint("quote it"),
                );
            }
        }
    }
}

fn push_issue(
    source: &Arc<SourceText>,
    root: &Node,
    issue: validate::Issue,
    problems: &mut Vec<Problem>,
) {
    let mut problem = Problem::new(
        source,
        locate(root, &issue.pointer),
        pointer_to_path(&issue.pointer),
        issue.message,
    );
    if let Some(hint) = issue.hint {
        problem = problem.with_hint(hint);
    }
    problems.push(problem);
}

/// Read a typed spec from a document (its `type` and `name` are handled by the caller).
pub fn read_spec(config_type: ConfigType, root: &Node) -> Result<Spec, de::DeError> {
    // The body is the document without `type` and `name`, read in place rather than copied.
    fn body<T: serde::de::DeserializeOwned>(root: &Node) -> Result<T, de::DeError> {
        de::from_node_without(root, &["type", "name"])
    }
    Ok(match config_type {
        ConfigType::Volume => Spec::Volume(body::<VolumeSpec>(root)?),
        ConfigType::Fleet => Spec::Fleet(Box::new(body::<FleetSpec>(root)?)),
        ConfigType::Tag => Spec::Tag(body::<TagSpec>(root)?),
        ConfigType::Task | ConfigType::DevEnvironment | ConfigType::Service => {
            let fields = match config_type {
                ConfigType::Task => run::RunFields::Task(body(root)?),
                ConfigType::DevEnvironment => run::RunFields::DevEnvironment(body(root)?),
                _ => run::RunFields::Service(Box::new(body(root)?)),
            };
            Spec::Run(Box::new(RunSpec {
                fields,
                common: body(root)?,
            }))
        }
    })
}

/// Duplicate `(kind, name)` across the given files, and tags named like runs.
fn check_across_files(loaded: &mut Loaded) {
    // The first declaration's source and document: its location is only worked out (by
    // re-parsing its file) when a duplicate is found, so valid loads never parse a file twice.
    let mut first: BTreeMap<ResourceId, (Arc<SourceText>, usize)> = BTreeMap::new();
    let mut run_names = std::collections::BTreeSet::new();
    for file in &loaded.files {
        for resource in &file.resources {
            if resource.id.kind == Kind::Run {
                run_names.insert(resource.id.name.clone());
            }
        }
    }
    for file in &mut loaded.files {
        let source = Arc::clone(&file.source);
        let mut keep = Vec::new();
        for resource in std::mem::take(&mut file.resources) {
            if let Some((previous_source, previous_document)) = first.get(&resource.id) {
                let previous = format!(
                    "{}:{}",
                    previous_source.name,
                    document_span(previous_source, *previous_document).line
                );
                file.problems.push(
                    Problem::new(
                        &source,
                        document_span(&source, resource.source.document),
                        "name",
                        format!("`{}` is declared twice (first at {previous})", resource.id),
                    )
                    .with_hint("names are unique per kind across the files of a plan; rename one"),
                );
                continue;
            }
            if resource.id.kind == Kind::Tag && run_names.contains(&resource.id.name) {
                file.problems.push(
                    Problem::new(
                        &source,
                        document_span(&source, resource.source.document),
                        "name",
                        format!("the tag `{}` has the name of a run", resource.id.name),
                    )
                    .with_hint("run and tag names share one namespace; rename the tag"),
                );
                continue;
            }
            first.insert(
                resource.id.clone(),
                (Arc::clone(&source), resource.source.document),
            );
            keep.push(resource);
        }
        file.resources = keep;
    }
}

/// The anchor of the `index`-th document of a source (re-parsed only for error reporting).
fn document_span(source: &SourceText, index: usize) -> Span {
    yaml::parse(&source.text)
        .ok()
        .and_then(|docs| docs.into_iter().find(|d| d.index == index))
        .map_or_else(Span::default, |d| {
            d.root
                .get("name")
                .map_or_else(|| anchor(&d.root), |n| n.span)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert!(Scope::File("a.dstack.yml".into()).covers("a.dstack.yml"));
        assert!(!Scope::File("a.dstack.yml".into()).covers("b.dstack.yml"));
        assert!(Scope::Dir(String::new()).covers("a.dstack.yml"));
        assert!(!Scope::Dir(String::new()).covers("sub/a.dstack.yml"));
        assert!(!Scope::Dir("sub".into()).covers("sub/deeper/a.dstack.yml"));
        assert!(!Scope::Dir(String::new()).covers(STDIN));
        assert!(Scope::Dir("sub".into()).covers("sub/a.dstack.yml"));
        assert!(!Scope::Dir("sub".into()).covers("subway/a.dstack.yml"));
    }

    #[test]
    fn stems() {
        assert_eq!(file_stem("train.dstack.yml"), "train");
        assert_eq!(file_stem("vol.dstack.yaml"), "vol");
        assert_eq!(file_stem(".dstack.yml"), "");
        assert!(is_config_file("x.dstack.yml"));
        assert!(!is_config_file("x.yml"));
    }
}
