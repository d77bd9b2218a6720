//! Bringing a topic's table up to the archive: what to add and remove, the snapshots that say
//! so, and the commit (see the module documentation of [`super`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use parquet::file::metadata::ParquetMetaData;
use serde::Serialize;

use super::manifest::{self, DataFile, Entry, ManifestFile, Status};
use super::metadata::{MetadataLogEntry, Ref, Snapshot, SnapshotLogEntry, TableMetadata};
use super::{spec, typed, TableError};
use crate::archive::chain;
use crate::archive::datafile::Footer;
use crate::archive::documents;
use crate::archive::paths::{self, CHECKPOINTS_PREFIX, DATA_PREFIX};
use crate::archive::time::now_ms;
use crate::kafka::topics::TopicSelector;
use crate::storage::{ObjectStore, PutMode, StorageError};

/// Where every table lives.
pub const TABLES_PREFIX: &str = "_tables/";
/// Commits tried before giving up on a table other writers keep changing.
const MAX_ATTEMPTS: u32 = 16;
/// A data file's manifest entry and its typed columns, as its footer describes them.
type Described = (DataFile, Vec<arrow_schema::Field>);

/// The table property mapping the data files' column names to field ids.
const NAME_MAPPING: &str = "schema.name-mapping.default";
/// Footers and manifests read at once.
const CONCURRENCY: usize = 16;

/// How tables are kept: each setting given wins over what the table's properties say, which win
/// over the defaults ([`Policy::default`]); the settings used are written back into the properties.
#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    /// An Iceberg REST catalog to register each table with after its sync.
    pub catalog: Option<super::catalog::Catalog>,
    /// Snapshots older than this are expired (Iceberg's `history.expire.max-snapshot-age-ms`).
    pub max_snapshot_age: Option<Duration>,
    /// The newest snapshots kept whatever their age (`history.expire.min-snapshots-to-keep`).
    pub min_snapshots: Option<usize>,
    /// Earlier metadata files kept in the metadata log (`write.metadata.previous-versions-max`).
    pub previous_versions: Option<usize>,
    /// Past this many manifests, a commit merges them into one (`commit.manifest.min-count-to-merge`).
    pub max_manifests: Option<usize>,
}

/// The settings one commit keeps the table by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub max_snapshot_age: Duration,
    pub min_snapshots: usize,
    pub previous_versions: usize,
    pub max_manifests: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            max_snapshot_age: Duration::from_secs(24 * 3600),
            min_snapshots: 10,
            previous_versions: 20,
            max_manifests: 100,
        }
    }
}

/// What one sync of one table did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub topic: String,
    /// The table's current metadata file (absolute URI): what readers open.
    pub metadata: String,
    pub version: u64,
    /// Whether this sync committed a new version (false: the table was already up to date).
    pub committed: bool,
    pub added_files: usize,
    pub removed_files: usize,
    pub expired_snapshots: usize,
    /// Files and records of the table's current snapshot.
    pub files: usize,
    pub records: i64,
    /// Commits tried (more than one when another writer committed first).
    pub attempts: u32,
    /// Partitions whose files were left as the table had them, and files left out, with why (a
    /// chain or footer that does not read; `rewind verify` names the fault).
    pub skipped: Vec<String>,
    /// What the REST catalog was told (`registered`, `committed`, `up_to_date`), if one is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<super::catalog::Published>,
    /// Why the table could not be synced at all (the others still were), or why the catalog
    /// could not be told.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The folder of `topic`'s table.
pub fn table_prefix(topic: &str) -> String {
    format!("{TABLES_PREFIX}{topic}/")
}

fn metadata_prefix(topic: &str) -> String {
    format!("{}metadata/", table_prefix(topic))
}

fn version_key(topic: &str, version: u64) -> String {
    format!("{}v{version}.metadata.json", metadata_prefix(topic))
}

fn hint_key(topic: &str) -> String {
    format!("{}version-hint.text", metadata_prefix(topic))
}

/// The URI of the archive's root, ending in `/`: `s3://bucket/prefix/`, or a percent-encoded
/// `file:///` URL (a local root may hold spaces; keys never need encoding).
fn base_uri(store: &dyn ObjectStore) -> String {
    match store.url() {
        crate::storage::StorageUrl::Local { root } => url::Url::from_directory_path(root)
            .map(|u| u.to_string())
            .unwrap_or_else(|()| format!("file://{}/", root.display())),
        other => format!("{}/", other.to_string().trim_end_matches('/')),
    }
}

/// The absolute URI of an archive key, as table metadata names files.
fn uri(store: &dyn ObjectStore, key: &str) -> String {
    format!("{}{key}", base_uri(store))
}

/// The archive key of a URI [`uri`] made; `None` for a file outside the archive.
fn key_of(store: &dyn ObjectStore, uri: &str) -> Option<String> {
    uri.strip_prefix(&base_uri(store)).map(str::to_string)
}

/// Bring the table of every topic `topics` selects up to the archive, one topic after another:
/// topics with a checkpoint, and topics that have a table but no longer anything archived.
pub async fn sync(
    store: &dyn ObjectStore,
    topics: &TopicSelector,
    opts: &TableOptions,
) -> Result<Vec<SyncReport>, TableError> {
    if documents::read_identity(store).await?.is_none() {
        return Err(TableError::NoArchive(store.url().to_string()));
    }
    let mut names = BTreeSet::new();
    for object in store.list(CHECKPOINTS_PREFIX).await? {
        if let Some((topic, _)) = paths::parse_checkpoint_key(&object.key) {
            names.insert(topic);
        }
    }
    for object in store.list(TABLES_PREFIX).await? {
        if let Some((topic, _)) = object.key[TABLES_PREFIX.len()..].split_once('/') {
            names.insert(topic.to_string());
        }
    }
    let mut reports = Vec::new();
    for topic in names.into_iter().filter(|t| topics.is_match(t)) {
        // One table that fails does not keep the others back.
        let mut report = match sync_topic(store, &topic, opts).await {
            Ok(report) => report,
            Err(e) => SyncReport {
                topic,
                error: Some(e.to_string()),
                ..SyncReport::default()
            },
        };
        if let (Some(catalog), None) = (&opts.catalog, &report.error) {
            match load(store, &report.topic).await {
                Ok(Some((version, meta))) => {
                    let location = uri(store, &version_key(&report.topic, version));
                    match super::catalog::publish(catalog, &report.topic, &meta, &location).await {
                        Ok(done) => report.catalog = Some(done),
                        Err(e) => report.error = Some(e.to_string()),
                    }
                }
                Ok(None) => {}
                Err(e) => report.error = Some(e.to_string()),
            }
        }
        reports.push(report);
    }
    Ok(reports)
}

/// What the archive holds of one topic, as the table should list it.
struct Wanted {
    /// Chain files a checkpoint vouches for, by URI: (key, size, partition, start).
    durable: BTreeMap<String, (String, u64, i32, i64)>,
    /// Every chain file, durable or not, by URI.
    chained: BTreeSet<String>,
    /// Partitions whose chain did not read, with why: their files stay as the table has them.
    frozen: BTreeMap<i32, String>,
}

async fn wanted(store: &dyn ObjectStore, topic: &str) -> Result<Wanted, TableError> {
    // Checkpoints before the listing: a checkpoint moves only once its files are durable and
    // claimed, so every file below one is in the listing, and racing writers' orphans are not.
    let listed: Vec<i32> = store
        .list(&format!("{CHECKPOINTS_PREFIX}{topic}/"))
        .await?
        .iter()
        .filter_map(|o| paths::parse_checkpoint_key(&o.key))
        .filter(|(t, _)| t == topic)
        .map(|(_, p)| p)
        .collect();
    let ends: BTreeMap<i32, i64> = futures::stream::iter(listed.into_iter().map(|p| async move {
        let c = documents::read_checkpoint(store, topic, p).await?;
        Ok::<_, TableError>(c.map(|c| (p, c.doc.end)))
    }))
    .buffered(CONCURRENCY)
    .try_collect::<Vec<_>>()
    .await?
    .into_iter()
    .flatten()
    .collect();
    let listed = chain::list_files(store, &format!("{DATA_PREFIX}topic={topic}/")).await?;
    let partitions: BTreeSet<i32> = ends
        .keys()
        .copied()
        .chain(listed.keys().map(|(_, p)| *p))
        .collect();
    let none = Vec::new();
    let known = BTreeMap::new();
    let chains: Vec<(i32, Result<chain::Chain, chain::ChainError>)> =
        futures::stream::iter(partitions.into_iter().map(|p| {
            let files = listed.get(&(topic.to_string(), p)).unwrap_or(&none);
            let known = &known;
            async move { (p, chain::load(store, topic, p, files, known).await) }
        }))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut out = Wanted {
        durable: BTreeMap::new(),
        chained: BTreeSet::new(),
        frozen: BTreeMap::new(),
    };
    for (partition, chain) in chains {
        let chain = match chain {
            Ok(chain) => chain,
            Err(e) => {
                tracing::warn!(topic, partition, error = %e, "the table keeps this partition's files as they were");
                out.frozen.insert(partition, e.to_string());
                continue;
            }
        };
        let end = ends.get(&partition).copied().unwrap_or(i64::MIN);
        for f in chain.files {
            let u = uri(store, &f.key);
            out.chained.insert(u.clone());
            if f.end <= end {
                out.durable.insert(u, (f.key, f.size, partition, f.start));
            }
        }
    }
    Ok(out)
}

/// Bring `topic`'s table up to the archive if it has one, kept as its properties say, committing
/// a new version even if nothing changed (see [`sync_inner`]): what retention calls once it has
/// moved chain starts and before it deletes files.
pub async fn sync_existing(
    store: &dyn ObjectStore,
    topic: &str,
) -> Result<Option<SyncReport>, TableError> {
    match load(store, topic).await? {
        Some(_) => Ok(Some(
            sync_inner(store, topic, &TableOptions::default(), true).await?,
        )),
        None => Ok(None),
    }
}

impl TableOptions {
    /// The policy for a table with `properties`: these options, else the properties, else the
    /// defaults.
    pub fn policy(&self, properties: &BTreeMap<String, String>) -> Policy {
        let d = Policy::default();
        let get = |k: &str| properties.get(k).and_then(|v| v.parse::<u64>().ok());
        Policy {
            max_snapshot_age: self.max_snapshot_age.unwrap_or_else(|| {
                get("history.expire.max-snapshot-age-ms")
                    .map_or(d.max_snapshot_age, Duration::from_millis)
            }),
            min_snapshots: self.min_snapshots.unwrap_or_else(|| {
                get("history.expire.min-snapshots-to-keep").map_or(d.min_snapshots, |v| v as usize)
            }),
            previous_versions: self.previous_versions.unwrap_or_else(|| {
                get("write.metadata.previous-versions-max")
                    .map_or(d.previous_versions, |v| v as usize)
            }),
            max_manifests: self.max_manifests.unwrap_or_else(|| {
                get("commit.manifest.min-count-to-merge").map_or(d.max_manifests, |v| v as usize)
            }),
        }
    }
}

impl Policy {
    /// Write the policy, and the properties every table of Rewind's has, into `properties`.
    fn record(
        &self,
        store: &dyn ObjectStore,
        topic: &str,
        properties: &mut BTreeMap<String, String>,
    ) {
        let mut set = |k: &str, v: String| properties.insert(k.to_string(), v);
        set(
            "history.expire.max-snapshot-age-ms",
            self.max_snapshot_age.as_millis().to_string(),
        );
        set(
            "history.expire.min-snapshots-to-keep",
            self.min_snapshots.max(1).to_string(),
        );
        set(
            "write.metadata.previous-versions-max",
            self.previous_versions.to_string(),
        );
        set(
            "commit.manifest.min-count-to-merge",
            self.max_manifests.to_string(),
        );
        set("write.format.default", "parquet".into());
        set("write.parquet.compression-codec", "zstd".into());
        // Iceberg's vectorized Parquet reader (Spark's default) fails on millisecond timestamps
        // before Iceberg 1.10.1 (apache/iceberg#14430); the row reader reads them.
        set("read.parquet.vectorization.enabled", "false".into());
        // A REST catalog told of the table writes metadata files of its own beside Rewind's; it
        // deletes its old ones.
        set("write.metadata.delete-after-commit.enabled", "true".into());
        set("rewind.topic", topic.to_string());
        set("rewind.archive", store.url().to_string());
        set(
            "comment",
            format!("Kafka topic {topic}, as archived by Rewind; kept by `rewind tables sync`"),
        );
    }
}

/// Bring `topic`'s table up to the archive.
pub async fn sync_topic(
    store: &dyn ObjectStore,
    topic: &str,
    opts: &TableOptions,
) -> Result<SyncReport, TableError> {
    sync_inner(store, topic, opts, false).await
}

/// [`sync_topic`]; with `force`, a new version is committed even when nothing changed, so that a
/// sync that read the archive before this one's will lose its commit and read it again (retention
/// forces one after moving chain starts, before deleting files), and a partition whose chain does
/// not read is an error (retention must not delete what the table may still list).
async fn sync_inner(
    store: &dyn ObjectStore,
    topic: &str,
    opts: &TableOptions,
    force: bool,
) -> Result<SyncReport, TableError> {
    let mut report = SyncReport {
        topic: topic.to_string(),
        ..SyncReport::default()
    };
    let mut described: BTreeMap<String, Described> = BTreeMap::new();
    for attempt in 1..=MAX_ATTEMPTS {
        report.attempts = attempt;
        let (version, mut meta) = match load(store, topic).await? {
            Some(base) => base,
            None => {
                // A new table is committed empty first, and filled on top of it: a retention
                // that saw no table had moved its chain starts before this version existed, so
                // the archive read after it never holds a file that retention is deleting.
                let body = serde_json::to_vec_pretty(&new_table(store, topic, opts))?;
                match store
                    .put(&version_key(topic, 1), Bytes::from(body), PutMode::Create)
                    .await
                {
                    Ok(_) | Err(StorageError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
        };
        // The archive is read after the base: a commit that removed files retention is about to
        // delete is in the base, or this commit loses to it and reads both again.
        let wanted = wanted(store, topic).await?;
        if force && !wanted.frozen.is_empty() {
            let (p, why) = wanted.frozen.iter().next().expect("not empty");
            return Err(TableError::Unreadable {
                topic: topic.to_string(),
                partition: *p,
                why: why.clone(),
            });
        }
        report.skipped = wanted
            .frozen
            .iter()
            .map(|(p, why)| format!("{topic}/{p}: {why}"))
            .collect();
        // A table whose snapshot names files that are gone (its folder deleted under a sync, a
        // lost clean-up) or lies elsewhere (the archive was copied or moved) is built again.
        let location = table_location(store, topic);
        let mut rebuilt = false;
        let manifests = match read_snapshot(store, &meta).await? {
            Some(manifests) if meta.location == location => manifests,
            _ => {
                rebuilt = true;
                tracing::warn!(
                    topic,
                    "the table's snapshot does not read from this archive; building it again"
                );
                meta.location = location;
                meta.snapshots.clear();
                meta.snapshot_log.clear();
                meta.refs.clear();
                meta.current_snapshot_id = -1;
                Vec::new()
            }
        };
        let live: BTreeMap<&str, i32> = manifests
            .iter()
            .flat_map(|(_, entries)| entries.iter())
            .filter(|e| e.status != Status::Deleted)
            .map(|e| (e.file.path.as_str(), e.file.partition))
            .collect();
        let removes: BTreeSet<String> = live
            .iter()
            .filter(|(path, p)| !wanted.frozen.contains_key(p) && !wanted.chained.contains(**path))
            .map(|(path, _)| path.to_string())
            .collect();
        let adds: Vec<String> = wanted
            .durable
            .keys()
            .filter(|u| !live.contains_key(u.as_str()))
            .cloned()
            .collect();
        // Never before the last commit: readers require snapshots and logs in time order, and
        // workers' clocks differ.
        let now = [
            now_ms(),
            meta.last_updated_ms,
            meta.snapshots.last().map_or(0, |s| s.timestamp_ms),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let policy = opts.policy(&meta.properties);
        let expiring = expiring(&meta, now, &policy);
        let mut properties = meta.properties.clone();
        policy.record(store, topic, &mut properties);
        properties.insert(NAME_MAPPING.into(), typed::name_mapping(&meta).to_string());
        let settings_changed = properties != meta.properties;
        meta.properties = properties;
        if !force
            && !rebuilt
            && adds.is_empty()
            && removes.is_empty()
            && expiring == 0
            && !settings_changed
        {
            report.version = version;
            report.metadata = uri(store, &version_key(topic, version));
            report.files = live.len();
            report.records = manifests
                .iter()
                .flat_map(|(_, e)| e)
                .filter(|e| e.status != Status::Deleted)
                .map(|e| e.file.record_count)
                .sum();
            return Ok(report);
        }
        // The statistics of the files to add, read once across attempts. A file whose footer
        // does not read is left out (and named); the rest of its partition goes on.
        let missing: Vec<(String, (String, u64, i32, i64))> = adds
            .iter()
            .filter(|u| !described.contains_key(*u))
            .map(|u| (u.clone(), wanted.durable[u].clone()))
            .collect();
        let read: Vec<(String, i32, Result<Described, String>)> =
            futures::stream::iter(missing.into_iter().map(
                |(u, (key, size, p, start))| async move {
                    let file = describe_file(store, topic, &u, &key, size, p, start).await;
                    (u, p, file)
                },
            ))
            .buffered(CONCURRENCY)
            .collect()
            .await;
        for (u, p, file) in read {
            match file {
                Ok(file) => {
                    described.insert(u, file);
                }
                Err(why) => {
                    tracing::warn!(topic, partition = p, error = %why, "a data file left out of the table");
                    report.skipped.push(format!("{topic}/{p}: {why}"));
                }
            }
        }
        let (adds, typed_columns): (Vec<DataFile>, Vec<Vec<arrow_schema::Field>>) = adds
            .iter()
            .filter_map(|u| described.get(u).cloned())
            .unzip();
        // Typed columns new to the table join its schema first, so that the files adding them
        // are read with them.
        if typed::evolve(&mut meta, &typed_columns) {
            meta.properties
                .insert(NAME_MAPPING.into(), typed::name_mapping(&meta).to_string());
        }

        let commit_id = uuid();
        meta.properties
            .insert("rewind.commit-id".into(), commit_id.clone());
        let (done, writes) = build(
            store, topic, version, &mut meta, manifests, &adds, &removes, now, &policy, &commit_id,
        )?;
        let written: Vec<String> = writes.iter().map(|(k, _)| k.clone()).collect();
        futures::stream::iter(
            writes
                .into_iter()
                .map(|(key, body)| async move { store.put(&key, body, PutMode::Overwrite).await }),
        )
        .buffered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
        let body = serde_json::to_vec_pretty(&meta)?;
        let next = version_key(topic, version + 1);
        let put = store.put(&next, Bytes::from(body), PutMode::Create).await;
        // Whose version N+1 is it? A lost reply that the store retried reads as "already
        // exists", and a timeout may have landed: only the version itself can tell.
        let ours = match put {
            Ok(_) => Ok(true),
            Err(e) => match store.get(&next).await {
                Ok(got) => Ok(serde_json::from_slice::<TableMetadata>(&got.body)
                    .ok()
                    .and_then(|m| m.properties.get("rewind.commit-id").cloned())
                    .is_some_and(|id| id == commit_id)),
                Err(StorageError::NotFound { .. }) => {
                    let _ = store.delete_many(&written).await;
                    Err(TableError::from(e))
                }
                // Cannot tell: what was written stays, in case it is the table now.
                Err(_) => Err(TableError::from(e)),
            },
        };
        match ours? {
            true => {
                report.version = version + 1;
                report.metadata = uri(store, &next);
                report.committed = true;
                report.added_files = adds.len();
                report.removed_files = removes.len();
                report.expired_snapshots = done.expired.len();
                report.files = done.files;
                report.records = done.records;
                point_hint(store, topic, version + 1).await;
                clean_up(store, &done).await;
                return Ok(report);
            }
            false => {
                // Another writer committed this version first: what it wrote is the base now.
                tracing::debug!(
                    topic,
                    version = version + 1,
                    "lost a table commit; building again"
                );
                let _ = store.delete_many(&written).await;
                let ceiling = 25u64 << attempt.min(6);
                tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % ceiling)).await;
            }
        }
    }
    Err(TableError::Contended {
        topic: topic.to_string(),
        attempts: MAX_ATTEMPTS,
    })
}

/// A table with no snapshot yet.
fn new_table(store: &dyn ObjectStore, topic: &str, opts: &TableOptions) -> TableMetadata {
    let mut properties = BTreeMap::new();
    opts.policy(&properties)
        .record(store, topic, &mut properties);
    properties.insert(NAME_MAPPING.into(), spec::name_mapping().to_string());
    TableMetadata::new(uuid(), table_location(store, topic), now_ms(), properties)
}

/// Where `topic`'s table lives, as its metadata says.
fn table_location(store: &dyn ObjectStore, topic: &str) -> String {
    uri(store, table_prefix(topic).trim_end_matches('/'))
}

/// A random (version 4) UUID.
fn uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A new snapshot id: positive and random, as Iceberg's are.
fn snapshot_id(meta: &TableMetadata) -> i64 {
    loop {
        let id = (rand::random::<u64>() >> 1) as i64;
        if id != 0 && !meta.snapshots.iter().any(|s| s.snapshot_id == id) {
            return id;
        }
    }
}

/// The newest version of `topic`'s table and its metadata, if the table exists: from
/// `version-hint.text`, then forward while a newer version exists; by listing when the hint is
/// missing or names a version that is gone.
async fn load(
    store: &dyn ObjectStore,
    topic: &str,
) -> Result<Option<(u64, TableMetadata)>, TableError> {
    let hinted = match store.get(&hint_key(topic)).await {
        Ok(got) => std::str::from_utf8(&got.body)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok()),
        Err(StorageError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let mut version = match hinted {
        Some(v) if exists(store, &version_key(topic, v)).await? => v,
        _ => {
            let prefix = metadata_prefix(topic);
            let newest = store
                .list(&prefix)
                .await?
                .iter()
                .filter_map(|o| {
                    o.key[prefix.len()..]
                        .strip_prefix('v')?
                        .strip_suffix(".metadata.json")?
                        .parse::<u64>()
                        .ok()
                })
                .max();
            match newest {
                Some(v) => v,
                None => return Ok(None),
            }
        }
    };
    while exists(store, &version_key(topic, version + 1)).await? {
        version += 1;
    }
    let key = version_key(topic, version);
    let body = match store.get(&key).await {
        Ok(got) => got.body,
        // Expired between the look and the read: a newer version exists.
        Err(StorageError::NotFound { .. }) => return Box::pin(load(store, topic)).await,
        Err(e) => return Err(e.into()),
    };
    let meta: TableMetadata = serde_json::from_slice(&body)
        .map_err(|e| TableError::Metadata(format!("{}: {e}", uri(store, &key))))?;
    if meta.format_version != 2 {
        return Err(TableError::Metadata(format!(
            "{}: format version {} (Rewind writes 2)",
            uri(store, &key),
            meta.format_version
        )));
    }
    Ok(Some((version, meta)))
}

async fn exists(store: &dyn ObjectStore, key: &str) -> Result<bool, TableError> {
    match store.head(key).await {
        Ok(_) => Ok(true),
        Err(StorageError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn read_uri(store: &dyn ObjectStore, u: &str) -> Result<Bytes, TableError> {
    let key = key_of(store, u).ok_or_else(|| TableError::Outside(u.to_string()))?;
    Ok(store.get(&key).await?.body)
}

/// The manifests of the current snapshot with their entries; `None` when one of its files is
/// missing or outside the archive.
async fn read_snapshot(
    store: &dyn ObjectStore,
    meta: &TableMetadata,
) -> Result<Option<Vec<(ManifestFile, Vec<Entry>)>>, TableError> {
    let Some(current) = meta.current() else {
        return Ok(Some(Vec::new()));
    };
    let read = async {
        let list = manifest::read_manifest_list(&read_uri(store, &current.manifest_list).await?)?;
        futures::stream::iter(list.into_iter().map(|m| async move {
            let entries = manifest::read_manifest(&read_uri(store, &m.path).await?, &m)?;
            Ok::<_, TableError>((m, entries))
        }))
        .buffered(CONCURRENCY)
        .try_collect()
        .await
    };
    match read.await {
        Ok(manifests) => Ok(Some(manifests)),
        Err(TableError::Storage(StorageError::NotFound { .. }) | TableError::Outside(_)) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// How many of the oldest snapshots expire now: the longest run from the oldest that is past the
/// age, leaving the newest `min_snapshots` (and always the current one).
fn expiring(meta: &TableMetadata, now: i64, opts: &Policy) -> usize {
    let age = i64::try_from(opts.max_snapshot_age.as_millis()).unwrap_or(i64::MAX);
    let keep = opts.min_snapshots.max(1);
    let candidates = meta.snapshots.len().saturating_sub(keep);
    meta.snapshots[..candidates]
        .iter()
        .take_while(|s| {
            now.saturating_sub(s.timestamp_ms) > age && s.snapshot_id != meta.current_snapshot_id
        })
        .count()
}

/// The statistics of one data file, from its footer.
async fn describe_file(
    store: &dyn ObjectStore,
    topic: &str,
    u: &str,
    key: &str,
    size: u64,
    partition: i32,
    start: i64,
) -> Result<Described, String> {
    let metadata = chain::read_file_metadata(store, key, size)
        .await
        .map_err(|e| e.to_string())?;
    let footer = Footer::of(&metadata).map_err(|e| format!("{key}: {e}"))?;
    let meta = &footer.meta;
    if meta.topic != topic || meta.partition != partition || meta.start != start {
        return Err(format!(
            "{key}: its footer says {}/{} from {}, which does not match its key",
            meta.topic, meta.partition, meta.start
        ));
    }
    Ok((
        data_file(u, partition, size, &metadata, &footer),
        typed::typed_fields(&metadata),
    ))
}

/// A data file's manifest entry: sizes and counts per column from the Parquet footer; bounds of
/// `offset` and `timestamp` (in microseconds, Iceberg's unit) from its statistics.
pub(crate) fn data_file(
    u: &str,
    partition: i32,
    size: u64,
    metadata: &ParquetMetaData,
    footer: &Footer,
) -> DataFile {
    let mut file = DataFile {
        path: u.to_string(),
        partition,
        record_count: footer.rows as i64,
        file_size: size as i64,
        column_sizes: BTreeMap::new(),
        value_counts: BTreeMap::new(),
        null_value_counts: BTreeMap::new(),
        lower_bounds: BTreeMap::new(),
        upper_bounds: BTreeMap::new(),
        split_offsets: Vec::new(),
    };
    let mut nulls_known: BTreeSet<i32> = [
        field::OFFSET,
        field::TIMESTAMP,
        field::TIMESTAMP_TYPE,
        field::KEY,
        field::VALUE,
    ]
    .into();
    for group in metadata.row_groups() {
        if let Some(first) = group.columns().first() {
            file.split_offsets.push(
                first
                    .dictionary_page_offset()
                    .unwrap_or_else(|| first.data_page_offset()),
            );
        }
        for column in group.columns() {
            let Some(id) = spec::leaf_id(&column.column_path().string()) else {
                continue;
            };
            *file.column_sizes.entry(id).or_default() += column.compressed_size();
            // Counts of the top-level columns only: a list's leaf counts its levels, not values.
            if id > field::VALUE {
                continue;
            }
            *file.value_counts.entry(id).or_default() += group.num_rows();
            match column.statistics().and_then(|s| s.null_count_opt()) {
                Some(n) => *file.null_value_counts.entry(id).or_default() += n as i64,
                None => {
                    nulls_known.remove(&id);
                }
            }
        }
    }
    file.null_value_counts
        .retain(|id, _| nulls_known.contains(id));
    file.split_offsets.sort_unstable();
    let meta = &footer.meta;
    let (lo, hi) = footer.offsets.unwrap_or((meta.start, meta.end - 1));
    file.lower_bounds
        .insert(field::OFFSET, lo.to_le_bytes().to_vec());
    file.upper_bounds
        .insert(field::OFFSET, hi.to_le_bytes().to_vec());
    // Timestamps beyond what microseconds hold (a producer writing microseconds as milliseconds)
    // get no bounds: no bound is always safe, a wrapped one would hide rows.
    if let Some((lo, hi)) = footer.timestamps {
        if let (Some(lo), Some(hi)) = (lo.checked_mul(1000), hi.checked_mul(1000)) {
            file.lower_bounds
                .insert(field::TIMESTAMP, lo.to_le_bytes().to_vec());
            file.upper_bounds
                .insert(field::TIMESTAMP, hi.to_le_bytes().to_vec());
        }
    }
    file
}

use spec::field;

/// What a commit leaves to clean up once it has landed.
struct Done {
    files: usize,
    records: i64,
    /// Snapshots the commit expired.
    expired: Vec<Snapshot>,
    /// The manifest list of the oldest snapshot kept (its manifests stay).
    oldest_kept_list: Option<String>,
    /// Metadata files dropped from the metadata log.
    dropped_versions: Vec<String>,
}

/// Build the next version of the table on `meta` (version `version`): the new manifests and
/// manifest lists (under names of their own, to write before the metadata file), and `meta` made
/// the next version's metadata.
#[allow(clippy::too_many_arguments)]
fn build(
    store: &dyn ObjectStore,
    topic: &str,
    version: u64,
    meta: &mut TableMetadata,
    manifests: Vec<(ManifestFile, Vec<Entry>)>,
    adds: &[DataFile],
    removes: &BTreeSet<String>,
    now: i64,
    opts: &Policy,
    commit_id: &str,
) -> Result<(Done, Vec<(String, Bytes)>), TableError> {
    let prefix = metadata_prefix(topic);
    let put = |body: Vec<u8>, name: String| (format!("{prefix}{name}"), Bytes::from(body));
    let mut to_write: Vec<(String, Bytes)> = Vec::new();
    // Manifests written now carry the schema current now (typed columns evolve it).
    let schema = typed::current(meta);
    let mut list: Vec<(ManifestFile, Vec<Entry>)> = manifests;
    list.retain(|(_, e)| e.iter().any(|e| e.status != Status::Deleted));
    let totals = |list: &[(ManifestFile, Vec<Entry>)]| {
        let live = list
            .iter()
            .flat_map(|(_, e)| e)
            .filter(|e| e.status != Status::Deleted);
        live.fold((0usize, 0i64, 0i64), |(n, r, b), e| {
            (n + 1, r + e.file.record_count, b + e.file.file_size)
        })
    };
    let mut new_snapshots = Vec::new();
    let mut seq = meta.last_sequence_number;
    let mut parent = meta.current().map(|s| s.snapshot_id);

    let snapshot = |list: &[(ManifestFile, Vec<Entry>)],
                    sid: i64,
                    seq: i64,
                    parent: Option<i64>,
                    operation: &str,
                    changed: BTreeMap<String, String>,
                    to_write: &mut Vec<(String, Bytes)>|
     -> Result<Snapshot, TableError> {
        let files: Vec<ManifestFile> = list.iter().map(|(m, _)| m.clone()).collect();
        let body = manifest::write_manifest_list(&files, sid, parent, seq)?;
        let (key, bytes) = put(body, format!("snap-{sid}-1-{commit_id}.avro"));
        to_write.push((key.clone(), bytes));
        let (n, records, size) = totals(list);
        let mut summary = changed;
        summary.insert("operation".into(), operation.into());
        for (k, v) in [
            ("total-data-files", n.to_string()),
            ("total-records", records.to_string()),
            ("total-files-size", size.to_string()),
            ("total-delete-files", "0".into()),
            ("total-position-deletes", "0".into()),
            ("total-equality-deletes", "0".into()),
        ] {
            summary.insert(k.into(), v);
        }
        Ok(Snapshot {
            snapshot_id: sid,
            parent_snapshot_id: parent,
            sequence_number: seq,
            timestamp_ms: now,
            manifest_list: uri(store, &key),
            summary,
            schema_id: Some(meta.current_schema_id),
        })
    };
    let manifest_key = |n: usize| format!("{prefix}{commit_id}-m{n}.avro");
    let mut manifests_written = 0usize;

    // A compaction's removals and additions (every added file compacted, every removed one inside
    // an added file's range) are one `replace` snapshot, which incremental readers may skip: no
    // snapshot shows the table with one and not the other. Anything else that removes and adds
    // (retention and new files in one sync) is a `delete` snapshot, then an `append`.
    let replace = is_compaction(adds, removes);
    struct Removal {
        sid: i64,
        seq: i64,
        changed: BTreeMap<String, String>,
        records: i64,
        partitions: BTreeSet<i32>,
    }
    let mut pending: Option<Removal> = None;
    if !removes.is_empty() {
        seq += 1;
        let sid = snapshot_id(meta);
        let mut removed = (0usize, 0i64, 0i64);
        let mut partitions = BTreeSet::new();
        for (m, entries) in list.iter_mut() {
            if !entries
                .iter()
                .any(|e| e.status != Status::Deleted && removes.contains(&e.file.path))
            {
                continue;
            }
            let rewritten: Vec<Entry> = entries
                .iter()
                .filter(|e| e.status != Status::Deleted)
                .map(|e| {
                    let gone = removes.contains(&e.file.path);
                    if gone {
                        removed = (
                            removed.0 + 1,
                            removed.1 + e.file.record_count,
                            removed.2 + e.file.file_size,
                        );
                        partitions.insert(e.file.partition);
                    }
                    Entry {
                        status: if gone {
                            Status::Deleted
                        } else {
                            Status::Existing
                        },
                        snapshot_id: if gone { sid } else { e.snapshot_id },
                        ..e.clone()
                    }
                })
                .collect();
            let body = manifest::write_manifest(&rewritten, &schema)?;
            let key = manifest_key(manifests_written);
            manifests_written += 1;
            let described =
                manifest::describe(uri(store, &key), body.len() as i64, &rewritten, sid, seq);
            to_write.push((key, Bytes::from(body)));
            *m = described;
            *entries = rewritten;
        }
        let mut changed = BTreeMap::from([
            ("deleted-data-files".to_string(), removed.0.to_string()),
            ("deleted-records".to_string(), removed.1.to_string()),
            ("removed-files-size".to_string(), removed.2.to_string()),
        ]);
        if !replace {
            changed.insert(
                "changed-partition-count".to_string(),
                partitions.len().to_string(),
            );
            let s = snapshot(&list, sid, seq, parent, "delete", changed, &mut to_write)?;
            parent = Some(sid);
            meta.snapshots.push(s.clone());
            new_snapshots.push(s);
            // A manifest with nothing live was listed only to say what the delete removed.
            list.retain(|(_, e)| e.iter().any(|e| e.status != Status::Deleted));
        } else {
            pending = Some(Removal {
                sid,
                seq,
                changed,
                records: removed.1,
                partitions,
            });
        }
    }

    if !adds.is_empty() {
        let (sid, removed_records, mut partitions, mut changed) = match pending.take() {
            Some(r) => {
                seq = r.seq;
                (r.sid, Some(r.records), r.partitions, r.changed)
            }
            None => {
                seq += 1;
                (snapshot_id(meta), None, BTreeSet::new(), BTreeMap::new())
            }
        };
        // Too many manifests: merge what is live into one (a manifest that only says what this
        // snapshot removed is dropped then: readers of it need only the live files).
        if list.len() + 1 > opts.max_manifests.max(2) {
            let merged: Vec<Entry> = list
                .iter()
                .flat_map(|(_, e)| e)
                .filter(|e| e.status != Status::Deleted)
                .map(|e| Entry {
                    status: Status::Existing,
                    ..e.clone()
                })
                .collect();
            let body = manifest::write_manifest(&merged, &schema)?;
            let key = manifest_key(manifests_written);
            manifests_written += 1;
            let described =
                manifest::describe(uri(store, &key), body.len() as i64, &merged, sid, seq);
            to_write.push((key, Bytes::from(body)));
            list = vec![(described, merged)];
        }
        let entries: Vec<Entry> = adds
            .iter()
            .map(|f| Entry {
                status: Status::Added,
                snapshot_id: sid,
                sequence_number: seq,
                file_sequence_number: seq,
                file: f.clone(),
            })
            .collect();
        let body = manifest::write_manifest(&entries, &schema)?;
        let key = manifest_key(manifests_written);
        let described = manifest::describe(uri(store, &key), body.len() as i64, &entries, sid, seq);
        to_write.push((key, Bytes::from(body)));
        // Newest first, as Iceberg's writers list them.
        list.insert(0, (described, entries));
        partitions.extend(adds.iter().map(|f| f.partition));
        let added_records = adds.iter().map(|f| f.record_count).sum::<i64>();
        changed.extend([
            ("added-data-files".to_string(), adds.len().to_string()),
            ("added-records".to_string(), added_records.to_string()),
            (
                "added-files-size".to_string(),
                adds.iter().map(|f| f.file_size).sum::<i64>().to_string(),
            ),
            (
                "changed-partition-count".to_string(),
                partitions.len().to_string(),
            ),
        ]);
        let operation = match removed_records {
            None => "append",
            Some(_) => "replace",
        };
        let s = snapshot(&list, sid, seq, parent, operation, changed, &mut to_write)?;
        meta.snapshots.push(s.clone());
        new_snapshots.push(s);
    }

    // Expire the oldest snapshots past the age (never those of this commit).
    let expired_n = expiring(meta, now, opts).min(meta.snapshots.len() - new_snapshots.len());
    let expired: Vec<Snapshot> = meta.snapshots.drain(..expired_n).collect();
    let gone: BTreeSet<i64> = expired.iter().map(|s| s.snapshot_id).collect();
    meta.snapshot_log.retain(|l| !gone.contains(&l.snapshot_id));
    for s in &new_snapshots {
        meta.snapshot_log.push(SnapshotLogEntry {
            snapshot_id: s.snapshot_id,
            timestamp_ms: s.timestamp_ms,
        });
    }
    if let Some(last) = new_snapshots.last() {
        meta.current_snapshot_id = last.snapshot_id;
        meta.refs.insert(
            "main".into(),
            Ref {
                snapshot_id: last.snapshot_id,
                kind: "branch".into(),
            },
        );
    }
    meta.last_sequence_number = seq;
    // The log names the previous file with the time it was written.
    if version > 0 {
        meta.metadata_log.push(MetadataLogEntry {
            metadata_file: uri(store, &version_key(topic, version)),
            timestamp_ms: meta.last_updated_ms,
        });
    }
    meta.last_updated_ms = now.max(meta.last_updated_ms);
    let excess = meta
        .metadata_log
        .len()
        .saturating_sub(opts.previous_versions);
    let dropped_versions: Vec<String> = meta
        .metadata_log
        .drain(..excess)
        .map(|l| l.metadata_file)
        .collect();
    let (files, records, _) = totals(&list);
    let done = Done {
        files,
        records,
        oldest_kept_list: meta.snapshots.first().map(|s| s.manifest_list.clone()),
        expired,
        dropped_versions,
    };
    Ok((done, to_write))
}

/// The change is a compaction's: every added file is a compacted one, and every removed file lies
/// in the range of an added one of its partition (by the ranges their names carry).
fn is_compaction(adds: &[DataFile], removes: &BTreeSet<String>) -> bool {
    let key = |uri: &str| {
        uri.rfind("data/topic=")
            .and_then(|i| paths::DataFileKey::parse(&uri[i..]))
    };
    let added: Vec<(i32, i64, i64)> = adds
        .iter()
        .filter_map(|f| key(&f.path).and_then(|k| Some((k.partition, k.start, k.end?))))
        .collect();
    !removes.is_empty()
        && added.len() == adds.len()
        && removes.iter().all(|r| {
            key(r).is_some_and(|k| {
                added
                    .iter()
                    .any(|(p, s, e)| *p == k.partition && *s <= k.start && k.start < *e)
            })
        })
}

/// Point `version-hint.text` at `version` unless it already names a newer one. Best effort:
/// readers that follow the hint to an older version still read a valid table.
async fn point_hint(store: &dyn ObjectStore, topic: &str, version: u64) {
    let key = hint_key(topic);
    let body = Bytes::from(version.to_string());
    for _ in 0..5 {
        let put = match store.get(&key).await {
            Ok(got) => {
                let current = std::str::from_utf8(&got.body)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok());
                // Never backwards, unless the hint names a version that is not there (the folder
                // was deleted and the table built again).
                if let Some(c) = current.filter(|&c| c >= version) {
                    if c == version || exists(store, &version_key(topic, c)).await.unwrap_or(true) {
                        return;
                    }
                }
                store
                    .put(
                        &key,
                        body.clone(),
                        PutMode::Update {
                            etag: got.meta.etag,
                        },
                    )
                    .await
            }
            Err(StorageError::NotFound { .. }) => {
                store.put(&key, body.clone(), PutMode::Create).await
            }
            Err(e) => Err(e),
        };
        match put {
            Ok(_) => return,
            Err(
                StorageError::PreconditionFailed { .. }
                | StorageError::AlreadyExists { .. }
                | StorageError::NotFound { .. },
            ) => continue,
            Err(e) => {
                tracing::warn!(topic, error = %e, "could not update the table's version-hint.text");
                return;
            }
        }
    }
}

/// Delete what the commit made unreachable: the expired snapshots' manifest lists, their manifests
/// that the oldest kept snapshot no longer lists (manifests only ever leave a linear history, so
/// no later snapshot lists them), and metadata files dropped from the log. Best effort: what a
/// crash leaves is unreferenced and harmless.
async fn clean_up(store: &dyn ObjectStore, done: &Done) {
    let mut doomed: BTreeSet<String> = BTreeSet::new();
    let mut kept: BTreeSet<String> = BTreeSet::new();
    if let Some(list) = &done.oldest_kept_list {
        match read_uri(store, list)
            .await
            .and_then(|b| manifest::read_manifest_list(&b))
        {
            Ok(list) => kept.extend(list.into_iter().map(|m| m.path)),
            Err(e) => {
                tracing::warn!(error = %e, "expired snapshots' manifests left in place");
                return;
            }
        }
    }
    for s in &done.expired {
        doomed.insert(s.manifest_list.clone());
        if let Ok(list) = read_uri(store, &s.manifest_list)
            .await
            .and_then(|b| manifest::read_manifest_list(&b))
        {
            doomed.extend(
                list.into_iter()
                    .map(|m| m.path)
                    .filter(|p| !kept.contains(p)),
            );
        }
    }
    doomed.extend(done.dropped_versions.iter().cloned());
    let keys: Vec<String> = doomed.iter().filter_map(|u| key_of(store, u)).collect();
    if let Err(e) = store.delete_many(&keys).await {
        tracing::warn!(error = %e, "could not delete expired table metadata");
    }
}
