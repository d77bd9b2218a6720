//! Pipelines: the sinks and restores `rewind run` keeps running, one TOML file each in the service's
//! pipelines directory (`service.pipelines`, relative to the configuration file).
//!
//! A pipeline names a cluster and an archive of the service configuration (`default` is `[kafka]`
//! and `archive`), and its `[sink]` or `[restore]` section is laid over the service's section of the
//! same name, key by key. Like the service configuration, every pipeline is checked in full before
//! anything starts, and every problem of the configuration and of every pipeline is reported at
//! once, with its file and key path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use super::load::{deserialize_collecting, drop_unknown_keys, load_checked};
use super::{Config, ConfigError, Problem, RestoreConfig, SinkConfig, Sources};

/// What a pipeline does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineKind {
    /// Back topics up into the archive, continuously.
    Sink,
    /// Replay a window of the archive into a cluster; with `follow`, keep a standby fed.
    Restore,
}

/// A restore as asked for: by `rewind restore`, a restore pipeline's `[restore]` section, or the
/// body of `POST /restores`. Turned into options by [`RestoreJob::options`](crate::restore::job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreJob {
    /// Start of the window: RFC 3339, epoch milliseconds, or `earliest` (a number below
    /// 1000000000000 is refused as likely epoch seconds). `POST /restores` also takes a relative
    /// time (`now-1h`, `2h ago`, `today`, `yesterday`; UTC), resolved and kept as the absolute time
    /// when the restore is created; a pipeline file, read again at every start, does not.
    pub from: String,
    /// End of the window (exclusive): RFC 3339, epoch milliseconds, or `latest` (a number below
    /// 1000000000000 is refused as likely epoch seconds). Relative times as for `from`.
    pub to: String,
    /// Regular expression of archived topics to restore (whole name).
    pub topics: String,
    /// Begin at a named restore point (`rewind mark`): each partition at the offset the mark
    /// recorded, instead of at `from`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_mark: Option<String>,
    /// End at a named restore point, exactly: every archived record below the offsets the mark
    /// recorded, instead of a time cut at `to`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_mark: Option<String>,
    /// Source topic → target topic.
    pub renames: std::collections::BTreeMap<String, String>,
    /// Id of the restore, for exact resumption; a pipeline's defaults to its name.
    pub restore_id: Option<String>,
    /// Keep restoring new archive files as they appear (a standby cluster); takes no `to`.
    pub follow: bool,
    /// Move consumer groups to the target offsets matching their committed offsets as of `to`.
    pub groups: bool,
    /// Write into target topics that already hold records.
    pub allow_non_empty: bool,
    /// Restore only records whose own timestamp is inside the window.
    pub strict: bool,
    /// Choose target partitions by key with the Java client's partitioner.
    pub repartition_by_key: bool,
    /// Add `rewind.source.topic/partition/offset` headers to every restored record.
    pub provenance_headers: bool,
    /// Rewrite the Schema Registry ids of records in the Confluent wire format: the URL of the
    /// registry that assigned them (the source cluster's, or one restored from the archive)...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_ids_from: Option<String>,
    /// ...and of the target cluster's registry, whose id for the same subject and version each
    /// record gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_ids_to: Option<String>,
    /// Rewrite the ids of keys too (values only otherwise: plain binary keys often begin with a
    /// zero byte).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub schema_ids_keys: bool,
    /// Share this restore's partitions with every other process running it with the same id:
    /// they form a Kafka consumer group that assigns each of them a part of the target partitions.
    pub shared: bool,
}

impl RestoreJob {
    /// The first schema registry URL that holds credentials, by field name. A job kept by the
    /// service (a pipeline's, or one `POST /restores` started) is shown by its API and stored in
    /// the archive, so it may not hold any; `rewind restore` may.
    pub fn registry_credentials(&self) -> Option<&'static str> {
        [
            ("schema_ids_from", &self.schema_ids_from),
            ("schema_ids_to", &self.schema_ids_to),
        ]
        .into_iter()
        .find(|(_, url)| {
            url.as_deref()
                .is_some_and(crate::kafka::registry::has_credentials)
        })
        .map(|(field, _)| field)
    }
}

impl Default for RestoreJob {
    fn default() -> Self {
        RestoreJob {
            from: "earliest".into(),
            to: "latest".into(),
            topics: ".*".into(),
            from_mark: None,
            to_mark: None,
            renames: Default::default(),
            restore_id: None,
            follow: false,
            groups: false,
            allow_non_empty: false,
            strict: false,
            repartition_by_key: false,
            provenance_headers: false,
            schema_ids_from: None,
            schema_ids_to: None,
            schema_ids_keys: false,
            shared: false,
        }
    }
}

/// One checked pipeline.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// From `name`, or the file's stem.
    pub name: String,
    pub kind: PipelineKind,
    /// The file it came from.
    pub file: PathBuf,
    /// `enabled = false` keeps a pipeline defined but not running.
    pub enabled: bool,
    /// Name of the cluster it reads from (sink) or writes to (restore).
    pub cluster: String,
    /// Name of the archive it writes to (sink) or reads from (restore).
    pub archive: String,
    /// Effective sink settings (kind `sink`): the service's `[sink]` with the pipeline's on top.
    /// The consumer group defaults to `rewind-<name>`.
    pub sink: SinkConfig,
    /// Effective restore tuning (kind `restore`).
    pub restore: RestoreConfig,
    /// The restore itself (kind `restore`).
    pub job: RestoreJob,
}

impl PipelineSpec {
    /// The restore id a restore pipeline resumes under.
    pub fn restore_id(&self) -> &str {
        self.job.restore_id.as_deref().unwrap_or(&self.name)
    }
}

/// The service configuration and its pipelines.
#[derive(Debug, Clone)]
pub struct Service {
    pub config: Config,
    pub pipelines: Vec<PipelineSpec>,
    /// Where the pipelines were read from.
    pub pipelines_dir: PathBuf,
}

/// Load the service configuration and every pipeline file, and report every problem of all of
/// them at once. A missing pipelines directory is a problem; an empty one is not (restores can be
/// started through the API alone).
pub fn load_service(sources: &Sources) -> Result<Service, ConfigError> {
    let (config, mut problems) = load_checked(sources)?;
    // Pipelines are checked against what could be read even when the configuration has problems
    // (its bad values replaced by defaults), so that everything is reported in one round.
    let Some(config) = config else {
        return Err(ConfigError::Invalid(problems));
    };
    let base = sources
        .file
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let exposed = config
        .service
        .http_addr
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| !a.ip().is_loopback());
    if exposed && config.service.api_token.is_none() && !config.service.allow_unauthenticated {
        problems.push(Problem {
            path: "service.api_token".into(),
            message: format!(
                "the API listens on {}, which other hosts can reach, and anyone who reaches it could start a restore: set service.api_token (written ${{env:NAME}} or ${{file:/path}}), or service.allow_unauthenticated = true to serve without one",
                config.service.http_addr
            ),
        });
    }
    let dir = base.join(&config.service.pipelines);
    let mut pipelines = Vec::new();
    let service_problems = problems.clone();
    let listed = if service_problems
        .iter()
        .any(|p| p.path.starts_with("service.pipelines"))
    {
        // The directory setting itself is wrong: reading the default one would only mislead.
        Ok(Vec::new())
    } else {
        pipeline_files(&dir)
    };
    match listed {
        Ok(files) => {
            for file in files {
                if let Some(spec) = load_pipeline(&config, &file, &service_problems, &mut problems)
                {
                    pipelines.push(spec);
                }
            }
        }
        Err(message) => problems.push(Problem {
            path: "service.pipelines".into(),
            message,
        }),
    }
    // Names, restore ids and sink groups must be unique: two restores under one id would fence
    // each other's transactions, and two sinks in one group would split the partitions between
    // them (and between their archives).
    let mut names = BTreeSet::new();
    let mut restore_ids = BTreeMap::new();
    let mut groups = BTreeMap::new();
    for spec in &pipelines {
        let mut clash = |key: &str, message: String| {
            problems.push(Problem {
                path: format!("{}: {key}", spec.file.display()),
                message,
            })
        };
        if !names.insert(spec.name.clone()) {
            clash(
                "name",
                format!("another pipeline is already named {:?}", spec.name),
            );
        }
        if !spec.enabled {
            continue;
        }
        match spec.kind {
            PipelineKind::Restore => {
                // Progress and transactional ids live in the target cluster.
                let key = (spec.cluster.clone(), spec.restore_id().to_string());
                if let Some(other) = restore_ids.insert(key, &spec.name) {
                    clash(
                        "restore.restore_id",
                        format!("pipeline {other} restores into cluster {} under the same id {:?}; give each restore pipeline its own restore_id", spec.cluster, spec.restore_id()),
                    );
                }
            }
            PipelineKind::Sink => {
                let key = (spec.cluster.clone(), spec.sink.group.clone());
                if let Some(other) = groups.insert(key, &spec.name) {
                    clash(
                        "sink.group",
                        format!("pipeline {other} uses the same consumer group {:?} on cluster {}; the two would split the partitions between them", spec.sink.group.as_deref().unwrap_or_default(), spec.cluster),
                    );
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(Service {
            config,
            pipelines,
            pipelines_dir: dir,
        })
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn pipeline_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the pipelines directory {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Check one pipeline file; its problems go to `problems` with the file in their path.
fn load_pipeline(
    config: &Config,
    file: &Path,
    service_problems: &[Problem],
    problems: &mut Vec<Problem>,
) -> Option<PipelineSpec> {
    let shown = file.display().to_string();
    let mut local = Vec::new();
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            problems.push(Problem {
                path: shown,
                message: format!("cannot be read: {e}"),
            });
            return None;
        }
    };
    let mut tree: Json = match toml::from_str(&text) {
        Ok(tree) => tree,
        Err(e) => {
            let message = e.to_string().replace('\n', " ");
            problems.push(Problem {
                path: shown,
                message: format!("is not valid TOML: {}", message.trim()),
            });
            return None;
        }
    };

    let sink_shape = serde_json::to_value(&config.sink).expect("sink settings serialize");
    let tuning_shape = serde_json::to_value(&config.restore).expect("restore settings serialize");
    let mut job_shape = serde_json::to_value(RestoreJob::default()).expect("a job serializes");
    if let Json::Object(job) = &mut job_shape {
        // The keys the default job leaves out (unset, or false) are the job's too.
        for key in ["from_mark", "to_mark", "schema_ids_from", "schema_ids_to"] {
            job.entry(key).or_insert(Json::Null);
        }
        job.entry("schema_ids_keys").or_insert(json!(false));
    }
    let mut restore_shape = tuning_shape.clone();
    if let (Json::Object(all), Json::Object(job)) = (&mut restore_shape, &job_shape) {
        all.extend(job.clone());
        // Keys unset (or false) by default, which the default job leaves out; a string (a flag)
        // is their shape.
        for key in [
            "restore_id",
            "from_mark",
            "to_mark",
            "schema_ids_from",
            "schema_ids_to",
        ] {
            all.insert(key.into(), json!(""));
        }
        all.insert("schema_ids_keys".into(), json!(false));
    }
    let shape = json!({
        "name": "", "kind": "", "cluster": "default", "archive": "default", "enabled": true,
        "sink": sink_shape, "restore": restore_shape,
    });
    drop_unknown_keys(&mut tree, &shape, "", &mut local);

    let name = match tree.get("name") {
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        Some(Json::String(name)) => name.clone(),
        Some(other) => {
            local.push(problem("name", format!("expected a string, got {other}")));
            String::new()
        }
    };
    if !super::validate::valid_name(&name) {
        local.push(problem(
            "name",
            format!("{name:?} is not a pipeline name: lowercase letters, digits, '-' and '_' (name the file so, or set name)"),
        ));
    }
    let kind = match tree.get("kind") {
        None => {
            local.push(problem("kind", "missing: \"sink\" or \"restore\"".into()));
            None
        }
        Some(value) => serde_json::from_value::<PipelineKind>(value.clone())
            .map_err(|_| {
                local.push(problem(
                    "kind",
                    format!("expected \"sink\" or \"restore\", got {value}"),
                ))
            })
            .ok(),
    };
    let string = |local: &mut Vec<Problem>, key: &str| match tree.get(key) {
        None => "default".to_string(),
        Some(Json::String(s)) => s.clone(),
        Some(other) => {
            local.push(problem(key, format!("expected a string, got {other}")));
            "default".to_string()
        }
    };
    let cluster = string(&mut local, "cluster");
    let archive = string(&mut local, "archive");
    let enabled = match tree.get("enabled") {
        None => true,
        Some(Json::Bool(b)) => *b,
        Some(other) => {
            local.push(problem(
                "enabled",
                format!("expected true or false, got {other}"),
            ));
            true
        }
    };
    if config.cluster(&cluster).is_none() {
        local.push(problem(
            "cluster",
            format!(
                "no cluster named {cluster:?} (define [clusters.{cluster}] in the service configuration, or use \"default\" for [kafka])"
            ),
        ));
    }
    if config.archive_named(&archive).is_none() {
        local.push(problem(
            "archive",
            format!(
                "no archive named {archive:?} (define archives.{archive} in the service configuration, or use \"default\" for archive)"
            ),
        ));
    }

    for key in ["sink", "restore"] {
        if tree.get(key).is_some_and(|v| !v.is_object()) {
            local.push(problem(key, format!("expected a table: [{key}]")));
        }
    }
    let section = |key: &str| match tree.get(key) {
        Some(Json::Object(table)) => Json::Object(table.clone()),
        _ => json!({}),
    };
    for (key, wanted) in [
        ("sink", PipelineKind::Sink),
        ("restore", PipelineKind::Restore),
    ] {
        if tree.get(key).is_some() && kind.is_some_and(|k| k != wanted) {
            local.push(problem(
                key,
                format!("only a pipeline of kind = \"{key}\" has a [{key}] section"),
            ));
        }
    }

    // The sink: the service's [sink], the pipeline's on top, the group named after the pipeline.
    let mut sink_tree = serde_json::to_value(&config.sink).expect("sink settings serialize");
    overlay(&mut sink_tree, &section("sink"));
    if section("sink").get("group").is_none() {
        sink_tree["group"] = json!(format!("rewind-{name}"));
    }
    let mut nested = Vec::new();
    let sink: Option<SinkConfig> = deserialize_collecting(sink_tree, &sink_shape, &mut nested);
    local.extend(nested.drain(..).map(|p| within("sink", p)));

    // The restore: tuning keys over the service's [restore], job keys on their own.
    let mut tuning_tree = tuning_shape.clone();
    let mut job_tree = Map::new();
    if let Json::Object(given) = section("restore") {
        for (key, value) in given {
            if job_shape.get(&key).is_some() {
                job_tree.insert(key, value);
            } else {
                tuning_tree[key] = value;
            }
        }
    }
    let restore: Option<RestoreConfig> =
        deserialize_collecting(tuning_tree, &tuning_shape, &mut nested);
    let job: Option<RestoreJob> =
        deserialize_collecting(Json::Object(job_tree), &job_shape, &mut nested);
    local.extend(nested.drain(..).map(|p| within("restore", p)));

    // Semantic checks of this pipeline's section, with the service's own rules. A bad value the
    // pipeline only inherits is the service configuration's problem, reported there once rather
    // than again for every pipeline.
    let inherited = |p: &Problem| {
        let (section, key) = p.path.split_once('.').unwrap_or((&p.path, ""));
        let key = key.split('.').next().unwrap_or_default();
        service_problems.contains(p) && section_value(&tree, section, key).is_none()
    };
    let checked = match (kind, &sink, &restore) {
        (Some(PipelineKind::Sink), Some(sink), _) => sink.problems(),
        (Some(PipelineKind::Restore), _, Some(restore)) => {
            let mut found = restore.problems();
            if let Some(kafka) = config.cluster(&cluster) {
                found.extend(super::validate::transaction_timing(restore, kafka, None));
            }
            found
        }
        _ => Vec::new(),
    };
    local.extend(checked.into_iter().filter(|p| !inherited(p)));
    if let (Some(PipelineKind::Restore), Some(job), Some(restore)) = (kind, &job, &restore) {
        let id = job.restore_id.clone().unwrap_or_else(|| name.clone());
        let job = absolute_window(job, &mut local);
        if let Err(found) = job.options(&id, restore, |field| format!("restore.{field}")) {
            local.extend(found.into_iter().map(|p| within("restore", p)));
        }
        if let Some(field) = job.registry_credentials() {
            local.push(problem(
                &format!("restore.{field}"),
                "holds credentials, which the service's API would show (GET /pipelines); give a registry URL without them".into(),
            ));
        }
    }

    let clean = local.is_empty();
    problems.extend(local.into_iter().map(|p| Problem {
        path: format!("{shown}: {}", p.path),
        message: p.message,
    }));
    match (clean, kind, sink, restore, job) {
        (true, Some(kind), Some(sink), Some(restore), Some(job)) => Some(PipelineSpec {
            name,
            kind,
            file: file.to_path_buf(),
            enabled,
            cluster,
            archive,
            sink,
            restore,
            job,
        }),
        _ => None,
    }
}

/// The value the pipeline file sets for `section.key`, if any.
fn section_value<'a>(tree: &'a Json, section: &str, key: &str) -> Option<&'a Json> {
    tree.get(section).and_then(|s| s.get(key))
}

fn problem(path: &str, message: String) -> Problem {
    Problem {
        path: path.into(),
        message,
    }
}

fn within(section: &str, p: Problem) -> Problem {
    Problem {
        path: format!("{section}.{}", p.path),
        message: p.message,
    }
}

/// Lay `top`'s keys over `base`'s (one level: the sections are flat).
fn overlay(base: &mut Json, top: &Json) {
    if let (Json::Object(base), Json::Object(top)) = (base, top) {
        for (key, value) in top {
            base.insert(key.clone(), value.clone());
        }
    }
}

/// A pipeline's job with a relative `from` or `to` refused (a pipeline is read again at every
/// start, so `now-1h` would move its window, which its restore id is bound to) and replaced, so
/// that the job's other checks still run and report once.
fn absolute_window(job: &RestoreJob, problems: &mut Vec<Problem>) -> RestoreJob {
    let now = crate::archive::time::now_ms();
    let mut job = job.clone();
    for (field, value, open) in [
        ("from", &mut job.from, "earliest"),
        ("to", &mut job.to, "latest"),
    ] {
        let message = match super::when::relative(value, now) {
            Ok(None) => continue,
            Ok(Some(at)) => format!(
                "{} is a relative time, but a pipeline is read again at every start and its window must not move: write the time itself, e.g. {} ({} as of now)",
                value.trim(),
                crate::archive::time::rfc3339_millis(at),
                value.trim()
            ),
            Err(e) => e,
        };
        problems.push(Problem {
            path: format!("restore.{field}"),
            message,
        });
        *value = open.to_string();
    }
    job
}
