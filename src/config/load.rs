//! Layered loading: embedded defaults < TOML file < `REWIND__…` environment < flags, then one pass
//! that collects every problem (unknown keys, values of the wrong kind, semantic checks) with its
//! key path before anything runs.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;

use config::{FileFormat, Map, Source, Value};
use serde_json::Value as Json;

use super::Config;

/// Environment variables whose name starts with this configure Rewind:
/// `REWIND__STORAGE__S3__REGION` sets `storage.s3.region`.
pub const ENV_PREFIX: &str = "REWIND__";

/// Maps of named sections (`[clusters.standby]`), each entry shaped like the section beside it.
const NAMED_MAPS: &[(&str, &str)] = &[("clusters", "kafka"), ("archives", "archive")];

/// The place in the defaults' shape that describes `pointer`: an entry of a named map is shaped
/// like the section it is named after (`/clusters/standby/properties` → `/kafka/properties`).
pub(super) fn shape_pointer(pointer: &str) -> String {
    for (map, like) in NAMED_MAPS {
        if let Some(rest) = pointer.strip_prefix(&format!("/{map}/")) {
            let tail = rest.split_once('/').map(|(_, t)| t);
            return match tail {
                Some(tail) => format!("/{like}/{tail}"),
                None => format!("/{like}"),
            };
        }
    }
    pointer.to_string()
}

/// Where configuration comes from, lowest precedence first.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// A TOML file.
    pub file: Option<PathBuf>,
    /// The environment; `None` reads the process environment.
    pub env: Option<BTreeMap<String, String>>,
    /// Command-line flags as `(key path, value)`; they win over everything.
    pub overrides: Vec<(String, Json)>,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Key path such as `storage.s3.region`, or the environment variable that caused it.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why no configuration could be produced.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("{}", render(.0))]
    Invalid(Vec<Problem>),
}

/// One problem fits on one line; several are listed one per line under a count.
fn render(problems: &[Problem]) -> String {
    match problems {
        [one] => format!("invalid configuration: {one}"),
        many => {
            let lines: Vec<String> = many.iter().map(|p| format!("  {p}")).collect();
            format!(
                "invalid configuration ({} problems):\n{}",
                many.len(),
                lines.join("\n")
            )
        }
    }
}

/// Load, merge and check the configuration.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    match load_checked(sources)? {
        (Some(config), problems) if problems.is_empty() => Ok(config),
        (_, problems) => Err(ConfigError::Invalid(problems)),
    }
}

/// Load, merge and check the configuration, keeping what could be read even when there are
/// problems (bad values replaced by their defaults), so that what depends on it — pipeline files —
/// can be checked in the same round. `Err` only when nothing could be read at all.
pub(super) fn load_checked(
    sources: &Sources,
) -> Result<(Option<Config>, Vec<Problem>), ConfigError> {
    let defaults = Config::default();
    let shape = serde_json::to_value(&defaults).expect("the default configuration serializes");
    let env = sources
        .env
        .clone()
        .unwrap_or_else(|| std::env::vars().collect());
    let mut problems = Vec::new();

    let mut builder = config::Config::builder().add_source(
        config::Config::try_from(&defaults).expect("the default configuration serializes"),
    );
    if let Some(path) = &sources.file {
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(ConfigError::File {
                path: shown,
                message: "not found (check --config)".into(),
            });
        }
        builder = builder.add_source(
            config::File::from(path.as_path())
                .format(FileFormat::Toml)
                .required(true),
        );
    }
    builder = builder.add_source(EnvSource::new(&env, &shape, &mut problems));
    for (key, value) in &sources.overrides {
        builder = builder
            .set_override(key.as_str(), to_config_value(value))
            .map_err(|e| {
                ConfigError::Invalid(vec![Problem {
                    path: key.clone(),
                    message: e.to_string(),
                }])
            })?;
    }
    let merged = builder.build().map_err(|e| ConfigError::File {
        path: sources
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(none)".into()),
        message: e.to_string(),
    })?;
    let mut tree: Json = merged.try_deserialize().map_err(|e| {
        ConfigError::Invalid(vec![Problem {
            path: "(root)".into(),
            message: e.to_string(),
        }])
    })?;

    drop_unknown_keys(&mut tree, &shape, "", &mut problems);
    let mut config = deserialize_collecting::<Config>(tree, &shape, &mut problems);
    if let Some(config) = &mut config {
        problems.extend(config.resolve_secrets(&env));
        problems.extend(config.validate(&env));
    }
    problems.sort();
    problems.dedup();
    Ok((config, problems))
}

fn to_config_value(v: &Json) -> Value {
    match v {
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.to_string()),
        },
        Json::String(s) => Value::from(s.as_str()),
        other => Value::from(other.to_string()),
    }
}

/// Remove (and report) every key the configuration structs do not know.
pub(super) fn drop_unknown_keys(
    tree: &mut Json,
    shape: &Json,
    path: &str,
    problems: &mut Vec<Problem>,
) {
    drop_unknown_keys_in(tree, shape, shape, path, problems)
}

fn drop_unknown_keys_in(
    tree: &mut Json,
    shape: &Json,
    root: &Json,
    path: &str,
    problems: &mut Vec<Problem>,
) {
    if let Some((_, like)) = NAMED_MAPS.iter().find(|(map, _)| *map == path) {
        if let (Json::Object(entries), Some(entry_shape)) = (&mut *tree, root.get(*like)) {
            for (name, entry) in entries.iter_mut() {
                drop_unknown_keys_in(entry, entry_shape, root, &join(path, name), problems);
            }
        }
        return;
    }
    let (Json::Object(map), Json::Object(known)) = (tree, shape) else {
        return;
    };
    // A map that is empty by default has free-form keys: librdkafka properties, renames.
    if known.is_empty() {
        return;
    }
    map.retain(|key, value| {
        let here = join(path, key);
        match known.get(key) {
            Some(expected) => {
                drop_unknown_keys_in(value, expected, root, &here, problems);
                true
            }
            None => {
                let mut names: Vec<&str> = known.keys().map(String::as_str).collect();
                names.sort_unstable();
                problems.push(Problem {
                    path: here,
                    message: format!("unknown key (expected one of: {})", names.join(", ")),
                });
                false
            }
        }
    });
}

/// Deserialize, and on each failure record it, put the default back at that path and try again, so
/// that every bad value is reported rather than only the first. `None` when a failure could not be
/// repaired that way.
pub(super) fn deserialize_collecting<T: serde::de::DeserializeOwned>(
    mut tree: Json,
    shape: &Json,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let mut seen = HashSet::new();
    loop {
        match serde_path_to_error::deserialize::<_, T>(&tree) {
            // Bad values were replaced by defaults: the result still gets the semantic checks, and
            // the recorded problems keep it from being used.
            Ok(config) => return Some(config),
            Err(err) => {
                let path = err.path().to_string();
                problems.push(Problem {
                    path: path.clone(),
                    message: err.inner().to_string(),
                });
                if !seen.insert(path.clone()) || !restore_default(&mut tree, shape, &path) {
                    return None;
                }
            }
        }
    }
}

fn restore_default(tree: &mut Json, shape: &Json, path: &str) -> bool {
    if path.is_empty() || path == "." {
        return false;
    }
    let pointer = format!("/{}", path.replace('.', "/"));
    match (
        tree.pointer_mut(&pointer),
        shape.pointer(&shape_pointer(&pointer)),
    ) {
        (Some(slot), Some(default)) => {
            *slot = default.clone();
            true
        }
        _ => false,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `REWIND__SECTION__KEY=value` variables, typed by the kind of the default at that key, so that a
/// password of digits stays a string and `true` becomes a boolean only where one is expected.
#[derive(Debug, Clone)]
struct EnvSource {
    values: Vec<(String, Value)>,
}

impl EnvSource {
    fn new(env: &BTreeMap<String, String>, shape: &Json, problems: &mut Vec<Problem>) -> EnvSource {
        let mut values = Vec::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path = rest
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            let pointer = format!("/{}", path.replace('.', "/"));
            let value = match shape.pointer(&shape_pointer(&pointer)) {
                Some(Json::Bool(_)) => match raw.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => Value::from(true),
                    "false" | "0" | "no" | "off" => Value::from(false),
                    _ => {
                        problems.push(Problem {
                            path: format!("{path} (from {name})"),
                            message: format!("expected true or false, got {raw:?}"),
                        });
                        continue;
                    }
                },
                Some(Json::Number(_)) => match raw.trim().parse::<i64>() {
                    Ok(n) => Value::from(n),
                    Err(_) => {
                        problems.push(Problem {
                            path: format!("{path} (from {name})"),
                            message: format!("expected a whole number, got {raw:?}"),
                        });
                        continue;
                    }
                },
                Some(Json::Object(_)) => {
                    problems.push(Problem {
                        path: format!("{path} (from {name})"),
                        message: "is a section, set one of its keys instead".into(),
                    });
                    continue;
                }
                // A list: a JSON array of strings, or its items separated by commas.
                Some(Json::Array(_)) => {
                    let items: Option<Vec<String>> = if raw.trim_start().starts_with('[') {
                        serde_json::from_str(raw).ok()
                    } else {
                        Some(
                            raw.split(',')
                                .map(str::trim)
                                .filter(|s| !s.is_empty())
                                .map(str::to_string)
                                .collect(),
                        )
                    };
                    let Some(items) = items else {
                        problems.push(Problem {
                            path: format!("{path} (from {name})"),
                            message: format!(
                                "expected a list such as [\"a\", \"b\"] or a,b, got {raw:?}"
                            ),
                        });
                        continue;
                    };
                    Value::from(items)
                }
                Some(_) => Value::from(raw.as_str()),
                None => {
                    problems.push(Problem {
                        path: name.clone(),
                        message: format!("unknown setting {path:?}"),
                    });
                    continue;
                }
            };
            values.push((path, value));
        }
        EnvSource { values }
    }
}

impl Source for EnvSource {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.values.iter().cloned().collect())
    }
}
