//! `dstack validate`: check configuration files and report every error.

use clap::Args;
use serde_json::json;

use super::context::{self, ConfigArgs};
use super::{ExitStatus, Printer};
use crate::config::diagnostic;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// A configuration file, a directory of them, or `-` for standard input (repeatable; default:
    /// the `*.dstack.yml` files of the current directory).
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub files: Vec<String>,
    /// A variable for `${{ var.NAME }}` (repeatable; overrides `.dstack/variables.yaml`).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Print one JSON array with an object per file.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ValidateArgs, printer: &Printer) -> miette::Result<ExitStatus> {
    let cwd = context::current_dir()?;
    let project = context::project(&cwd)?;
    let loaded = context::load_configs(
        &cwd,
        &project,
        &ConfigArgs {
            files: args.files.clone(),
            vars: args.vars.clone(),
            run_args: Vec::new(),
        },
    )?;
    if args.json {
        let report: Vec<serde_json::Value> = loaded
            .files
            .iter()
            .map(|file| {
                json!({
                    "file": file.source.name,
                    "ok": file.problems.is_empty(),
                    "resources": file.resources.iter().map(|r| json!({"type": r.spec.config_type().as_str(), "name": r.id.name})).collect::<Vec<_>>(),
                    "errors": file.problems,
                })
            })
            .collect();
        printer.data_line(&serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        let problems: Vec<_> = loaded.problems().cloned().collect();
        if !problems.is_empty() {
            printer.message(&diagnostic::render(&problems, printer.color, printer.width));
        }
        for file in &loaded.files {
            if file.problems.is_empty() {
                let ids: Vec<String> = file.resources.iter().map(|r| r.id.to_string()).collect();
                printer.data_line(&format!("{}: ok ({})", file.source.name, ids.join(", ")));
            } else {
                let count = file.problems.len();
                printer.data_line(&format!(
                    "{}: {count} error{}",
                    file.source.name,
                    if count == 1 { "" } else { "s" }
                ));
            }
        }
    }
    let failed = loaded
        .files
        .iter()
        .filter(|f| !f.problems.is_empty())
        .count();
    if failed == 0 {
        Ok(ExitStatus::Success)
    } else {
        if !args.json {
            printer.message(&format!(
                "{}: {failed} of {} files {} errors",
                printer.paint("error", "31"),
                loaded.files.len(),
                if failed == 1 { "has" } else { "have" }
            ));
        }
        Ok(ExitStatus::Failure)
    }
}
