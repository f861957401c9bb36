//! `dstack run WORKFLOW [--NAME VALUE]... [-d] [-y] [-- ARGS...]`: an ad-hoc run of a legacy
//! workflow (`.dstack/workflows.yaml`), under a generated name like `grumpy-zebra-1`.

use std::io::IsTerminal;

use clap::Args;

use super::context::{self, ConfigProblems, Globals};
use super::{ExitStatus, Printer};
use crate::config::variables::{self, Variables};
use crate::legacy::invocation::{self, Invocation};
use crate::legacy::submit::{Progress, Submission, submit};
use crate::legacy::{self, Definition, Workflows};

#[derive(Debug, Args)]
#[command(override_usage = "dstack run [OPTIONS] <WORKFLOW> [--NAME VALUE]... [-- ARGS...]")]
pub struct RunArgs {
    /// Do not follow the run: print its name and return.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Do not ask for confirmation (only asked on a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// The workflow, then its variables and arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "WORKFLOW"
    )]
    pub args: Vec<String>,
}

fn variables_error(error: variables::VariablesError) -> miette::Report {
    match error {
        variables::VariablesError::Invalid { problems, .. } => ConfigProblems(problems).into(),
        other @ variables::VariablesError::Read { .. } => miette::Report::new(other),
    }
}

/// The error for a workflow that is not defined: it lists the workflows there are.
fn unknown(workflows: &Workflows, name: &str) -> miette::Report {
    let names = workflows.names();
    let known: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
    let suggestion = crate::config::schema::suggest(name, &known)
        .map(|s| format!("did you mean `{s}`? "))
        .unwrap_or_default();
    miette::miette!(
        help = format!(
            "{suggestion}the workflows are {}",
            legacy::list_names(&names)
        ),
        "there is no workflow `{name}`"
    )
}

/// `dstack run WORKFLOW --help`: the workflow's help and its variables.
fn workflow_help(definition: &Definition, variables: &Variables, printer: &Printer) {
    let mut out = format!("{} ({})\n", definition.name, definition.location());
    if let Some(help) = &definition.help {
        out.push_str(&format!("\n{}\n", help.trim_end()));
    }
    let vars = legacy::variables_of(variables, &definition.name);
    if vars.is_empty() {
        out.push_str("\nNo variables (.dstack/variables.yaml).\n");
    } else {
        out.push_str("\nVariables (`--NAME VALUE` overrides them):\n");
        let width = vars.keys().map(String::len).max().unwrap_or(0);
        for (name, value) in &vars {
            out.push_str(&format!("  --{name:width$}  {value}\n"));
        }
    }
    printer.data(&out);
}

pub fn run(args: &RunArgs, globals: &Globals, printer: &Printer) -> miette::Result<ExitStatus> {
    let mut invocation: Invocation = invocation::parse(&args.args)?;
    invocation.detach |= args.detach;
    invocation.yes |= args.yes;
    let cwd = context::current_dir()?;
    let project = context::project(&cwd)?;
    let variables = variables::load(&project.dot_dir()).map_err(variables_error)?;
    let workflows = legacy::load(&project, &cwd).map_err(miette::Report::new)?;
    // Every workflow is checked, as legacy dstack validated the whole file; the one to run
    // with the values it runs with.
    let target = workflows.get(&invocation.workflow);
    let mut problems = workflows.problems.clone();
    problems.extend(legacy::check(
        &workflows,
        &variables,
        target.map(|d| d.name.as_str()),
    ));
    let converted = match target {
        None if problems.is_empty() => return Err(unknown(&workflows, &invocation.workflow)),
        None => None,
        Some(definition) if invocation.help => {
            workflow_help(definition, &variables, printer);
            return Ok(ExitStatus::Success);
        }
        Some(definition) => {
            let defaults = legacy::variables_of(&variables, &definition.name);
            let overrides = invocation::overrides(&invocation, &defaults)?;
            let run_args = (!invocation.run_args.is_empty())
                .then(|| context::quote_args(&invocation.run_args));
            match legacy::convert(definition, &variables, &overrides, run_args.as_deref()) {
                Ok(workflow) => Some(workflow),
                Err(found) => {
                    problems.extend(found);
                    None
                }
            }
        }
    };
    let workflow = match converted {
        Some(workflow) if problems.is_empty() => workflow,
        _ => {
            problems.sort_by(|a, b| {
                (&a.source.name, a.span.offset).cmp(&(&b.source.name, b.span.offset))
            });
            return Err(ConfigProblems(problems).into());
        }
    };
    if !invocation.yes && std::io::stdin().is_terminal() {
        let question = format!(
            "Run the workflow `{}` ({})?",
            workflow.name,
            workflow.provider.as_str()
        );
        if !super::apply::confirm(&question, false, printer)? {
            printer.message("Cancelled; nothing was run.");
            return Ok(ExitStatus::Failure);
        }
    }
    context::block_on(async {
        let store = context::open_state(globals, &project).await?;
        let backends = crate::backend::for_project(
            &project,
            &context::env_var,
            context::fake_backend_enabled(),
        );
        let interrupt = super::apply::listen_for_interrupts(printer);
        let name = workflow.name.clone();
        let report = {
            let printer = printer.clone();
            move |progress: Progress| match progress {
                Progress::Recovered(note) => printer.message(&note),
                Progress::Waiting { on } => {
                    printer.message(&format!("{name}: waiting for {on} to end (deps)..."));
                }
            }
        };
        let submission = Submission {
            store: store.as_ref(),
            backends: &backends,
            project: &project,
            artifacts: crate::artifacts::Store::new(crate::backend::artifact_root(
                &project,
                &context::env_var,
            )),
            workflow: &workflow,
            interrupt: &interrupt,
            lock_timeout: globals.lock_timeout,
            progress: &report,
        };
        let run = submit(&submission).await?;
        printer.data_line(&run.name);
        if invocation.detach {
            printer.message(&format!(
                "Submitted {} (workflow {}); `dstack logs {} -f` follows it.",
                run.name, workflow.name, run.name
            ));
            return Ok(ExitStatus::Success);
        }
        super::apply::follow(
            store.as_ref(),
            &backends,
            vec![run],
            &interrupt,
            globals,
            printer,
        )
        .await
    })?
}
