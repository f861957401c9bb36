//! Plans for people (text), pull requests (Markdown) and machines (JSON).
//!
//! Text follows Terraform's conventions — `+` create, `~` update in place, `-/+` replace, `-`
//! destroy; old → new values; a line diff (crate `similar`) for lists and multi-line values; a
//! `# forces replacement` note on the fields responsible — and ends with
//! `Plan: N to add, N to change, N to replace, N to destroy.` Sensitive values show as
//! `(sensitive)`.

use std::fmt::Write as _;

use serde_json::Value as Json;
use similar::{ChangeTag, TextDiff};

use super::sensitive::for_display;
use super::{ChangeKind, DriftKind, Plan, ResourceChange, Summary};

/// GitHub refuses comments longer than 65,536 characters; stay below with room for a note.
pub const MARKDOWN_LIMIT: usize = 60_000;

/// The summary line.
pub fn summary_line(summary: &Summary) -> String {
    format!(
        "Plan: {} to add, {} to change, {} to replace, {} to destroy.",
        summary.add, summary.change, summary.replace, summary.destroy
    )
}

fn scalar(value: &Json) -> String {
    match value {
        Json::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// A value on one line when short, else pretty-printed lines.
fn lines_of(value: &Json) -> Vec<String> {
    match value {
        Json::Array(_) | Json::Object(_) => {
            let compact = value.to_string();
            if compact.len() <= 60 && !compact.contains("\\n") {
                vec![compact]
            } else {
                expanded(value)
            }
        }
        Json::String(s) if s.contains('\n') => expanded(value),
        other => vec![scalar(other)],
    }
}

/// A value over several lines: one list item per line, so a line diff shows which items changed.
fn expanded(value: &Json) -> Vec<String> {
    match value {
        Json::Array(items) => {
            let mut lines = vec!["[".to_string()];
            for item in items {
                let mut item_lines = lines_of(item);
                if let Some(last) = item_lines.last_mut() {
                    last.push(',');
                }
                lines.extend(item_lines.into_iter().map(|l| format!("  {l}")));
            }
            lines.push("]".into());
            lines
        }
        Json::String(s) if s.contains('\n') => {
            let mut lines = vec!["<<EOT".to_string()];
            lines.extend(s.lines().map(str::to_string));
            lines.push("EOT".into());
            lines
        }
        Json::Object(_) => serde_json::to_string_pretty(value)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect(),
        other => vec![scalar(other)],
    }
}

fn attribute_block(
    out: &mut String,
    sign: &str,
    key: &str,
    value: &Json,
    width: usize,
    indent: &str,
) {
    let lines = lines_of(value);
    let _ = write!(out, "{indent}{sign} {key:<width$} = {}", lines[0]);
    for line in &lines[1..] {
        let _ = write!(out, "\n{indent}  {:width$}   {line}", "");
    }
    out.push('\n');
}

fn change_header(change: &ResourceChange) -> String {
    let what = match change.change {
        ChangeKind::Create => "will be created",
        ChangeKind::Update => "will be updated in-place",
        ChangeKind::Replace => "must be replaced",
        ChangeKind::Delete if change.external => {
            "will be forgotten (registered, not created, by dstack: it is kept)"
        }
        ChangeKind::Delete => "will be destroyed",
        ChangeKind::NoOp => "is up to date",
    };
    let mut header = format!("# {} {what}", change.address);
    let because = change.detail.clone().or_else(|| match change.reason {
        Some(super::Reason::DeleteBecauseNoConfiguration) => {
            Some("its configuration was removed".into())
        }
        _ => None,
    });
    if let Some(because) = because {
        let _ = write!(header, " ({because})");
    }
    if change.data_loss {
        header.push_str("\n  # WARNING: this destroys the volume's data");
    }
    header
}

fn object(value: Option<&Json>) -> serde_json::Map<String, Json> {
    value.and_then(Json::as_object).cloned().unwrap_or_default()
}

/// One resource change as text.
pub fn change_text(change: &ResourceChange) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "  {}", change_header(change));
    let before = object(change.before.as_ref().map(for_display).as_ref());
    let after = object(change.after.as_ref().map(for_display).as_ref());
    let symbol = change.change.symbol();
    let _ = writeln!(
        out,
        "{symbol:>3} {} \"{}\" {{",
        change.config_type, change.name
    );
    let keys: Vec<&String> = {
        let mut keys: Vec<&String> = before
            .keys()
            .chain(after.keys())
            .filter(|k| *k != "type")
            .collect();
        keys.sort();
        keys.dedup();
        keys
    };
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    let indent = "      ";
    match change.change {
        ChangeKind::Create => {
            for key in &keys {
                if let Some(value) = after.get(*key) {
                    attribute_block(&mut out, "+", key, value, width, indent);
                }
            }
        }
        ChangeKind::Delete => {
            for key in &keys {
                if let Some(value) = before.get(*key) {
                    attribute_block(&mut out, "-", key, value, width, indent);
                }
            }
        }
        ChangeKind::Update | ChangeKind::Replace | ChangeKind::NoOp => {
            let mut unchanged = 0;
            for key in &keys {
                let (old, new) = (before.get(*key), after.get(*key));
                if old == new {
                    unchanged += 1;
                    continue;
                }
                let forces = change.replace_paths.iter().any(|p| p.first() == Some(*key));
                let note = if forces { " # forces replacement" } else { "" };
                match (old, new) {
                    (None, Some(new)) => attribute_block(&mut out, "+", key, new, width, indent),
                    (Some(old), None) => attribute_block(&mut out, "-", key, old, width, indent),
                    (Some(old), Some(new)) => {
                        let structured = |v: &Json| {
                            v.is_array()
                                || v.is_object()
                                || v.as_str().is_some_and(|s| s.contains('\n'))
                        };
                        let (old_lines, new_lines) = if structured(old) || structured(new) {
                            (expanded(old), expanded(new))
                        } else {
                            (lines_of(old), lines_of(new))
                        };
                        if old_lines.len() == 1 && new_lines.len() == 1 {
                            let _ = write!(
                                out,
                                "{indent}~ {key:<width$} = {} -> {}",
                                old_lines[0], new_lines[0]
                            );
                        } else {
                            let _ = write!(out, "{indent}~ {key:<width$} =");
                            let old_text = old_lines.join("\n") + "\n";
                            let new_text = new_lines.join("\n") + "\n";
                            let diff = TextDiff::from_lines(&old_text, &new_text);
                            for line in diff.iter_all_changes() {
                                let sign = match line.tag() {
                                    ChangeTag::Delete => "-",
                                    ChangeTag::Insert => "+",
                                    ChangeTag::Equal => " ",
                                };
                                let _ = write!(
                                    out,
                                    "\n{indent}    {sign} {}",
                                    line.value().trim_end_matches('\n')
                                );
                            }
                        }
                        out.push_str(note);
                        out.push('\n');
                    }
                    (None, None) => {}
                }
                if matches!((old, new), (None, Some(_)) | (Some(_), None)) && forces {
                    out.pop();
                    out.push_str(note);
                    out.push('\n');
                }
            }
            if change
                .replace_paths
                .iter()
                .any(|p| p.first().is_some_and(|k| k == "type"))
            {
                let _ = writeln!(
                    out,
                    "{indent}~ type = {} # forces replacement",
                    change.config_type
                );
            }
            if unchanged > 0 {
                let s = if unchanged == 1 { "" } else { "s" };
                let _ = writeln!(
                    out,
                    "{indent}  # ({unchanged} unchanged attribute{s} hidden)"
                );
            }
        }
    }
    let _ = writeln!(out, "    }}");
    out
}

/// Why a change is planned, in a few words.
pub fn why(change: &ResourceChange) -> String {
    if let Some(detail) = &change.detail {
        return detail.clone();
    }
    let fields = |paths: &[Vec<String>]| {
        paths
            .iter()
            .map(|p| format!("`{}`", p.join(".")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match change.change {
        ChangeKind::Replace if !change.replace_paths.is_empty() => {
            format!("{} cannot change in place", fields(&change.replace_paths))
        }
        ChangeKind::Update if !change.changed_paths.is_empty() => {
            format!("{} changed", fields(&change.changed_paths))
        }
        ChangeKind::Create => "new".into(),
        ChangeKind::Delete => "its configuration was removed".into(),
        _ => String::new(),
    }
}

/// The whole plan as text.
pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    if !plan.drift.is_empty() {
        out.push_str("Objects have changed outside dstack:\n\n");
        for drift in &plan.drift {
            match drift.kind {
                DriftKind::Deleted => {
                    let _ = writeln!(out, "  # {} has been deleted", drift.address);
                }
                DriftKind::Orphaned => {
                    let _ = writeln!(
                        out,
                        "  # {} exists with this state's tags but is not recorded ({})",
                        drift.address,
                        object(drift.after.as_ref())
                            .get("backend_id")
                            .map_or_else(|| "?".into(), scalar)
                    );
                }
                DriftKind::Changed => {
                    let _ = writeln!(out, "  # {} has changed", drift.address);
                    let before = object(drift.before.as_ref());
                    let after = object(drift.after.as_ref());
                    for (key, new) in &after {
                        let old = before.get(key).map_or_else(|| "null".into(), scalar);
                        let _ = writeln!(out, "      ~ {key} = {old} -> {}", scalar(new));
                    }
                }
            }
        }
        out.push('\n');
    }
    for note in &plan.notes {
        let _ = writeln!(out, "Note: {note}");
    }
    if !plan.notes.is_empty() {
        out.push('\n');
    }
    if !plan.has_changes() {
        out.push_str("No changes. The resources match the configuration.\n");
        return out;
    }
    out.push_str("dstack will perform the following actions:\n\n");
    for change in plan.actionable() {
        out.push_str(&change_text(change));
        out.push('\n');
    }
    if !plan.complete {
        out.push_str("Note: --target is in effect; this plan may be incomplete.\n");
    }
    out.push_str(&summary_line(&plan.summary));
    out.push('\n');
    let data_loss = plan.data_loss();
    if !data_loss.is_empty() {
        let names: Vec<&str> = data_loss.iter().map(|c| c.address.as_str()).collect();
        let _ = writeln!(
            out,
            "\nWARNING: this plan destroys the data of {} (apply needs --allow-data-loss).",
            names.join(", ")
        );
    }
    out
}

/// The plan as JSON (versioned; sensitive values shown as `(sensitive)`).
pub fn json(plan: &Plan) -> Json {
    let mut value = serde_json::to_value(plan).unwrap_or(Json::Null);
    if let Some(changes) = value
        .get_mut("resource_changes")
        .and_then(Json::as_array_mut)
    {
        for change in changes {
            for key in ["before", "after"] {
                if let Some(v) = change.get_mut(key) {
                    *v = for_display(v);
                }
            }
        }
    }
    value
}

/// The plan as a pull-request comment.
pub fn markdown(plan: &Plan) -> String {
    let mut out = String::from("### dstack plan\n\n");
    if !plan.has_changes() {
        out.push_str("**No changes.** The resources match the configuration.\n");
        return out;
    }
    let _ = writeln!(out, "**{}**\n", summary_line(&plan.summary));
    let data_loss = plan.data_loss();
    if !data_loss.is_empty() {
        let names: Vec<String> = data_loss
            .iter()
            .map(|c| format!("`{}`", c.address))
            .collect();
        let _ = writeln!(
            out,
            "> [!WARNING]\n> This plan destroys the data of {}.\n",
            names.join(", ")
        );
    }
    out.push_str("| action | resource | why |\n|---|---|---|\n");
    for change in plan.actionable() {
        let why = why(change).replace('|', "\\|");
        let _ = writeln!(out, "| {} | `{}` | {why} |", change.change, change.address);
    }
    let mut details = String::new();
    for change in plan.actionable() {
        details.push_str(&change_text(change));
        details.push('\n');
    }
    let fence_len = MARKDOWN_LIMIT.saturating_sub(out.len() + 200);
    let truncated = details.len() > fence_len;
    if truncated {
        let mut cut = fence_len;
        while !details.is_char_boundary(cut) {
            cut -= 1;
        }
        details.truncate(cut);
        details.push_str("\n… (truncated)\n");
    }
    let _ = write!(
        out,
        "\n<details><summary>Details</summary>\n\n```diff\n{details}```\n</details>\n"
    );
    if truncated {
        out.push_str("\nThe plan is too long for a comment; run `dstack plan` for all of it.\n");
    }
    out
}
