//! The arguments of `dstack run WORKFLOW [--NAME VALUE]... [-d] [-y] [-- ARGS...]`.
//!
//! After the workflow name, `--NAME VALUE` (or `--NAME=VALUE`) sets the workflow's variable NAME
//! (`_` and `-` spellings are the same), `-d`/`--detach` and `-y`/`--yes` are the command's own
//! flags, `-h`/`--help` shows the workflow's help, and everything after `--` is
//! `${{ run.args }}`. Legacy dstack passed unknown flags on as run arguments; we refuse them and
//! list the workflow's variables, because a misspelt variable would otherwise be ignored
//! silently: arguments meant for the commands go after `--`.

use std::collections::BTreeMap;

/// What the arguments ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    pub workflow: String,
    /// `--NAME VALUE` pairs, in order, as written (NAME without the dashes).
    pub flags: Vec<(String, String)>,
    pub detach: bool,
    pub yes: bool,
    pub help: bool,
    /// The arguments after `--`.
    pub run_args: Vec<String>,
}

/// Problems with the arguments.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum InvocationError {
    #[error("expected a workflow name, found `{0}`")]
    #[diagnostic(help(
        "write the workflow first: `dstack run WORKFLOW [--NAME VALUE]... [-- ARGS]`"
    ))]
    MissingWorkflow(String),
    #[error("`--{0}` needs a value")]
    #[diagnostic(help("write `--{0} VALUE` or `--{0}=VALUE`"))]
    MissingValue(String),
    #[error("unexpected argument `{argument}` for the workflow `{workflow}`")]
    #[diagnostic(help("{hint}"))]
    Unexpected {
        argument: String,
        workflow: String,
        hint: String,
    },
}

/// Split the arguments (the first is the workflow).
pub fn parse(args: &[String]) -> Result<Invocation, InvocationError> {
    let mut args = args.iter();
    let workflow = match args.next() {
        Some(first) if !first.starts_with('-') && !first.is_empty() => first.clone(),
        Some(first) => return Err(InvocationError::MissingWorkflow(first.clone())),
        None => return Err(InvocationError::MissingWorkflow(String::new())),
    };
    let mut invocation = Invocation {
        workflow,
        ..Invocation::default()
    };
    let mut unexpected = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--" => {
                invocation.run_args = args.cloned().collect();
                break;
            }
            "-d" | "--detach" => invocation.detach = true,
            "-y" | "--yes" => invocation.yes = true,
            "-h" | "--help" => invocation.help = true,
            _ => match arg.strip_prefix("--").filter(|name| !name.is_empty()) {
                Some(flag) => {
                    if let Some((name, value)) = flag.split_once('=') {
                        invocation.flags.push((name.to_string(), value.to_string()));
                    } else {
                        let value = args
                            .next()
                            .filter(|v| *v != "--")
                            .ok_or_else(|| InvocationError::MissingValue(flag.to_string()))?;
                        invocation.flags.push((flag.to_string(), value.clone()));
                    }
                }
                None => unexpected.push(arg.clone()),
            },
        }
    }
    if let Some(argument) = unexpected.into_iter().next() {
        return Err(InvocationError::Unexpected {
            hint: format!(
                "arguments for the workflow's commands (`${{{{ run.args }}}}`) go after `--`: `dstack run {} -- {argument}`",
                invocation.workflow
            ),
            argument,
            workflow: invocation.workflow,
        });
    }
    Ok(invocation)
}

/// Match `--NAME VALUE` flags to the workflow's variables (`vars`: what it sees without
/// overrides). Returns the overrides by variable name.
pub fn overrides(
    invocation: &Invocation,
    vars: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, InvocationError> {
    let mut overrides = BTreeMap::new();
    for (flag, value) in &invocation.flags {
        let Some(name) = super::variable_for_flag(vars, flag) else {
            let known: Vec<String> = vars.keys().map(|k| format!("`--{k}`")).collect();
            let variables = if known.is_empty() {
                "it has no variables (they are defined in .dstack/variables.yaml, under `global` or a section named after the workflow)".to_string()
            } else {
                format!(
                    "its variables are {} (from .dstack/variables.yaml)",
                    known.join(", ")
                )
            };
            return Err(InvocationError::Unexpected {
                argument: format!("--{flag}"),
                workflow: invocation.workflow.clone(),
                hint: format!(
                    "{variables}; arguments for the workflow's commands (`${{{{ run.args }}}}`) go after `--`"
                ),
            });
        };
        overrides.insert(name, value.clone());
    }
    Ok(overrides)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_variables_and_run_arguments() {
        let invocation = parse(&args(
            "train --batch-size 2 -d --model=355M -y -- --epochs 3 -d",
        ))
        .expect("parses");
        assert_eq!(invocation.workflow, "train");
        assert_eq!(
            invocation.flags,
            [
                ("batch-size".to_string(), "2".to_string()),
                ("model".to_string(), "355M".to_string())
            ]
        );
        assert!(invocation.detach && invocation.yes && !invocation.help);
        assert_eq!(invocation.run_args, args("--epochs 3 -d"));
        // A value may start with a dash.
        let negative = parse(&args("train --lr -0.5")).expect("parses");
        assert_eq!(negative.flags, [("lr".to_string(), "-0.5".to_string())]);
        assert!(parse(&args("train --help")).expect("parses").help);
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert_eq!(
            parse(&args("--lr 1")),
            Err(InvocationError::MissingWorkflow("--lr".into()))
        );
        assert_eq!(
            parse(&args("train --lr")),
            Err(InvocationError::MissingValue("lr".into()))
        );
        assert_eq!(
            parse(&args("train --lr --")),
            Err(InvocationError::MissingValue("lr".into()))
        );
        match parse(&args("train extra")) {
            Err(InvocationError::Unexpected { argument, hint, .. }) => {
                assert_eq!(argument, "extra");
                assert!(hint.contains("dstack run train -- extra"), "{hint}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_must_name_variables() {
        let vars = BTreeMap::from([
            ("batch_size".to_string(), "1".to_string()),
            ("model".to_string(), "124M".to_string()),
        ]);
        let invocation = parse(&args("train --batch-size 4 --model 355M")).expect("parses");
        assert_eq!(
            overrides(&invocation, &vars).expect("known"),
            BTreeMap::from([
                ("batch_size".to_string(), "4".to_string()),
                ("model".to_string(), "355M".to_string())
            ])
        );
        let invocation = parse(&args("train --epochs 4")).expect("parses");
        match overrides(&invocation, &vars) {
            Err(InvocationError::Unexpected { argument, hint, .. }) => {
                assert_eq!(argument, "--epochs");
                assert!(hint.contains("`--batch_size`, `--model`"), "{hint}");
            }
            other => panic!("{other:?}"),
        }
        match overrides(&invocation, &BTreeMap::new()) {
            Err(InvocationError::Unexpected { hint, .. }) => {
                assert!(hint.contains("it has no variables"), "{hint}");
            }
            other => panic!("{other:?}"),
        }
    }
}
