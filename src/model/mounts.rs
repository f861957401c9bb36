//! What a run mounts and brings with it: `volumes` entries, `repos`, `files`.
//!
//! A mount is a network volume (`name:/path`, `{name, path}`, where `name` may be a list of
//! candidates of which the one on the run's backend is used) or an instance volume
//! (`/host:/path`, `{instance_path, path, optional}`). In the short form, a source containing `/`
//! is an instance path. Paths must be absolute, without `..`, and are normalised
//! (`/a/./b//` → `/a/b`).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};

use super::raw::{Raw, deserialize_from_raw};

/// Check and normalise an absolute POSIX path: no `..`, `.` and repeated `/` removed, no
/// trailing `/` (two leading slashes are kept, as POSIX says).
pub fn normalize_absolute(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if !path.starts_with('/') {
        return Err(format!(
            "the path `{path}` must be absolute (start with `/`)"
        ));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!("`..` is not allowed in the path `{path}`"));
    }
    let prefix = if path.starts_with("//") && !path.starts_with("///") {
        "//"
    } else {
        "/"
    };
    Ok(format!("{prefix}{}", parts.join("/")))
}

/// One entry of a run's `volumes`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MountPoint {
    /// A network volume: the first of `names` that exists on the run's backend.
    Volume { names: Vec<String>, path: String },
    /// A directory of the machine that runs the job.
    Instance {
        instance_path: String,
        path: String,
        optional: bool,
    },
}

impl MountPoint {
    pub fn path(&self) -> &str {
        match self {
            Self::Volume { path, .. } | Self::Instance { path, .. } => path,
        }
    }

    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Str(text) => {
                let parts: Vec<&str> = text.split(':').collect();
                let [source, path] = parts.as_slice() else {
                    return Err(format!(
                        "invalid mount `{text}`: expected `VOLUME:/path` or `/instance/path:/path` (no `:ro` suffix)"
                    ));
                };
                let path =
                    normalize_absolute(path).map_err(|e| format!("invalid mount `{text}`: {e}"))?;
                if source.contains('/') {
                    let instance_path = normalize_absolute(source)
                        .map_err(|e| format!("invalid mount `{text}`: {e}"))?;
                    Ok(Self::Instance {
                        instance_path,
                        path,
                        optional: false,
                    })
                } else {
                    Ok(Self::Volume {
                        names: vec![(*source).to_string()],
                        path,
                    })
                }
            }
            Raw::Map(ref entries) => {
                let instance = entries.iter().any(|(k, _)| k == "instance_path");
                if instance {
                    let mut fields =
                        raw.fields("an instance mount", &["instance_path", "path", "optional"])?;
                    let text = |raw: Option<Raw>, key: &str| {
                        raw.and_then(|r| r.scalar_text())
                            .ok_or_else(|| format!("an instance mount needs `{key}`"))
                    };
                    let instance_path =
                        normalize_absolute(&text(fields.take("instance_path"), "instance_path")?)?;
                    let path = normalize_absolute(&text(fields.take("path"), "path")?)?;
                    let optional = fields
                        .take("optional")
                        .map(super::lenient::Flag::from_raw)
                        .transpose()?
                        .is_some_and(|f| f.0);
                    Ok(Self::Instance {
                        instance_path,
                        path,
                        optional,
                    })
                } else {
                    let mut fields = raw.fields("a volume mount", &["name", "path"])?;
                    let names = match fields.take("name") {
                        Some(Raw::Seq(items)) => items
                            .into_iter()
                            .map(|i| {
                                i.scalar_text()
                                    .ok_or_else(|| format!("invalid volume name {}", i.describe()))
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                        Some(other) => {
                            vec![other.scalar_text().ok_or_else(|| {
                                format!("invalid volume name {}", other.describe())
                            })?]
                        }
                        None => return Err("a volume mount needs `name`".into()),
                    };
                    let path = fields
                        .take("path")
                        .and_then(|r| r.scalar_text())
                        .ok_or("a volume mount needs `path`")?;
                    Ok(Self::Volume {
                        names,
                        path: normalize_absolute(&path)?,
                    })
                }
            }
            other => Err(format!(
                "expected a mount like `my-volume:/data` or `/host:/data`, found {}",
                other.describe()
            )),
        }
    }
}

impl fmt::Display for MountPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Volume { names, path } if names.len() == 1 => write!(f, "{}:{path}", names[0]),
            Self::Volume { names, path } => write!(f, "[{}]:{path}", names.join(", ")),
            Self::Instance {
                instance_path,
                path,
                optional,
            } => {
                write!(f, "{instance_path}:{path}")?;
                if *optional {
                    f.write_str(" (optional)")?;
                }
                Ok(())
            }
        }
    }
}

impl Serialize for MountPoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Self::Volume { names, path } if names.len() == 1 && !names[0].contains([':', '/']) => {
                serializer.collect_str(&format_args!("{}:{path}", names[0]))
            }
            Self::Instance {
                instance_path,
                path,
                optional: false,
            } => serializer.collect_str(&format_args!("{instance_path}:{path}")),
            Self::Volume { names, path } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("name", names)?;
                map.serialize_entry("path", path)?;
                map.end()
            }
            Self::Instance {
                instance_path,
                path,
                optional,
            } => {
                let mut map = serializer.serialize_map(Some(3))?;
                map.serialize_entry("instance_path", instance_path)?;
                map.serialize_entry("path", path)?;
                map.serialize_entry("optional", optional)?;
                map.end()
            }
        }
    }
}

deserialize_from_raw!(MountPoint);

impl JsonSchema for MountPoint {
    fn schema_name() -> Cow<'static, str> {
        "MountPoint".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "string", "description": "`VOLUME:/path` or `/instance/path:/path`"},
                {"type": "object", "properties": {
                    "name": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}], "description": "The volume, or candidate volumes of which the one on the run's backend is mounted"},
                    "path": {"type": "string", "description": "Absolute path in the container"}
                }, "required": ["name", "path"], "additionalProperties": false},
                {"type": "object", "properties": {
                    "instance_path": {"type": "string", "description": "Absolute path on the machine"},
                    "path": {"type": "string", "description": "Absolute path in the container"},
                    "optional": {"type": ["boolean", "string", "number"], "description": "Let the run go to backends without instance volumes"}
                }, "required": ["instance_path", "path"], "additionalProperties": false}
            ],
            "x-dstack-parse": "mount",
            "x-dstack-expected": "a mount like `my-volume:/data`, `/host/dir:/data` or a mapping"
        })
    }
}

/// A repository to bring into the run (`repos`; at most one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RepoSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    pub path: String,
    pub if_exists: RepoExistsAction,
}

/// What to do when the repository's path already exists in the container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RepoExistsAction {
    #[default]
    Error,
    Skip,
}

/// Split a `source:target` shorthand, keeping URLs (`https://`, `git@host:`) and Windows drives
/// (`C:\`) in one piece.
fn split_source(text: &str, urls: bool) -> Vec<String> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() > 1 {
        let is_url = urls && (parts[0].contains('@') || parts[1].starts_with("//"));
        let is_drive = parts[0].len() == 1
            && parts[0].bytes().all(|b| b.is_ascii_alphabetic())
            && parts[1].starts_with(['\\', '/']);
        if is_url || is_drive {
            let mut joined = vec![format!("{}:{}", parts[0], parts[1])];
            joined.extend(parts[2..].iter().map(|p| (*p).to_string()));
            return joined;
        }
    }
    parts.into_iter().map(str::to_string).collect()
}

impl RepoSpec {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let spec = match raw {
            Raw::Str(text) => {
                let parts = split_source(&text, true);
                let (source, path) = match parts.as_slice() {
                    [source] => (source.clone(), ".".to_string()),
                    [source, path] => (source.clone(), path.clone()),
                    _ => {
                        return Err(format!(
                            "invalid repo `{text}`: expected `PATH_OR_URL[:REPO_PATH]`"
                        ));
                    }
                };
                let is_url = source.contains("://") || source.contains('@');
                Self {
                    local_path: (!is_url).then(|| source.clone()),
                    url: is_url.then_some(source),
                    branch: None,
                    hash: None,
                    path,
                    if_exists: RepoExistsAction::Error,
                }
            }
            raw @ Raw::Map(_) => {
                let mut fields = raw.fields(
                    "a repo",
                    &["local_path", "url", "branch", "hash", "path", "if_exists"],
                )?;
                let mut text = |key: &str| fields.take(key).and_then(|r| r.scalar_text());
                let local_path = text("local_path");
                let url = text("url");
                let branch = text("branch");
                let hash = text("hash");
                let path = text("path").unwrap_or_else(|| ".".into());
                let if_exists = match text("if_exists").as_deref() {
                    None | Some("error") => RepoExistsAction::Error,
                    Some("skip") => RepoExistsAction::Skip,
                    Some(other) => {
                        return Err(format!(
                            "`if_exists` must be `error` or `skip`, found `{other}`"
                        ));
                    }
                };
                Self {
                    local_path,
                    url,
                    branch,
                    hash,
                    path,
                    if_exists,
                }
            }
            other => {
                return Err(format!(
                    "expected a repo like `.` or `https://github.com/org/repo`, found {}",
                    other.describe()
                ));
            }
        };
        let present = |v: &Option<String>| v.as_ref().is_some_and(|s| !s.is_empty());
        match (present(&spec.local_path), present(&spec.url)) {
            (true, true) => return Err("`local_path` and `url` are mutually exclusive".into()),
            (false, false) => return Err("a repo needs `local_path` or `url`".into()),
            _ => {}
        }
        if spec.path.starts_with('~') && spec.path.split('/').next() != Some("~") {
            return Err(format!(
                "`~username` paths are not supported: `{}`",
                spec.path
            ));
        }
        Ok(spec)
    }
}

deserialize_from_raw!(RepoSpec);

impl JsonSchema for RepoSpec {
    fn schema_name() -> Cow<'static, str> {
        "RepoSpec".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let _ = generator;
        json_schema!({
            "anyOf": [
                {"type": "string", "description": "`LOCAL_PATH_OR_URL[:PATH]`"},
                {"type": "object", "properties": {
                    "local_path": {"type": ["string", "null"]},
                    "url": {"type": ["string", "null"]},
                    "branch": {"type": ["string", "null"]},
                    "hash": {"type": ["string", "null"]},
                    "path": {"type": "string"},
                    "if_exists": {"enum": ["error", "skip"]}
                }, "additionalProperties": false}
            ],
            "x-dstack-parse": "repo",
            "x-dstack-expected": "a repo like `.`, `.:/repo` or `https://github.com/org/repo`"
        })
    }
}

/// A local file or directory copied into the run (`files`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileMapping {
    pub local_path: String,
    pub path: String,
}

fn is_windows_absolute(path: &str) -> bool {
    let bytes = path.as_bytes();
    let drive = bytes.len() >= 3
        && bytes[0].is_ascii_alphabetic()
        && bytes[1] == b':'
        && matches!(bytes[2], b'/' | b'\\');
    let unc = (path.starts_with("//") || path.starts_with("\\\\"))
        && path[2..]
            .split(['/', '\\'])
            .filter(|p| !p.is_empty())
            .count()
            >= 2;
    drive || unc
}

impl FileMapping {
    pub fn from_raw(raw: Raw) -> Result<Self, String> {
        let mapping = match raw {
            Raw::Str(text) => {
                let parts = split_source(&text, false);
                match parts.as_slice() {
                    [both] => Self {
                        local_path: both.clone(),
                        path: both.clone(),
                    },
                    [local, path] => Self {
                        local_path: local.clone(),
                        path: path.clone(),
                    },
                    _ => {
                        return Err(format!(
                            "invalid file mapping `{text}`: expected `LOCAL[:PATH]`"
                        ));
                    }
                }
            }
            raw @ Raw::Map(_) => {
                let mut fields = raw.fields("a file mapping", &["local_path", "path"])?;
                let local_path = fields
                    .take("local_path")
                    .and_then(|r| r.scalar_text())
                    .ok_or("a file mapping needs `local_path`")?;
                let path = fields
                    .take("path")
                    .and_then(|r| r.scalar_text())
                    .ok_or("a file mapping needs `path`")?;
                Self { local_path, path }
            }
            other => {
                return Err(format!(
                    "expected a file mapping like `config.json:/app/config.json`, found {}",
                    other.describe()
                ));
            }
        };
        if is_windows_absolute(&mapping.path) {
            return Err(format!("the path `{}` must be a Unix path", mapping.path));
        }
        Ok(mapping)
    }
}

deserialize_from_raw!(FileMapping);

impl JsonSchema for FileMapping {
    fn schema_name() -> Cow<'static, str> {
        "FileMapping".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "string", "description": "`LOCAL[:PATH]`"},
                {"type": "object", "properties": {
                    "local_path": {"type": "string"},
                    "path": {"type": "string"}
                }, "required": ["local_path", "path"], "additionalProperties": false}
            ],
            "x-dstack-parse": "file",
            "x-dstack-expected": "a file mapping like `config.json` or `data/:/data`"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Raw {
        Raw::Str(text.into())
    }

    #[test]
    fn mount_point_parsing_and_normalisation() {
        assert_eq!(
            MountPoint::from_raw(s("my-vol:/path/./to///dir/")),
            Ok(MountPoint::Volume {
                names: vec!["my-vol".into()],
                path: "/path/to/dir".into()
            })
        );
        assert_eq!(
            MountPoint::from_raw(s("/mnt/data:/data")),
            Ok(MountPoint::Instance {
                instance_path: "/mnt/data".into(),
                path: "/data".into(),
                optional: false
            })
        );
        assert_eq!(normalize_absolute("//data"), Ok("//data".into()));
        assert_eq!(normalize_absolute("///data"), Ok("/data".into()));
        assert_eq!(normalize_absolute("/"), Ok("/".into()));
        for bad in [
            "/data",
            "a:/b:ro",
            "vol:",
            "vol:data",
            "vol:/a/../b",
            "./x:/data",
        ] {
            assert!(MountPoint::from_raw(s(bad)).is_err(), "{bad}");
        }
        let list = Raw::Map(vec![
            ("name".into(), Raw::Seq(vec![s("a"), s("b")])),
            ("path".into(), s("/v")),
        ]);
        assert_eq!(
            MountPoint::from_raw(list),
            Ok(MountPoint::Volume {
                names: vec!["a".into(), "b".into()],
                path: "/v".into()
            })
        );
        let mixed = Raw::Map(vec![
            ("name".into(), s("a")),
            ("instance_path".into(), s("/x")),
            ("path".into(), s("/v")),
        ]);
        assert!(MountPoint::from_raw(mixed).is_err());
    }

    #[test]
    fn repo_shorthands() {
        let repo = RepoSpec::from_raw(s(".")).expect("valid");
        assert_eq!(
            (repo.local_path.as_deref(), repo.path.as_str()),
            (Some("."), ".")
        );
        let repo = RepoSpec::from_raw(s("https://github.com/a/b:/repo")).expect("valid");
        assert_eq!(
            (repo.url.as_deref(), repo.path.as_str()),
            (Some("https://github.com/a/b"), "/repo")
        );
        let repo = RepoSpec::from_raw(s("git@github.com:a/b.git")).expect("valid");
        assert_eq!(repo.url.as_deref(), Some("git@github.com:a/b.git"));
        let repo = RepoSpec::from_raw(s("C:\\path\\to")).expect("valid");
        assert_eq!(repo.local_path.as_deref(), Some("C:\\path\\to"));
        assert!(RepoSpec::from_raw(s("a:b:c")).is_err());
        assert!(RepoSpec::from_raw(s(".:~user/x")).is_err());
        assert!(RepoSpec::from_raw(Raw::Map(vec![])).is_err());
    }

    #[test]
    fn file_mappings() {
        assert_eq!(
            FileMapping::from_raw(s("a.txt")),
            Ok(FileMapping {
                local_path: "a.txt".into(),
                path: "a.txt".into()
            })
        );
        assert_eq!(
            FileMapping::from_raw(s("data.txt:/b")),
            Ok(FileMapping {
                local_path: "data.txt".into(),
                path: "/b".into()
            })
        );
        assert!(
            FileMapping::from_raw(s("a:/b")).is_err(),
            "a drive letter, as dstack reads it"
        );
        assert!(FileMapping::from_raw(s("a.txt:C:/b")).is_err());
        assert!(FileMapping::from_raw(s("a:b:c")).is_err());
    }
}
