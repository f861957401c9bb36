//! Sensitive values: what came from `${{ env.* }}` / `${{ secrets.* }}` is never shown or stored.
//!
//! Every string of a spec that contains a sensitive value is replaced by
//! `sensitive:sha256:HEX`, a digest salted with the state's lineage, before the spec is diffed,
//! shown, written to a plan file or recorded in state. The digest still changes when the value
//! does, so a changed secret plans a change; the value itself is read from the environment again
//! at apply. Text output shows `(sensitive)`.

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// Prefix of a masked value.
pub const PREFIX: &str = "sensitive:sha256:";
/// How a masked value is shown.
pub const SHOWN: &str = "(sensitive)";

/// `sensitive:sha256:HEX` of a value, salted.
pub fn digest(salt: &str, value: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update([0]);
    hasher.update(value.as_bytes());
    format!("{PREFIX}{}", hex::encode(hasher.finalize()))
}

/// Replace every string containing a secret by its salted digest.
pub fn mask(value: &Json, secrets: &[String], salt: &str) -> Json {
    if secrets.is_empty() {
        return value.clone();
    }
    match value {
        Json::String(s)
            if secrets
                .iter()
                .any(|secret| !secret.is_empty() && s.contains(secret.as_str())) =>
        {
            Json::String(digest(salt, s))
        }
        Json::Array(items) => Json::Array(items.iter().map(|v| mask(v, secrets, salt)).collect()),
        Json::Object(object) => Json::Object(
            object
                .iter()
                .map(|(k, v)| (k.clone(), mask(v, secrets, salt)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether a (masked) value is sensitive.
pub fn is_masked(value: &Json) -> bool {
    value.as_str().is_some_and(|s| s.starts_with(PREFIX))
}

/// Replace masked values by `(sensitive)` for display.
pub fn for_display(value: &Json) -> Json {
    match value {
        Json::String(s) if s.starts_with(PREFIX) => Json::String(SHOWN.into()),
        Json::Array(items) => Json::Array(items.iter().map(for_display).collect()),
        Json::Object(object) => Json::Object(
            object
                .iter()
                .map(|(k, v)| (k.clone(), for_display(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Remove secrets from free text (logs, error messages) before it is shown or stored.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(secret.as_str(), SHOWN);
    }
    out
}

/// JSON text with object keys sorted at every level, for digests that do not depend on field
/// order.
pub fn canonical(value: &Json) -> String {
    fn sorted(value: &Json) -> Json {
        match value {
            Json::Object(object) => {
                let mut keys: Vec<&String> = object.keys().collect();
                keys.sort();
                Json::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&object[k])))
                        .collect(),
                )
            }
            Json::Array(items) => Json::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sorted(value)).unwrap_or_default()
}

/// `sha256:HEX` of a value's canonical form.
pub fn value_digest(value: &Json) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical(value).as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_masked_and_digests_follow_values() {
        let spec =
            json!({"env": {"TOKEN": "abc123", "PLAIN": "x"}, "commands": ["echo abc123", "ls"]});
        let masked = mask(&spec, &["abc123".into()], "lineage");
        let text = masked.to_string();
        assert!(!text.contains("abc123"), "{text}");
        assert!(is_masked(&masked["env"]["TOKEN"]));
        assert_eq!(masked["env"]["PLAIN"], "x");
        assert_eq!(for_display(&masked)["commands"][0], SHOWN);
        let again = mask(&spec, &["abc123".into()], "lineage");
        assert_eq!(masked, again, "stable");
        let changed = mask(
            &json!({"env": {"TOKEN": "zzz999"}}),
            &["zzz999".into()],
            "lineage",
        );
        assert_ne!(changed["env"]["TOKEN"], masked["env"]["TOKEN"]);
        let other_salt = mask(&spec, &["abc123".into()], "another");
        assert_ne!(other_salt["env"]["TOKEN"], masked["env"]["TOKEN"]);
        assert_eq!(
            redact("token=abc123!", &["abc123".into()]),
            "token=(sensitive)!"
        );
    }

    #[test]
    fn canonical_form_ignores_key_order() {
        assert_eq!(
            value_digest(&json!({"a": 1, "b": {"c": 2, "d": 3}})),
            value_digest(&json!({"b": {"d": 3, "c": 2}, "a": 1}))
        );
        assert_ne!(value_digest(&json!([1, 2])), value_digest(&json!([2, 1])));
    }
}
