//! Configuration problems: what went wrong, where, and what to do about it.
//!
//! A [`Problem`] is one error at one place in one file. Problems are collected, never thrown:
//! loading a file reports every problem it has at once (ripgrep's "keep going, then set the exit
//! code"). They render as miette diagnostics — `file:line:column`, the offending line, a caret
//! under the value, a hint — and as plain JSON objects for `--json`.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};
use serde::Serialize;

use super::yaml::Span;

/// The text of a configuration file, shared by every problem found in it.
#[derive(Debug)]
pub struct SourceText {
    /// The path shown to the user (relative to the working directory where possible).
    pub name: String,
    pub text: String,
}

/// One configuration error.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    #[serde(skip)]
    pub source: Arc<SourceText>,
    #[serde(skip)]
    pub span: Span,
    pub line: usize,
    pub column: usize,
    /// Where in the document, as `resources.gpu` or `volumes[0].path`; empty for the document.
    pub path: String,
    pub message: String,
    /// A short text shown next to the caret.
    #[serde(skip)]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(
        source: &Arc<SourceText>,
        span: Span,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            source: Arc::clone(source),
            span,
            line: span.line.max(1),
            column: span.column.max(1),
            path: path.into(),
            message: escape_controls(message.into()),
            label: None,
            hint: None,
        }
    }

    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(escape_controls(hint.into()));
        self
    }

    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// `file:line:column`.
    pub fn location(&self) -> String {
        format!("{}:{}:{}", self.source.name, self.line, self.column)
    }
}

/// Control characters of values echoed in a message (`name: "abc\n"`), written as escapes so that
/// a message stays on one line and shows what is there.
fn escape_controls(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        None
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.hint
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(self)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let text_len = self.source.text.len();
        let offset = self.span.offset.min(text_len);
        let len = self.span.len.min(text_len - offset);
        Some(Box::new(std::iter::once(LabeledSpan::new(
            Some(self.label.clone().unwrap_or_else(|| {
                if self.path.is_empty() {
                    "here".into()
                } else {
                    self.path.clone()
                }
            })),
            offset,
            len,
        ))))
    }
}

impl SourceCode for Problem {
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let contents =
            self.source
                .text
                .read_span(span, context_lines_before, context_lines_after)?;
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.source.name.clone(),
            contents.data(),
            *contents.span(),
            contents.line(),
            contents.column(),
            contents.line_count(),
        )))
    }
}

/// A problem that has no file (a missing file, an unreadable directory).
pub fn named_source(name: &str, text: &str) -> NamedSource<String> {
    NamedSource::new(name, text.to_string())
}

/// Render problems the way the terminal shows them, one block per problem.
pub fn render(problems: &[Problem], color: bool, width: usize) -> String {
    let theme = if color {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme)
        .with_width(width)
        .with_context_lines(1)
        .with_links(false);
    let mut out = String::new();
    for problem in problems {
        let mut block = String::new();
        if handler.render_report(&mut block, problem).is_err() {
            block = format!("  {problem}\n");
        }
        out.push_str(block.trim_end());
        out.push_str("\n\n");
    }
    out
}
