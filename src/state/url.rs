//! State URLs: `sqlite:PATH` (or a bare path), `s3://bucket/key`.
//!
//! Chosen by `--state`, else `DSTACK_STATE`, else `state:` in `.dstack/config.yml`, else
//! `sqlite:.dstack/state.db` in the project directory. Relative SQLite paths are relative to the
//! project directory.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{StateError, StateStore};
use crate::config::project::StoreLocation;

/// Where state is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateUrl {
    Sqlite(PathBuf),
    S3(S3Location),
}

/// An S3 object and how to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub key: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
}

impl fmt::Display for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Self::S3(s3) => write!(f, "s3://{}/{}", s3.bucket, s3.key),
        }
    }
}

/// Split `s3://bucket/key`.
pub fn parse_s3(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
        return None;
    }
    Some((bucket.to_string(), key.to_string()))
}

impl StateUrl {
    /// The default: `.dstack/state.db` in the project directory.
    pub fn default_for(project_root: &Path) -> Self {
        Self::Sqlite(project_root.join(".dstack").join("state.db"))
    }

    /// Parse a location.
    pub fn parse(location: &StoreLocation, project_root: &Path) -> Result<Self, StateError> {
        let url = location.url.trim();
        let invalid = |reason: &str| StateError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.is_empty() {
            return Err(invalid("it is empty"));
        }
        if url.starts_with("s3://") {
            let (bucket, key) =
                parse_s3(url).ok_or_else(|| invalid("expected `s3://BUCKET/KEY`"))?;
            return Ok(Self::S3(S3Location {
                bucket,
                key,
                region: location.region.clone(),
                endpoint_url: location.endpoint_url.clone(),
                profile: location.profile.clone(),
            }));
        }
        let path = match url.split_once(':') {
            Some(("sqlite", path)) => path,
            Some((scheme, _)) if scheme.len() > 1 && !scheme.contains('/') => {
                return Err(invalid(&format!("unknown scheme `{scheme}:`")));
            }
            _ => url,
        };
        if path.is_empty() {
            return Err(invalid("the path is empty"));
        }
        let path = PathBuf::from(path);
        Ok(Self::Sqlite(if path.is_absolute() {
            path
        } else {
            project_root.join(path)
        }))
    }

    /// Open the store.
    pub async fn open(&self) -> Result<Box<dyn StateStore>, StateError> {
        Ok(match self {
            Self::Sqlite(path) => Box::new(super::sqlite::SqliteStore::new(path.clone())),
            Self::S3(location) => Box::new(super::s3::S3Store::connect(location.clone()).await?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<StateUrl, StateError> {
        StateUrl::parse(
            &StoreLocation {
                url: url.into(),
                ..StoreLocation::default()
            },
            Path::new("/proj"),
        )
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse("sqlite:state.db").ok(),
            Some(StateUrl::Sqlite("/proj/state.db".into()))
        );
        assert_eq!(
            parse("/var/state.db").ok(),
            Some(StateUrl::Sqlite("/var/state.db".into()))
        );
        assert_eq!(
            parse("team/state.db").ok(),
            Some(StateUrl::Sqlite("/proj/team/state.db".into()))
        );
        match parse("s3://bucket/team/state.json") {
            Ok(StateUrl::S3(s3)) => assert_eq!(
                (s3.bucket.as_str(), s3.key.as_str()),
                ("bucket", "team/state.json")
            ),
            other => panic!("{other:?}"),
        }
        for bad in [
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "gs://b/k",
            "",
            "sqlite:",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
