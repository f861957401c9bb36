//! `${{ namespace.name }}` interpolation in configuration values.
//!
//! Resolved when files are loaded: `var.NAME` (the `global` section of `.dstack/variables.yaml`
//! and `--var NAME=VALUE`), `env.NAME` and `secrets.NAME` (both from the environment), `run.args`
//! (the arguments after `--`). Left for run time, untouched: `run.name`, `dstack.node_rank`,
//! `dstack.job_num` and `groups[...]` references. Any other namespace is an error at its line and
//! column. `$$` escapes `$`.
//!
//! Values that came from `env` or `secrets` are *sensitive*: the node is flagged and the value is
//! returned to the caller, which masks it wherever specs are shown or stored.
//!
//! Invariant: a string that still holds run-time references keeps its `$$` escapes, so the
//! run-time pass sees exactly what the user wrote and nothing is unescaped twice.

use std::collections::BTreeMap;

use super::yaml::{Node, Span, Value, resolve_plain};

/// Where interpolated values come from.
pub struct Context<'a> {
    /// `var.*`: variables.yaml `global` merged with `--var` (flags win).
    pub vars: &'a BTreeMap<String, String>,
    /// `env.*` and `secrets.*`.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// `run.args`: the arguments after `--`, joined with spaces.
    pub run_args: Option<&'a str>,
}

/// An interpolation error at a place in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterpolationError {
    pub message: String,
    pub hint: Option<String>,
    pub span: Span,
    /// JSON pointer of the value.
    pub pointer: String,
}

/// Interpolate every string of `node` in place. Returns the sensitive values that were inserted.
pub fn interpolate(
    node: &mut Node,
    source: &str,
    context: &Context<'_>,
    errors: &mut Vec<InterpolationError>,
) -> Vec<String> {
    let mut sensitive = Vec::new();
    let mut failed = Vec::new();
    walk(
        node,
        source,
        context,
        &mut Vec::new(),
        &mut failed,
        &mut sensitive,
    );
    // Interpolation changes values, never the shape of the tree, so the paths still lead to
    // the values that failed.
    errors.extend(failed.into_iter().map(|(path, error)| InterpolationError {
        pointer: pointer_of(node, &path),
        ..error
    }));
    sensitive
}

/// `path` leads from the root to `node` (the index of each entry or item on the way); it
/// becomes a JSON pointer only for a value that fails, because most documents have none and
/// building a pointer per value was a large part of their load time.
fn walk(
    node: &mut Node,
    source: &str,
    context: &Context<'_>,
    path: &mut Vec<usize>,
    failed: &mut Vec<(Vec<usize>, InterpolationError)>,
    sensitive: &mut Vec<String>,
) {
    match &mut node.value {
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i);
                walk(item, source, context, path, failed, sensitive);
                path.pop();
            }
        }
        Value::Map(entries) => {
            for (i, entry) in entries.iter_mut().enumerate() {
                path.push(i);
                walk(&mut entry.value, source, context, path, failed, sensitive);
                path.pop();
            }
        }
        Value::String(text) => {
            if !has_interpolation(text) {
                return;
            }
            let quoted = source
                .get(node.span.offset..)
                .is_some_and(|rest| rest.starts_with(['"', '\'', '|', '>']));
            let base = if quoted { None } else { Some(node.span) };
            match expand(text, context, base) {
                Ok(expanded) => {
                    if expanded.sensitive {
                        node.sensitive = true;
                        sensitive.extend(expanded.secrets);
                    }
                    // A plain scalar that is exactly one expression takes the type of its value,
                    // so `nodes: ${{ var.nodes }}` is a number.
                    if expanded.whole_expression && !quoted && !expanded.kept_runtime {
                        let value = resolve_plain(&expanded.text);
                        if !matches!(value, Value::String(_)) {
                            node.text = Some(expanded.text.as_str().into());
                        }
                        node.value = value;
                    } else {
                        node.value = Value::String(expanded.text);
                    }
                }
                Err((message, hint, span)) => failed.push((
                    path.clone(),
                    InterpolationError {
                        message,
                        hint,
                        span: span.unwrap_or(node.span),
                        pointer: String::new(),
                    },
                )),
            }
        }
        _ => {}
    }
}

/// Whether `text` holds an expression (`${{`) or an escape (`$$`). Other text, a lone `$` as in
/// `$EPOCHS` included, expands to itself.
fn has_interpolation(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'$' && (bytes[i + 1..].starts_with(b"$") || bytes[i + 1..].starts_with(b"{{"))
    })
}

/// The JSON pointer of the value `path` leads to from `node`.
fn pointer_of(mut node: &Node, path: &[usize]) -> String {
    let mut pointer = String::new();
    for &i in path {
        match &node.value {
            Value::Seq(items) if i < items.len() => {
                pointer.push_str(&format!("/{i}"));
                node = &items[i];
            }
            Value::Map(entries) if i < entries.len() => {
                let key = &entries[i].key;
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                node = &entries[i].value;
            }
            _ => break,
        }
    }
    pointer
}

struct Expanded {
    text: String,
    sensitive: bool,
    secrets: Vec<String>,
    whole_expression: bool,
    kept_runtime: bool,
}

type ExpandError = (String, Option<String>, Option<Span>);

/// Span of the byte range `start..end` of a plain scalar that starts at `base`.
fn sub_span(base: Option<Span>, text: &str, start: usize, end: usize) -> Option<Span> {
    let base = base?;
    if text[..start].contains('\n') {
        return None;
    }
    Some(Span {
        offset: base.offset + start,
        len: end - start,
        line: base.line,
        column: base.column + text[..start].chars().count(),
    })
}

fn expand(text: &str, context: &Context<'_>, base: Option<Span>) -> Result<Expanded, ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut sensitive = false;
    let mut secrets = Vec::new();
    let mut kept_runtime = false;
    let mut expressions = 0;
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        if text[i..].starts_with("$$") {
            out.push_str("$$");
            i += 2;
            continue;
        }
        if text[i..].starts_with("${{") {
            let Some(close) = text[i + 3..].find("}}") else {
                return Err((
                    "unclosed `${{`: expected `}}`".into(),
                    Some("write `$${{` for a literal `${{`".into()),
                    sub_span(base, text, i, text.len()),
                ));
            };
            let end = i + 3 + close + 2;
            let expression = text[i + 3..i + 3 + close].trim();
            expressions += 1;
            match resolve(expression, context) {
                Resolved::Value(value, is_secret) => {
                    if is_secret {
                        sensitive = true;
                        if !value.is_empty() {
                            secrets.push(value.clone());
                        }
                    }
                    // A resolved value is literal text: protect its `$` from the run-time pass.
                    out.push_str(&value.replace('$', "$$"));
                }
                Resolved::Runtime => {
                    kept_runtime = true;
                    out.push_str(&text[i..end]);
                }
                Resolved::Error(message, hint) => {
                    return Err((message, hint, sub_span(base, text, i, end)));
                }
            }
            i = end;
            continue;
        }
        let ch = text[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8().max(1);
        let _ = bytes;
    }
    let whole_expression =
        expressions == 1 && text.trim().starts_with("${{") && text.trim().ends_with("}}");
    // Without run-time references left, unescape now; otherwise the run-time pass will.
    let text = if kept_runtime {
        out
    } else {
        out.replace("$$", "$")
    };
    Ok(Expanded {
        text,
        sensitive,
        secrets,
        whole_expression,
        kept_runtime,
    })
}

enum Resolved {
    Value(String, bool),
    Runtime,
    Error(String, Option<String>),
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn resolve(expression: &str, context: &Context<'_>) -> Resolved {
    if expression.starts_with("groups[") || expression.starts_with("groups.") {
        return Resolved::Runtime;
    }
    let Some((namespace, name)) = expression.split_once('.') else {
        return Resolved::Error(
            format!("`{expression}` is not a reference: expected `namespace.name`"),
            Some("namespaces are `var`, `env`, `secrets`, `run` and `dstack`".into()),
        );
    };
    if !is_identifier(name) {
        return Resolved::Error(
            format!("`{name}` is not a valid name in `{expression}`"),
            None,
        );
    }
    match namespace {
        "var" => match context.vars.get(name) {
            Some(value) => Resolved::Value(value.clone(), false),
            None => Resolved::Error(
                format!("variable `{name}` is not defined"),
                Some(format!(
                    "define it under `variables: global:` in `.dstack/variables.yaml`, or pass `--var {name}=VALUE`"
                )),
            ),
        },
        "env" | "secrets" => match (context.env)(name) {
            Some(value) => Resolved::Value(value, true),
            None => Resolved::Error(
                format!(
                    "environment variable `{name}` is not set (needed by `{namespace}.{name}`)"
                ),
                Some(format!("export {name}=... before running dstack")),
            ),
        },
        "run" => match name {
            "args" => Resolved::Value(context.run_args.unwrap_or_default().to_string(), false),
            "name" => Resolved::Runtime,
            other => Resolved::Error(
                format!("unknown reference `run.{other}`"),
                Some("`run` has `name` and `args`".into()),
            ),
        },
        "dstack" => match name {
            "node_rank" | "job_num" => Resolved::Runtime,
            other => Resolved::Error(
                format!("unknown reference `dstack.{other}`"),
                Some("`dstack` has `node_rank` and `job_num`".into()),
            ),
        },
        other => Resolved::Error(
            format!("unknown namespace `{other}` in `${{{{ {expression} }}}}`"),
            Some("namespaces are `var`, `env`, `secrets`, `run` and `dstack`".into()),
        ),
    }
}

/// Substitute run-time references (`run.name`, `dstack.*`) and unescape `$$`.
pub fn expand_runtime(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with("$$") {
            out.push('$');
            i += 2;
            continue;
        }
        if text[i..].starts_with("${{")
            && let Some(close) = text[i + 3..].find("}}")
        {
            let expression = text[i + 3..i + 3 + close].trim();
            let end = i + 3 + close + 2;
            match values.get(expression) {
                Some(value) => out.push_str(value),
                None => out.push_str(&text[i..end]),
            }
            i = end;
            continue;
        }
        let ch = text[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::parse;

    fn run(
        text: &str,
        vars: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> (Node, Vec<InterpolationError>, Vec<String>) {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let lookup = |name: &str| env.get(name).cloned();
        let context = Context {
            vars: &vars,
            env: &lookup,
            run_args: Some("--epochs 3"),
        };
        let mut root = parse(text).expect("yaml").remove(0).root;
        let mut errors = Vec::new();
        let secrets = interpolate(&mut root, text, &context, &mut errors);
        (root, errors, secrets)
    }

    #[test]
    fn resolves_var_env_secrets_and_args() {
        let (root, errors, secrets) = run(
            "a: ${{ var.model }}-x\nb: ${{ env.TOKEN }}\nc: python train.py ${{ run.args }}\nd: ${{ secrets.KEY }}\n",
            &[("model", "124M")],
            &[("TOKEN", "t0k"), ("KEY", "s3cret")],
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(root.get("a").and_then(Node::as_str), Some("124M-x"));
        assert_eq!(root.get("b").and_then(Node::as_str), Some("t0k"));
        assert!(root.get("b").is_some_and(|n| n.sensitive));
        assert!(!root.get("a").is_some_and(|n| n.sensitive));
        assert_eq!(
            root.get("c").and_then(Node::as_str),
            Some("python train.py --epochs 3")
        );
        assert_eq!(secrets, vec!["t0k".to_string(), "s3cret".to_string()]);
    }

    #[test]
    fn whole_expression_takes_the_type_of_its_value() {
        let (root, errors, _) = run("n: ${{ var.n }}\nq: '${{ var.n }}'\n", &[("n", "2")], &[]);
        assert!(errors.is_empty());
        assert_eq!(root.get("n").map(|n| &n.value), Some(&Value::Int(2)));
        assert_eq!(
            root.get("q").map(|n| &n.value),
            Some(&Value::String("2".into()))
        );
    }

    #[test]
    fn runtime_references_and_escapes_are_kept_for_run_time() {
        let (root, errors, _) = run(
            "a: echo ${{ run.name }} $${{ x }}\nb: cost $$5\nc: vol-${{ dstack.node_rank }}\nd: ${{ groups[0].nodes[1].IP_ADDRESS }}\n",
            &[],
            &[],
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            root.get("a").and_then(Node::as_str),
            Some("echo ${{ run.name }} $${{ x }}")
        );
        assert_eq!(root.get("b").and_then(Node::as_str), Some("cost $5"));
        let runtime: BTreeMap<String, String> =
            [("run.name".to_string(), "train-1".to_string())].into();
        assert_eq!(
            expand_runtime("echo ${{ run.name }} $${{ x }}", &runtime),
            "echo train-1 ${{ x }}"
        );
    }

    #[test]
    fn unknown_namespace_is_an_error_at_its_column() {
        let (_, errors, _) = run("type: task\ncommands:\n  - echo ${{ foo.bar }}\n", &[], &[]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("unknown namespace `foo`"));
        assert_eq!((errors[0].span.line, errors[0].span.column), (3, 10));
        assert_eq!(errors[0].pointer, "/commands/0");
    }

    #[test]
    fn missing_values_are_errors() {
        let (_, errors, _) = run(
            "a: ${{ var.nope }}\nb: ${{ env.NOPE }}\nc: ${{ var.x\n",
            &[],
            &[],
        );
        assert_eq!(errors.len(), 3);
        assert!(errors[0].message.contains("variable `nope` is not defined"));
        assert!(errors[1].message.contains("`NOPE` is not set"));
        assert!(errors[2].message.contains("unclosed"));
    }

    #[test]
    fn inserted_dollars_survive() {
        let (root, errors, _) = run("a: ${{ var.p }} ${{ run.name }}\n", &[("p", "$HOME")], &[]);
        assert!(errors.is_empty());
        let kept = root
            .get("a")
            .and_then(Node::as_str)
            .unwrap_or_default()
            .to_string();
        let runtime: BTreeMap<String, String> =
            [("run.name".to_string(), "r-1".to_string())].into();
        assert_eq!(expand_runtime(&kept, &runtime), "$HOME r-1");
    }
}
