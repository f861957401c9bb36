//! The one place that writes to the terminal.
//!
//! stdout carries data (plans, tables, JSON) and nothing else; messages, progress, warnings and
//! errors go to stderr. Colors are used only on a terminal and never when `NO_COLOR` is set.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};

/// Where output goes and how it looks.
#[derive(Clone, Debug)]
pub struct Printer {
    /// Colors on stderr messages.
    pub color: bool,
    /// Colors on stdout data.
    pub color_stdout: bool,
    /// Terminal width for wrapped output.
    pub width: usize,
    pub stdout_is_terminal: bool,
    pub stderr_is_terminal: bool,
}

impl Printer {
    /// Detect terminals, `NO_COLOR` and the terminal width.
    pub fn detect() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let stdout_is_terminal = std::io::stdout().is_terminal();
        let stderr_is_terminal = std::io::stderr().is_terminal();
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(100);
        Self {
            color: stderr_is_terminal && !no_color,
            color_stdout: stdout_is_terminal && !no_color,
            width,
            stdout_is_terminal,
            stderr_is_terminal,
        }
    }

    /// Write data to stdout. A closed pipe (`dstack plan | head`) is not an error.
    pub fn data(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// Write a line of data to stdout.
    pub fn data_line(&self, text: &str) {
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        self.data(&line);
    }

    /// Write a message to stderr.
    pub fn message(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes());
        if !text.ends_with('\n') {
            let _ = err.write_all(b"\n");
        }
        let _ = err.flush();
    }

    /// `warning: …` on stderr.
    pub fn warn(&self, text: &str) {
        let label = self.paint("warning", "33");
        self.message(&format!("{label}: {text}"));
    }

    /// Wrap `text` in an ANSI color when stderr takes colors.
    pub fn paint(&self, text: &str, code: &str) -> String {
        if self.color {
            format!("\u{1b}[1;{code}m{text}\u{1b}[0m")
        } else {
            text.to_string()
        }
    }
}

/// A borderless table with upper-case column names, as dstack prints them.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(
            headers
                .iter()
                .map(comfy_table::Cell::new)
                .collect::<Vec<_>>(),
        );
    for row in rows {
        table.add_row(row);
    }
    // comfy-table pads the first column with a leading space; trim it so columns start at 0.
    let text = table.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for line in lines {
        out.push_str(line.get(indent..).unwrap_or("").trim_end());
        out.push('\n');
    }
    out
}

/// "now", "5 mins ago", "3 hours ago", "2 days ago", else the date.
pub fn ago(time: chrono::DateTime<chrono::Utc>) -> String {
    let seconds = (chrono::Utc::now() - time).num_seconds().max(0);
    let plural = |n: i64, unit: &str| format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" });
    match seconds {
        0..=59 => "now".into(),
        60..=3599 => plural(seconds / 60, "min"),
        3600..=86_399 => plural(seconds / 3600, "hour"),
        86_400..=2_591_999 => plural(seconds / 86_400, "day"),
        _ => time.format("%Y-%m-%d").to_string(),
    }
}
