//! Semantic checks of a configuration whose values all have the right kind: each returns problems
//! rather than stopping at the first, so a user fixes everything in one round.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Config, KafkaConfig, Problem, RestoreConfig, SinkConfig, SseMode};
use crate::storage::{StorageUrl, MIN_PART_SIZE};

impl Config {
    /// Every semantic problem, with key paths. `env` is the environment the AWS chain will see.
    pub fn validate(&self, env: &BTreeMap<String, String>) -> Vec<super::Problem> {
        let mut problems = Vec::new();
        let mut problem = |path: &str, message: String| {
            problems.push(super::Problem {
                path: path.into(),
                message,
            })
        };

        let mut any_s3 = false;
        let archives = std::iter::once(("archive".to_string(), &self.archive)).chain(
            self.archives
                .iter()
                .map(|(name, url)| (format!("archives.{name}"), url)),
        );
        for (path, archive) in archives {
            match StorageUrl::parse(archive) {
                Ok(StorageUrl::S3 { .. }) => any_s3 = true,
                Ok(_) => {}
                Err(err) => problem(&path, err.to_string()),
            }
        }
        for name in self.archives.keys().chain(self.clusters.keys()) {
            if !valid_name(name) || name == "default" {
                let section = if self.archives.contains_key(name) {
                    "archives"
                } else {
                    "clusters"
                };
                problem(
                    &format!("{section}.{name}"),
                    "names are lowercase letters, digits, '-' and '_', and `default` is taken by the top-level section".into(),
                );
            }
        }
        let compact = &self.compact;
        if compact.archive != "default" && !self.archives.contains_key(&compact.archive) {
            problem(
                "compact.archive",
                format!(
                    "names no archive: add [archives] {} = \"s3://...\" or use \"default\"",
                    compact.archive
                ),
            );
        }
        if let Some(why) = regex_problem(&compact.topics) {
            problem("compact.topics", why);
        }
        if compact.max_file_size.bytes() < 1 << 20 {
            problem(
                "compact.max_file_size",
                format!("must be at least 1MiB, got {}", compact.max_file_size),
            );
        }
        let tables = &self.tables;
        if tables.archive != "default" && !self.archives.contains_key(&tables.archive) {
            problem(
                "tables.archive",
                format!(
                    "names no archive: add [archives] {} = \"s3://...\" or use \"default\"",
                    tables.archive
                ),
            );
        }
        if let Some(why) = regex_problem(&tables.topics) {
            problem("tables.topics", why);
        }
        if let Some(uri) = &tables.catalog_uri {
            match url::Url::parse(uri) {
                Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {}
                _ => problem("tables.catalog_uri", format!("expected an http:// or https:// URL such as http://127.0.0.1:8181, got {uri:?}")),
            }
        }
        if tables.min_snapshots == 0 {
            problem(
                "tables.min_snapshots",
                "must be at least 1 (the current snapshot)".into(),
            );
        }
        let s3 = &self.storage.s3;
        if any_s3 && s3.region.is_none() && !aws_region_available(env) {
            problem(
                "storage.s3.region",
                "missing (set it in the config file, REWIND__STORAGE__S3__REGION, AWS_REGION or an AWS profile)".into(),
            );
        }
        if let Some(endpoint) = &s3.endpoint {
            match url::Url::parse(endpoint) {
                Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {}
                _ => problem("storage.s3.endpoint", format!("expected an http:// or https:// URL such as http://127.0.0.1:9000, got {endpoint:?}")),
            }
        }
        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
            problem(
                "storage.s3.secret_access_key",
                "access_key_id and secret_access_key must be set together".into(),
            );
        }
        if s3.session_token.is_some() && s3.access_key_id.is_none() {
            problem(
                "storage.s3.session_token",
                "needs access_key_id and secret_access_key".into(),
            );
        }
        if s3.kms_key_id.is_some() && s3.sse != SseMode::AwsKms {
            problem(
                "storage.s3.kms_key_id",
                "only applies with sse = \"aws:kms\"".into(),
            );
        }
        if let Some(class) = &s3.storage_class {
            if class.is_empty() || !class.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                problem(
                    "storage.s3.storage_class",
                    format!("expected an S3 storage class such as STANDARD_IA, got {class:?}"),
                );
            }
        }
        let part = s3.part_size.bytes();
        if part < MIN_PART_SIZE as u64 || part > 5 << 30 {
            problem(
                "storage.s3.part_size",
                format!("must be between 5MiB and 5GiB, got {}", s3.part_size),
            );
        }
        if s3.connect_timeout.is_zero() {
            problem(
                "storage.s3.connect_timeout",
                "must be greater than zero".into(),
            );
        }
        if s3.request_timeout.is_zero() {
            problem(
                "storage.s3.request_timeout",
                "must be greater than zero".into(),
            );
        }

        let retry = &self.storage.retry;
        if retry.max_attempts == 0 {
            problem("storage.retry.max_attempts", "must be at least 1".into());
        }
        if retry.initial_backoff > retry.max_backoff {
            problem(
                "storage.retry.initial_backoff",
                "must not exceed storage.retry.max_backoff".into(),
            );
        }

        let clusters = std::iter::once(("kafka".to_string(), &self.kafka)).chain(
            self.clusters
                .iter()
                .map(|(name, kafka)| (format!("clusters.{name}"), kafka)),
        );
        for (path, kafka) in clusters {
            if let Err(message) = check_bootstrap(&kafka.bootstrap_servers) {
                problem(&format!("{path}.bootstrap_servers"), message);
            }
            if kafka.aws_msk_iam {
                for key in ["sasl.mechanism", "sasl.mechanisms"] {
                    if let Some(m) = kafka
                        .properties
                        .get(key)
                        .filter(|m| !m.eq_ignore_ascii_case("OAUTHBEARER"))
                    {
                        problem(
                            &format!("{path}.aws_msk_iam"),
                            format!("needs SASL mechanism OAUTHBEARER, but the properties set {key} = {m:?}"),
                        );
                    }
                }
                for key in ["sasl.oauthbearer.config", "sasl.oauthbearer.method"] {
                    if kafka.properties.contains_key(key) {
                        problem(
                            &format!("{path}.properties.\"{key}\""),
                            "aws_msk_iam provides the OAUTHBEARER tokens; remove this property"
                                .into(),
                        );
                    }
                }
                if kafka.aws_region.is_none() && !aws_region_available(env) {
                    problem(
                        &format!("{path}.aws_region"),
                        "missing for aws_msk_iam (set it, AWS_REGION or an AWS profile)".into(),
                    );
                }
            } else if kafka.aws_region.is_some() {
                problem(
                    &format!("{path}.aws_region"),
                    "only applies with aws_msk_iam = true".into(),
                );
            }
            if kafka.properties.contains_key("bootstrap.servers") {
                problem(
                    &format!("{path}.properties.\"bootstrap.servers\""),
                    format!("set {path}.bootstrap_servers instead"),
                );
            }
        }

        let service = &self.service;
        if service.http_addr.parse::<std::net::SocketAddr>().is_err() {
            problem(
                "service.http_addr",
                format!(
                    "expected an address such as 0.0.0.0:8080, got {:?}",
                    service.http_addr
                ),
            );
        }
        if let Some(token) = &service.api_token {
            // A reference left unresolved is reported where it is resolved.
            if !token.starts_with("${") && token.chars().count() < 16 {
                problem(
                    "service.api_token",
                    "is shorter than 16 characters; use a long random token (openssl rand -hex 32)"
                        .into(),
                );
            }
        }
        for host in &service.allowed_hosts {
            if host != "*" && (host.is_empty() || host.contains(['/', ':', ' '])) {
                problem(
                    "service.allowed_hosts",
                    format!("{host:?} is not a host name such as rewind.ops.svc (no scheme, port or path), or \"*\""),
                );
            }
        }
        for origin in &service.allowed_origins {
            let parsed = url::Url::parse(origin).ok();
            let plain = parsed.as_ref().is_some_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.path() == "/"
                    && !origin.ends_with('/')
            });
            if !plain {
                problem(
                    "service.allowed_origins",
                    format!("{origin:?} is not an origin such as https://ops.example.com (scheme, host and port only)"),
                );
            }
        }
        if service.control_interval.is_zero() {
            problem(
                "service.control_interval",
                "must be greater than zero".into(),
            );
        }
        if service.restart_backoff.is_zero() {
            problem(
                "service.restart_backoff",
                "must be greater than zero".into(),
            );
        }
        if service.restart_backoff > service.restart_backoff_max {
            problem(
                "service.restart_backoff",
                "must not exceed service.restart_backoff_max".into(),
            );
        }

        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problem(
                "log.level",
                format!("not a valid filter such as info or rewind=debug: {err}"),
            );
        }
        problems.extend(self.sink.problems());
        problems.extend(self.restore.problems());
        // Any cluster may receive a restore with these settings (an API restore names one).
        let clusters = std::iter::once(("kafka".to_string(), &self.kafka)).chain(
            self.clusters
                .iter()
                .map(|(name, kafka)| (format!("clusters.{name}"), kafka)),
        );
        for (path, kafka) in clusters {
            let property = format!("{path}.properties.\"transaction.timeout.ms\"");
            problems.extend(transaction_timing(&self.restore, kafka, Some(&property)));
        }
        problems
    }
}

/// The `transaction.timeout.ms` of a restore's producer on `kafka`: its property, or Rewind's
/// default. `Err` holds the value that is not a number of milliseconds.
pub fn restore_transaction_timeout_ms(kafka: &KafkaConfig) -> Result<u64, String> {
    match kafka.properties.get("transaction.timeout.ms") {
        None => Ok(super::RESTORE_TRANSACTION_TIMEOUT_MS),
        Some(value) => value.trim().parse().map_err(|_| value.clone()),
    }
}

/// A restore commits at the latest every `restore.transaction_interval`, and the broker aborts a
/// transaction open longer than the producer's `transaction.timeout.ms`: the interval must be
/// below it. `property` names the cluster's `transaction.timeout.ms` as the asker wrote it; when
/// given and set, a problem blames it, otherwise the interval.
pub fn transaction_timing(
    restore: &RestoreConfig,
    kafka: &KafkaConfig,
    property: Option<&str>,
) -> Option<Problem> {
    let interval = restore.transaction_interval;
    let shown = humantime::format_duration(interval);
    let set = kafka.properties.contains_key("transaction.timeout.ms");
    let timeout = match restore_transaction_timeout_ms(kafka) {
        Ok(ms) => ms,
        Err(value) => {
            return property.map(|property| Problem {
                path: property.into(),
                message: format!("expected a number of milliseconds, got {value:?}"),
            })
        }
    };
    if interval < Duration::from_millis(timeout) {
        return None;
    }
    Some(match property.filter(|_| set) {
        Some(property) => Problem {
            path: property.into(),
            message: format!(
                "{timeout} ms is not above restore.transaction_interval ({shown}), so the broker would abort restore transactions before they commit: raise it, or lower restore.transaction_interval"
            ),
        },
        None => Problem {
            path: "restore.transaction_interval".into(),
            message: format!(
                "{shown} is not below the restore producer's transaction.timeout.ms of {timeout} ms{}, so the broker would abort restore transactions before they commit: lower it, or raise transaction.timeout.ms (a librdkafka property of the cluster)",
                if set { "" } else { " (Rewind's default)" }
            ),
        },
    })
}

/// A problem-collecting closure over `problems`.
fn collector(problems: &mut Vec<Problem>) -> impl FnMut(&str, String) + '_ {
    |path: &str, message: String| {
        problems.push(Problem {
            path: path.into(),
            message,
        })
    }
}

impl SinkConfig {
    /// The problems of a `[sink]` section, the service's or a pipeline's.
    pub(super) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = collector(&mut problems);
        let sink = self;
        for (path, pattern) in [
            ("sink.topics", Some(&sink.topics)),
            ("sink.exclude", sink.exclude.as_ref()),
        ] {
            if let Some(pattern) = pattern {
                if let Some(why) = regex_problem(pattern) {
                    problem(path, why);
                }
            }
        }
        if sink.group.as_deref().is_some_and(|g| g.trim().is_empty()) {
            problem("sink.group", "must not be empty".into());
        }
        if sink.max_file_age.is_zero() {
            problem("sink.max_file_age", "must be greater than zero".into());
        }
        if sink.max_file_records == 0 {
            problem("sink.max_file_records", "must be at least 1".into());
        }
        if sink.max_file_bytes.bytes() == 0 {
            problem("sink.max_file_bytes", "must be greater than zero".into());
        }
        if sink.buffer_budget.bytes() < 1 << 20 {
            problem(
                "sink.buffer_budget",
                format!("must be at least 1MiB, got {}", sink.buffer_budget),
            );
        }
        if sink.discovery_interval.is_zero() {
            problem(
                "sink.discovery_interval",
                "must be greater than zero".into(),
            );
        }
        let decode = &sink.decode;
        let registry_wanted = decode.topics.iter().any(|r| {
            r.key == super::DecodeMode::Registry || r.value == super::DecodeMode::Registry
        });
        match &decode.registry {
            Some(url) => {
                if let Err(why) = crate::kafka::registry::Registry::new(url) {
                    problem("sink.decode.registry", why);
                }
            }
            None if registry_wanted => problem(
                "sink.decode.registry",
                "is needed: a rule of sink.decode.topics decodes with the registry".into(),
            ),
            None => {}
        }
        for (i, rule) in decode.topics.iter().enumerate() {
            let at = |key: &str| format!("sink.decode.topics[{i}].{key}");
            if let Some(why) = regex_problem(&rule.topics) {
                problem(&at("topics"), why);
            }
            if rule.key == super::DecodeMode::Off && rule.value == super::DecodeMode::Off {
                problem(
                    &at("value"),
                    "decodes nothing: set value or key to \"registry\" or \"json\"".into(),
                );
            }
            for (side, mode, schema) in [
                ("value", rule.value, &rule.value_schema),
                ("key", rule.key, &rule.key_schema),
            ] {
                match (mode, schema) {
                    (super::DecodeMode::Json, None) => problem(
                        &at(&format!("{side}_schema")),
                        format!("is needed with {side} = \"json\": the JSON Schema of the {side}s"),
                    ),
                    (super::DecodeMode::Json, Some(schema)) => {
                        if let Err(why) = crate::sink::decode::declared_schema(schema) {
                            problem(&at(&format!("{side}_schema")), why);
                        }
                    }
                    (_, Some(_)) => problem(
                        &at(&format!("{side}_schema")),
                        format!("is only read with {side} = \"json\""),
                    ),
                    (_, None) => {}
                }
            }
        }

        drop(problem);
        problems
    }
}

impl RestoreConfig {
    /// The problems of a `[restore]` section's settings, the service's or a pipeline's.
    pub(super) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = collector(&mut problems);
        let restore = self;
        if restore.buffer_budget.bytes() < 8 << 20 {
            problem(
                "restore.buffer_budget",
                format!("must be at least 8MiB, got {}", restore.buffer_budget),
            );
        }
        if restore.concurrency == 0 {
            problem("restore.concurrency", "must be at least 1".into());
        }
        if !(1..=2).contains(&restore.producers) {
            problem(
                "restore.producers",
                format!("must be 1 or 2, got {}", restore.producers),
            );
        }
        if restore.transaction_max_bytes.bytes() == 0 {
            problem(
                "restore.transaction_max_bytes",
                "must be greater than zero".into(),
            );
        }
        for (path, d) in [
            ("restore.transaction_interval", restore.transaction_interval),
            ("restore.poll_interval", restore.poll_interval),
        ] {
            if d.is_zero() {
                problem(path, "must be greater than zero".into());
            }
        }
        if !crate::archive::paths::valid_topic(&restore.progress_topic) {
            problem(
                "restore.progress_topic",
                format!(
                    "{:?} is not a valid Kafka topic name",
                    restore.progress_topic
                ),
            );
        }
        drop(problem);
        problems
    }
}

/// Names of clusters, archives and pipelines: they appear in URLs, logs and metric labels.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether the AWS chain can find a region without our config.
fn aws_region_available(env: &BTreeMap<String, String>) -> bool {
    let set = |k: &str| env.get(k).is_some_and(|v| !v.is_empty());
    if set("AWS_REGION") || set("AWS_DEFAULT_REGION") || set("AWS_PROFILE") {
        return true;
    }
    // The shared config file may name a region for the default profile.
    let config_file = env
        .get("AWS_CONFIG_FILE")
        .cloned()
        .or_else(|| env.get("HOME").map(|h| format!("{h}/.aws/config")));
    config_file
        .is_some_and(|path| std::fs::read_to_string(path).is_ok_and(|text| text.contains("region")))
}

/// `host:port[,host:port...]`.
pub(crate) fn check_bootstrap(servers: &str) -> Result<(), String> {
    if servers.trim().is_empty() {
        return Err("missing (a comma-separated host:port list such as 127.0.0.1:9092)".into());
    }
    for server in servers.split(',').map(str::trim) {
        let server = server.rsplit_once("://").map(|(_, s)| s).unwrap_or(server);
        let Some((host, port)) = server.rsplit_once(':') else {
            return Err(format!(
                "{server:?} has no port (expected host:port such as 127.0.0.1:9092)"
            ));
        };
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "{server:?} is not host:port (expected something such as 127.0.0.1:9092)"
            ));
        }
    }
    Ok(())
}

/// Why `pattern` is not a valid regular expression, in one line; `None` if it is.
fn regex_problem(pattern: &str) -> Option<String> {
    let err = regex::Regex::new(pattern).err()?;
    let detail = err.to_string();
    let detail = detail.lines().last().unwrap_or_default().trim();
    Some(format!("invalid regular expression {pattern:?}: {detail}"))
}
