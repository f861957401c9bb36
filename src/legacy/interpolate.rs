//! `${{ ... }}` in legacy workflows.
//!
//! Legacy dstack referenced variables by their bare name (`${{ model }}`, 2022); we also take
//! `${{ var.model }}`, the form `*.dstack.yml` files use. Variables come from
//! `.dstack/variables.yaml` (`global` plus the workflow's own section) and `--NAME VALUE` on the
//! command line. `${{ run.args }}` is the arguments after `--`; `${{ run.name }}` is left for run
//! time (the backend fills it in). `$$` escapes `$`. Shell-style `$name` (2021) is not touched:
//! the shell sees it.
//!
//! This is not [`crate::config::interpolate`]: legacy files have bare names, and none of the
//! `env`, `secrets` or `dstack` namespaces. The escape rules are the same, so that the run-time
//! pass ([`crate::config::interpolate::expand_runtime`]) treats both alike: a string that keeps a
//! run-time reference keeps its `$$` escapes, and inserted values have their `$` escaped.

use std::collections::BTreeMap;

use crate::config::yaml::{Node, Span, Value, resolve_plain};

/// Where values come from.
pub struct Context<'a> {
    /// `global` merged with the workflow's section and the command line's overrides.
    pub vars: &'a BTreeMap<String, String>,
    /// `run.args`: the arguments after `--`, joined with spaces.
    pub run_args: Option<&'a str>,
}

/// An interpolation error at a place in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub message: String,
    pub hint: Option<String>,
    pub span: Span,
}

/// Interpolate every string of `node` in place.
pub fn interpolate(node: &mut Node, source: &str, context: &Context<'_>, errors: &mut Vec<Error>) {
    match &mut node.value {
        Value::Seq(items) => {
            for item in items {
                interpolate(item, source, context, errors);
            }
        }
        Value::Map(entries) => {
            for entry in entries {
                interpolate(&mut entry.value, source, context, errors);
            }
        }
        Value::String(text) => {
            if !text.contains("${{") && !text.contains("$$") {
                return;
            }
            let quoted = source
                .get(node.span.offset..)
                .is_some_and(|rest| rest.starts_with(['"', '\'', '|', '>']));
            let base = (!quoted).then_some(node.span);
            match expand(text, context, base) {
                Ok(expanded) => {
                    // A plain scalar that is exactly one expression takes the type of its value,
                    // so `gpu: ${{ gpus }}` is a number.
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
                Err((message, hint, span)) => errors.push(Error {
                    message,
                    hint,
                    span: span.unwrap_or(node.span),
                }),
            }
        }
        _ => {}
    }
}

struct Expanded {
    text: String,
    whole_expression: bool,
    kept_runtime: bool,
}

type ExpandError = (String, Option<String>, Option<Span>);

/// Span of the byte range `start..end` of a plain scalar that starts at `base` (only on its
/// first line, where columns are known).
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
    let mut kept_runtime = false;
    let mut expressions = 0;
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if rest.starts_with("$$") {
            out.push_str("$$");
            i += 2;
            continue;
        }
        if let Some(body) = rest.strip_prefix("${{") {
            let Some(close) = body.find("}}") else {
                return Err((
                    "unclosed `${{`: expected `}}`".into(),
                    Some("write `$${{` for a literal `${{`".into()),
                    sub_span(base, text, i, text.len()),
                ));
            };
            let end = i + 3 + close + 2;
            expressions += 1;
            match resolve(body[..close].trim(), context) {
                Resolved::Value(value) => out.push_str(&value.replace('$', "$$")),
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
        let ch = rest.chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    let trimmed = text.trim();
    let whole_expression =
        expressions == 1 && trimmed.starts_with("${{") && trimmed.ends_with("}}");
    Ok(Expanded {
        text: if kept_runtime {
            out
        } else {
            out.replace("$$", "$")
        },
        whole_expression,
        kept_runtime,
    })
}

enum Resolved {
    Value(String),
    Runtime,
    Error(String, Option<String>),
}

/// A variable name: letters, digits, `_` and `-`, not starting with a digit or `-`.
fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A variable by name; `_` and `-` spellings are the same variable, as on the command line.
pub fn lookup<'v>(vars: &'v BTreeMap<String, String>, name: &str) -> Option<&'v String> {
    vars.get(name).or_else(|| {
        let wanted = name.replace('-', "_");
        vars.iter()
            .find(|(key, _)| key.replace('-', "_") == wanted)
            .map(|(_, value)| value)
    })
}

const FORMS: &str = "legacy workflows take `${{ NAME }}` or `${{ var.NAME }}` (variables), `${{ run.name }}` and `${{ run.args }}`";

fn resolve(expression: &str, context: &Context<'_>) -> Resolved {
    let variable = match expression.split_once('.') {
        None => expression,
        Some(("var", name)) => name,
        Some(("run", "args")) => {
            return Resolved::Value(context.run_args.unwrap_or_default().to_string());
        }
        Some(("run", "name")) => return Resolved::Runtime,
        Some((namespace, name)) => {
            return Resolved::Error(
                format!("unknown reference `{namespace}.{name}` in `${{{{ {expression} }}}}`"),
                Some(FORMS.into()),
            );
        }
    };
    if !is_variable_name(variable) {
        return Resolved::Error(
            format!("`{expression}` is not a variable name"),
            Some(FORMS.into()),
        );
    }
    match lookup(context.vars, variable) {
        Some(value) => Resolved::Value(value.clone()),
        None => Resolved::Error(
            format!("variable `{variable}` is not defined"),
            Some(format!(
                "define it in `.dstack/variables.yaml`, under `global` or the workflow's own section (then `--{variable} VALUE` overrides it)"
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::interpolate::expand_runtime;
    use crate::config::yaml::parse;

    fn run(text: &str, vars: &[(&str, &str)]) -> (Node, Vec<Error>) {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let context = Context {
            vars: &vars,
            run_args: Some("--epochs 3"),
        };
        let mut root = parse(text).expect("yaml").remove(0).root;
        let mut errors = Vec::new();
        interpolate(&mut root, text, &context, &mut errors);
        (root, errors)
    }

    #[test]
    fn bare_and_var_names_args_and_run_time_names() {
        let (root, errors) = run(
            "a: train.py --model ${{ model }} --lr ${{var.batch-size}}\nb: ${{ run.args }}\nc: echo ${{ run.name }} $$HOME\nd: echo $model $$HOME\n",
            &[("model", "124M"), ("batch_size", "2")],
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            root.get("a").and_then(Node::as_str),
            Some("train.py --model 124M --lr 2")
        );
        assert_eq!(root.get("b").and_then(Node::as_str), Some("--epochs 3"));
        let kept = root.get("c").and_then(Node::as_str).unwrap_or_default();
        assert_eq!(kept, "echo ${{ run.name }} $$HOME");
        let runtime = BTreeMap::from([("run.name".to_string(), "sly-fox-1".to_string())]);
        assert_eq!(expand_runtime(kept, &runtime), "echo sly-fox-1 $HOME");
        // Shell-style `$model` is the shell's; `$$` is an escaped `$`.
        assert_eq!(
            root.get("d").and_then(Node::as_str),
            Some("echo $model $HOME")
        );
    }

    #[test]
    fn a_whole_expression_takes_the_type_of_its_value() {
        let (root, errors) = run("gpu: ${{ gpus }}\nq: '${{ gpus }}'\n", &[("gpus", "2")]);
        assert!(errors.is_empty());
        assert_eq!(root.get("gpu").map(|n| &n.value), Some(&Value::Int(2)));
        assert_eq!(
            root.get("q").map(|n| &n.value),
            Some(&Value::String("2".into()))
        );
    }

    #[test]
    fn errors_point_at_the_expression() {
        let (_, errors) = run(
            "commands:\n  - echo ${{ nope }}\n  - ${{ env.HOME }}\n  - ${{ a b }}\n  - ${{ x\n",
            &[],
        );
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].message.contains("variable `nope` is not defined"));
        assert_eq!((errors[0].span.line, errors[0].span.column), (2, 10));
        assert!(errors[1].message.contains("unknown reference `env.HOME`"));
        assert!(errors[2].message.contains("not a variable name"));
        assert!(errors[3].message.contains("unclosed"));
    }

    #[test]
    fn inserted_dollars_are_literal() {
        let (root, errors) = run(
            "a: ${{ p }} ${{ run.name }}\nb: ${{ p }}x\n",
            &[("p", "$HOME")],
        );
        assert!(errors.is_empty());
        let runtime = BTreeMap::from([("run.name".to_string(), "r-1".to_string())]);
        assert_eq!(
            expand_runtime(
                root.get("a").and_then(Node::as_str).unwrap_or_default(),
                &runtime
            ),
            "$HOME r-1"
        );
        assert_eq!(root.get("b").and_then(Node::as_str), Some("$HOMEx"));
    }
}
