//! Restore drills (`rewind drill`): prove that the archive restores. A drill restores a window of the
//! archive (given, or sampled at random) into scratch topics of a target cluster, reads them back
//! with a `read_committed` consumer, compares every record with the archive's own copy, measures
//! the restore's rate and from it the time a full restore of each topic would take, deletes the
//! scratch topics, and writes a report into the archive (`_drills/<id>.json`), signed when given a
//! key, which `rewind drill verify-report` checks later.
//!
//! Invariant: a drill never writes into a topic that existed before it (scratch names carry a
//! prefix and the drill's id, and a name the cluster already holds is refused), and a report says
//! `passed` only when every planned record was read back equal, in order, and nothing else was.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::archive::chain;
use crate::archive::datafile;
use crate::archive::documents::{self, ArchiveError};
use crate::archive::time::{now_ms, rfc3339_millis};
use crate::archive::Record;
use crate::config::{RestoreConfig, RestoreJob};
use crate::kafka::topics::TopicSelector;
use crate::kafka::{ClusterError, Ctx};
use crate::restore::{self, RestoreError};
use crate::storage::{ObjectStore, PutMode};

/// Where drill reports live.
pub const DRILLS_PREFIX: &str = "_drills/";
/// How long reading a scratch partition back may take.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Sampled windows tried before a drill gives up on finding records.
const SAMPLES: usize = 8;

/// Why a drill could not run (a drill that ran and found a difference is a report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Found(String),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Kafka(#[from] ClusterError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// What to drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The window, as a restore takes it (`from`/`to`, or marks); ignored when `sample` is set.
    pub job: RestoreJob,
    /// Sample a window of this length at random from the archive's time range instead.
    pub sample: Option<Duration>,
    /// Scratch topics are named `<prefix><drill id>.<topic>`.
    pub prefix: String,
    /// Leave the scratch topics in place.
    pub keep: bool,
    /// Restore tuning.
    pub tuning: RestoreConfig,
    /// Signs the report.
    pub signing_key: Option<SigningKey>,
    /// Who runs it (`rewind drill`, a schedule), recorded in the report.
    pub run_by: String,
}

/// One restored partition, compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionResult {
    pub partition: i32,
    /// Source offsets `[start, end)` restored.
    pub start: i64,
    pub end: i64,
    /// Records the archive holds in the range, and records read back from the scratch topic.
    pub archived: u64,
    pub restored: u64,
    /// SHA-256 over every record (timestamp, key, value, headers, in order), of each side.
    pub archive_sha256: String,
    pub restored_sha256: String,
    /// The first difference, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
}

/// One topic of a drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicResult {
    pub topic: String,
    pub scratch_topic: String,
    pub records: u64,
    pub bytes: u64,
    /// Records and bytes (keys, values, headers) the archive holds of the topic in all, and the
    /// time a full restore would take at the drill's measured rate: the recovery time objective.
    pub archived_records: u64,
    pub archived_bytes: u64,
    pub estimated_full_restore_seconds: u64,
    pub partitions: Vec<PartitionResult>,
}

/// A drill's evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub format_version: u32,
    pub id: String,
    pub archive: String,
    pub archive_id: String,
    pub cluster_id: String,
    pub target: String,
    pub run_by: String,
    pub started_at: String,
    pub finished_at: String,
    /// The window restored, as a restore describes it.
    pub window: String,
    pub passed: bool,
    /// Why it did not pass.
    pub failures: Vec<String>,
    pub records: u64,
    pub bytes: u64,
    /// How long the restore took, and its rates. Every number of a report is an integer, so that
    /// its JSON has one spelling and the signature can be checked by any JSON tool.
    pub restore_ms: u64,
    pub records_per_second: u64,
    pub bytes_per_second: u64,
    pub topics: Vec<TopicResult>,
    pub scratch_topics_deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// An Ed25519 signature over the report without its `signature` field, serialized as compact JSON
/// with keys in sorted order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub algorithm: String,
    /// The signer's public key (raw 32 bytes, base64), to name it; a verifier checks the
    /// signature with the key it trusts, not this one.
    pub public_key: String,
    pub value: String,
}

/// The bytes a report's signature covers.
fn signed_bytes(report: &Value) -> Vec<u8> {
    let mut unsigned = report.clone();
    if let Value::Object(map) = &mut unsigned {
        map.remove("signature");
    }
    // serde_json's maps are sorted by key, so this is canonical whatever order the file had.
    serde_json::to_vec(&unsigned).expect("a JSON value serializes")
}

/// Sign `report` with `key`.
pub fn sign(report: &mut DrillReport, key: &SigningKey) {
    report.signature = None;
    let value = serde_json::to_value(&*report).expect("a report serializes");
    let signature = key.sign(&signed_bytes(&value));
    let b64 = base64::engine::general_purpose::STANDARD;
    report.signature = Some(Signature {
        algorithm: "ed25519".into(),
        public_key: b64.encode(key.verifying_key().as_bytes()),
        value: b64.encode(signature.to_bytes()),
    });
}

/// Check the signature of the report `text` against `key`: `Ok` with the report, or why not.
pub fn verify_report(text: &[u8], key: &VerifyingKey) -> Result<DrillReport, String> {
    // From the text first: a field given twice is refused there (a reader that keeps the first of
    // two values would read another report than the one signed).
    let report: DrillReport = serde_json::from_slice(text)
        .map_err(|e| format!("the report is not a Rewind drill report: {e}"))?;
    let value: Value =
        serde_json::from_slice(text).map_err(|e| format!("the report is not JSON: {e}"))?;
    let Some(signature) = &report.signature else {
        return Err("the report is not signed".into());
    };
    if signature.algorithm != "ed25519" {
        return Err(format!(
            "the report is signed with {:?}, not ed25519",
            signature.algorithm
        ));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes: [u8; 64] = b64
        .decode(&signature.value)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the report's signature is not 64 bytes of base64")?;
    key.verify(
        &signed_bytes(&value),
        &ed25519_dalek::Signature::from_bytes(&bytes),
    )
    .map_err(|_| {
        "the signature does not match: the report was altered after it was signed, or signed with another key".to_string()
    })?;
    Ok(report)
}

/// A signing key from PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
pub fn signing_key(pem: &str) -> Result<SigningKey, String> {
    SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| {
        format!(
            "not an Ed25519 private key in PKCS#8 PEM (openssl genpkey -algorithm ed25519): {e}"
        )
    })
}

/// A public key from SPKI PEM (`openssl pkey -pubout`).
pub fn verifying_key(pem: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
        format!("not an Ed25519 public key in PEM (openssl pkey -in key.pem -pubout): {e}")
    })
}

/// A fresh drill id: time of day plus randomness, valid in topic names and restore ids.
fn new_id(now: i64) -> String {
    let stamp = rfc3339_millis(now)
        .replace(['-', ':'], "")
        .chars()
        .take(15)
        .collect::<String>()
        .to_lowercase();
    format!("d{stamp}-{:04x}", rand::random::<u16>())
}

/// Run a drill against the cluster `client` reaches; the report is written to the archive.
pub async fn drill(
    client: ClientConfig,
    store: Arc<dyn ObjectStore>,
    opts: &DrillOptions,
) -> Result<DrillReport, DrillError> {
    let started_ms = now_ms();
    let id = new_id(started_ms);
    let Some(identity) = documents::read_identity(&*store).await? else {
        return Err(DrillError::Usage(format!(
            "{}: no Rewind archive there (no _archive.json); check --archive",
            store.url()
        )));
    };
    let topics = TopicSelector::new(&opts.job.topics).map_err(|e| {
        DrillError::Usage(format!(
            "--topics {:?} is not a valid regular expression: {}",
            opts.job.topics,
            crate::kafka::topics::regex_problem(&e)
        ))
    })?;
    let listed = chain::list_all(&*store)
        .await
        .map_err(|e| DrillError::Archive(e.into()))?;
    let mut archived: BTreeSet<String> = listed
        .keys()
        .map(|(t, _)| t.clone())
        .filter(|t| topics.is_match(t))
        .collect();
    // A window ending at a mark restores the topics the mark recorded: only they get scratch topics.
    if let Some(name) = &opts.job.to_mark {
        if let Some(mark) = crate::archive::marks::read(&*store, name).await? {
            archived.retain(|t| mark.has_topic(t));
        }
    }
    if archived.is_empty() {
        return Err(DrillError::Usage(format!(
            "no archived topic matches --topics {:?}; nothing to drill",
            opts.job.topics
        )));
    }
    let mut renames = BTreeMap::new();
    for topic in &archived {
        let scratch = format!("{}{id}.{topic}", opts.prefix);
        if !crate::archive::paths::valid_topic(&scratch) {
            return Err(DrillError::Usage(format!(
                "the scratch topic for {topic} would be {scratch:?}, not a valid topic name (too long?); choose a shorter --prefix"
            )));
        }
        renames.insert(topic.clone(), scratch);
    }
    // Exactly these topics: one archived after this listing must not be restored under its own name.
    let exactly = archived
        .iter()
        .map(|t| regex::escape(t))
        .collect::<Vec<_>>()
        .join("|");
    let job = |from: String, to: String| RestoreJob {
        from,
        to,
        topics: exactly.clone(),
        renames: renames.clone(),
        restore_id: Some(id.clone()),
        follow: false,
        groups: false,
        allow_non_empty: false,
        strict: false,
        shared: false,
        ..opts.job.clone()
    };
    let options = |job: &RestoreJob| {
        let mut o = job
            .options(&id, &opts.tuning, |f| format!("--{}", f.replace('_', "-")))
            .map_err(|p| DrillError::Usage(format!("--{} {}", p[0].path, p[0].message)))?;
        o.progress = false;
        Ok::<_, DrillError>(o)
    };
    // The window: as given, or sampled until one holds records.
    let asked = options(&job(opts.job.from.clone(), opts.job.to.clone()))?;
    let planning = match opts.sample {
        None => restore::plan(&*store, &asked)
            .await
            .map(|planned| (asked.clone(), planned))
            .map_err(DrillError::from),
        Some(length) => {
            sample(&*store, &listed, &archived, length, |from, to| {
                options(&job(rfc3339_millis(from), rfc3339_millis(to)))
            })
            .await
        }
    };
    let mut report = DrillReport {
        format_version: 1,
        id: id.clone(),
        archive: store.url().to_string(),
        archive_id: identity.archive_id(),
        cluster_id: String::new(),
        target: crate::kafka::servers(&client),
        run_by: opts.run_by.clone(),
        started_at: rfc3339_millis(started_ms),
        finished_at: String::new(),
        window: asked.window.describe(),
        passed: false,
        failures: Vec::new(),
        records: 0,
        bytes: 0,
        restore_ms: 0,
        records_per_second: 0,
        bytes_per_second: 0,
        topics: Vec::new(),
        scratch_topics_deleted: false,
        signature: None,
    };
    let (restore_opts, planned) = match planning {
        Ok(planned) => planned,
        // The archive cannot be planned (a broken chain, an unreadable file): the drill found it.
        Err(DrillError::Restore(RestoreError::Chain(e))) => {
            report
                .failures
                .push(format!("the archive cannot be planned: {e}"));
            return finish(&*store, report, opts).await;
        }
        Err(DrillError::Restore(RestoreError::Archive(e))) => {
            report
                .failures
                .push(format!("the archive cannot be read: {e}"));
            return finish(&*store, report, opts).await;
        }
        Err(e) => return Err(e),
    };
    report.window = restore_opts.window.describe();
    let planned_records: u64 = planned.partitions.iter().map(|p| p.records).sum();
    if planned_records == 0 {
        return Err(DrillError::Found(format!(
            "the window {} holds no archived records of the selected topics: a drill of it would prove nothing; {}",
            restore_opts.window.describe(),
            if opts.sample.is_some() {
                "no sampled window held records either (a longer --sample, or --from/--to, finds them)"
            } else {
                "choose another window (or --sample)"
            }
        )));
    }
    let servers = crate::kafka::servers(&client);
    let cluster_id = {
        let client = client.clone();
        crate::kafka::blocking(move || {
            crate::kafka::describe_cluster(&client, Duration::from_secs(30))
        })
        .await?
        .cluster_id
        .unwrap_or_default()
    };
    // Never into a topic that exists: a drill writes only what it creates.
    let scratch: Vec<String> = planned
        .partitions
        .iter()
        .map(|p| p.target_topic.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let existing = {
        let (client, names) = (client.clone(), scratch.clone());
        crate::kafka::blocking(move || existing_topics(&client, &names)).await
    }
    .map_err(|e| ClusterError::client(&servers, e))?;
    if let Some(name) = existing.first() {
        return Err(DrillError::Usage(format!(
            "topic {name} already exists in the target cluster; a drill writes only into scratch topics it creates"
        )));
    }

    report.cluster_id = cluster_id;
    tracing::info!(
        drill = id,
        window = report.window,
        records = planned_records,
        "drill: restoring into scratch topics"
    );
    let began = Instant::now();
    let restored = restore::run(
        client.clone(),
        store.clone(),
        &restore_opts,
        std::future::pending(),
    )
    .await;
    let took = began.elapsed().as_secs_f64().max(1e-3);
    match restored {
        Err(e) => report.failures.push(format!("the restore failed: {e}")),
        Ok(r) => {
            report.records = r.records;
            report.bytes = r.bytes;
            report.restore_ms = (took * 1000.0).round() as u64;
            report.records_per_second = (r.records as f64 / took).round() as u64;
            report.bytes_per_second = (r.bytes as f64 / took).round() as u64;
            // The restore plans again as it starts (the sink may have added files since the
            // drill's plan): what it committed to restore is what is compared.
            if r.records != r.planned_records {
                report.failures.push(format!(
                    "the restore wrote {} records where its plan counted {}",
                    r.records, r.planned_records
                ));
            }
            tracing::info!(
                drill = id,
                "drill: reading the scratch topics back and comparing with the archive"
            );
            compare(&client, &*store, &r.ranges, &renames, &mut report).await;
            // The drill's progress in the target's progress topic has served its purpose:
            // tombstones let compaction drop it (scheduled drills would pile it up).
            let keys: Vec<String> = r
                .ranges
                .iter()
                .map(|(t, p, _, _)| restore::progress::key(&id, t, *p))
                .collect();
            let (producer_config, topic) = (client.clone(), restore_opts.progress_topic.clone());
            if let Err(e) =
                crate::kafka::blocking(move || forget(&producer_config, &topic, &keys)).await
            {
                tracing::warn!(error = %e, "drill: could not remove its restore progress from the progress topic");
            }
            estimate(&*store, &restore_opts, &mut report).await;
        }
    }
    // The scratch topics go whatever happened (a failed restore may have created some).
    report.scratch_topics_deleted = if opts.keep {
        false
    } else {
        match delete_topics(&client, &scratch).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "drill: could not delete the scratch topics; delete them by hand: {}", scratch.join(", "));
                false
            }
        }
    };
    finish(&*store, report, opts).await
}

/// Tombstones for `keys` in `topic`.
fn forget(client: &ClientConfig, topic: &str, keys: &[String]) -> Result<(), KafkaError> {
    use rdkafka::producer::{BaseRecord, Producer};
    let producer: rdkafka::producer::BaseProducer = client.create()?;
    for key in keys {
        producer
            .send(BaseRecord::<str, [u8]>::to(topic).key(key.as_str()))
            .map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))
}

/// Conclude `report`, sign it if there is a key, and keep it in the archive.
async fn finish(
    store: &dyn ObjectStore,
    mut report: DrillReport,
    opts: &DrillOptions,
) -> Result<DrillReport, DrillError> {
    report.passed = report.failures.is_empty();
    report.finished_at = rfc3339_millis(now_ms());
    if let Some(key) = &opts.signing_key {
        sign(&mut report, key);
    }
    let key = format!("{DRILLS_PREFIX}{}.json", report.id);
    let body = serde_json::to_vec_pretty(&report).expect("a report serializes");
    store
        .put(&key, bytes::Bytes::from(body), PutMode::Create)
        .await
        .map_err(ArchiveError::from)?;
    Ok(report)
}

/// Pick a window of `length` at random inside the time the selected topics' archive covers, until
/// one holds records.
async fn sample<F>(
    store: &dyn ObjectStore,
    listed: &BTreeMap<(String, i32), Vec<(crate::archive::paths::DataFileKey, u64)>>,
    topics: &BTreeSet<String>,
    length: Duration,
    options: F,
) -> Result<(restore::RestoreOptions, restore::plan::Planned), DrillError>
where
    F: Fn(i64, i64) -> Result<restore::RestoreOptions, DrillError>,
{
    // A window around the hour of a file drawn at random: every draw overlaps archived records,
    // and a stray timestamp (a file filed under 1970) is drawn no more often than any other file.
    let hours: Vec<i64> = listed
        .iter()
        .filter(|((t, _), _)| topics.contains(t))
        .flat_map(|(_, files)| files.iter().map(|(k, _)| k.bucket.start_millis()))
        .collect();
    if hours.is_empty() {
        return Err(DrillError::Usage(
            "the archive holds no files of the selected topics".into(),
        ));
    }
    let length = i64::try_from(length.as_millis())
        .unwrap_or(i64::MAX)
        .clamp(1, 366 * 86_400_000);
    let mut planned = None;
    for _ in 0..SAMPLES {
        // Buckets of the first hour hold every earlier timestamp: such a file's window starts at 0.
        let hour = hours[rand::random_range(0..hours.len())].max(0);
        let from = hour
            .saturating_sub(rand::random_range(0..length))
            .saturating_add(3_600_000 / 2)
            .max(0);
        let o = options(from, from.saturating_add(length))?;
        let plan = restore::plan(store, &o).await?;
        let records: u64 = plan.partitions.iter().map(|p| p.records).sum();
        planned = Some((o, plan));
        if records > 0 {
            break;
        }
    }
    Ok(planned.expect("at least one sample"))
}

/// The names of `names` the cluster already has.
fn existing_topics(client: &ClientConfig, names: &[String]) -> Result<Vec<String>, KafkaError> {
    let consumer: BaseConsumer<Ctx> = client.create_with_context(Ctx)?;
    crate::kafka::ready(&consumer);
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(30))?;
    let have: BTreeSet<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    Ok(names
        .iter()
        .filter(|n| have.contains(n.as_str()))
        .cloned()
        .collect())
}

async fn delete_topics(client: &ClientConfig, names: &[String]) -> Result<(), String> {
    if names.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client.create().map_err(|e| e.to_string())?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let results = admin
        .delete_topics(
            &refs,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .map_err(|e| e.to_string())?;
    for result in results {
        if let Err((topic, code)) = result {
            if code != rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
                return Err(format!("{topic}: {code}"));
            }
        }
    }
    Ok(())
}

/// What one record contributes to a partition's digest.
fn digest_record(hash: &mut Sha256, r: &Record, timestamp: Option<i64>) {
    let field = |hash: &mut Sha256, v: Option<&[u8]>| match v {
        None => hash.update([0u8]),
        Some(b) => {
            hash.update([1u8]);
            hash.update((b.len() as u64).to_be_bytes());
            hash.update(b);
        }
    };
    hash.update(timestamp.unwrap_or(-1).to_be_bytes());
    field(hash, r.key.as_deref());
    field(hash, r.value.as_deref());
    hash.update((r.headers.len() as u64).to_be_bytes());
    for h in &r.headers {
        field(hash, Some(h.key.as_bytes()));
        field(hash, h.value.as_deref());
    }
}

/// How two records differ, if they do.
fn difference(archived: &Record, restored: &Record) -> Option<&'static str> {
    // A timestamp of exactly 0 cannot be sent (librdkafka stamps such a record with the time it is
    // produced; the restore says so): it is not held against the archive.
    let stamped = archived.timestamp == Some(0);
    if !stamped && archived.timestamp.unwrap_or(-1) != restored.timestamp.unwrap_or(-1) {
        Some("timestamp")
    } else if archived.key != restored.key {
        Some("key")
    } else if archived.value != restored.value {
        Some("value")
    } else if archived.headers != restored.headers {
        Some("headers")
    } else {
        None
    }
}

/// Read every restored partition back from its scratch topic and compare it with the archive's
/// records of the same range. What cannot be read (a damaged file, a scratch partition that does
/// not answer) is a failure of the drill, recorded in the report.
async fn compare(
    client: &ClientConfig,
    store: &dyn ObjectStore,
    ranges: &[(String, i32, i64, i64)],
    renames: &BTreeMap<String, String>,
    report: &mut DrillReport,
) {
    let mut by_topic: BTreeMap<String, TopicResult> = BTreeMap::new();
    for (topic, partition, start, end) in ranges {
        let (partition, start, end) = (*partition, *start, *end);
        let scratch = renames.get(topic).cloned().unwrap_or_else(|| topic.clone());
        let result = by_topic
            .entry(topic.clone())
            .or_insert_with(|| TopicResult {
                topic: topic.clone(),
                scratch_topic: scratch.clone(),
                records: 0,
                bytes: 0,
                archived_records: 0,
                archived_bytes: 0,
                estimated_full_restore_seconds: 0,
                partitions: Vec::new(),
            });
        let archived = match archived_records(store, topic, partition, start, end).await {
            Ok(records) => records,
            Err(e) => {
                report.failures.push(format!("{topic}/{partition}: {e}"));
                continue;
            }
        };
        let restored = {
            let (client, target) = (client.clone(), scratch.clone());
            crate::kafka::blocking(move || read_back(&client, &target, partition)).await
        };
        let restored = match restored {
            Ok(records) => records,
            Err(e) => {
                report.failures.push(format!(
                    "{topic}/{partition}: its scratch partition {scratch}/{partition} could not be read back: {e}"
                ));
                continue;
            }
        };
        let (mut a, mut b) = (Sha256::new(), Sha256::new());
        archived
            .iter()
            .for_each(|r| digest_record(&mut a, r, r.timestamp));
        // A record archived with timestamp 0 comes back restamped (see `difference`): it is
        // digested as 0 on both sides.
        restored.iter().enumerate().for_each(|(i, r)| {
            let timestamp = match archived.get(i) {
                Some(x) if x.timestamp == Some(0) => Some(0),
                _ => r.timestamp,
            };
            digest_record(&mut b, r, timestamp)
        });
        let hex = |h: Sha256| {
            h.finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let mismatch = archived
            .iter()
            .zip(&restored)
            .enumerate()
            .find_map(|(i, (x, y))| {
                difference(x, y).map(|what| {
                    format!(
                        "record {i} of the range (source offset {}): its {what} differs",
                        x.offset
                    )
                })
            })
            .or_else(|| {
                (archived.len() != restored.len()).then(|| {
                    format!(
                        "{} records archived in [{start}, {end}) but {} read back",
                        archived.len(),
                        restored.len()
                    )
                })
            });
        if let Some(m) = &mismatch {
            report
                .failures
                .push(format!("{topic}/{partition} restored into {scratch}: {m}"));
        }
        result.records += restored.len() as u64;
        result.bytes += restored.iter().map(Record::payload_len).sum::<usize>() as u64;
        result.partitions.push(PartitionResult {
            partition,
            start,
            end,
            archived: archived.len() as u64,
            restored: restored.len() as u64,
            archive_sha256: hex(a),
            restored_sha256: hex(b),
            mismatch,
        });
    }
    report.topics = by_topic.into_values().collect();
}

/// The archive's records of `topic`/`partition` in `[start, end)`, each file read whole and
/// checked.
async fn archived_records(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
) -> Result<Vec<Record>, String> {
    let listed = chain::list_files(
        store,
        &crate::archive::paths::DataFileKey::partition_prefix(topic, partition),
    )
    .await
    .map_err(|e| e.to_string())?;
    let files = listed
        .get(&(topic.to_string(), partition))
        .map_or(&[][..], Vec::as_slice);
    let chain = chain::load(store, topic, partition, files, &BTreeMap::new())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for file in crate::restore::plan::files_in(&chain.files, start, end) {
        let body = store.get(&file.key).await.map_err(|e| e.to_string())?.body;
        let decoded = tokio::task::spawn_blocking(move || datafile::decode(body))
            .await
            .map_err(|e| format!("{}: {} could not be decoded: {e}", store.url(), file.key))?
            .map_err(|e| format!("{}: {} cannot be read: {e}", store.url(), file.key))?;
        out.extend(
            decoded
                .1
                .into_iter()
                .filter(|r| (start..end).contains(&r.offset)),
        );
    }
    Ok(out)
}

/// Every record of one scratch partition, as a `read_committed` consumer sees it. Gives up when
/// nothing arrives for [`READ_TIMEOUT`].
fn read_back(
    client: &ClientConfig,
    topic: &str,
    partition: i32,
) -> Result<Vec<Record>, KafkaError> {
    let mut config = client.clone();
    config
        .set(
            "group.id",
            format!("rewind-drill-{:016x}", rand::random::<u64>()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer<Ctx> = config.create_with_context(Ctx)?;
    crate::kafka::ready(&consumer);
    let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(30))?;
    let mut out = Vec::new();
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))?;
    consumer.assign(&tpl)?;
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(e),
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if m.offset() < high {
                    out.push(crate::sink::to_record(&m));
                }
                if m.offset() + 1 >= high {
                    return Ok(out);
                }
                continue;
            }
            None => {}
        }
        // Idle: the end may be transaction markers that deliver nothing; the position passes them.
        let done = consumer
            .position()?
            .elements()
            .iter()
            .all(|e| matches!(e.offset(), Offset::Offset(o) if o >= high));
        if done {
            return Ok(out);
        }
        if last_progress.elapsed() > READ_TIMEOUT {
            return Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
    }
}

/// The archive's size per topic, and the time a full restore of each would take at the drill's
/// rate (the slower of its records and its bytes rates). Best effort: an archive that cannot be
/// planned whole leaves the estimate at 0.
async fn estimate(
    store: &dyn ObjectStore,
    drilled: &restore::RestoreOptions,
    report: &mut DrillReport,
) {
    let mut whole = drilled.clone();
    whole.window = restore::Window::default();
    let Ok(planned) = restore::plan(store, &whole).await else {
        return;
    };
    for topic in &mut report.topics {
        let of_topic = planned.partitions.iter().filter(|p| p.topic == topic.topic);
        topic.archived_records = of_topic.clone().map(|p| p.records).sum();
        topic.archived_bytes = of_topic.map(|p| p.bytes).sum();
        let rate = |per_second: u64| (per_second as f64).max(1.0);
        let by_records = topic.archived_records as f64 / rate(report.records_per_second);
        let by_bytes = topic.archived_bytes as f64 / rate(report.bytes_per_second);
        topic.estimated_full_restore_seconds = by_records.max(by_bytes).ceil() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> DrillReport {
        DrillReport {
            format_version: 1,
            id: "d1".into(),
            archive: "file:///a".into(),
            archive_id: "abc".into(),
            cluster_id: "c".into(),
            target: "127.0.0.1:9092".into(),
            run_by: "test".into(),
            started_at: "2026-12-04T00:00:00.000Z".into(),
            finished_at: "2026-12-04T00:00:01.000Z".into(),
            window: "[earliest, latest)".into(),
            passed: true,
            failures: vec![],
            records: 70,
            bytes: 1234,
            restore_ms: 123,
            records_per_second: 567,
            bytes_per_second: 1,
            topics: vec![TopicResult {
                topic: "t".into(),
                scratch_topic: "rewind-drill-d1.t".into(),
                records: 70,
                bytes: 1234,
                archived_records: 70,
                archived_bytes: 1234,
                estimated_full_restore_seconds: 3,
                partitions: vec![],
            }],
            scratch_topics_deleted: true,
            signature: None,
        }
    }

    #[test]
    fn a_signed_report_verifies_as_written_and_not_once_altered() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut r = report();
        sign(&mut r, &key);
        let text = serde_json::to_vec_pretty(&r).unwrap();
        assert_eq!(verify_report(&text, &key.verifying_key()).unwrap(), r);
        // Field order and whitespace do not matter; content does.
        let compact = serde_json::to_vec(&serde_json::from_slice::<Value>(&text).unwrap()).unwrap();
        assert!(verify_report(&compact, &key.verifying_key()).is_ok());
        let altered = String::from_utf8(text.clone())
            .unwrap()
            .replace("\"records\": 70", "\"records\": 71");
        assert_ne!(altered.as_bytes(), &text[..]);
        let err = verify_report(altered.as_bytes(), &key.verifying_key()).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
        assert!(verify_report(&text, &other).is_err());
        let mut unsigned = report();
        unsigned.signature = None;
        let err = verify_report(
            &serde_json::to_vec(&unsigned).unwrap(),
            &key.verifying_key(),
        )
        .unwrap_err();
        assert_eq!(err, "the report is not signed");
    }
}
