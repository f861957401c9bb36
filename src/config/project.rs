//! The project directory and its `.dstack/config.yml`.
//!
//! The project directory is the nearest ancestor of the working directory that holds a `.dstack/`
//! directory (the user's home directory does not count: `~/.dstack` is the global store), else the
//! working directory itself. Source paths of resources are stored relative to it. The project's
//! name is `project:` in the config file, else the directory's name.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::diagnostic::{Problem, SourceText};
use super::{de, yaml};

/// The file name of the project configuration inside `.dstack/`.
pub const CONFIG_FILE: &str = "config.yml";

/// Where the state lives: a URL, or a URL with connection settings.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum StateSetting {
    /// `sqlite:PATH`, a bare path, or `s3://bucket/key`.
    Url(String),
    Detailed(StoreLocation),
}

/// A storage URL with optional S3 connection settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreLocation {
    /// `sqlite:PATH`, a bare path, or `s3://bucket/key`.
    pub url: String,
    /// AWS region of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// An S3-compatible endpoint (path-style addressing is used whenever this is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// A profile from `~/.aws/config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

impl StateSetting {
    pub fn location(&self) -> StoreLocation {
        match self {
            Self::Url(url) => StoreLocation {
                url: url.clone(),
                ..StoreLocation::default()
            },
            Self::Detailed(location) => location.clone(),
        }
    }
}

/// Where artifacts are kept: the remote store URL, or local and remote stores in detail.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum ArtifactsSetting {
    /// The remote store, `s3://bucket/prefix`.
    Remote(String),
    Detailed(ArtifactStores),
}

/// Local and remote artifact stores.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArtifactStores {
    /// The local store directory (default `~/.dstack/artifacts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    /// The remote store, `s3://bucket/prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

impl ArtifactsSetting {
    pub fn stores(&self) -> ArtifactStores {
        match self {
            Self::Remote(url) => ArtifactStores {
                remote: Some(url.clone()),
                ..ArtifactStores::default()
            },
            Self::Detailed(stores) => stores.clone(),
        }
    }
}

/// How the local backend runs jobs.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LocalRuntime {
    /// Docker when a daemon answers, else host processes.
    #[default]
    Auto,
    Docker,
    Host,
}

/// A backend entry of `.dstack/config.yml`.
// Read once per command; boxing the aws entry's fields would only make them harder to match.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendSetting {
    /// This machine: Docker, or host processes.
    Local {
        #[serde(default)]
        runtime: LocalRuntime,
        /// The image of runs that name none (default `python:3.X-slim`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default_image: Option<String>,
    },
    /// Amazon Web Services: EBS volumes, EC2 fleets and runs.
    Aws {
        #[serde(default)]
        regions: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint_url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vpc_id: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        subnet_ids: Vec<String>,
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        tags: std::collections::BTreeMap<String, String>,
        /// The machine image: a name filter (wildcards allowed) and an owner.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<ImageFilter>,
        /// The machine image of instances with NVIDIA GPUs (default: AWS's Deep Learning Base
        /// GPU image for Ubuntu 22.04, which has the driver and the container toolkit; when a
        /// region lacks it, `image` is used and the boot script installs them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gpu_image: Option<ImageFilter>,
        /// The IAM instance profile of the instances (a run's runner reads and writes the
        /// remote artifact store with its role).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance_profile: Option<String>,
    },
}

/// Which machine image to boot.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageFilter {
    pub name: String,
    pub owner: String,
}

/// `.dstack/config.yml`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// The project's name (default: the project directory's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Where state is kept (default `sqlite:.dstack/state.db`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSetting>,
    /// Where artifacts are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<ArtifactsSetting>,
    /// Configured backends; `local` is always present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendSetting>,
}

impl ProjectConfig {
    /// The local backend's settings (defaults when not configured).
    pub fn local_backend(&self) -> (LocalRuntime, Option<String>) {
        self.backends
            .iter()
            .find_map(|b| match b {
                BackendSetting::Local {
                    runtime,
                    default_image,
                } => Some((*runtime, default_image.clone())),
                BackendSetting::Aws { .. } => None,
            })
            .unwrap_or_default()
    }
}

/// A located project.
#[derive(Clone, Debug)]
pub struct Project {
    /// The project directory (absolute).
    pub root: PathBuf,
    pub name: String,
    pub config: ProjectConfig,
}

impl Project {
    /// `.dstack/` of the project.
    pub fn dot_dir(&self) -> PathBuf {
        self.root.join(".dstack")
    }

    /// A path relative to the project directory, with `/` separators, for storing in state.
    pub fn relative(&self, path: &Path) -> String {
        let relative = path.strip_prefix(&self.root).unwrap_or(path);
        relative.to_string_lossy().replace('\\', "/")
    }
}

/// Errors finding or reading the project.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ProjectError {
    #[error("cannot read `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not valid")]
    #[diagnostic(help(
        "fix the errors above; `dstack schema config` prints the schema of this file"
    ))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

/// Find the project directory for `cwd`, ignoring `home`'s global `.dstack`.
pub fn find_root(cwd: &Path, home: Option<&Path>) -> PathBuf {
    for dir in cwd.ancestors() {
        if home.is_some_and(|h| h == dir) {
            continue;
        }
        if dir.join(".dstack").is_dir() {
            return dir.to_path_buf();
        }
    }
    cwd.to_path_buf()
}

/// Locate the project for `cwd` and read its configuration.
pub fn load(
    cwd: &Path,
    home: Option<&Path>,
    validate: &dyn Fn(&yaml::Node) -> Vec<super::schema::SchemaProblem>,
) -> Result<Project, ProjectError> {
    let root = find_root(cwd, home);
    let path = root.join(".dstack").join(CONFIG_FILE);
    let config = match std::fs::read_to_string(&path) {
        Ok(text) => read_config(&path.to_string_lossy(), text, validate)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ProjectConfig::default(),
        Err(source) => {
            return Err(ProjectError::Read {
                path: path.to_string_lossy().into_owned(),
                source,
            });
        }
    };
    let name = config.project.clone().unwrap_or_else(|| {
        root.file_name().map_or_else(
            || "default".to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    });
    Ok(Project { root, name, config })
}

/// Parse and validate a `config.yml` text.
pub fn read_config(
    display: &str,
    text: String,
    validate: &dyn Fn(&yaml::Node) -> Vec<super::schema::SchemaProblem>,
) -> Result<ProjectConfig, ProjectError> {
    let source = std::sync::Arc::new(SourceText {
        name: display.to_string(),
        text,
    });
    let invalid = |problems| ProjectError::Invalid {
        path: display.to_string(),
        problems,
    };
    let documents = yaml::parse(&source.text).map_err(|e| {
        invalid(vec![Problem::new(
            &source,
            e.span,
            "",
            format!("invalid YAML: {}", e.message),
        )])
    })?;
    let Some(document) = documents.into_iter().next() else {
        return Ok(ProjectConfig::default());
    };
    if matches!(document.root.value, yaml::Value::Null) {
        return Ok(ProjectConfig::default());
    }
    let problems: Vec<Problem> = validate(&document.root)
        .into_iter()
        .map(|p| {
            let path = pointer_to_path(&p.pointer);
            let problem = Problem::new(&source, p.span, path, p.message);
            match p.hint {
                Some(hint) => problem.with_hint(hint),
                None => problem,
            }
        })
        .collect();
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    de::from_node(&document.root).map_err(|e| {
        let span = e.span.unwrap_or(document.root.span);
        invalid(vec![Problem::new(
            &source,
            span,
            de::path_string(&e.path),
            e.message,
        )])
    })
}

/// `/volumes/0/path` → `volumes[0].path`.
pub fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_root_is_the_nearest_dot_dstack_but_not_home() {
        let temp = tempfile::tempdir().expect("tempdir");
        let home = temp.path();
        std::fs::create_dir_all(home.join(".dstack")).expect("mkdir");
        let project = home.join("work/proj");
        std::fs::create_dir_all(project.join(".dstack")).expect("mkdir");
        std::fs::create_dir_all(project.join("src/deep")).expect("mkdir");
        assert_eq!(find_root(&project.join("src/deep"), Some(home)), project);
        let elsewhere = home.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).expect("mkdir");
        assert_eq!(find_root(&elsewhere, Some(home)), elsewhere);
    }

    #[test]
    fn pointers_become_readable_paths() {
        assert_eq!(pointer_to_path("/volumes/0/path"), "volumes[0].path");
        assert_eq!(pointer_to_path(""), "");
        assert_eq!(pointer_to_path("/env/A~1B"), "env.A/B");
    }
}
