//! Help text and shell completion: every command shows examples that really parse, and
//! `dstack completion SHELL` prints a script that completes this binary's commands.

use std::process::{Command, Stdio};

use clap::CommandFactory;
use dstack::cli::Cli;

use crate::common::TestContext;

/// The example command lines of an `after_help` text: the lines under `Example:` or
/// `Examples:` that start with `dstack`.
fn examples(after_help: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_examples = false;
    for line in after_help.lines() {
        if matches!(line.trim(), "Example:" | "Examples:") {
            in_examples = true;
        } else if in_examples && line.trim_start().starts_with("dstack ") {
            found.push(line.trim().to_string());
        } else if !line.starts_with(' ') {
            in_examples = false;
        }
    }
    found
}

/// Split an example into shell words (quotes, no expansions) and into the commands of
/// `&&`/`||`/`;`/`|`, dropping redirections: `dstack plan -o p && dstack apply p > log`.
fn commands(example: &str) -> Vec<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut has_word = false;
    for c in example.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => {
                quote = Some(c);
                has_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if has_word || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                    has_word = false;
                }
            }
            (_, c) => word.push(c),
        }
    }
    assert!(quote.is_none(), "unbalanced quotes in `{example}`");
    if has_word || !word.is_empty() {
        words.push(word);
    }
    let mut commands = vec![Vec::new()];
    let mut redirect = false;
    for word in words {
        match word.as_str() {
            "&&" | "||" | ";" | "|" => {
                commands.push(Vec::new());
                redirect = false;
            }
            ">" | ">>" | "<" | "2>" => redirect = true,
            _ if redirect => redirect = false,
            _ => {
                if let Some(current) = commands.last_mut() {
                    current.push(word);
                }
            }
        }
    }
    commands
        .into_iter()
        .filter(|c| c.first().is_some_and(|w| w == "dstack"))
        .collect()
}

/// The subcommand path an argument list selects: `["state", "unlock"]`.
fn selected(args: &[String]) -> Result<Vec<String>, String> {
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(|e| e.to_string())?;
    let mut path = Vec::new();
    let mut current = &matches;
    while let Some((name, sub)) = current.subcommand() {
        path.push(name.to_string());
        current = sub;
    }
    Ok(path)
}

/// Every visible command below `command`, with its path.
fn visible(command: &clap::Command, path: &[String], into: &mut Vec<(Vec<String>, clap::Command)>) {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut sub_path = path.to_vec();
        sub_path.push(sub.get_name().to_string());
        into.push((sub_path.clone(), sub.clone()));
        visible(sub, &sub_path, into);
    }
}

#[test]
fn every_command_has_examples_that_parse() {
    let mut all = Vec::new();
    visible(&Cli::command(), &[], &mut all);
    assert!(
        all.iter().any(|(path, _)| path == &["state", "unlock"]),
        "the walk reaches nested subcommands"
    );
    let mut problems = Vec::new();
    for (path, command) in &all {
        let name = path.join(" ");
        let after_help = command
            .get_after_help()
            .map(ToString::to_string)
            .unwrap_or_default();
        let found = examples(&after_help);
        if found.is_empty() {
            problems.push(format!(
                "`dstack {name}` has no `Examples:` in its after_help"
            ));
            continue;
        }
        let mut shows_itself = false;
        for example in &found {
            for args in commands(example) {
                match selected(&args) {
                    Ok(selected) => shows_itself |= selected.starts_with(path),
                    Err(error) => problems.push(format!(
                        "`dstack {name}`: the example `{example}` does not parse:\n{error}"
                    )),
                }
            }
        }
        if !shows_itself {
            problems.push(format!(
                "`dstack {name}`: no example runs `dstack {name}`: {found:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn help_output_shows_the_examples() {
    let context = TestContext::new();
    for args in [
        &["plan", "--help"][..],
        &["help", "state", "unlock"],
        &["completion", "--help"],
    ] {
        let run = context.run(args);
        assert_eq!(run.code, 0, "{}", run.report());
        assert!(run.stdout.contains("Example"), "{args:?}: {}", run.stdout);
    }
}

#[test]
fn example_parsing_is_not_fooled() {
    // The checker itself: redirections and `&&` are handled, bad examples are caught.
    assert_eq!(
        commands("dstack plan -o plan.out && dstack apply plan.out > log.txt"),
        vec![
            vec!["dstack", "plan", "-o", "plan.out"],
            vec!["dstack", "apply", "plan.out"]
        ]
    );
    assert_eq!(
        commands(r#"dstack run train -- --note "two words""#),
        vec![vec!["dstack", "run", "train", "--", "--note", "two words"]]
    );
    assert!(selected(&["dstack".into(), "plan".into(), "--no-such-flag".into()]).is_err());
    assert_eq!(
        examples("Text first.\n\nExamples:\n  dstack ps\n  dstack ps -a\n\nMore text."),
        vec!["dstack ps", "dstack ps -a"]
    );
}

/// Complete `words` (the last one being the word under the cursor) with the bash script.
fn bash_complete(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let current = words.last().copied().unwrap_or_default();
    let previous = words
        .get(words.len().wrapping_sub(2))
        .copied()
        .unwrap_or("dstack");
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\n_dstack dstack '{current}' '{previous}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        words.len() - 1
    );
    let output = Command::new("bash")
        .args(["--noprofile", "--norc", "-c", &program])
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn bash_completion_completes_commands_subcommands_and_values() {
    let context = TestContext::new();
    let run = context.run(&["completion", "bash"]);
    assert_eq!(run.code, 0, "{}", run.report());
    let script = context.write("dstack.bash", &run.stdout);
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash runs");
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let top = bash_complete(&script, &["dstack", ""]);
    for command in Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
    {
        assert!(
            top.iter().any(|w| w == command.get_name()),
            "`{}` is offered: {top:?}",
            command.get_name()
        );
    }
    assert!(
        !top.iter().any(|w| w == "runner"),
        "hidden commands are not offered"
    );
    assert_eq!(bash_complete(&script, &["dstack", "pla"]), vec!["plan"]);
    let state = bash_complete(&script, &["dstack", "state", ""]);
    for sub in [
        "list", "show", "pull", "push", "migrate", "unlock", "recover",
    ] {
        assert!(state.iter().any(|w| w == sub), "state {sub}: {state:?}");
    }
    assert_eq!(
        bash_complete(&script, &["dstack", "plan", "--format", ""]),
        vec!["text", "json", "markdown"]
    );
    assert_eq!(
        bash_complete(&script, &["dstack", "completion", "z"]),
        vec!["zsh"]
    );
}

#[test]
fn completion_scripts_for_every_shell() {
    let context = TestContext::new();
    for (shell, marker) in [
        ("bash", "complete -F _dstack"),
        ("zsh", "#compdef dstack"),
        ("fish", "complete -c dstack"),
        ("elvish", "edit:completion:arg-completer[dstack]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let run = context.run(&["completion", shell]);
        assert_eq!(run.code, 0, "{shell}: {}", run.report());
        assert!(run.stdout.contains(marker), "{shell}: no `{marker}`");
        assert!(run.stdout.contains("lock-timeout"), "{shell}: global flags");
        assert!(run.stdout.contains("completion"), "{shell}: commands");
        assert!(
            !run.stdout.contains("runner"),
            "{shell}: hidden commands stay hidden"
        );
        assert!(run.stderr.is_empty(), "{shell}: {}", run.stderr);
    }
    let run = context.run(&["completion", "tcsh"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("possible values"), "{}", run.stderr);
}
