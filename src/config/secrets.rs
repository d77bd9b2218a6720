//! Secret references: a value written `${env:NAME}` or `${file:/path}` is replaced, at load time, by
//! the environment variable or the file's content (one trailing newline dropped), so configuration
//! files and pipeline definitions can be committed without the secrets they use.
//!
//! Invariant: a resolved value is never part of a problem's message; problems name the key path and
//! the variable or file, not what it holds.

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::{is_secret_key, Config, Problem};

/// Secret values this process knows (the values of secret-looking keys and of the S3 secrets,
/// whether written out or referenced), longest first, so text on its way out (error messages,
/// API answers) can be scrubbed of them: a librdkafka error about a property quotes its value.
static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remember a secret value for [`scrub`]. Values shorter than 4 bytes are not worth hiding (and
/// would mangle ordinary text).
pub fn remember(value: &str) {
    if value.len() >= 4 {
        let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
        if !known.iter().any(|k| k == value) {
            known.push(value.to_string());
            // Longest first, so a secret that contains another is hidden whole.
            known.sort_by_key(|k| std::cmp::Reverse(k.len()));
        }
    }
}

/// `text` with every remembered secret value replaced by `<redacted>`.
pub fn scrub(text: &str) -> String {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in known.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "<redacted>");
        }
    }
    out
}

impl Config {
    /// Resolve every secret reference in place: the librdkafka properties of each cluster and the
    /// static S3 credentials. Returns a problem for each reference that cannot be resolved.
    pub fn resolve_secrets(&mut self, env: &BTreeMap<String, String>) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut resolve = |path: String, secret: bool, value: &mut String| match resolve(value, env)
        {
            Ok(resolved) => {
                if let Some(resolved) = resolved {
                    *value = resolved;
                }
                // Only secrets: a referenced user name or host is no secret, and hiding it would
                // mangle every message that names it.
                if secret {
                    remember(value);
                }
            }
            Err(message) => problems.push(Problem { path, message }),
        };
        for (key, value) in self.kafka.properties.iter_mut() {
            resolve(
                format!("kafka.properties.\"{key}\""),
                is_secret_key(key),
                value,
            );
        }
        for (name, cluster) in self.clusters.iter_mut() {
            for (key, value) in cluster.properties.iter_mut() {
                resolve(
                    format!("clusters.{name}.properties.\"{key}\""),
                    is_secret_key(key),
                    value,
                );
            }
        }
        if let Some(token) = &mut self.service.api_token {
            resolve("service.api_token".into(), true, token);
        }
        if let Some(key) = &mut self.drill.sign_key {
            resolve("drill.sign_key".into(), true, key);
        }
        if let Some(token) = &mut self.tables.catalog_token {
            resolve("tables.catalog_token".into(), true, token);
        }
        let s3 = &mut self.storage.s3;
        for (key, value) in [
            ("access_key_id", &mut s3.access_key_id),
            ("secret_access_key", &mut s3.secret_access_key),
            ("session_token", &mut s3.session_token),
        ] {
            if let Some(value) = value {
                resolve(format!("storage.s3.{key}"), key != "access_key_id", value);
            }
        }
        problems
    }
}

/// The value a reference stands for; `None` when `value` is not a reference.
pub fn resolve(value: &str, env: &BTreeMap<String, String>) -> Result<Option<String>, String> {
    let Some(inner) = value
        .trim()
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
    else {
        return Ok(None);
    };
    match inner.split_once(':') {
        Some(("env", name)) if !name.is_empty() => match env.get(name) {
            Some(value) => Ok(Some(value.clone())),
            None => Err(format!(
                "refers to the environment variable {name}, which is not set"
            )),
        },
        Some(("file", path)) if !path.is_empty() => match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(
                text.strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text)
                    .to_string(),
            )),
            Err(e) => Err(format!(
                "refers to the file {path}, which cannot be read: {e}"
            )),
        },
        _ => Err(
            "is written like a secret reference but is not one: use ${env:NAME} or ${file:/path}"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_from_the_environment_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cr3t\n").unwrap();
        let env = BTreeMap::from([("KAFKA_PASSWORD".to_string(), "from-env".to_string())]);
        assert_eq!(
            resolve("${env:KAFKA_PASSWORD}", &env).unwrap().as_deref(),
            Some("from-env")
        );
        assert_eq!(
            resolve(&format!("${{file:{}}}", file.display()), &env)
                .unwrap()
                .as_deref(),
            Some("s3cr3t")
        );
        assert_eq!(resolve("plain", &env).unwrap(), None);
        let missing = resolve("${env:NOPE}", &env).unwrap_err();
        assert!(missing.contains("NOPE"), "{missing}");
        assert!(resolve("${vault:x}", &env).is_err());
    }

    #[test]
    fn problems_name_the_key_but_never_a_secret() {
        let mut config = Config::default();
        config
            .kafka
            .properties
            .insert("sasl.password".into(), "${env:KAFKA_PASSWORD}".into());
        config.clusters.insert("standby".into(), Default::default());
        config
            .clusters
            .get_mut("standby")
            .unwrap()
            .properties
            .insert("sasl.password".into(), "${file:/nonexistent/pw}".into());
        let env = BTreeMap::from([("OTHER".to_string(), "hunter2".to_string())]);
        let problems = config.resolve_secrets(&env);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text[0].starts_with("kafka.properties.\"sasl.password\""));
        assert!(text[1].starts_with("clusters.standby.properties.\"sasl.password\""));
        assert!(text.iter().all(|t| !t.contains("hunter2")));

        let env = BTreeMap::from([("KAFKA_PASSWORD".to_string(), "hunter2".to_string())]);
        config
            .clusters
            .get_mut("standby")
            .unwrap()
            .properties
            .insert("sasl.password".into(), "${env:KAFKA_PASSWORD}".into());
        assert!(config.resolve_secrets(&env).is_empty());
        assert_eq!(config.kafka.properties["sasl.password"], "hunter2");
        let shown = format!("{:?} {:?}", config, config.redacted());
        assert!(!shown.contains("hunter2"), "{shown}");
        // A message that quotes the value, as librdkafka's errors about a property do, is scrubbed.
        assert_eq!(
            scrub("Client config error: Invalid value \"hunter2\" for sasl.passwrd"),
            "Client config error: Invalid value \"<redacted>\" for sasl.passwrd"
        );
    }
}
