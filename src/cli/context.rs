//! What every command needs from its environment: the working directory, the project, variables
//! and the loaded configuration files. This is the one place that reads environment variables
//! for configuration (`DSTACK_*`, `HOME`), so the core stays testable.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use miette::{IntoDiagnostic, WrapErr};

use crate::config::load::{LoadOptions, Loaded};
use crate::config::project::{self, Project};
use crate::config::{load, variables};
use crate::model::validate;

/// An environment variable, if set and valid UTF-8.
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `DSTACK_FAKE_BACKEND=1` enables the test backend.
pub fn fake_backend_enabled() -> bool {
    env_var("DSTACK_FAKE_BACKEND").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The user's home directory.
pub fn home_dir() -> Option<PathBuf> {
    env_var("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// The working directory.
pub fn current_dir() -> miette::Result<PathBuf> {
    std::env::current_dir()
        .into_diagnostic()
        .wrap_err("cannot read the current directory")
}

/// Find the project of the working directory and read its configuration.
pub fn project(cwd: &std::path::Path) -> miette::Result<Project> {
    let validator = crate::model::schema::config_validator();
    project::load(cwd, home_dir().as_deref(), &|node| validator.problems(node)).map_err(|e| match e
    {
        project::ProjectError::Invalid { problems, .. } => ConfigProblems(problems).into(),
        other @ project::ProjectError::Read { .. } => miette::Report::new(other),
    })
}

/// Parse `NAME=VALUE` arguments of `--var`.
pub fn parse_vars(vars: &[String]) -> miette::Result<BTreeMap<String, String>> {
    let mut parsed = BTreeMap::new();
    for var in vars {
        let Some((name, value)) = var.split_once('=') else {
            return Err(miette::miette!(
                help = "write `--var NAME=VALUE`",
                "invalid `--var {var}`: expected `NAME=VALUE`"
            ));
        };
        parsed.insert(name.trim().to_string(), value.to_string());
    }
    Ok(parsed)
}

/// Configuration problems, rendered by `main` with file, line, column and carets.
#[derive(Debug)]
pub struct ConfigProblems(pub Vec<crate::config::diagnostic::Problem>);

impl std::fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: std::collections::BTreeSet<&str> =
            self.0.iter().map(|p| p.source.name.as_str()).collect();
        let count = self.0.len();
        write!(
            f,
            "{count} configuration error{} in {}",
            if count == 1 { "" } else { "s" },
            files
                .into_iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

impl std::error::Error for ConfigProblems {}
impl miette::Diagnostic for ConfigProblems {}

/// Options for loading configuration files, shared by every command that reads them.
#[derive(Clone, Debug, Default)]
pub struct ConfigArgs {
    pub files: Vec<String>,
    pub vars: Vec<String>,
    pub run_args: Vec<String>,
}

/// Load configuration files for a command; problems are returned as data, not as an error.
pub fn load_configs(
    cwd: &std::path::Path,
    project: &Project,
    args: &ConfigArgs,
) -> miette::Result<Loaded> {
    let variables = variables::load(&project.dot_dir()).map_err(|e| match e {
        variables::VariablesError::Invalid { problems, .. } => {
            miette::Report::new(ConfigProblems(problems))
        }
        other @ variables::VariablesError::Read { .. } => miette::Report::new(other),
    })?;
    let overrides = parse_vars(&args.vars)?;
    let vars = variables.resolve(None, &overrides);
    let run_args = (!args.run_args.is_empty()).then(|| quote_args(&args.run_args));
    let stdin = || {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    };
    let options = LoadOptions {
        inputs: args.files.clone(),
        cwd: cwd.to_path_buf(),
        project,
        vars,
        run_args,
        env: &env_var,
        stdin: &stdin,
        validation: validate::Context {
            fake_backend: fake_backend_enabled(),
        },
    };
    load::load(&options).map_err(miette::Report::new)
}

/// Join arguments for `${{ run.args }}`, quoting those with spaces.
pub fn quote_args(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(char::is_whitespace) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Global options every command shares.
#[derive(Clone, Debug, Default)]
pub struct Globals {
    /// `--state`, or `DSTACK_STATE` (clap reads the variable).
    pub state: Option<String>,
    /// `--lock-timeout`.
    pub lock_timeout: std::time::Duration,
}

/// Resolve the state URL: flag (or `DSTACK_STATE`) > `state:` in config.yml > default.
pub fn state_url(globals: &Globals, project: &Project) -> miette::Result<crate::state::StateUrl> {
    use crate::config::project::StoreLocation;
    use crate::state::StateUrl;
    let location = match (&globals.state, &project.config.state) {
        (Some(url), _) => StoreLocation {
            url: url.clone(),
            ..StoreLocation::default()
        },
        (None, Some(setting)) => setting.location(),
        (None, None) => return Ok(StateUrl::default_for(&project.root)),
    };
    StateUrl::parse(&location, &project.root).map_err(miette::Report::new)
}

/// Open the state store of the project.
pub async fn open_state(
    globals: &Globals,
    project: &Project,
) -> miette::Result<Box<dyn crate::state::StateStore>> {
    let url = state_url(globals, project)?;
    Ok(match url {
        crate::state::StateUrl::S3(location) => {
            let mut store = crate::state::s3::S3Store::connect(location)
                .await
                .map_err(miette::Report::new)?;
            store.set_errored_path(project.dot_dir().join("errored-state.json"));
            Box::new(store)
        }
        sqlite @ crate::state::StateUrl::Sqlite(_) => {
            sqlite.open().await.map_err(miette::Report::new)?
        }
    })
}

/// Parse a `--lock-timeout` value (`30s`, `5m`, or seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::model::quantity::Duration::parse(text).and_then(|d| {
        if d.0 < 0 {
            Err("a duration cannot be negative".into())
        } else {
            Ok(d.std())
        }
    })
}

/// Run a future on a fresh runtime (commands are async at their core, sync at the edge).
pub fn block_on<F: std::future::Future>(future: F) -> miette::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .into_diagnostic()
        .wrap_err("cannot start the async runtime")?;
    let output = runtime.block_on(future);
    // Do not wait for stray requests (an SDK retry timer) to finish before exiting.
    runtime.shutdown_background();
    Ok(output)
}
