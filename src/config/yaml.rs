//! A span-keeping YAML 1.2 reader.
//!
//! Every node of the tree remembers where it came from (byte offset, line, column), so that any
//! later error — a schema violation, a bad shorthand, an unknown interpolation — can point at the
//! exact value the user wrote. Scalars are resolved with the YAML 1.2 core schema: `yes`, `off`
//! and `8080:22` stay strings, `010` is the integer 10. Plain scalars also keep their source text,
//! because a number written where text is expected (`python: 3.10`) means what was typed.
//!
//! Invariants: the reader never panics on any input; nesting depth and alias expansion are
//! bounded, so hostile documents (deep nesting, "billion laughs") get an error instead of
//! exhausting the stack or memory; duplicate keys in a mapping are an error.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Tag};

/// Deepest nesting of sequences and mappings accepted.
const MAX_DEPTH: usize = 64;
/// Most nodes a file may expand to through aliases.
const MAX_NODES: usize = 1_000_000;

/// A location in a source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// Byte offset of the first character.
    pub offset: usize,
    /// Length in bytes (at least 1 where the source has a character there).
    pub len: usize,
    /// Line, 1-based.
    pub line: usize,
    /// Column, 1-based, in characters.
    pub column: usize,
}

/// A YAML value with its location.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
    /// Source text of a plain (unquoted) scalar. A number or boolean read where text is expected
    /// is read as this text, so `python: 3.10` is `"3.10"`, not `"3.1"`.
    pub text: Option<Arc<str>>,
    /// The value came (partly) from `${{ env.* }}` or `${{ secrets.* }}`.
    pub sensitive: bool,
}

/// The value of a [`Node`].
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` pair of a mapping; keys are text.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_span: Span,
    /// What the key was written as; `key` holds its text either way (`1:` is `"1"`).
    pub key_kind: KeyKind,
    pub value: Node,
}

/// The kind of scalar a mapping key was written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Text,
    Number,
    Bool,
    Null,
}

impl KeyKind {
    fn of(value: &Value) -> Self {
        match value {
            Value::Int(_) | Value::Float(_) => Self::Number,
            Value::Bool(_) => Self::Bool,
            Value::Null => Self::Null,
            Value::String(_) | Value::Seq(_) | Value::Map(_) => Self::Text,
        }
    }
}

/// One YAML document of a file.
#[derive(Clone, Debug)]
pub struct Document {
    /// Position of the document in its file, 0-based.
    pub index: usize,
    pub root: Node,
}

/// A syntax error with its location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: String,
    pub span: Span,
}

impl Node {
    pub fn new(value: Value, span: Span) -> Self {
        Self {
            value,
            span,
            text: None,
            sensitive: false,
        }
    }

    /// The entry `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }

    /// The entry `key` of a mapping, with its key span.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// Text of a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A short name of the value's kind, for messages ("a string", "a list").
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::String(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// Text of a scalar as the user wrote it, if it is a scalar.
    pub fn scalar_text(&self) -> Option<String> {
        if let Some(text) = &self.text {
            return Some(text.to_string());
        }
        match &self.value {
            Value::String(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null => Some(String::new()),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// Follow a JSON pointer (`/resources/gpu/0`) to the node it names.
    ///
    /// Returns the deepest node reached and whether the whole pointer resolved; for a mapping
    /// key the returned span is the key's own span when `prefer_key` is set.
    pub fn locate(&self, pointer: &str, prefer_key: bool) -> (Span, bool) {
        let mut node = self;
        let mut span = self.span;
        if pointer.is_empty() {
            return (span, true);
        }
        let segments: Vec<String> = pointer
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let last = segments.len().saturating_sub(1);
        for (i, segment) in segments.iter().enumerate() {
            match &node.value {
                Value::Map(entries) => match entries.iter().find(|e| &e.key == segment) {
                    Some(entry) => {
                        span = if prefer_key && i == last {
                            entry.key_span
                        } else {
                            entry.value.span
                        };
                        node = &entry.value;
                    }
                    None => return (span, false),
                },
                Value::Seq(items) => match segment.parse::<usize>().ok().and_then(|i| items.get(i))
                {
                    Some(item) => {
                        span = item.span;
                        node = item;
                    }
                    None => return (span, false),
                },
                _ => return (span, false),
            }
        }
        (span, true)
    }

    /// Convert to JSON for schema validation. Non-finite floats become their source text.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or_else(
                || J::String(self.scalar_text().unwrap_or_default()),
                J::Number,
            ),
            Value::String(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Maps character indexes (what the YAML scanner reports) to byte offsets.
struct Offsets<'a> {
    text: &'a str,
    /// Byte offset of every character; empty when the text is ASCII.
    table: Vec<usize>,
}

impl<'a> Offsets<'a> {
    fn new(text: &'a str) -> Self {
        let table = if text.is_ascii() {
            Vec::new()
        } else {
            text.char_indices().map(|(i, _)| i).collect()
        };
        Self { text, table }
    }

    fn byte(&self, char_index: usize) -> usize {
        if self.table.is_empty() {
            char_index.min(self.text.len())
        } else {
            self.table
                .get(char_index)
                .copied()
                .unwrap_or(self.text.len())
        }
    }

    fn span(&self, start: &saphyr_parser::Marker, end: &saphyr_parser::Marker) -> Span {
        let offset = self.byte(start.index());
        let end = self.byte(end.index()).max(offset);
        let mut len = end - offset;
        if len == 0 && offset < self.text.len() {
            len = self.text[offset..].chars().next().map_or(0, char::len_utf8);
        }
        // A block scalar or mapping may end after trailing newlines; keep carets on the text.
        while len > 1 && self.text[offset..offset + len].ends_with(['\n', '\r', ' ']) {
            len -= 1;
        }
        Span {
            offset,
            len,
            line: start.line(),
            column: start.col() + 1,
        }
    }

    fn point(&self, marker: &saphyr_parser::Marker) -> Span {
        self.span(marker, marker)
    }
}

/// Parse every document of `text`.
pub fn parse(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let offsets = Offsets::new(text);
    let mut builder = Builder {
        parser: Parser::new_from_str(text),
        offsets: &offsets,
        anchors: HashMap::new(),
        nodes: 0,
    };
    builder.stream()
}

struct Builder<'input, 'o> {
    parser: Parser<'input, saphyr_parser::StrInput<'input>>,
    offsets: &'o Offsets<'o>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
}

type Spanned<'input> = (Event<'input>, saphyr_parser::Span);

impl<'input> Builder<'input, '_> {
    fn next(&mut self) -> Result<Spanned<'input>, SyntaxError> {
        match self.parser.next_event() {
            Some(Ok(event)) => Ok(event),
            Some(Err(error)) => Err(self.scan_error(&error)),
            None => Err(SyntaxError {
                message: "unexpected end of input".into(),
                span: Span {
                    offset: self.offsets.text.len(),
                    ..Span::default()
                },
            }),
        }
    }

    fn scan_error(&self, error: &ScanError) -> SyntaxError {
        SyntaxError {
            message: error.info().to_string(),
            span: self.offsets.point(error.marker()),
        }
    }

    fn stream(&mut self) -> Result<Vec<Document>, SyntaxError> {
        let mut documents = Vec::new();
        loop {
            let (event, span) = self.next()?;
            match event {
                Event::StreamStart | Event::Nothing | Event::DocumentEnd => {}
                Event::StreamEnd => return Ok(documents),
                Event::DocumentStart(_) => {
                    let (event, span) = self.next()?;
                    let root = self.node(event, span, 0)?;
                    // Anchors do not cross documents.
                    self.anchors.clear();
                    documents.push(Document {
                        index: documents.len(),
                        root,
                    });
                }
                other => {
                    return Err(SyntaxError {
                        message: format!("unexpected YAML event {other:?}"),
                        span: self.offsets.point(&span.start),
                    });
                }
            }
        }
    }

    fn count(&mut self, span: Span) -> Result<(), SyntaxError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(SyntaxError {
                message: format!("document expands to more than {MAX_NODES} values (alias bomb?)"),
                span,
            });
        }
        Ok(())
    }

    fn node(
        &mut self,
        event: Event<'input>,
        span: saphyr_parser::Span,
        depth: usize,
    ) -> Result<Node, SyntaxError> {
        let start = self.offsets.point(&span.start);
        if depth > MAX_DEPTH {
            return Err(SyntaxError {
                message: format!("values are nested more than {MAX_DEPTH} levels deep"),
                span: start,
            });
        }
        self.count(start)?;
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let node = scalar(
                    text,
                    style,
                    tag.as_deref(),
                    self.offsets.span(&span.start, &span.end),
                )?;
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                Ok(node)
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                    message: "alias refers to an unknown anchor".into(),
                    span: start,
                })?;
                // Count the expansion so that nested aliases cannot blow up memory.
                let size = node_size(&node);
                self.nodes = self.nodes.saturating_add(size);
                self.count(start)?;
                let mut node = node;
                node.span = self.offsets.span(&span.start, &span.end);
                Ok(node)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                let end = loop {
                    let (event, item_span) = self.next()?;
                    if let Event::SequenceEnd = event {
                        break item_span;
                    }
                    items.push(self.node(event, item_span, depth + 1)?);
                };
                let node = Node::new(Value::Seq(items), self.offsets.span(&span.start, &end.end));
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                Ok(node)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries: Vec<Entry> = Vec::new();
                let mut merged: Vec<Entry> = Vec::new();
                let end = loop {
                    let (event, key_span) = self.next()?;
                    if let Event::MappingEnd = event {
                        break key_span;
                    }
                    let key = self.node(event, key_span, depth + 1)?;
                    let (event, value_span) = self.next()?;
                    let value = self.node(event, value_span, depth + 1)?;
                    let is_merge = matches!(&key.value, Value::String(s) if s == "<<");
                    if is_merge {
                        merge_into(&mut merged, value)?;
                        continue;
                    }
                    let (key_span, key_kind) = (key.span, KeyKind::of(&key.value));
                    let key_text = key_text(key)?;
                    if let Some(previous) = entries.iter().find(|e| e.key == key_text) {
                        return Err(SyntaxError {
                            message: format!(
                                "duplicate key `{key_text}` (first defined on line {})",
                                previous.key_span.line
                            ),
                            span: key_span,
                        });
                    }
                    entries.push(Entry {
                        key: key_text,
                        key_span,
                        key_kind,
                        value,
                    });
                };
                // Merged keys (`<<: *defaults`) never override keys written in the mapping.
                for entry in merged {
                    if !entries.iter().any(|e| e.key == entry.key) {
                        entries.push(entry);
                    }
                }
                let node = Node::new(
                    Value::Map(entries),
                    self.offsets.span(&span.start, &end.end),
                );
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                Ok(node)
            }
            other => Err(SyntaxError {
                message: format!("unexpected YAML event {other:?}"),
                span: start,
            }),
        }
    }
}

fn node_size(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(node_size).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|e| node_size(&e.value)).sum::<usize>(),
        _ => 1,
    }
}

fn merge_into(merged: &mut Vec<Entry>, value: Node) -> Result<(), SyntaxError> {
    match value.value {
        Value::Map(entries) => {
            for entry in entries {
                if !merged.iter().any(|e| e.key == entry.key) {
                    merged.push(entry);
                }
            }
            Ok(())
        }
        Value::Seq(items) => {
            for item in items {
                merge_into(merged, item)?;
            }
            Ok(())
        }
        _ => Err(SyntaxError {
            message: "a merge key `<<` needs a mapping or a list of mappings".into(),
            span: value.span,
        }),
    }
}

/// The text of a key node (its [`Node::scalar_text`]), moving rather than copying a string key.
fn key_text(key: Node) -> Result<String, SyntaxError> {
    match key {
        Node {
            value: Value::String(text),
            text: None,
            ..
        } => Ok(text),
        key => key.scalar_text().ok_or_else(|| SyntaxError {
            message: "mapping keys must be scalars, not lists or mappings".into(),
            span: key.span,
        }),
    }
}

fn scalar(
    text: Cow<'_, str>,
    style: ScalarStyle,
    tag: Option<&Tag>,
    span: Span,
) -> Result<Node, SyntaxError> {
    if let Some(tag) = tag {
        let name = if tag.is_yaml_core_schema() || tag.handle == "!!" {
            tag.suffix.as_str()
        } else if tag.handle == "!" && tag.suffix.is_empty() {
            // The non-specific tag `!` forces a string.
            "str"
        } else {
            return Err(SyntaxError {
                message: format!("unsupported YAML tag `{tag}`"),
                span,
            });
        };
        let value = match name {
            "str" => Value::String(text.into_owned()),
            "null" => Value::Null,
            "bool" | "int" | "float" => match resolve_plain(&text) {
                Value::Bool(b) if name == "bool" => Value::Bool(b),
                Value::Int(i) if name == "int" => Value::Int(i),
                Value::Int(i) if name == "float" => Value::Float(i as f64),
                Value::Float(f) if name == "float" => Value::Float(f),
                _ => {
                    return Err(SyntaxError {
                        message: format!("`{text}` is not a valid !!{name}"),
                        span,
                    });
                }
            },
            other => {
                return Err(SyntaxError {
                    message: format!("unsupported YAML tag `!!{other}`"),
                    span,
                });
            }
        };
        return Ok(Node::new(value, span));
    }
    if style == ScalarStyle::Plain {
        // Most plain scalars are text: the parser's string becomes the value, uncopied.
        return Ok(match resolve_typed(&text) {
            Some(value) => Node {
                text: Some(Arc::from(text)),
                ..Node::new(value, span)
            },
            None => Node::new(Value::String(text.into_owned()), span),
        });
    }
    Ok(Node::new(Value::String(text.into_owned()), span))
}

/// Resolve a plain scalar with the YAML 1.2 core schema.
pub fn resolve_plain(text: &str) -> Value {
    resolve_typed(text).unwrap_or_else(|| Value::String(text.to_string()))
}

/// The null, boolean or number a plain scalar stands for; `None` when it is text.
fn resolve_typed(text: &str) -> Option<Value> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Some(Value::Float(f64::INFINITY));
        }
        "-.inf" | "-.Inf" | "-.INF" => return Some(Value::Float(f64::NEG_INFINITY)),
        ".nan" | ".NaN" | ".NAN" => return Some(Value::Float(f64::NAN)),
        _ => {}
    }
    if let Some(octal) = text.strip_prefix("0o") {
        if !octal.is_empty()
            && octal.bytes().all(|b| (b'0'..=b'7').contains(&b))
            && let Ok(i) = i64::from_str_radix(octal, 8)
        {
            return Some(Value::Int(i));
        }
        return None;
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if !hex.is_empty()
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
            && let Ok(i) = i64::from_str_radix(hex, 16)
        {
            return Some(Value::Int(i));
        }
        return None;
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<i64>() {
            Ok(i) => Some(Value::Int(i)),
            Err(_) => text.parse::<f64>().ok().map(Value::Float),
        };
    }
    if is_core_float(digits)
        && let Ok(f) = text.parse::<f64>()
    {
        return Some(Value::Float(f));
    }
    None
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` from the YAML 1.2 core schema (sign removed).
fn is_core_float(text: &str) -> bool {
    // The pattern starts with a digit or a point: most text is rejected at its first byte.
    if !text.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return false;
    }
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((whole, fraction)) => {
            whole.bytes().all(|b| b.is_ascii_digit())
                && fraction.bytes().all(|b| b.is_ascii_digit())
                && (!whole.is_empty() || !fraction.is_empty())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|b| b.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let mut docs = parse(text).expect("valid yaml");
        assert_eq!(docs.len(), 1);
        docs.remove(0).root
    }

    #[test]
    fn yaml_1_2_scalars_mean_what_was_written() {
        let root = one(
            "a: 8080:22\nb: 010\nc: yes\nd: off\ne: 3.10\nf: 0o17\ng: 0x1F\nh: ~\ni: '5'\nj: 1e3\n",
        );
        assert_eq!(
            root.get("a").map(|n| &n.value),
            Some(&Value::String("8080:22".into()))
        );
        assert_eq!(root.get("b").map(|n| &n.value), Some(&Value::Int(10)));
        assert_eq!(
            root.get("c").map(|n| &n.value),
            Some(&Value::String("yes".into()))
        );
        assert_eq!(
            root.get("d").map(|n| &n.value),
            Some(&Value::String("off".into()))
        );
        assert_eq!(root.get("e").map(|n| &n.value), Some(&Value::Float(3.1)));
        assert_eq!(
            root.get("e").and_then(Node::scalar_text).as_deref(),
            Some("3.10")
        );
        assert_eq!(root.get("f").map(|n| &n.value), Some(&Value::Int(15)));
        assert_eq!(root.get("g").map(|n| &n.value), Some(&Value::Int(31)));
        assert_eq!(root.get("h").map(|n| &n.value), Some(&Value::Null));
        assert_eq!(
            root.get("i").map(|n| &n.value),
            Some(&Value::String("5".into()))
        );
        assert_eq!(root.get("j").map(|n| &n.value), Some(&Value::Float(1000.0)));
    }

    #[test]
    fn spans_point_at_values() {
        let text = "type: task\nname: train\ncommands:\n  - echo hi\n";
        let root = one(text);
        let name = root.get("name").expect("name");
        assert_eq!((name.span.line, name.span.column), (2, 7));
        assert_eq!(
            &text[name.span.offset..name.span.offset + name.span.len],
            "train"
        );
        let (span, found) = root.locate("/commands/0", false);
        assert!(found);
        assert_eq!((span.line, span.column), (4, 5));
        let (span, _) = root.locate("/name", true);
        assert_eq!(&text[span.offset..span.offset + span.len], "name");
    }

    #[test]
    fn spans_are_byte_offsets_with_non_ascii_text() {
        let text = "# ünïcödé\nname: trän\n";
        let root = one(text);
        let name = root.get("name").expect("name");
        assert_eq!(
            &text[name.span.offset..name.span.offset + name.span.len],
            "trän"
        );
    }

    #[test]
    fn several_documents() {
        let docs = parse("type: volume\n---\ntype: task\n").expect("valid");
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[1].root.get("type").and_then(Node::as_str),
            Some("task")
        );
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let error = parse("a: 1\nb: 2\na: 3\n").expect_err("duplicate");
        assert!(
            error.message.contains("duplicate key `a`"),
            "{}",
            error.message
        );
        assert_eq!(error.span.line, 3);
    }

    #[test]
    fn keys_remember_what_they_were_written_as() {
        let root = one("a: 1\n'b': 2\n1: 3\ntrue: 4\n~: 5\n1.5: 6\n");
        let Value::Map(entries) = root.value else {
            panic!("a mapping");
        };
        let kinds: Vec<(&str, KeyKind)> = entries
            .iter()
            .map(|e| (e.key.as_str(), e.key_kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("a", KeyKind::Text),
                ("b", KeyKind::Text),
                ("1", KeyKind::Number),
                ("true", KeyKind::Bool),
                ("~", KeyKind::Null),
                ("1.5", KeyKind::Number),
            ]
        );
    }

    #[test]
    fn merge_keys_and_aliases() {
        let root = one("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n");
        let c = root.get("c").expect("c");
        assert_eq!(c.get("x").map(|n| &n.value), Some(&Value::Int(1)));
        assert_eq!(c.get("y").map(|n| &n.value), Some(&Value::Int(3)));
    }

    #[test]
    fn hostile_input_is_an_error_not_a_crash() {
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).is_err());
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
        assert!(parse(bomb).is_err());
        assert!(parse("a: !!int abc").is_err());
        assert!(parse("a: [1, 2").is_err());
    }

    #[test]
    fn empty_text_has_no_documents() {
        assert!(parse("").expect("valid").is_empty());
        assert!(parse("# only a comment\n").expect("valid").is_empty());
    }
}
