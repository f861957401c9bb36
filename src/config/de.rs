//! A serde `Deserializer` over span-keeping YAML nodes.
//!
//! The typed model is read straight from [`Node`]s, so any error a type raises carries the span
//! and path of the value that caused it. A number or boolean read where text is expected is read
//! as the text the user wrote (`python: 3.10` is `"3.10"`), which is what YAML 1.2 users mean.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

use super::yaml::{Node, Span, Value};

/// One step of a path into a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// Render a path as `resources.gpu` / `volumes[0].path`.
pub fn path_string(path: &[PathSegment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            PathSegment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            PathSegment::Index(i) => {
                out.push_str(&format!("[{i}]"));
            }
        }
    }
    out
}

/// An error raised while reading a typed value, with the location of the offending node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeError {
    pub message: String,
    pub span: Option<Span>,
    pub path: Vec<PathSegment>,
}

impl DeError {
    /// Attach the node's span (if none is set yet) and prepend a path segment.
    fn at(mut self, span: Span, segment: Option<PathSegment>) -> Self {
        if self.span.is_none() {
            self.span = Some(span);
        }
        if let Some(segment) = segment {
            self.path.insert(0, segment);
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Self {
            message: message.to_string(),
            span: None,
            path: Vec::new(),
        }
    }
}

/// Read a typed value from a node.
pub fn from_node<T: de::DeserializeOwned>(node: &Node) -> Result<T, DeError> {
    T::deserialize(NodeDeserializer(node)).map_err(|e| e.at(node.span, None))
}

/// Read a typed value from a node as if the mapping keys `skip` were not in it (a node that is
/// not a mapping is read as it is). Equivalent to removing those entries from a copy of the node,
/// without copying the tree.
pub fn from_node_without<T: de::DeserializeOwned>(
    node: &Node,
    skip: &[&str],
) -> Result<T, DeError> {
    T::deserialize(WithoutKeys { node, skip }).map_err(|e| e.at(node.span, None))
}

/// Deserializes one [`Node`].
#[derive(Clone, Copy)]
pub struct NodeDeserializer<'a>(pub &'a Node);

impl<'de> de::Deserializer<'de> for NodeDeserializer<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::String(s) => visitor.visit_str(s),
            Value::Seq(items) => visitor.visit_seq(NodeSeq { items, index: 0 }),
            Value::Map(entries) => visitor.visit_map(NodeMap {
                entries,
                index: 0,
                skip: &[],
            }),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Int(_) | Value::Float(_) => {
                visitor.visit_str(&self.0.scalar_text().unwrap_or_default())
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                let text = self.0.scalar_text().unwrap_or_default();
                visitor.visit_enum(text.into_deserializer())
            }
            _ => Err(de::Error::invalid_type(unexpected(self.0), &visitor)),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// Deserializes one [`Node`] whose mapping entries named in `skip` are hidden; the entries'
/// values are read by [`NodeDeserializer`], so only the top level differs.
#[derive(Clone, Copy)]
struct WithoutKeys<'a> {
    node: &'a Node,
    skip: &'a [&'a str],
}

impl<'de> de::Deserializer<'de> for WithoutKeys<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(entries) => visitor.visit_map(NodeMap {
                entries,
                index: 0,
                skip: self.skip,
            }),
            _ => NodeDeserializer(self.node).deserialize_any(visitor),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(_) => self.deserialize_any(visitor),
            _ => NodeDeserializer(self.node).deserialize_str(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        // A mapping is never an enum here, skipped keys or not: the plain reader's error.
        NodeDeserializer(self.node).deserialize_enum(name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct identifier
    }
}

fn unexpected(node: &Node) -> de::Unexpected<'_> {
    match &node.value {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Int(i) => de::Unexpected::Signed(*i),
        Value::Float(f) => de::Unexpected::Float(*f),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Seq(_) => de::Unexpected::Seq,
        Value::Map(_) => de::Unexpected::Map,
    }
}

struct NodeSeq<'a> {
    items: &'a [Node],
    index: usize,
}

impl<'de> SeqAccess<'de> for NodeSeq<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(item) = self.items.get(self.index) else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(NodeDeserializer(item))
            .map(Some)
            .map_err(|e| e.at(item.span, Some(PathSegment::Index(index))))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.index)
    }
}

struct NodeMap<'a> {
    entries: &'a [super::yaml::Entry],
    index: usize,
    /// Keys read as if absent.
    skip: &'a [&'a str],
}

impl NodeMap<'_> {
    fn skipped(&self, entry: &super::yaml::Entry) -> bool {
        self.skip.contains(&entry.key.as_str())
    }
}

impl<'de> MapAccess<'de> for NodeMap<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        while self
            .entries
            .get(self.index)
            .is_some_and(|entry| self.skipped(entry))
        {
            self.index += 1;
        }
        let Some(entry) = self.entries.get(self.index) else {
            return Ok(None);
        };
        seed.deserialize(de::value::StrDeserializer::<DeError>::new(&entry.key))
            .map(Some)
            .map_err(|e| e.at(entry.key_span, Some(PathSegment::Key(entry.key.clone()))))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let entry = &self.entries[self.index];
        self.index += 1;
        seed.deserialize(NodeDeserializer(&entry.value))
            .map_err(|e| e.at(entry.value.span, Some(PathSegment::Key(entry.key.clone()))))
    }

    fn size_hint(&self) -> Option<usize> {
        let rest = self.entries.get(self.index..).unwrap_or_default();
        Some(rest.iter().filter(|entry| !self.skipped(entry)).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::parse;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        python: String,
        items: Vec<Inner>,
    }

    fn root(text: &str) -> Node {
        parse(text).expect("yaml").remove(0).root
    }

    #[test]
    fn numbers_read_as_text_keep_their_spelling() {
        let outer: Outer = from_node(&root("python: 3.10\nitems: []\n")).expect("valid");
        assert_eq!(outer.python, "3.10");
    }

    #[test]
    fn errors_carry_span_and_path() {
        let error = from_node::<Outer>(&root("python: x\nitems:\n  - count: 1\n  - count: -1\n"))
            .expect_err("negative");
        assert_eq!(path_string(&error.path), "items[1].count");
        assert_eq!(error.span.map(|s| (s.line, s.column)), Some((4, 12)));
        let error =
            from_node::<Outer>(&root("python: x\nitems:\n  - cuont: 1\n")).expect_err("unknown");
        assert!(
            error.message.contains("unknown field `cuont`"),
            "{}",
            error.message
        );
        assert_eq!(error.span.map(|s| (s.line, s.column)), Some((3, 5)));
    }

    #[test]
    fn skipped_keys_read_as_absent() {
        let node = root("type: x\npython: 3.10\nname: y\nitems: []\n");
        let outer: Outer = from_node_without(&node, &["type", "name"]).expect("valid");
        assert_eq!(outer.python, "3.10");
        // Only the top level is filtered, and what is left is read as usual.
        let error = from_node_without::<Outer>(&node, &["type"]).expect_err("unknown `name`");
        assert!(
            error.message.contains("unknown field `name`"),
            "{}",
            error.message
        );
        assert_eq!(error.span.map(|s| (s.line, s.column)), Some((3, 1)));
    }
}
