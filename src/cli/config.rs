//! `dstack config`: write or edit `.dstack/config.yml` — AWS region and profile, the S3 bucket of
//! the state, the artifact store — as the original `dstack config` did.
//!
//! Flags change only what they name; everything else in the file (the project name, other
//! backends, their settings) is kept. Without flags, on a terminal, it asks for each value,
//! showing the current one (Enter keeps it); without flags and without a terminal it prints
//! the configuration. The new text is validated against the schema and read back before it
//! replaces the file (atomically). Comments are not kept: the file is written from its values.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use clap::Args;

use super::context::{self};
use super::{ExitStatus, Printer};
use crate::config::project::{
    self, ArtifactStores, ArtifactsSetting, BackendSetting, CONFIG_FILE, ProjectConfig,
    StateSetting, StoreLocation,
};

#[derive(Debug, Args, Default, Clone)]
pub struct ConfigArgs {
    /// The AWS region of the aws backend (first of its `regions`), the state and the artifacts.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Keep the state in this S3 bucket, at `s3://BUCKET/PROJECT/state.json` (an `s3://` URL
    /// ending in `.json` is used as it is).
    #[arg(long, value_name = "BUCKET")]
    pub bucket: Option<String>,
    /// The remote artifact store: `s3://BUCKET/PREFIX` (default with `--bucket`:
    /// `s3://BUCKET/artifacts`, unless one is configured).
    #[arg(long, value_name = "URL")]
    pub artifacts: Option<String>,
    /// The AWS profile (from ~/.aws/config) of the aws backend, the state and the artifacts.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// An endpoint for EC2 and S3 (an S3-compatible store, a local double).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

impl ConfigArgs {
    fn is_empty(&self) -> bool {
        self.region.is_none()
            && self.bucket.is_none()
            && self.artifacts.is_none()
            && self.profile.is_none()
            && self.endpoint_url.is_none()
    }
}

/// An empty answer or flag value clears nothing; `-` would be ambiguous, so only non-empty
/// values change the configuration.
fn given(value: Option<&String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The state URL for `--bucket`.
fn state_url(bucket: &str, project: &str) -> String {
    if bucket.starts_with("s3://")
        && Path::new(bucket)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        return bucket.to_string();
    }
    let bucket = bucket.trim_start_matches("s3://").trim_end_matches('/');
    format!("s3://{bucket}/{project}/state.json")
}

fn bucket_of(url: &str) -> Option<&str> {
    url.strip_prefix("s3://")?.split('/').next()
}

/// Apply the values of `args` to `config`.
pub fn edit(config: &mut ProjectConfig, args: &ConfigArgs, project: &str) {
    let region = given(args.region.as_ref());
    let profile = given(args.profile.as_ref());
    let endpoint = given(args.endpoint_url.as_ref());
    // The aws backend.
    if region.is_some() || profile.is_some() || endpoint.is_some() {
        if !config
            .backends
            .iter()
            .any(|b| matches!(b, BackendSetting::Aws { .. }))
        {
            config.backends.push(BackendSetting::Aws {
                regions: Vec::new(),
                profile: None,
                endpoint_url: None,
                vpc_id: None,
                subnet_ids: Vec::new(),
                tags: std::collections::BTreeMap::new(),
                image: None,
                gpu_image: None,
                instance_profile: None,
            });
        }
        for backend in &mut config.backends {
            if let BackendSetting::Aws {
                regions,
                profile: backend_profile,
                endpoint_url,
                ..
            } = backend
            {
                if let Some(region) = &region {
                    regions.retain(|r| r != region);
                    regions.insert(0, region.clone());
                }
                if profile.is_some() {
                    backend_profile.clone_from(&profile);
                }
                if endpoint.is_some() {
                    endpoint_url.clone_from(&endpoint);
                }
            }
        }
    }
    // The state.
    if let Some(bucket) = given(args.bucket.as_ref()) {
        let mut location = config
            .state
            .as_ref()
            .map(StateSetting::location)
            .unwrap_or_default();
        location.url = state_url(&bucket, project);
        config.state = Some(StateSetting::Detailed(location));
        if args.artifacts.is_none()
            && config
                .artifacts
                .as_ref()
                .is_none_or(|a| a.stores().remote.is_none())
            && let Some(name) = bucket_of(&state_url(&bucket, project))
        {
            let mut stores = config
                .artifacts
                .as_ref()
                .map(ArtifactsSetting::stores)
                .unwrap_or_default();
            stores.remote = Some(format!("s3://{name}/artifacts"));
            config.artifacts = Some(ArtifactsSetting::Detailed(stores));
        }
    }
    if let Some(url) = given(args.artifacts.as_ref()) {
        let mut stores = config
            .artifacts
            .as_ref()
            .map(ArtifactsSetting::stores)
            .unwrap_or_default();
        stores.remote = Some(url);
        config.artifacts = Some(ArtifactsSetting::Detailed(stores));
    }
    // Connection settings of S3 stores.
    if let Some(state) = &config.state {
        let mut location = state.location();
        if location.url.starts_with("s3://") {
            set_connection(
                &mut location,
                region.as_ref(),
                profile.as_ref(),
                endpoint.as_ref(),
            );
            config.state = Some(StateSetting::Detailed(location));
        }
    }
    if let Some(artifacts) = &config.artifacts {
        let mut stores = artifacts.stores();
        if stores
            .remote
            .as_deref()
            .is_some_and(|r| r.starts_with("s3://"))
        {
            let mut location = StoreLocation {
                url: String::new(),
                region: stores.region.clone(),
                endpoint_url: stores.endpoint_url.clone(),
                profile: stores.profile.clone(),
            };
            set_connection(
                &mut location,
                region.as_ref(),
                profile.as_ref(),
                endpoint.as_ref(),
            );
            stores.region = location.region;
            stores.endpoint_url = location.endpoint_url;
            stores.profile = location.profile;
            config.artifacts = Some(ArtifactsSetting::Detailed(stores));
        }
    }
    // Short forms where nothing else is set, as people write them.
    if let Some(StateSetting::Detailed(location)) = &config.state
        && location.region.is_none()
        && location.endpoint_url.is_none()
        && location.profile.is_none()
    {
        config.state = Some(StateSetting::Url(location.url.clone()));
    }
    if let Some(ArtifactsSetting::Detailed(stores)) = &config.artifacts
        && *stores
            == (ArtifactStores {
                remote: stores.remote.clone(),
                ..ArtifactStores::default()
            })
        && let Some(remote) = &stores.remote
    {
        config.artifacts = Some(ArtifactsSetting::Remote(remote.clone()));
    }
}

fn set_connection(
    location: &mut StoreLocation,
    region: Option<&String>,
    profile: Option<&String>,
    endpoint: Option<&String>,
) {
    if let Some(region) = region {
        location.region = Some(region.clone());
    }
    if let Some(profile) = profile {
        location.profile = Some(profile.clone());
    }
    if let Some(endpoint) = endpoint {
        location.endpoint_url = Some(endpoint.clone());
    }
}

/// The values the configuration has now, to show as defaults in the prompts.
fn current(config: &ProjectConfig) -> ConfigArgs {
    let aws = crate::backend::aws::AwsSettings::from_config(config);
    let state = config.state.as_ref().map(StateSetting::location);
    ConfigArgs {
        region: aws
            .as_ref()
            .and_then(|a| a.regions.first().cloned())
            .or_else(|| state.as_ref().and_then(|s| s.region.clone())),
        bucket: state
            .as_ref()
            .filter(|s| s.url.starts_with("s3://"))
            .map(|s| s.url.clone()),
        artifacts: config.artifacts.as_ref().and_then(|a| a.stores().remote),
        profile: aws.as_ref().and_then(|a| a.profile.clone()),
        endpoint_url: aws.and_then(|a| a.endpoint_url),
    }
}

fn ask(
    question: &str,
    current: Option<&String>,
    printer: &Printer,
) -> miette::Result<Option<String>> {
    let shown = current.map_or_else(String::new, |c| format!(" [{c}]"));
    printer.message(&format!("{question}{shown}: "));
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| miette::miette!("cannot read the answer: {e}"))?;
    Ok(given(Some(&answer)))
}

fn prompt(config: &ProjectConfig, printer: &Printer) -> miette::Result<ConfigArgs> {
    let now = current(config);
    Ok(ConfigArgs {
        region: ask("AWS region", now.region.as_ref(), printer)?,
        bucket: ask(
            "S3 bucket for the state (empty: keep; no bucket means .dstack/state.db)",
            now.bucket.as_ref(),
            printer,
        )?,
        artifacts: ask(
            "Remote artifact store (s3://BUCKET/PREFIX)",
            now.artifacts.as_ref(),
            printer,
        )?,
        profile: ask("AWS profile", now.profile.as_ref(), printer)?,
        endpoint_url: None,
    })
}

/// Validate `text` as a `config.yml`, as every command will read it.
fn validate(path: &Path, text: &str) -> miette::Result<ProjectConfig> {
    let validator = crate::model::schema::config_validator();
    project::read_config(&path.to_string_lossy(), text.to_string(), &|node| {
        validator.problems(node)
    })
    .map_err(|e| match e {
        project::ProjectError::Invalid { problems, .. } => context::ConfigProblems(problems).into(),
        other @ project::ProjectError::Read { .. } => miette::Report::new(other),
    })
}

pub fn run(args: &ConfigArgs, printer: &Printer) -> miette::Result<ExitStatus> {
    let cwd = context::current_dir()?;
    let project = context::project(&cwd)?;
    let dir = project.dot_dir();
    let path = dir.join(CONFIG_FILE);
    let original = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(miette::miette!("cannot read `{}`: {e}", path.display())),
    };
    let mut config = project.config.clone();
    let args = if args.is_empty() {
        if !std::io::stdin().is_terminal() {
            printer.data(&serde_saphyr::to_string(&config).unwrap_or_default());
            printer.message(&format!(
                "This is `{}`; change it with flags (`dstack config --region us-east-1 --bucket my-bucket`), or run `dstack config` on a terminal to be asked.",
                path.display()
            ));
            return Ok(ExitStatus::Success);
        }
        prompt(&config, printer)?
    } else {
        args.clone()
    };
    edit(&mut config, &args, &project.name);
    if config == project.config && original.is_some() {
        printer.message(&format!(
            "`{}` already says that; nothing changed.",
            path.display()
        ));
        return Ok(ExitStatus::Success);
    }
    let text = serde_saphyr::to_string(&config)
        .map_err(|e| miette::miette!("cannot write the configuration: {e}"))?;
    let written = validate(&path, &text)?;
    if written != config {
        return Err(miette::miette!(
            "the configuration would not read back as written; `{}` is unchanged",
            path.display()
        ));
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| miette::miette!("cannot create `{}`: {e}", dir.display()))?;
    let temp = dir.join(format!("{CONFIG_FILE}.tmp"));
    std::fs::write(&temp, &text)
        .and_then(|()| std::fs::rename(&temp, &path))
        .map_err(|e| miette::miette!("cannot write `{}`: {e}", path.display()))?;
    // Every command reads it this way; make sure it does.
    context::project(&cwd)?;
    if original
        .as_deref()
        .is_some_and(|t| t.lines().any(|l| l.trim_start().starts_with('#')))
    {
        printer.warn("the comments of the previous file were not kept");
    }
    printer.message(&format!("Wrote `{}`.", project.relative(&path)));
    Ok(ExitStatus::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> ProjectConfig {
        validate(Path::new("config.yml"), yaml).expect("valid")
    }

    #[test]
    fn flags_change_only_what_they_name() {
        let mut c = config(
            "project: p\nbackends:\n  - type: local\n    runtime: host\n  - type: aws\n    regions: [eu-west-1]\n    tags: {team: ml}\n",
        );
        edit(
            &mut c,
            &ConfigArgs {
                region: Some("us-east-1".into()),
                bucket: Some("my-bucket".into()),
                ..ConfigArgs::default()
            },
            "p",
        );
        let text = serde_saphyr::to_string(&c).expect("yaml");
        assert_eq!(config(&text), c);
        assert_eq!(c.project.as_deref(), Some("p"));
        assert_eq!(
            c.state.as_ref().map(StateSetting::location),
            Some(StoreLocation {
                url: "s3://my-bucket/p/state.json".into(),
                region: Some("us-east-1".into()),
                ..StoreLocation::default()
            })
        );
        assert_eq!(
            c.artifacts.as_ref().and_then(|a| a.stores().remote),
            Some("s3://my-bucket/artifacts".into())
        );
        let aws = crate::backend::aws::AwsSettings::from_config(&c).expect("aws");
        assert_eq!(aws.regions, vec!["us-east-1", "eu-west-1"]);
        assert_eq!(aws.tags["team"], "ml");
        assert_eq!(c.local_backend().0, project::LocalRuntime::Host);
    }

    #[test]
    fn an_empty_config_gets_an_aws_backend() {
        let mut c = ProjectConfig::default();
        edit(
            &mut c,
            &ConfigArgs {
                profile: Some("work".into()),
                artifacts: Some("s3://art/x".into()),
                ..ConfigArgs::default()
            },
            "p",
        );
        assert_eq!(c.state, None);
        let aws = crate::backend::aws::AwsSettings::from_config(&c).expect("aws");
        assert_eq!(aws.profile.as_deref(), Some("work"));
        let stores = c
            .artifacts
            .as_ref()
            .map(ArtifactsSetting::stores)
            .expect("artifacts");
        assert_eq!(stores.remote.as_deref(), Some("s3://art/x"));
        assert_eq!(stores.profile.as_deref(), Some("work"));
    }
}
