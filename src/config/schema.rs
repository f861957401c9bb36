//! JSON Schema validation with errors that read like a compiler's.
//!
//! Documents are validated by the `jsonschema` crate against the schemas in `schemas/` (embedded
//! in the binary; generated from the model types, see `model::schema`). Shorthand values
//! (`2..8`, `A100:80GB:2`, `80:8080`, `1h`) carry an `x-dstack-parse` keyword whose check is the
//! very parser the typed model uses, so a shorthand error says exactly what is wrong with it.
//!
//! Every error found is reported, each mapped from its JSON pointer back to the YAML node (or the
//! key, for unknown properties) so it renders with a caret under the offending text. Generic
//! combinator errors (`anyOf`, `oneOf`) give way to the more precise errors of the branch the
//! value was evidently meant for.

use std::collections::BTreeSet;
use std::sync::Arc;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{Keyword, ValidationError};
use serde_json::Value as Json;

use super::yaml::{Node, Span};

/// A check run by the `x-dstack-parse` keyword: the name of a shorthand type and its parser.
pub type ShorthandCheck = fn(&str, &Json) -> Result<(), String>;

/// One schema error, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaProblem {
    pub pointer: String,
    pub span: Span,
    pub message: String,
    pub hint: Option<String>,
    /// Raised by a shorthand parser rather than by a generic keyword.
    precise: bool,
}

/// A compiled schema plus the document it came from (for property-name hints).
pub struct Validator {
    validator: jsonschema::Validator,
    document: Json,
}

struct ShorthandKeyword {
    kind: String,
    check: ShorthandCheck,
}

impl<'i> Keyword<'i> for ShorthandKeyword {
    fn validate(&self, instance: &'i Json) -> Result<(), ValidationError<'i>> {
        (self.check)(&self.kind, instance).map_err(ValidationError::custom)
    }

    fn is_valid(&self, instance: &'i Json) -> bool {
        (self.check)(&self.kind, instance).is_ok()
    }
}

impl Validator {
    /// Compile `document` (draft 2020-12) with the shorthand keyword wired to `check`.
    pub fn new(document: Json, check: ShorthandCheck) -> Result<Self, String> {
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .with_keyword("x-dstack-parse", move |_parent, value: &Json, _location| {
                let kind = value.as_str().unwrap_or_default().to_string();
                Ok(Box::new(ShorthandKeyword { kind, check }) as Box<dyn for<'i> Keyword<'i>>)
            })
            .build(&document)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            validator,
            document,
        })
    }

    /// Every problem of `node` against the schema, in document order.
    pub fn problems(&self, node: &Node) -> Vec<SchemaProblem> {
        let instance = node.to_json();
        // Most documents are valid, and `is_valid` builds no errors: the error iterator (paths,
        // messages, the errors of every branch of every combinator) only runs when there is
        // something to report.
        if self.validator.is_valid(&instance) {
            return Vec::new();
        }
        let mut problems = Vec::new();
        for error in self.validator.iter_errors(&instance) {
            self.convert(&error, node, &mut problems);
        }
        finish(problems)
    }

    fn convert(&self, error: &ValidationError<'_>, node: &Node, out: &mut Vec<SchemaProblem>) {
        let pointer = error.instance_path().as_str().to_string();
        let at = |pointer: &str, prefer_key: bool| node.locate(pointer, prefer_key).0;
        let schema_path = error.schema_path().as_str().to_string();
        let simple = |message: String, hint: Option<String>| SchemaProblem {
            span: at(&pointer, false),
            pointer: pointer.clone(),
            message,
            hint,
            precise: false,
        };
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected }
            | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                let parent = schema_path.rsplit_once('/').map_or("", |(p, _)| p);
                let known = self.property_names(parent);
                for key in unexpected {
                    let child = format!("{pointer}/{}", escape(key));
                    let hint = suggest(key, &known)
                        .map(|s| format!("did you mean `{s}`?"))
                        .or_else(|| {
                            (!known.is_empty())
                                .then(|| format!("known properties: {}", list(&known)))
                        });
                    out.push(SchemaProblem {
                        span: at(&child, true),
                        pointer: child,
                        message: format!("unknown property `{key}`"),
                        hint,
                        precise: false,
                    });
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                out.push(simple(format!("missing required property `{name}`"), None));
            }
            ValidationErrorKind::Custom { message, .. } => {
                out.push(SchemaProblem {
                    precise: true,
                    ..simple(message.clone(), None)
                });
            }
            ValidationErrorKind::Type { kind } => {
                let expected = match kind {
                    TypeKind::Single(t) => article(&t.to_string()),
                    TypeKind::Multiple(set) => {
                        let names: Vec<String> =
                            set.iter().map(|t| article(&t.to_string())).collect();
                        names.join(" or ")
                    }
                };
                out.push(simple(
                    format!("expected {expected}, found {}", describe(error.instance())),
                    None,
                ));
            }
            ValidationErrorKind::Enum { options } => {
                let options: Vec<String> = options
                    .as_array()
                    .map(|o| {
                        o.iter()
                            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let found = describe(error.instance());
                let hint = error
                    .instance()
                    .as_str()
                    .and_then(|s| suggest(s, &options))
                    .map(|s| format!("did you mean `{s}`?"));
                out.push(simple(
                    format!("expected one of {}, found {found}", list(&options)),
                    hint,
                ));
            }
            ValidationErrorKind::Constant { expected_value } => {
                out.push(simple(
                    format!(
                        "expected {expected_value}, found {}",
                        describe(error.instance())
                    ),
                    None,
                ));
            }
            ValidationErrorKind::Minimum { limit } => {
                out.push(simple(
                    format!("must be at least {limit}, found {}", error.instance()),
                    None,
                ));
            }
            ValidationErrorKind::Maximum { limit } => {
                out.push(simple(
                    format!("must be at most {limit}, found {}", error.instance()),
                    None,
                ));
            }
            ValidationErrorKind::ExclusiveMinimum { limit } => {
                out.push(simple(
                    format!("must be greater than {limit}, found {}", error.instance()),
                    None,
                ));
            }
            ValidationErrorKind::ExclusiveMaximum { limit } => {
                out.push(simple(
                    format!("must be less than {limit}, found {}", error.instance()),
                    None,
                ));
            }
            ValidationErrorKind::MinItems { limit } => {
                let s = if *limit == 1 { "" } else { "s" };
                out.push(simple(format!("must have at least {limit} item{s}"), None));
            }
            ValidationErrorKind::MaxItems { limit } => {
                out.push(simple(format!("must have at most {limit} items"), None));
            }
            ValidationErrorKind::MinLength { limit } => {
                let message = if *limit == 1 {
                    "must not be empty".to_string()
                } else {
                    format!("must be at least {limit} characters long")
                };
                out.push(simple(message, None));
            }
            ValidationErrorKind::MaxLength { limit } => {
                out.push(simple(
                    format!("must be at most {limit} characters long"),
                    None,
                ));
            }
            ValidationErrorKind::Pattern { pattern } => {
                let described = self.description(&schema_path);
                let message = described.map_or_else(
                    || format!("{} does not match `{pattern}`", describe(error.instance())),
                    |d| format!("expected {d}, found {}", describe(error.instance())),
                );
                out.push(simple(message, None));
            }
            ValidationErrorKind::AnyOf { context }
            | ValidationErrorKind::OneOfNotValid { context } => {
                // An enum whose documented variants are `const` branches: list every value.
                if let Some(options) = self.enum_options(&schema_path) {
                    let hint = error
                        .instance()
                        .as_str()
                        .and_then(|s| suggest(s, &options))
                        .map(|s| format!("did you mean `{s}`?"));
                    out.push(simple(
                        format!(
                            "expected one of {}, found {}",
                            list(&options),
                            describe(error.instance())
                        ),
                        hint,
                    ));
                    return;
                }
                // Prefer the branch the value was evidently meant for: one that fails for a reason
                // other than the value's type, or (for tagged mappings) than its `type` tag.
                let is_child = |e: &ValidationError<'_>| {
                    e.instance_path()
                        .as_str()
                        .strip_prefix(pointer.as_str())
                        .is_some_and(|rest| rest.starts_with('/') && rest[1..].find('/').is_none())
                };
                let mismatch = |branch: &&Vec<ValidationError<'static>>, tags: bool| {
                    branch.iter().any(|e| {
                        let own = e.instance_path().as_str() == pointer
                            && matches!(
                                e.kind(),
                                ValidationErrorKind::Type { .. }
                                    | ValidationErrorKind::Constant { .. }
                            );
                        let tag = tags
                            && is_child(e)
                            && matches!(e.kind(), ValidationErrorKind::Constant { .. });
                        own || tag
                    })
                };
                for tags in [false, true] {
                    let meant: Vec<&Vec<ValidationError<'static>>> =
                        context.iter().filter(|b| !mismatch(b, tags)).collect();
                    if let [branch] = meant.as_slice() {
                        for inner in *branch {
                            self.convert(inner, node, out);
                        }
                        return;
                    }
                }
                // What every branch says (`missing required property `type``), or the values a
                // tag may take when every branch rejected the tag.
                let per_branch: Vec<Vec<SchemaProblem>> = context
                    .iter()
                    .map(|branch| {
                        let mut problems = Vec::new();
                        for inner in branch {
                            self.convert(inner, node, &mut problems);
                        }
                        problems
                    })
                    .collect();
                let common: Vec<&SchemaProblem> = per_branch
                    .first()
                    .into_iter()
                    .flatten()
                    .filter(|p| per_branch.iter().all(|b| b.contains(p)))
                    .collect();
                if !common.is_empty() {
                    out.extend(common.into_iter().cloned());
                    return;
                }
                if let Some(problem) = tag_options(context, &pointer, &is_child, node) {
                    out.push(problem);
                    return;
                }
                // Of the mappings the value could be, the one it misses least (an instance mount
                // with a bad `optional` rather than a volume mount without `name`).
                if error.instance().is_object() {
                    let candidates: Vec<&Vec<SchemaProblem>> = context
                        .iter()
                        .zip(&per_branch)
                        .filter(|(branch, _)| !mismatch(branch, true))
                        .map(|(_, problems)| problems)
                        .collect();
                    let fewest = candidates.iter().map(|p| p.len()).min().unwrap_or(0);
                    if let [best] = candidates
                        .iter()
                        .filter(|p| p.len() == fewest)
                        .collect::<Vec<_>>()
                        .as_slice()
                        && fewest > 0
                    {
                        out.extend(best.iter().cloned());
                        return;
                    }
                }
                let message = match self.description(&schema_path).or_else(|| {
                    self.branch_description(&schema_path)
                        .or_else(|| expected_types(context, &pointer))
                }) {
                    Some(d) => format!("expected {d}, found {}", describe(error.instance())),
                    None => format!("{} is not valid here", describe(error.instance())),
                };
                out.push(simple(message, None));
            }
            ValidationErrorKind::OneOfMultipleValid { .. } => {
                out.push(simple(
                    "value is ambiguous: it matches several forms".into(),
                    None,
                ));
            }
            ValidationErrorKind::UniqueItems => {
                out.push(simple("items must be unique".into(), None));
            }
            ValidationErrorKind::FalseSchema => {
                out.push(simple("no value is allowed here".into(), None));
            }
            other => out.push(simple(format!("{other:?}"), None)),
        }
    }

    /// The schema object at a schema path (JSON pointer into the document).
    fn schema_at(&self, path: &str) -> Option<&Json> {
        if path.is_empty() {
            return Some(&self.document);
        }
        self.document.pointer(path)
    }

    /// Resolve a local `$ref` (`#/$defs/X`).
    fn resolve<'s>(&'s self, schema: &'s Json) -> &'s Json {
        schema
            .get("$ref")
            .and_then(Json::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|r| self.document.pointer(r))
            .unwrap_or(schema)
    }

    /// The values of an `anyOf`/`oneOf` whose every branch is a `const` or an `enum` of text.
    fn enum_options(&self, schema_path: &str) -> Option<Vec<String>> {
        let branches = self.schema_at(schema_path)?.as_array()?;
        let mut options = Vec::new();
        for branch in branches {
            let branch = self.resolve(branch);
            match (branch.get("const"), branch.get("enum")) {
                (Some(Json::String(value)), None) => options.push(value.clone()),
                (None, Some(Json::Array(values))) => {
                    for value in values {
                        options.push(value.as_str()?.to_string());
                    }
                }
                _ => return None,
            }
        }
        (!options.is_empty()).then_some(options)
    }

    /// The `x-dstack-expected` of the one branch of an `anyOf`/`oneOf` that has it
    /// (`anyOf: [{$ref: Schedule}, {type: null}]`).
    fn branch_description(&self, schema_path: &str) -> Option<String> {
        let branches = self.schema_at(schema_path)?.as_array()?;
        let described: Vec<&str> = branches
            .iter()
            .filter_map(|b| self.resolve(b).get("x-dstack-expected")?.as_str())
            .collect();
        match described.as_slice() {
            [one] => Some((*one).to_string()),
            _ => None,
        }
    }

    fn property_names(&self, schema_path: &str) -> Vec<String> {
        self.schema_at(schema_path)
            .and_then(|s| s.get("properties"))
            .and_then(Json::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The `description` of the schema holding the failing keyword, used as "expected …".
    fn description(&self, schema_path: &str) -> Option<String> {
        let parent = schema_path.rsplit_once('/').map_or("", |(p, _)| p);
        let schema = self.schema_at(parent)?;
        schema
            .get("x-dstack-expected")
            .and_then(Json::as_str)
            .map(str::to_string)
    }
}

/// `type` must be one of `a`, `b`: when every branch of a combinator rejected the same child
/// (the tag of a tagged mapping) for not being its constant.
fn tag_options(
    context: &[Vec<ValidationError<'static>>],
    pointer: &str,
    is_child: &dyn Fn(&ValidationError<'_>) -> bool,
    node: &Node,
) -> Option<SchemaProblem> {
    let mut child: Option<String> = None;
    let mut options = Vec::new();
    for branch in context {
        let (path, value) = branch.iter().find_map(|e| match e.kind() {
            ValidationErrorKind::Constant { expected_value } if is_child(e) => {
                Some((e.instance_path().as_str().to_string(), expected_value))
            }
            _ => None,
        })?;
        if child.get_or_insert_with(|| path.clone()) != &path {
            return None;
        }
        options.push(value.as_str()?.to_string());
    }
    let child = child?;
    let key = child
        .strip_prefix(pointer)?
        .trim_start_matches('/')
        .to_string();
    let instance = context
        .iter()
        .flatten()
        .find(|e| e.instance_path().as_str() == child)
        .map(|e| describe(e.instance()))
        .unwrap_or_default();
    Some(SchemaProblem {
        span: node.locate(&child, false).0,
        pointer: child,
        message: format!(
            "`{key}` must be one of {}, found {instance}",
            list(&options)
        ),
        hint: None,
        precise: false,
    })
}

/// "a mapping or null" when every branch of a combinator rejected the value for its type.
fn expected_types(context: &[Vec<ValidationError<'static>>], pointer: &str) -> Option<String> {
    let mut names: Vec<String> = Vec::new();
    for branch in context {
        let mut found = false;
        for e in branch {
            if let (true, ValidationErrorKind::Type { kind }) =
                (e.instance_path().as_str() == pointer, e.kind())
            {
                found = true;
                let kinds: Vec<String> = match kind {
                    TypeKind::Single(t) => vec![t.to_string()],
                    TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect(),
                };
                for name in kinds.iter().map(|k| article(k)) {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
        if !found {
            return None;
        }
    }
    (!names.is_empty()).then(|| names.join(" or "))
}

/// Drop generic errors where a precise one covers the same value, dedupe, sort by position.
fn finish(mut problems: Vec<SchemaProblem>) -> Vec<SchemaProblem> {
    let precise: Vec<String> = problems
        .iter()
        .filter(|p| p.precise)
        .map(|p| p.pointer.clone())
        .collect();
    problems.retain(|p| {
        p.precise
            || !precise
                .iter()
                .any(|q| p.pointer == *q || p.pointer.starts_with(&format!("{q}/")))
    });
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert((p.pointer.clone(), p.message.clone())));
    problems.sort_by_key(|p| (p.span.offset, p.pointer.clone()));
    problems
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn article(name: &str) -> String {
    match name {
        "integer" => "an integer".into(),
        "object" => "a mapping".into(),
        "array" => "a list".into(),
        "null" => "null".into(),
        other => format!("a {other}"),
    }
}

/// Describe a JSON value for a message: `"abc"`, `42`, `a list`.
pub fn describe(value: &Json) -> String {
    match value {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("`{b}`"),
        Json::Number(n) => format!("`{n}`"),
        Json::String(s) => {
            let shown: String = s.chars().take(60).collect();
            format!("`{shown}`")
        }
        Json::Array(_) => "a list".into(),
        Json::Object(_) => "a mapping".into(),
    }
}

fn list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The closest known word, if it is close enough to be a likely typo.
pub fn suggest(word: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(word, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.clone())
}

/// Shared, lazily compiled validators keyed by schema name.
pub type SharedValidator = Arc<Validator>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::parse;
    use serde_json::json;

    fn check(kind: &str, value: &Json) -> Result<(), String> {
        match (kind, value) {
            ("even", Json::Number(n)) if n.as_i64().is_some_and(|i| i % 2 == 0) => Ok(()),
            ("even", _) => Err(format!("{value} is not even")),
            _ => Ok(()),
        }
    }

    fn validator() -> Validator {
        Validator::new(
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "additionalProperties": false,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "count": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-dstack-parse": "even"},
                    "mode": {"enum": ["fast", "slow"]},
                    "commands": {"type": "array", "items": {"type": "string"}}
                }
            }),
            check,
        )
        .expect("schema compiles")
    }

    #[test]
    fn all_errors_are_reported_with_positions_and_hints() {
        let text = "nmae: x\ncount: 3\nmode: fsat\ncommands: [1, true]\n";
        let node = parse(text).expect("yaml").remove(0).root;
        let problems = validator().problems(&node);
        let messages: Vec<(usize, &str)> = problems
            .iter()
            .map(|p| (p.span.line, p.message.as_str()))
            .collect();
        assert_eq!(
            messages,
            vec![
                (1, "missing required property `name`"),
                (1, "unknown property `nmae`"),
                (2, "3 is not even"),
                (3, "expected one of `fast`, `slow`, found `fsat`"),
                (4, "expected a string, found `1`"),
                (4, "expected a string, found `true`"),
            ]
        );
        assert_eq!(problems[1].hint.as_deref(), Some("did you mean `name`?"));
        assert_eq!(problems[3].hint.as_deref(), Some("did you mean `fast`?"));
    }
}
