//! From a legacy workflow to a typed `task`.
//!
//! | legacy key | type | becomes |
//! |---|---|---|
//! | `name` | text, required | the workflow's name (`dstack run NAME`, `deps: [{workflow: NAME}]`) |
//! | `help` | text | shown by `dstack run NAME --help` |
//! | `provider` | `bash` or `docker`, required | `bash`: the image comes from `python`; `docker`: `image` |
//! | `commands` | list, or text split on lines | `commands` (required for `bash`) |
//! | `setup` (`before_run`) | like `commands` | run before `commands` |
//! | `requirements` | path (`bash`) | `pip install -r PATH` before `setup` |
//! | `python` | version (`bash`) | `python` (default: our newest supported) |
//! | `image`, `entrypoint` | text (`docker`; `image` required) | `image`, `entrypoint` |
//! | `env` | list of `K=V` or `K` | `env` (`K` alone is an empty value, as in legacy dstack) |
//! | `working_dir` | path relative to `/workflow` | `/workflow/PATH` |
//! | `artifacts` | list of `PATH` or `{path, mount}` | `artifacts`; the directories are made before the commands |
//! | `resources` | `cpu` N, `memory` SIZE, `gpu` N or `{count, name, memory}`, `shm_size`, `interruptible`, `local` | `cpu: N..`, `memory: SIZE..`, `gpu`, `shm_size`, `spot_policy: spot`; `local` is accepted (runs are local) |
//! | `ports` | count N, or list of `P` / `"P:Q"` | N ports: container ports 3000, 3001, … on free local ports, with `PORT_0`, `PORT_1`, … in `env`; a list as is |
//! | `deps` | list of `{workflow: W}` / `{tag: T}` (or `"W"` / `":T"`) | `{task: W}` (W's latest `done` run) / `{tag: T}` |
//! | `cache` | list of `PATH` or `{path}` | kept between runs of the workflow (see [`crate::runner::cache`]) |
//!
//! Unknown keys are errors; keys of legacy providers or eras we do not support (`ssh`,
//! `registry_auth`, `home_dir`, `depends-on`) name what to use instead.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::Definition;
use super::interpolate::{self, Context};
use crate::config::de;
use crate::config::diagnostic::{Problem, SourceText};
use crate::config::project::pointer_to_path;
use crate::config::schema::suggest;
use crate::config::yaml::{Node, Span, Value};
use crate::model::env::{Env, EnvValue};
use crate::model::ports::PortMapping;
use crate::model::profile::{PythonVersion, SpotPolicy};
use crate::model::quantity::{Memory, Range};
use crate::model::resources::{CpuSpec, GpuSpec, Resources};
use crate::model::run::{Artifact, Dep, RunCommon, RunFields, RunSpec, TaskFields};
use crate::model::{Kind, Resource, ResourceId, SourceRef, Spec, validate};

/// Supported providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Bash,
    Docker,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bash => "bash",
            Self::Docker => "docker",
        }
    }

    /// The keys a workflow of this provider may have.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Self::Bash => &[
                "name",
                "help",
                "provider",
                "deps",
                "commands",
                "setup",
                "before_run",
                "requirements",
                "python",
                "env",
                "working_dir",
                "artifacts",
                "resources",
                "ports",
                "cache",
            ],
            Self::Docker => &[
                "name",
                "help",
                "provider",
                "deps",
                "image",
                "entrypoint",
                "commands",
                "setup",
                "before_run",
                "env",
                "working_dir",
                "artifacts",
                "resources",
                "ports",
                "cache",
            ],
        }
    }
}

/// A converted workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct Workflow {
    pub name: String,
    pub help: Option<String>,
    pub provider: Provider,
    /// The typed task it runs as; `id` is `run/NAME`, `source` its file and position.
    pub resource: Resource,
    /// `cache` paths, relative to the working directory.
    pub cache: Vec<String>,
}

/// The first container port of `ports: N` (legacy dstack's runner took ports from 3000 up).
pub const FIRST_COUNTED_PORT: u16 = 3000;

/// Collects the problems of one workflow.
struct Checker<'a> {
    source: &'a Arc<SourceText>,
    /// `workflows[i]`.
    prefix: String,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn path(&self, path: &str) -> String {
        if path.is_empty() {
            self.prefix.clone()
        } else if path.starts_with('[') {
            format!("{}{path}", self.prefix)
        } else {
            format!("{}.{path}", self.prefix)
        }
    }

    fn error(&mut self, span: Span, path: &str, message: impl Into<String>) {
        let problem = Problem::new(self.source, span, self.path(path), message);
        self.problems.push(problem);
    }

    fn hinted(&mut self, span: Span, path: &str, message: impl Into<String>, hint: &str) {
        let problem =
            Problem::new(self.source, span, self.path(path), message).with_hint(hint.to_string());
        self.problems.push(problem);
    }

    /// Read a typed value with the model's parser; problems point at the offending node.
    fn typed<T: serde::de::DeserializeOwned>(&mut self, node: &Node, path: &str) -> Option<T> {
        match de::from_node::<T>(node) {
            Ok(value) => Some(value),
            Err(e) => {
                let inner = de::path_string(&e.path);
                let full = match (path.is_empty(), inner.is_empty()) {
                    (_, true) => path.to_string(),
                    (true, false) => inner,
                    (false, false) if inner.starts_with('[') => format!("{path}{inner}"),
                    (false, false) => format!("{path}.{inner}"),
                };
                self.error(e.span.unwrap_or(node.span), &full, e.message);
                None
            }
        }
    }

    /// Text of a scalar (numbers read as written), or a problem.
    fn text(&mut self, node: &Node, path: &str, what: &str) -> Option<String> {
        match (&node.value, node.scalar_text()) {
            (Value::Null, _) | (_, None) => {
                self.error(
                    node.span,
                    path,
                    format!("expected {what}, found {}", node.kind_name()),
                );
                None
            }
            (_, Some(text)) => Some(text),
        }
    }

    /// Items of a non-empty list, or a problem.
    fn list<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) if !items.is_empty() => Some(items),
            Value::Seq(_) => {
                self.hinted(
                    node.span,
                    path,
                    format!("`{path}` needs at least one {what}"),
                    &format!("remove `{path}`, or add a {what}"),
                );
                None
            }
            _ => {
                self.error(
                    node.span,
                    path,
                    format!(
                        "`{path}` must be a list of {what}s, found {}",
                        node.kind_name()
                    ),
                );
                None
            }
        }
    }
}

/// Keys legacy dstack knew that we do not take, with what to do instead.
fn unsupported_key(key: &str) -> Option<&'static str> {
    Some(match key {
        "ssh" => "`ssh` is not supported: open a shell in a running run with `dstack attach RUN`",
        "registry_auth" => {
            "`registry_auth` is not supported in workflows: log in with `docker login` (the local backend uses Docker's credentials), or use a `*.dstack.yml` task with `registry_auth`"
        }
        "home_dir" => "`home_dir` is not supported: remove it",
        "depends-on" => {
            "`depends-on` (2022) is not supported: use `deps: [{workflow: NAME}]`, which takes the workflow's latest `done` run"
        }
        "environment" => "`environment` (2022) is now `env`: a list of `KEY=VALUE`",
        "version" | "file" | "args" => {
            "that is a key of the old `python` provider: use `provider: bash` with `commands: [python FILE ARGS]`"
        }
        _ => return None,
    })
}

/// What to use instead of a provider we do not support.
fn provider_hint(provider: &str) -> String {
    match provider {
        "code" | "lab" | "notebook" => format!(
            "`provider: {provider}` is not supported: describe a `type: dev-environment` in a `*.dstack.yml` file and `dstack apply` it (`dstack attach` opens a shell)"
        ),
        "python" | "_python" | "torchrun" | "_torchrun" => format!(
            "`provider: {provider}` is not supported: use `provider: bash` with `commands: [python FILE ARGS]`"
        ),
        _ => format!(
            "`provider: {provider}` is not supported: use `bash` (commands in a Python image) or `docker` (commands in an `image` of your choice)"
        ),
    }
}

/// Commands: a list of non-empty scalars, or text split into lines (blank lines dropped).
fn commands(checker: &mut Checker<'_>, node: &Node, path: &str) -> Vec<String> {
    match &node.value {
        Value::String(text) => text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_string)
            .collect(),
        Value::Seq(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                match (&item.value, item.scalar_text()) {
                    (Value::Null, _) | (_, None) => checker.error(
                        item.span,
                        &item_path,
                        format!("a command must be text, found {}", item.kind_name()),
                    ),
                    (_, Some(text)) if text.trim().is_empty() => {
                        checker.error(item.span, &item_path, "a command cannot be empty");
                    }
                    (_, Some(text)) => out.push(text),
                }
            }
            out
        }
        _ => {
            checker.error(
                node.span,
                path,
                format!(
                    "`{path}` must be a list of commands or text, found {}",
                    node.kind_name()
                ),
            );
            Vec::new()
        }
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `env`: a list of `KEY=VALUE` or `KEY` (an empty value).
fn env(checker: &mut Checker<'_>, node: &Node) -> Env {
    let mut vars = BTreeMap::new();
    let Some(items) = checker.list(node, "env", "variable") else {
        return Env::default();
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("env[{i}]");
        let Some(text) = checker.text(item, &path, "`KEY=VALUE` or `KEY`") else {
            continue;
        };
        let (key, value) = text.split_once('=').unwrap_or((text.as_str(), ""));
        if !is_env_name(key) {
            checker.error(
                item.span,
                &path,
                format!("invalid environment variable `{text}`: expected `KEY=VALUE` or `KEY`, where KEY is letters, digits and `_`, not starting with a digit"),
            );
            continue;
        }
        if vars
            .insert(key.to_string(), EnvValue::Text(value.to_string()))
            .is_some()
        {
            checker.error(item.span, &path, format!("`{key}` is set twice in `env`"));
        }
    }
    Env(vars)
}

/// A path inside the working directory, normalised (`./output/` → `output`).
fn inside_path(path: &str) -> Result<String, String> {
    if path.starts_with('/') || path.starts_with('~') {
        return Err(format!(
            "`{path}` must be relative to the working directory"
        ));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!(
            "`{path}` must not leave the working directory (`..`)"
        ));
    }
    if path.contains('\n') {
        return Err(format!("`{}` must be one line", path.escape_debug()));
    }
    Ok(parts.join("/"))
}

/// `working_dir`: relative to `/workflow`.
fn working_dir(checker: &mut Checker<'_>, node: &Node) -> Option<String> {
    let text = checker.text(node, "working_dir", "a path relative to /workflow")?;
    match inside_path(&text) {
        Ok(relative) if relative.is_empty() => None,
        Ok(relative) => Some(format!("/workflow/{relative}")),
        Err(message) => {
            checker.hinted(
                node.span,
                "working_dir",
                format!("the working directory {message}"),
                "legacy `working_dir` is relative to /workflow, where the project is copied",
            );
            None
        }
    }
}

/// `cache`: paths (or `{path}`) inside the working directory, none inside another.
fn cache(checker: &mut Checker<'_>, node: &Node) -> Vec<String> {
    let Some(items) = checker.list(node, "cache", "path") else {
        return Vec::new();
    };
    let mut paths: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("cache[{i}]");
        let (value, value_path) = match &item.value {
            Value::Map(entries) => {
                if let Some(extra) = entries.iter().find(|e| e.key != "path") {
                    checker.error(
                        extra.key_span,
                        &format!("{path}.{}", extra.key),
                        format!(
                            "unknown key `{}` in a cache entry: expected `path`",
                            extra.key
                        ),
                    );
                    continue;
                }
                let Some(value) = item.get("path") else {
                    checker.error(item.span, &path, "a cache entry needs `path`");
                    continue;
                };
                (value, format!("{path}.path"))
            }
            _ => (item, path.clone()),
        };
        let Some(text) = checker.text(value, &value_path, "a path or `{path}`") else {
            continue;
        };
        match inside_path(&text) {
            Ok(relative) if relative.is_empty() => checker.error(
                value.span,
                &value_path,
                format!("the cache path `{text}` names the working directory itself; name a directory in it"),
            ),
            Ok(relative) => {
                let nested = paths.iter().find(|p| {
                    relative == **p
                        || relative.starts_with(&format!("{p}/"))
                        || p.starts_with(&format!("{relative}/"))
                });
                if let Some(other) = nested {
                    checker.error(
                        value.span,
                        &value_path,
                        format!("the cache path `{relative}` overlaps `{other}`"),
                    );
                } else {
                    paths.push(relative);
                }
            }
            Err(message) => checker.hinted(
                value.span,
                &value_path,
                format!("the cache path {message}"),
                "cached directories are kept from the working directory",
            ),
        }
    }
    paths
}

/// `deps`: `{workflow: W}`, `{tag: T}` (a `mount` flag is accepted and has no effect, as in
/// legacy dstack's runner), or the 0.0.x strings `W` and `:T`.
fn deps(checker: &mut Checker<'_>, node: &Node) -> Vec<Dep> {
    let Some(items) = checker.list(node, "deps", "dependency") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("deps[{i}]");
        let (dep, span) = match &item.value {
            Value::Map(entries) => {
                let mut dep = None;
                let mut bad = false;
                for entry in entries {
                    let entry_path = format!("{path}.{}", entry.key);
                    match entry.key.as_str() {
                        "workflow" | "tag" => {
                            let Some(name) = checker.text(&entry.value, &entry_path, "a name")
                            else {
                                bad = true;
                                continue;
                            };
                            if dep.is_some() {
                                checker.error(
                                    entry.key_span,
                                    &path,
                                    "a dependency names one `workflow` or one `tag`",
                                );
                                bad = true;
                            }
                            dep = Some(if entry.key == "tag" {
                                Dep::Tag(name)
                            } else {
                                Dep::Task(name)
                            });
                        }
                        "mount" if matches!(entry.value.value, Value::Bool(_)) => {}
                        "mount" => {
                            checker.error(
                                entry.value.span,
                                &entry_path,
                                "`mount` is `true` or `false`",
                            );
                            bad = true;
                        }
                        other => {
                            checker.error(
                                entry.key_span,
                                &entry_path,
                                format!("unknown key `{other}` in a dependency: expected `workflow` or `tag`"),
                            );
                            bad = true;
                        }
                    }
                }
                if bad {
                    continue;
                }
                let Some(dep) = dep else {
                    checker.error(item.span, &path, "a dependency needs `workflow` or `tag`");
                    continue;
                };
                (dep, item.span)
            }
            Value::String(text) => match text.strip_prefix(':') {
                Some(tag) => (Dep::Tag(tag.to_string()), item.span),
                None => (Dep::Task(text.clone()), item.span),
            },
            _ => {
                checker.error(
                    item.span,
                    &path,
                    format!(
                        "expected `{{workflow: NAME}}` or `{{tag: NAME}}`, found {}",
                        item.kind_name()
                    ),
                );
                continue;
            }
        };
        if dep.name().is_empty() {
            checker.error(span, &path, "a dependency names a workflow or tag");
        } else if dep.name().contains('/') {
            checker.hinted(
                span,
                &path,
                format!("`{}` names another repository: not supported", dep.name()),
                "deps name workflows and tags of this project; `dstack pull` brings in pushed artifacts",
            );
        } else {
            out.push(dep);
        }
    }
    out
}

/// A legacy size: `512MB`, `16GB` (also `MiB`/`GiB`/`M`/`G`), in our units.
fn size(checker: &mut Checker<'_>, node: &Node, path: &str) -> Option<Memory> {
    let text = checker.text(node, path, "a size like `16GB`")?;
    let compact = text.trim();
    let digits = compact.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = compact.split_at(digits);
    let factor = match unit.to_ascii_lowercase().as_str() {
        "mb" | "mib" | "mi" | "m" => Some(1.0 / 1024.0),
        "gb" | "gib" | "gi" | "g" => Some(1.0),
        _ => None,
    };
    if let (Ok(value), Some(factor)) = (number.parse::<u64>(), factor) {
        return Some(Memory(value as f64 * factor));
    }
    checker.error(
        node.span,
        path,
        format!("invalid size `{text}`: expected a whole number with `MB` or `GB`, like `16GB`"),
    );
    None
}

/// A count of at least 1.
fn count(checker: &mut Checker<'_>, node: &Node, path: &str, what: &str) -> Option<i64> {
    match node.value {
        Value::Int(n) if n >= 1 => Some(n),
        _ => {
            checker.error(
                node.span,
                path,
                format!(
                    "`{path}` must be a whole number of {what}, at least 1, found {}",
                    node.scalar_text()
                        .map_or_else(|| node.kind_name().to_string(), |t| format!("`{t}`"))
                ),
            );
            None
        }
    }
}

/// `resources`.
fn resources(checker: &mut Checker<'_>, node: &Node) -> (Resources, Option<SpotPolicy>) {
    let mut resources = Resources::default();
    let mut spot = None;
    let Value::Map(entries) = &node.value else {
        checker.error(
            node.span,
            "resources",
            format!("`resources` must be a mapping, found {}", node.kind_name()),
        );
        return (resources, spot);
    };
    for entry in entries {
        let path = format!("resources.{}", entry.key);
        let value = &entry.value;
        match entry.key.as_str() {
            "cpu" => {
                resources.cpu = count(checker, value, &path, "CPUs").map(|n| CpuSpec {
                    arch: None,
                    count: Some(Range::at_least(n)),
                });
            }
            "memory" => resources.memory = size(checker, value, &path).map(Range::at_least),
            "shm_size" => resources.shm_size = size(checker, value, &path),
            "gpu" => resources.gpu = gpu(checker, value, &path),
            "interruptible" | "local" => match value.value {
                Value::Bool(on) => {
                    if entry.key == "interruptible" && on {
                        spot = Some(SpotPolicy::Spot);
                    }
                }
                _ => checker.error(
                    value.span,
                    &path,
                    format!("`{path}` is `true` or `false`, found {}", value.kind_name()),
                ),
            },
            other => {
                let known = ["cpu", "memory", "gpu", "shm_size", "interruptible", "local"]
                    .map(String::from);
                let mut message = format!(
                    "unknown key `{other}` in `resources`: expected `cpu`, `memory`, `gpu`, `shm_size`, `interruptible` or `local`"
                );
                if let Some(s) = suggest(other, &known) {
                    message.push_str(&format!(" (did you mean `{s}`?)"));
                }
                checker.error(entry.key_span, &path, message);
            }
        }
    }
    (resources, spot)
}

/// `gpu`: a count, or `{count, name, memory}` (a name without a count means one GPU).
fn gpu(checker: &mut Checker<'_>, node: &Node, path: &str) -> Option<GpuSpec> {
    if let Value::Map(entries) = &node.value {
        let mut spec = GpuSpec {
            count: Some(Range::exactly(1)),
            ..GpuSpec::default()
        };
        let mut ok = true;
        for entry in entries {
            let entry_path = format!("{path}.{}", entry.key);
            match entry.key.as_str() {
                "count" => match count(checker, &entry.value, &entry_path, "GPUs") {
                    Some(n) => spec.count = Some(Range::exactly(n)),
                    None => ok = false,
                },
                "name" => match checker.text(&entry.value, &entry_path, "a GPU name like `V100`") {
                    Some(name) if !name.is_empty() => spec.names = vec![name],
                    _ => ok = false,
                },
                "memory" => match size(checker, &entry.value, &entry_path) {
                    Some(memory) => spec.memory = Some(Range::at_least(memory)),
                    None => ok = false,
                },
                other => {
                    checker.error(
                        entry.key_span,
                        &entry_path,
                        format!(
                            "unknown key `{other}` in `gpu`: expected `count`, `name` or `memory`"
                        ),
                    );
                    ok = false;
                }
            }
        }
        return ok.then_some(spec);
    }
    count(checker, node, path, "GPUs").map(|n| GpuSpec {
        count: Some(Range::exactly(n)),
        ..GpuSpec::default()
    })
}

/// `ports`: a count (legacy ≤0.8), or a list of ports (0.9).
fn ports(checker: &mut Checker<'_>, node: &Node, env: &mut Env) -> Vec<PortMapping> {
    if let Value::Seq(items) = &node.value {
        return items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| checker.typed::<PortMapping>(item, &format!("ports[{i}]")))
            .collect();
    }
    let Some(n) = count(checker, node, "ports", "ports") else {
        return Vec::new();
    };
    if n > 100 {
        checker.error(
            node.span,
            "ports",
            format!("`ports: {n}` asks for more than 100 ports"),
        );
        return Vec::new();
    }
    (0..n as u16)
        .map(|i| {
            let container_port = FIRST_COUNTED_PORT + i;
            env.0
                .entry(format!("PORT_{i}"))
                .or_insert_with(|| EnvValue::Text(container_port.to_string()));
            PortMapping {
                local_port: None,
                container_port,
            }
        })
        .collect()
}

/// Quote a path for `sh` when it needs it.
fn shell_quote(path: &str) -> String {
    if path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/+".contains(&b))
    {
        path.to_string()
    } else {
        format!("'{}'", path.replace('\'', "'\\''"))
    }
}

/// Where a validation issue of the converted task points in the workflow: the same key when the
/// workflow has it, else the key it came from.
fn legacy_pointer(node: &Node, pointer: &str) -> String {
    let top = pointer.split('/').nth(1).unwrap_or_default();
    let from = match top {
        "spot_policy" => "/resources/interruptible".to_string(),
        "setup" if node.get("setup").is_none() => "/before_run".to_string(),
        "image" | "python" if node.get(top).is_none() => "/provider".to_string(),
        _ => pointer.to_string(),
    };
    if node.locate(&from, false).1 {
        from
    } else {
        String::new()
    }
}

/// The workflow's provider, or a problem.
fn provider_of(
    checker: &mut Checker<'_>,
    node: &Node,
    name_span: Span,
    name: &str,
) -> Option<Provider> {
    let Some(value) = node.get("provider") else {
        checker.hinted(
            name_span,
            "",
            format!("the workflow `{name}` has no `provider`"),
            "add `provider: bash` (commands in a Python image) or `provider: docker` (with `image`)",
        );
        return None;
    };
    match value.scalar_text().as_deref() {
        Some("bash") => Some(Provider::Bash),
        Some("docker") => Some(Provider::Docker),
        Some(other) if !matches!(value.value, Value::Null) => {
            checker.error(value.span, "provider", provider_hint(other));
            None
        }
        _ => {
            checker.error(
                value.span,
                "provider",
                format!(
                    "`provider` must be `bash` or `docker`, found {}",
                    value.kind_name()
                ),
            );
            None
        }
    }
}

/// Keys the provider does not take: unknown ones, and known ones of other providers or eras.
fn check_keys(checker: &mut Checker<'_>, node: &Node, provider: Provider) {
    let Value::Map(entries) = &node.value else {
        return;
    };
    let allowed = provider.keys();
    for entry in entries
        .iter()
        .filter(|e| !allowed.contains(&e.key.as_str()))
    {
        let key = entry.key.as_str();
        if let Some(hint) = unsupported_key(key) {
            checker.hinted(
                entry.key_span,
                key,
                format!("`{key}` is not supported"),
                hint,
            );
            continue;
        }
        let other = match (provider, key) {
            (Provider::Docker, "python" | "requirements") => Some(
                "the `docker` provider runs `image` as is: install Python and requirements in the image, or use `provider: bash`",
            ),
            (Provider::Bash, "image" | "entrypoint") => {
                Some("`image` and `entrypoint` belong to `provider: docker`")
            }
            _ => None,
        };
        if let Some(hint) = other {
            checker.hinted(
                entry.key_span,
                key,
                format!(
                    "`{key}` is not a key of the `{}` provider",
                    provider.as_str()
                ),
                hint,
            );
            continue;
        }
        let known: Vec<String> = allowed.iter().map(|k| (*k).to_string()).collect();
        let mut problem = Problem::new(
            checker.source,
            entry.key_span,
            checker.path(key),
            format!(
                "unknown key `{key}` for the `{}` provider: expected one of {}",
                provider.as_str(),
                allowed
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        if let Some(s) = suggest(key, &known) {
            problem = problem.with_hint(format!("did you mean `{s}`?"));
        }
        checker.problems.push(problem);
    }
}

/// Convert one workflow with the variables it sees.
pub fn convert(
    definition: &Definition,
    vars: &BTreeMap<String, String>,
    run_args: Option<&str>,
) -> Result<Workflow, Vec<Problem>> {
    let source = &definition.source;
    let mut checker = Checker {
        source,
        prefix: format!("workflows[{}]", definition.index),
        problems: Vec::new(),
    };
    let name_span = definition
        .node
        .get("name")
        .map_or(definition.node.span, |n| n.span);

    // Interpolation first, so that every check sees the real values (`gpu: ${{ gpus }}`).
    let mut node = definition.node.clone();
    let context = Context { vars, run_args };
    let mut errors = Vec::new();
    if let Value::Map(entries) = &mut node.value {
        for entry in entries
            .iter_mut()
            .filter(|e| e.key != "name" && e.key != "help")
        {
            interpolate::interpolate(&mut entry.value, &source.text, &context, &mut errors);
        }
    }
    if !errors.is_empty() {
        for error in errors {
            let problem = Problem::new(source, error.span, checker.prefix.clone(), error.message);
            checker.problems.push(match error.hint {
                Some(hint) => problem.with_hint(hint),
                None => problem,
            });
        }
        return Err(checker.problems);
    }

    let Some(provider) = provider_of(&mut checker, &node, name_span, &definition.name) else {
        return Err(checker.problems);
    };
    check_keys(&mut checker, &node, provider);

    let field = |key: &str| node.get(key).filter(|n| !matches!(n.value, Value::Null));
    let mut common = RunCommon::default();
    let mut task = TaskFields::default();

    let mut setup = Vec::new();
    if let Some(value) = field("requirements")
        && let Some(path) = checker.text(value, "requirements", "a path to a requirements file")
    {
        setup.push(format!("pip install -r {}", shell_quote(&path)));
    }
    match (field("setup"), field("before_run")) {
        (Some(_), Some(value)) => checker.hinted(
            node.entry("before_run").map_or(value.span, |e| e.key_span),
            "before_run",
            "`setup` and `before_run` are the same key (its old name): give one",
            "keep `setup`",
        ),
        (Some(value), None) => setup.extend(commands(&mut checker, value, "setup")),
        (None, Some(value)) => setup.extend(commands(&mut checker, value, "before_run")),
        (None, None) => {}
    }
    if let Some(value) = field("commands") {
        task.commands = commands(&mut checker, value, "commands");
    }
    if provider == Provider::Bash && node.get("commands").is_none() {
        checker.hinted(
            name_span,
            "",
            format!(
                "the `bash` workflow `{}` has no `commands`",
                definition.name
            ),
            "add `commands:` with the shell commands to run",
        );
    }
    if let Some(value) = field("python") {
        common.python = checker.typed::<PythonVersion>(value, "python");
    }
    match (provider, field("image")) {
        (Provider::Docker, Some(value)) => {
            common.image = checker
                .text(value, "image", "an image name")
                .filter(|image| !image.trim().is_empty());
            if common.image.is_none() {
                checker.error(value.span, "image", "`image` cannot be empty");
            }
        }
        (Provider::Docker, None) => checker.hinted(
            name_span,
            "",
            format!("the `docker` workflow `{}` has no `image`", definition.name),
            "add `image:`, e.g. `image: ubuntu:22.04`",
        ),
        (Provider::Bash, _) => {}
    }
    if let Some(value) = field("entrypoint") {
        common.entrypoint = checker.text(value, "entrypoint", "a command line");
    }
    if let Some(value) = field("env") {
        common.env = env(&mut checker, value);
    }
    if let Some(value) = field("working_dir") {
        common.working_dir = working_dir(&mut checker, value);
    }
    if let Some(value) = field("artifacts")
        && let Some(items) = checker.list(value, "artifacts", "artifact")
    {
        for (i, item) in items.iter().enumerate() {
            let Some(artifact) = checker.typed::<Artifact>(item, &format!("artifacts[{i}]")) else {
                continue;
            };
            if common.artifacts.iter().any(|a| a.path == artifact.path) {
                checker.error(
                    item.span,
                    &format!("artifacts[{i}]"),
                    format!("the artifact `{}` is listed twice", artifact.path),
                );
            } else {
                common.artifacts.push(artifact);
            }
        }
    }
    if let Some(value) = field("resources") {
        let (resources, spot) = resources(&mut checker, value);
        common.resources = resources;
        common.spot_policy = spot;
    }
    if let Some(value) = field("ports") {
        task.ports = ports(&mut checker, value, &mut common.env);
    }
    if let Some(value) = field("deps") {
        common.deps = deps(&mut checker, value);
    }
    let cache = field("cache").map_or_else(Vec::new, |value| cache(&mut checker, value));
    for key in ["commands", "setup", "before_run"] {
        if let Some(entry) = node
            .entry(key)
            .filter(|e| matches!(e.value.value, Value::Null))
        {
            checker.error(
                entry.value.span,
                key,
                format!("`{key}` is empty: give a list of commands or remove it"),
            );
        }
    }

    // Legacy dstack bind-mounted artifact directories, so they existed when the commands ran.
    let directories: BTreeSet<&str> = common.artifacts.iter().map(|a| a.path.as_str()).collect();
    let has_script = !task.commands.is_empty() || !setup.is_empty();
    if !directories.is_empty() && has_script {
        let quoted: Vec<String> = directories.iter().map(|d| shell_quote(d)).collect();
        setup.insert(0, format!("mkdir -p {}", quoted.join(" ")));
    }
    common.setup = setup;

    let spec = Spec::Run(Box::new(RunSpec {
        fields: RunFields::Task(task),
        common,
    }));
    if checker.problems.is_empty() {
        for issue in validate::check(&spec, validate::Context::default()) {
            let pointer = legacy_pointer(&node, &issue.pointer);
            let span = if pointer.is_empty() {
                name_span
            } else {
                node.locate(&pointer, false).0
            };
            let problem = Problem::new(
                source,
                span,
                checker.path(&pointer_to_path(&pointer)),
                issue.message,
            );
            checker.problems.push(match issue.hint {
                Some(hint) => problem.with_hint(hint),
                None => problem,
            });
        }
    }
    if !checker.problems.is_empty() {
        checker
            .problems
            .sort_by_key(|p| (p.span.offset, p.line, p.column));
        return Err(checker.problems);
    }
    Ok(Workflow {
        name: definition.name.clone(),
        help: definition.help.clone(),
        provider,
        resource: Resource {
            id: ResourceId::new(Kind::Run, definition.name.clone()),
            spec,
            source: SourceRef {
                file: definition.file.clone(),
                document: definition.index,
            },
            sensitive: Vec::new(),
        },
        cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::{Workflows, parse_file};

    fn definitions(text: &str) -> Workflows {
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
        assert!(problems.is_empty(), "{problems:?}");
        workflows
    }

    fn convert_with(
        text: &str,
        vars: &[(&str, &str)],
        args: Option<&str>,
    ) -> Result<Workflow, Vec<String>> {
        let workflows = definitions(text);
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        convert(&workflows.definitions[0], &vars, args).map_err(|problems| {
            problems
                .iter()
                .map(|p| format!("{}: {}: {}", p.location(), p.path, p.message))
                .collect()
        })
    }

    fn one(text: &str) -> Workflow {
        convert_with(text, &[], None).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn errors(text: &str) -> Vec<String> {
        convert_with(text, &[], None).expect_err("invalid")
    }

    fn run_spec(workflow: &Workflow) -> &RunSpec {
        match &workflow.resource.spec {
            Spec::Run(run) => run,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_seed_workflow_becomes_a_task() {
        let workflow = one(
            "workflows:\n  - name: hello-txt\n    provider: bash\n    commands:\n      - echo \"Hello world\" > output/hello.txt\n    artifacts:\n      - path: ./output\n",
        );
        assert_eq!(workflow.provider, Provider::Bash);
        assert_eq!(workflow.resource.id.to_string(), "run/hello-txt");
        assert_eq!(workflow.resource.source.file, ".dstack/workflows.yaml");
        assert_eq!(
            workflow.resource.spec.to_json(),
            serde_json::json!({
                "type": "task",
                "commands": ["echo \"Hello world\" > output/hello.txt"],
                "setup": ["mkdir -p output"],
                "artifacts": [{"path": "output"}],
            })
        );
    }

    #[test]
    fn every_key_of_a_bash_workflow() {
        let workflow = one(r#"workflows:
  - name: train
    help: Trains
    provider: bash
    python: 3.10
    requirements: requirements.txt
    before_run: |
      echo setting up

      echo done
    commands: "python train.py\npython eval.py"
    env:
      - A=1
      - EMPTY
    working_dir: ./src/
    artifacts:
      - checkpoints
      - path: logs
        mount: true
    resources:
      cpu: 4
      memory: 16GB
      shm_size: 512MB
      gpu:
        name: V100
        memory: 16GB
      interruptible: true
      local: true
    ports: 2
    deps:
      - workflow: prepare
      - tag: best
      - ":old"
      - data
      - workflow: other
        mount: true
    cache:
      - .cache/pip
      - path: ./data/
"#);
        assert_eq!(workflow.help.as_deref(), Some("Trains"));
        assert_eq!(workflow.cache, [".cache/pip", "data"]);
        let spec = workflow.resource.spec.to_json();
        assert_eq!(
            spec,
            serde_json::json!({
                "type": "task",
                "ports": ["*:3000", "*:3001"],
                "commands": ["python train.py", "python eval.py"],
                "python": "3.10",
                "working_dir": "/workflow/src",
                "env": {"A": "1", "EMPTY": "", "PORT_0": "3000", "PORT_1": "3001"},
                "resources": {
                    "cpu": "4..",
                    "memory": "16GB..",
                    "shm_size": "0.5GB",
                    "gpu": "V100:16GB..:1",
                },
                "setup": [
                    "mkdir -p checkpoints logs",
                    "pip install -r requirements.txt",
                    "echo setting up",
                    "echo done",
                ],
                "spot_policy": "spot",
                "artifacts": [{"path": "checkpoints"}, {"path": "logs", "mount": true}],
                "deps": [
                    {"task": "prepare"},
                    {"tag": "best"},
                    {"tag": "old"},
                    {"task": "data"},
                    {"task": "other"},
                ],
            })
        );
        assert!(run_spec(&workflow).common.image.is_none());
    }

    #[test]
    fn a_docker_workflow_runs_its_image() {
        let workflow = one(
            "workflows:\n  - name: d\n    provider: docker\n    image: ubuntu:22.04\n    entrypoint: /bin/bash -c\n    commands: [echo hi]\n    ports: [8080, \"9000:9001\"]\n",
        );
        let spec = run_spec(&workflow);
        assert_eq!(spec.common.image.as_deref(), Some("ubuntu:22.04"));
        assert_eq!(spec.common.entrypoint.as_deref(), Some("/bin/bash -c"));
        assert!(spec.common.setup.is_empty());
        let ports: Vec<String> = spec.ports().iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["8080", "9000:9001"]);
        // Without commands the image's own command runs: no directories are made for artifacts.
        let workflow = one(
            "workflows:\n  - name: d\n    provider: docker\n    image: ubuntu\n    artifacts: [out]\n",
        );
        assert!(run_spec(&workflow).common.setup.is_empty());
    }

    #[test]
    fn variables_are_interpolated_with_their_types() {
        let text = "workflows:\n  - name: v\n    provider: bash\n    commands:\n      - python train.py --model ${{ model }} --lr ${{ var.lr }} ${{ run.args }}\n      - echo ${{ run.name }}\n    resources:\n      gpu: ${{ gpus }}\n";
        let workflow = convert_with(
            text,
            &[("model", "124M"), ("lr", "0.1"), ("gpus", "2")],
            Some("--epochs 3"),
        )
        .expect("valid");
        let spec = run_spec(&workflow);
        assert_eq!(
            spec.commands(),
            [
                "python train.py --model 124M --lr 0.1 --epochs 3",
                "echo ${{ run.name }}"
            ]
        );
        assert_eq!(
            spec.common
                .resources
                .gpu
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("2")
        );
        let missing = convert_with(text, &[("model", "124M")], None).expect_err("undefined");
        assert_eq!(
            missing,
            [
                ".dstack/workflows.yaml:5:51: workflows[0]: variable `lr` is not defined",
                ".dstack/workflows.yaml:8:12: workflows[0]: variable `gpus` is not defined",
            ]
        );
    }

    #[test]
    fn providers_we_do_not_run_name_the_alternative() {
        for (provider, expected) in [
            ("lab", "type: dev-environment"),
            ("python", "provider: bash"),
            ("curl", "use `bash`"),
        ] {
            let found = errors(&format!(
                "workflows:\n  - name: x\n    provider: {provider}\n"
            ));
            assert_eq!(found.len(), 1);
            assert!(
                found[0]
                    .starts_with(".dstack/workflows.yaml:3:15: workflows[0].provider: `provider: "),
                "{found:?}"
            );
            assert!(found[0].contains(expected), "{found:?}");
        }
        assert_eq!(
            errors("workflows:\n  - name: x\n    commands: [a]\n"),
            [".dstack/workflows.yaml:2:11: workflows[0]: the workflow `x` has no `provider`"]
        );
    }

    #[test]
    fn every_problem_of_a_workflow_is_reported() {
        let found = errors(
            r"workflows:
  - name: bad
    provider: bash
    image: ubuntu
    comands: [a]
    ssh: true
    env: [1A=x]
    working_dir: ../up
    artifacts: [/abs]
    resources:
      gpu: 0
      memory: lots
      cpus: 2
    ports: 0
    deps:
      - run: x
    cache: [a, a/b]
",
        );
        assert_eq!(
            found,
            [
                ".dstack/workflows.yaml:2:11: workflows[0]: the `bash` workflow `bad` has no `commands`",
                ".dstack/workflows.yaml:4:5: workflows[0].image: `image` is not a key of the `bash` provider",
                ".dstack/workflows.yaml:5:5: workflows[0].comands: unknown key `comands` for the `bash` provider: expected one of `name`, `help`, `provider`, `deps`, `commands`, `setup`, `before_run`, `requirements`, `python`, `env`, `working_dir`, `artifacts`, `resources`, `ports`, `cache`",
                ".dstack/workflows.yaml:6:5: workflows[0].ssh: `ssh` is not supported",
                ".dstack/workflows.yaml:7:11: workflows[0].env[0]: invalid environment variable `1A=x`: expected `KEY=VALUE` or `KEY`, where KEY is letters, digits and `_`, not starting with a digit",
                ".dstack/workflows.yaml:8:18: workflows[0].working_dir: the working directory `../up` must not leave the working directory (`..`)",
                ".dstack/workflows.yaml:9:17: workflows[0].artifacts[0]: the artifact path `/abs` must be relative to the working directory",
                ".dstack/workflows.yaml:11:12: workflows[0].resources.gpu: `resources.gpu` must be a whole number of GPUs, at least 1, found `0`",
                ".dstack/workflows.yaml:12:15: workflows[0].resources.memory: invalid size `lots`: expected a whole number with `MB` or `GB`, like `16GB`",
                ".dstack/workflows.yaml:13:7: workflows[0].resources.cpus: unknown key `cpus` in `resources`: expected `cpu`, `memory`, `gpu`, `shm_size`, `interruptible` or `local` (did you mean `cpu`?)",
                ".dstack/workflows.yaml:14:12: workflows[0].ports: `ports` must be a whole number of ports, at least 1, found `0`",
                ".dstack/workflows.yaml:16:9: workflows[0].deps[0].run: unknown key `run` in a dependency: expected `workflow` or `tag`",
                ".dstack/workflows.yaml:17:16: workflows[0].cache[1]: the cache path `a/b` overlaps `a`",
            ]
        );
        let found = errors("workflows:\n  - name: d\n    provider: docker\n    python: 3.10\n");
        assert_eq!(
            found,
            [
                ".dstack/workflows.yaml:2:11: workflows[0]: the `docker` workflow `d` has no `image`",
                ".dstack/workflows.yaml:4:5: workflows[0].python: `python` is not a key of the `docker` provider",
            ]
        );
    }

    #[test]
    fn model_checks_point_into_the_workflow() {
        // Reserved container ports are checked by the task model, and reported at the port.
        let found = errors(
            "workflows:\n  - name: p\n    provider: docker\n    image: busybox\n    commands: [a]\n    ports: [10001]\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(".dstack/workflows.yaml:6:13: workflows[0].ports[0]: "),
            "{found:?}"
        );
        // Both names of the setup key.
        let found = errors(
            "workflows:\n  - name: s\n    provider: bash\n    setup: [a]\n    before_run: [b]\n    commands: [c]\n",
        );
        assert_eq!(
            found,
            [
                ".dstack/workflows.yaml:5:5: workflows[0].before_run: `setup` and `before_run` are the same key (its old name): give one"
            ]
        );
    }
}
