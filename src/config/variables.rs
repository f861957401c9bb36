//! `.dstack/variables.yaml`: default values of `${{ var.NAME }}`.
//!
//! ```yaml
//! variables:
//!   global:            # visible to every configuration
//!     model: 124M
//!   finetune-model:    # visible to the legacy workflow of that name
//!     batch_size: 1
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::diagnostic::{Problem, SourceText};
use super::yaml::{self, Value};

/// The file name inside `.dstack/`.
pub const FILE: &str = "variables.yaml";

/// Variables by section (`global`, or a workflow name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Variables {
    pub sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl Variables {
    /// `global` merged with `section` (the section wins) and then `overrides` (which win).
    pub fn resolve(
        &self,
        section: Option<&str>,
        overrides: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut vars = self.sections.get("global").cloned().unwrap_or_default();
        if let Some(section) = section.and_then(|s| self.sections.get(s)) {
            vars.extend(section.clone());
        }
        vars.extend(overrides.clone());
        vars
    }
}

/// Errors reading the variables file.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum VariablesError {
    #[error("cannot read `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not valid")]
    #[diagnostic(help(
        "expected `variables:` with a `global` section and one section per workflow, each mapping names to values"
    ))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

/// Read `.dstack/variables.yaml` of the project, if it exists.
pub fn load(dot_dir: &Path) -> Result<Variables, VariablesError> {
    let path = dot_dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Variables::default()),
        Err(source) => {
            return Err(VariablesError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    parse(&path.display().to_string(), text)
}

/// Parse the text of a variables file.
pub fn parse(display: &str, text: String) -> Result<Variables, VariablesError> {
    let source = Arc::new(SourceText {
        name: display.to_string(),
        text,
    });
    let invalid = |problems| VariablesError::Invalid {
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
    let Some(root) = documents.into_iter().next().map(|d| d.root) else {
        return Ok(Variables::default());
    };
    let mut problems = Vec::new();
    let mut variables = Variables::default();
    match &root.value {
        Value::Null => {}
        Value::Map(entries) => {
            for entry in entries {
                if entry.key != "variables" {
                    problems.push(Problem::new(
                        &source,
                        entry.key_span,
                        "",
                        format!("unknown key `{}`: expected `variables`", entry.key),
                    ));
                    continue;
                }
                let Value::Map(sections) = &entry.value.value else {
                    problems.push(Problem::new(
                        &source,
                        entry.value.span,
                        "variables",
                        "`variables` must be a mapping of sections",
                    ));
                    continue;
                };
                for section in sections {
                    let Value::Map(values) = &section.value.value else {
                        problems.push(Problem::new(
                            &source,
                            section.value.span,
                            format!("variables.{}", section.key),
                            "a section must map names to values",
                        ));
                        continue;
                    };
                    let mut resolved = BTreeMap::new();
                    for value in values {
                        match value.value.scalar_text() {
                            Some(text) => {
                                resolved.insert(value.key.clone(), text);
                            }
                            None => problems.push(Problem::new(
                                &source,
                                value.value.span,
                                format!("variables.{}.{}", section.key, value.key),
                                "a variable's value must be a scalar (text or number)",
                            )),
                        }
                    }
                    variables.sections.insert(section.key.clone(), resolved);
                }
            }
        }
        _ => problems.push(Problem::new(
            &source,
            root.span,
            "",
            "expected a mapping with `variables:`",
        )),
    }
    if problems.is_empty() {
        Ok(variables)
    } else {
        Err(invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_merge_with_overrides() {
        let vars = parse(
            "variables.yaml",
            "variables:\n  global:\n    model: 124M\n    dir: models\n  finetune:\n    model: 355M\n    lr: 0.00002\n".into(),
        )
        .expect("valid");
        let overrides = BTreeMap::from([("dir".to_string(), "out".to_string())]);
        let resolved = vars.resolve(Some("finetune"), &overrides);
        assert_eq!(resolved.get("model").map(String::as_str), Some("355M"));
        assert_eq!(resolved.get("dir").map(String::as_str), Some("out"));
        assert_eq!(resolved.get("lr").map(String::as_str), Some("0.00002"));
        assert_eq!(
            vars.resolve(None, &BTreeMap::new())
                .get("model")
                .map(String::as_str),
            Some("124M")
        );
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(parse("v", "vars: {}\n".into()).is_err());
        assert!(parse("v", "variables:\n  global: [1]\n".into()).is_err());
        assert!(parse("v", "variables:\n  global:\n    a: [1]\n".into()).is_err());
        assert_eq!(
            parse("v", String::new()).expect("empty is fine"),
            Variables::default()
        );
    }
}
