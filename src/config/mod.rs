//! Configuration: what Rewind runs with, loaded in layers — embedded defaults < TOML file <
//! `REWIND__SECTION__KEY` environment variables < command-line flags.
//!
//! Invariant: a configuration that reaches the rest of the program has been checked in full; every
//! problem (unknown key, bad value, missing setting) is reported at once with its key path, and
//! nothing starts while any remains. The doc comment of each field is its reference documentation.

mod load;
pub mod pipeline;
pub mod secrets;
pub mod units;
mod validate;
pub mod when;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use load::{load, ConfigError, Problem, Sources};
pub use pipeline::{load_service, PipelineKind, PipelineSpec, RestoreJob, Service};
use units::Size;
pub use validate::{restore_transaction_timeout_ms, transaction_timing};

use crate::storage::{RetryPolicy, S3Options, ServerSideEncryption, StorageUrl};

/// Everything Rewind needs to reach the archive and the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the archive lives: `file:///absolute/path` or `s3://bucket/prefix`. Pipelines know it as
    /// the archive named `default`.
    pub archive: String,
    /// Further archives by name, for pipelines and API restores that name them:
    /// `[archives] cold = "s3://bucket/prefix"`.
    pub archives: BTreeMap<String, String>,
    /// How to reach the archive's object store.
    pub storage: StorageConfig,
    /// The Kafka cluster; pipelines know it as the cluster named `default`.
    pub kafka: KafkaConfig,
    /// Further Kafka clusters by name (`[clusters.standby]`, same keys as `[kafka]`), for pipelines
    /// and API restores that name them.
    pub clusters: BTreeMap<String, KafkaConfig>,
    /// The backup sink.
    pub sink: SinkConfig,
    /// Point-in-time restores.
    pub restore: RestoreConfig,
    /// The service (`rewind run`): HTTP API, pipelines, restarts.
    pub service: ServiceConfig,
    /// Restore drills (`rewind drill`, and on a schedule in `rewind run`).
    pub drill: DrillConfig,
    /// Iceberg tables over the archive (`rewind tables sync`, and on a schedule in `rewind run`).
    pub tables: TablesConfig,
    /// Compaction of closed hours (`rewind compact`, and on a schedule in `rewind run`).
    pub compact: CompactConfig,
    /// Logging.
    pub log: LogConfig,
}

/// Iceberg tables over the archive: how often `rewind run` brings them up to date, and how long
/// their snapshots are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TablesConfig {
    /// How often `rewind run` syncs the tables (e.g. `5m`); `0s`, the default, never. Every worker
    /// may sync: commits are compare-and-swap, so workers never lose each other's files.
    #[serde(with = "units::duration")]
    pub every: Duration,
    /// The archive whose tables are kept, by name.
    pub archive: String,
    /// Regular expression of archived topics to keep a table for.
    pub topics: String,
    /// Snapshots older than this are expired (the newest `min_snapshots` stay).
    #[serde(with = "units::duration")]
    pub max_snapshot_age: Duration,
    /// Snapshots kept whatever their age.
    pub min_snapshots: u32,
    /// An Iceberg REST catalog to register the tables with, e.g. `https://catalog.example.com`.
    pub catalog_uri: Option<String>,
    /// The catalog namespace the tables go into.
    pub catalog_namespace: String,
    /// Bearer token for the catalog: write it `${env:NAME}` or `${file:/path}`.
    pub catalog_token: Option<String>,
}

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig {
            every: Duration::ZERO,
            archive: "default".into(),
            topics: ".*".into(),
            max_snapshot_age: Duration::from_secs(24 * 3600),
            min_snapshots: 10,
            catalog_uri: None,
            catalog_namespace: "rewind".into(),
            catalog_token: None,
        }
    }
}

/// Compaction of closed hours: how often `rewind run` merges each partition's small files of an
/// hour into one (`rewind compact`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactConfig {
    /// How often `rewind run` compacts (e.g. `1h`); `0s`, the default, never. Every worker may:
    /// a compaction commits by compare-and-swap, so workers that compact at once only cost each
    /// other the work.
    #[serde(with = "units::duration")]
    pub every: Duration,
    /// The archive compacted, by name.
    pub archive: String,
    /// Regular expression of archived topics to compact.
    pub topics: String,
    /// An hour is compacted once it ended this long ago.
    #[serde(with = "units::duration")]
    pub settle: Duration,
    /// Stored bytes of the files merged into one compacted file, at most.
    pub max_file_size: Size,
}

impl Default for CompactConfig {
    fn default() -> Self {
        CompactConfig {
            every: Duration::ZERO,
            archive: "default".into(),
            topics: ".*".into(),
            settle: Duration::from_secs(3600),
            max_file_size: Size::mib(512),
        }
    }
}

/// Restore drills: where `rewind run` runs them and how often, and the key that signs reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrillConfig {
    /// How often `rewind run` runs a drill: `off`, `hourly`, `daily` or `weekly`.
    pub every: MarkEvery,
    /// The cluster drills restore into (scratch topics only), by name: `default` is `[kafka]`.
    pub cluster: String,
    /// The archive drilled, by name.
    pub archive: String,
    /// Each scheduled drill restores a window of this length sampled at random from the archive.
    #[serde(with = "units::duration")]
    pub sample: Duration,
    /// Regular expression of archived topics to drill.
    pub topics: String,
    /// Scratch topics are named `<prefix><drill id>.<topic>`; the `__` of the default keeps them
    /// out of every sink (which never backs up `__` topics), even one of the drilled cluster.
    pub prefix: String,
    /// Ed25519 private key (PKCS#8 PEM) that signs drill reports: write it `${file:/path}` or
    /// `${env:NAME}`.
    pub sign_key: Option<String>,
}

impl Default for DrillConfig {
    fn default() -> Self {
        DrillConfig {
            every: MarkEvery::Off,
            cluster: "default".into(),
            archive: "default".into(),
            sample: Duration::from_secs(3600),
            topics: ".*".into(),
            prefix: "__rewind-drill-".into(),
            sign_key: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            archive: "file:///var/lib/rewind/archive".into(),
            archives: BTreeMap::new(),
            storage: StorageConfig::default(),
            kafka: KafkaConfig::default(),
            clusters: BTreeMap::new(),
            sink: SinkConfig::default(),
            restore: RestoreConfig::default(),
            service: ServiceConfig::default(),
            drill: DrillConfig::default(),
            tables: TablesConfig::default(),
            compact: CompactConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// Object-store settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// S3 and S3-compatible servers.
    pub s3: S3Config,
    /// Retries of transient storage failures (timeouts, throttling, 5xx, lost connections).
    pub retry: RetryConfig,
}

/// S3 settings. Anything unset falls back to the standard AWS chain: environment variables, the
/// shared config and credentials files, web identity, container and instance metadata.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// AWS region of the bucket, e.g. `eu-west-1` (or `AWS_REGION`).
    pub region: Option<String>,
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000` (MinIO).
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint` (needed by most
    /// S3-compatible servers).
    pub path_style: bool,
    /// Static access key id; prefer the AWS credential chain in production.
    pub access_key_id: Option<String>,
    /// Static secret access key (never printed).
    pub secret_access_key: Option<String>,
    /// Session token for temporary static credentials (never printed).
    pub session_token: Option<String>,
    /// Named profile from the AWS shared config files.
    pub profile: Option<String>,
    /// Server-side encryption: `none`, `aes256` (SSE-S3) or `aws:kms` (SSE-KMS).
    pub sse: SseMode,
    /// KMS key id or ARN for `sse = "aws:kms"`; the bucket's default key when unset.
    pub kms_key_id: Option<String>,
    /// Storage class of new objects, e.g. `STANDARD_IA`; the bucket's default when unset.
    pub storage_class: Option<String>,
    /// Part size of multipart uploads (5MiB to 5GiB).
    pub part_size: Size,
    /// How long to wait for a TCP connection to the endpoint.
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    /// Upper bound of one request attempt, the transfer included.
    #[serde(with = "units::duration")]
    pub request_timeout: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            region: None,
            endpoint: None,
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            profile: None,
            sse: SseMode::None,
            kms_key_id: None,
            storage_class: None,
            part_size: Size::mib(16),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
        }
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("profile", &self.profile)
            .field("sse", &self.sse)
            .field("kms_key_id", &self.kms_key_id)
            .field("storage_class", &self.storage_class)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

/// Server-side encryption of archived objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SseMode {
    #[serde(rename = "none")]
    None,
    #[serde(rename = "aes256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    AwsKms,
}

/// Retries with exponential backoff and full jitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Backoff ceiling before the first retry; it doubles with each retry.
    #[serde(with = "units::duration")]
    pub initial_backoff: Duration,
    /// Largest pause between two attempts.
    #[serde(with = "units::duration")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let policy = RetryPolicy::default();
        RetryConfig {
            max_attempts: policy.max_attempts,
            initial_backoff: policy.initial_backoff,
            max_backoff: policy.max_backoff,
        }
    }
}

/// The Kafka cluster.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    pub bootstrap_servers: String,
    /// Amazon MSK IAM authentication: SASL_SSL with OAUTHBEARER tokens signed by the standard AWS
    /// credential chain and refreshed before they expire (MSK's IAM listeners, port 9098).
    pub aws_msk_iam: bool,
    /// AWS region of the MSK cluster for `aws_msk_iam`; the AWS chain's region when unset.
    pub aws_region: Option<String>,
    /// librdkafka properties passed through as they are (`security.protocol`, `sasl.mechanism`,
    /// `ssl.ca.location`, ...). Values of keys that look secret are never printed; values written
    /// `${env:NAME}` or `${file:/path}` are read from there.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            aws_msk_iam: false,
            aws_region: None,
            properties: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("aws_msk_iam", &self.aws_msk_iam)
            .field("aws_region", &self.aws_region)
            .field("properties", &redact_properties(&self.properties))
            .finish()
    }
}

/// Whether a configuration key names a secret whose value must never be shown.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "jaas",
        "private",
        "credential",
        "key.pem",
        "keystore",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// A copy of librdkafka properties with secret values replaced.
pub fn redact_properties(props: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    props
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                if is_secret_key(k) {
                    "<redacted>".to_string()
                } else {
                    v.clone()
                },
            )
        })
        .collect()
}

/// The backup sink (`rewind sink`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Regular expression of the topics to back up, matched against the whole name. Kafka's
    /// internal topics (`__…`) are never backed up; `_schemas` and other `_…` topics are.
    pub topics: String,
    /// Regular expression of topics to leave out.
    pub exclude: Option<String>,
    /// Consumer group of the sink's workers (Kafka commits are for lag monitoring only). Unset:
    /// the archive's own, `rewind-sink-<archive id>`, so that sinks of different archives never
    /// share one. A sink refuses a group whose commits belong to another archive.
    pub group: Option<String>,
    /// Close a data file once it has been open this long: the recovery point objective.
    #[serde(with = "units::duration")]
    pub max_file_age: Duration,
    /// Close a data file after this many records.
    pub max_file_records: u64,
    /// Close a data file once its buffered records reach this size.
    pub max_file_bytes: Size,
    /// Memory for buffered records across all partitions; the largest buffers are flushed early
    /// when it is reached.
    pub buffer_budget: Size,
    /// Full files uploaded in the background while their partitions read on, at most this many
    /// at once (their records stay within `buffer_budget`); `0`: every file is uploaded before
    /// the partition reads on. The default is one per core, between 2 and 8.
    pub uploads_in_flight: usize,
    /// How often new topics and partitions are looked for.
    #[serde(with = "units::duration")]
    pub discovery_interval: Duration,
    /// How long a graceful stop (first SIGTERM/SIGINT) may take to flush and checkpoint.
    #[serde(with = "units::duration")]
    pub drain_timeout: Duration,
    /// How often the committed offsets of every consumer group are snapshotted into `_groups/`
    /// (written only when they changed), so that restores can move groups along; `0s` turns it off.
    #[serde(with = "units::duration")]
    pub group_snapshot_interval: Duration,
    /// Take a named restore point of the backed-up topics every hour, day (00:00 UTC) or week
    /// (Monday 00:00 UTC), named `hourly-2026-12-04T17`, `daily-2026-12-04`, `weekly-2026-11-30`
    /// (see `rewind mark`): one of them or a list (`["daily", "weekly"]`); `off` or `[]` takes
    /// none. Only a continuous sink takes them; several workers of one archive take each once.
    #[serde(deserialize_with = "one_or_many")]
    pub marks: Vec<MarkEvery>,
    /// Typed columns: which topics' keys and values are decoded with their schemas and written
    /// beside the raw bytes (`[sink.decode]`).
    pub decode: DecodeConfig,
}

/// Decoding keys and values into typed columns (`[sink.decode]`, rules in `[[sink.decode.topics]]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// The URL of a Confluent-compatible Schema Registry (Confluent, Karapace, Apicurio's
    /// `/apis/ccompat/v7`, Redpanda) whose schemas decode records in the wire format; basic-auth
    /// credentials may be in it (`https://KEY:SECRET@host`), never shown.
    pub registry: Option<String>,
    /// Rules, the first whose `topics` matches a topic applies; a topic no rule matches is not
    /// decoded.
    pub topics: Vec<DecodeRule>,
}

/// How the keys and values of some topics are decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeRule {
    /// Regular expression of topics, matched against the whole name.
    pub topics: String,
    pub value: DecodeMode,
    pub key: DecodeMode,
    /// With `value = "json"`: the JSON Schema of the values, as a file path or inline JSON.
    pub value_schema: Option<String>,
    /// With `key = "json"`: the JSON Schema of the keys.
    pub key_schema: Option<String>,
}

/// How one side (key or value) of a topic's records is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeMode {
    /// Not decoded.
    #[default]
    Off,
    /// The Confluent wire format, with the registry's Avro, JSON Schema or Protobuf schemas.
    Registry,
    /// Plain JSON, with the declared JSON Schema (`value_schema`, `key_schema`).
    Json,
}

/// A value or a list of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<MarkEvery>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(MarkEvery),
        Many(Vec<MarkEvery>),
    }
    Ok(match OneOrMany::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected \"off\", \"hourly\", \"daily\", \"weekly\" or a list of them",
        )
    })? {
        OneOrMany::One(every) => vec![every],
        OneOrMany::Many(all) => all,
    }
    .into_iter()
    .filter(|e| *e != MarkEvery::Off)
    .collect())
}

/// How often a sink takes a named restore point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkEvery {
    #[default]
    Off,
    Hourly,
    Daily,
    Weekly,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            topics: ".*".into(),
            exclude: None,
            group: None,
            max_file_age: Duration::from_secs(60),
            max_file_records: 1_000_000,
            max_file_bytes: Size::mib(128),
            buffer_budget: Size::mib(256),
            uploads_in_flight: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 8),
            discovery_interval: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            group_snapshot_interval: Duration::from_secs(60),
            marks: Vec::new(),
            decode: DecodeConfig::default(),
        }
    }
}

/// librdkafka's `transaction.timeout.ms` of a restore's producer unless the cluster's properties
/// (or `-X`) set it: room for a full producer queue to drain into a slow target before the broker
/// gives up on the transaction (Kafka's default upper bound is 15 minutes).
pub const RESTORE_TRANSACTION_TIMEOUT_MS: u64 = 300_000;

/// Point-in-time restores (`rewind restore`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreConfig {
    /// Memory for fetched files and decoded records (the producer's queue, a quarter of it and at
    /// least 16 MiB, comes on top).
    pub buffer_budget: Size,
    /// Partitions read from the archive at once.
    pub concurrency: usize,
    /// A restore transaction commits once it holds this many record bytes...
    pub transaction_max_bytes: Size,
    /// Transactional producers a restore writes with, each owning every other partition: 2
    /// commit in turn, one sending while the other commits (for a target far away, where a commit
    /// waits several round trips); 1 pauses producing at each commit.
    pub producers: usize,
    /// ...or once it has been open this long; below the producer's `transaction.timeout.ms`.
    #[serde(with = "units::duration")]
    pub transaction_interval: Duration,
    /// How often `--follow` looks for new archive files.
    #[serde(with = "units::duration")]
    pub poll_interval: Duration,
    /// Compacted topic of the target cluster that holds each restore's progress.
    pub progress_topic: String,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            buffer_budget: Size::mib(64),
            concurrency: 8,
            transaction_max_bytes: Size::mib(256),
            producers: 1,
            transaction_interval: Duration::from_secs(5),
            poll_interval: Duration::from_secs(10),
            progress_topic: "__rewind_restores".into(),
        }
    }
}

/// The service (`rewind run`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Address of the HTTP API, `/metrics` included, e.g. `0.0.0.0:8080`.
    pub http_addr: String,
    /// The bearer token every API request must carry (`Authorization: Bearer …`), except
    /// `/healthz`, `/readyz` and, unless `metrics_token` is set, `/metrics`. Write it
    /// `${env:NAME}` or `${file:/path}`. Required when `http_addr` is not a loopback address,
    /// unless `allow_unauthenticated` is set.
    pub api_token: Option<String>,
    /// Require the token on `/metrics` too.
    pub metrics_token: bool,
    /// Serve the API without a token on an address other hosts can reach.
    pub allow_unauthenticated: bool,
    /// Host names the API answers to besides `localhost` and IP addresses, e.g. the Kubernetes
    /// Service's name (a request naming another host is refused: DNS rebinding). `"*"`: any.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://ops.example.com`) whose browser requests are accepted besides the API's
    /// own; a request from any other origin is refused (cross-site requests).
    pub allowed_origins: Vec<String>,
    /// Directory of pipeline definitions (`*.toml`), relative to the configuration file.
    pub pipelines: String,
    /// Pause before a failed pipeline starts again; it doubles with each failure in a row.
    #[serde(with = "units::duration")]
    pub restart_backoff: Duration,
    /// Longest pause between two restarts of a failing pipeline.
    #[serde(with = "units::duration")]
    pub restart_backoff_max: Duration,
    /// How often each pipeline reads whether it is paused from its archive (a pause or resume
    /// through another worker's API, or before a restart, reaches this worker within it).
    #[serde(with = "units::duration")]
    pub control_interval: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            http_addr: "127.0.0.1:8080".into(),
            api_token: None,
            metrics_token: false,
            allow_unauthenticated: false,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            pipelines: "pipelines".into(),
            restart_backoff: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(60),
            control_interval: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("http_addr", &self.http_addr)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("metrics_token", &self.metrics_token)
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("allowed_origins", &self.allowed_origins)
            .field("pipelines", &self.pipelines)
            .field("restart_backoff", &self.restart_backoff)
            .field("restart_backoff_max", &self.restart_backoff_max)
            .field("control_interval", &self.control_interval)
            .finish()
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter in `tracing` syntax: `info`, `rewind=debug,rdkafka=warn`, ... (`RUST_LOG` wins).
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The archive URL, parsed (validation has already accepted it).
    pub fn archive_url(&self) -> Result<StorageUrl, crate::storage::StorageError> {
        StorageUrl::parse(&self.archive)
    }

    /// The S3 options the storage layer takes.
    pub fn s3_options(&self) -> S3Options {
        let s3 = &self.storage.s3;
        S3Options {
            region: s3.region.clone(),
            endpoint: s3.endpoint.clone(),
            path_style: s3.path_style,
            access_key_id: s3.access_key_id.clone(),
            secret_access_key: s3.secret_access_key.clone(),
            session_token: s3.session_token.clone(),
            profile: s3.profile.clone(),
            sse: match s3.sse {
                SseMode::None => None,
                SseMode::Aes256 => Some(ServerSideEncryption::S3),
                SseMode::AwsKms => Some(ServerSideEncryption::Kms {
                    key_id: s3.kms_key_id.clone(),
                }),
            },
            storage_class: s3.storage_class.clone(),
            retry: RetryPolicy {
                max_attempts: self.storage.retry.max_attempts,
                initial_backoff: self.storage.retry.initial_backoff,
                max_backoff: self.storage.retry.max_backoff,
            },
            connect_timeout: Some(s3.connect_timeout),
            request_timeout: Some(s3.request_timeout),
        }
    }

    /// A copy with every secret replaced, safe to print.
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        for secret in [
            &mut shown.storage.s3.secret_access_key,
            &mut shown.storage.s3.session_token,
            &mut shown.service.api_token,
            &mut shown.drill.sign_key,
            &mut shown.tables.catalog_token,
        ] {
            if secret.is_some() {
                *secret = Some("<redacted>".into());
            }
        }
        if let Some(url) = &mut shown.sink.decode.registry {
            if crate::kafka::registry::has_credentials(url) {
                *url = "<redacted>".into();
            }
        }
        shown.kafka.properties = redact_properties(&shown.kafka.properties);
        for cluster in shown.clusters.values_mut() {
            cluster.properties = redact_properties(&cluster.properties);
        }
        shown
    }

    /// The cluster a pipeline names: `default` is `[kafka]`.
    pub fn cluster(&self, name: &str) -> Option<&KafkaConfig> {
        match name {
            "default" => Some(&self.kafka),
            other => self.clusters.get(other),
        }
    }

    /// The archive URL a pipeline names: `default` is `archive`.
    pub fn archive_named(&self, name: &str) -> Option<&str> {
        match name {
            "default" => Some(&self.archive),
            other => self.archives.get(other).map(String::as_str),
        }
    }
}

#[cfg(test)]
mod tests;
