//! The small JSON documents of the archive: its identity (`_archive.json`), one checkpoint per
//! partition (`_checkpoints/<topic>/<p>.json`), topic metadata (`_topics/<topic>.json`) and recorded
//! gaps (`_gaps/<topic>/<p>/<start>.json`) and the claims that publish data files
//! (`_claims/<topic>/<p>/<start>.json`).
//!
//! Invariant: a checkpoint only moves forward. It is replaced by compare-and-swap, and a writer that
//! loses the race re-reads and stops if the winner is already at or past its position. A claim is
//! created once and never replaced: the first data file claimed at a start is the chain's file there.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::time::rfc3339_millis;
use super::{ARCHIVE_FORMAT_VERSION, FORMAT_VERSION};
// The keys of the documents, re-exported where the documents are.
pub use super::paths::{
    chain_start_key, claim_key, gap_key, group_prefix, group_snapshot_key,
    parse_group_snapshot_key, CLAIMS_PREFIX, RETENTION_PREFIX,
};
use crate::storage::{ObjectStore, PutMode, StorageError};

/// Why an archive document could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{url}: {key} is not valid JSON for this version of Rewind: {message}")]
    Corrupt {
        url: String,
        key: String,
        message: String,
    },
    #[error("{url}: archive format version {found} is not supported (this build reads versions 1 to {ARCHIVE_FORMAT_VERSION}); use a newer rewind")]
    UnsupportedVersion { url: String, found: u32 },
    #[error("{url}: the archive belongs to Kafka cluster {archived:?}, not {connected:?}; use another archive, or pass --allow-cluster-change if the cluster was rebuilt on purpose")]
    OtherCluster {
        url: String,
        archived: String,
        connected: String,
    },
}

/// `_archive.json`: what the archive is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format_version: u32,
    pub created_at: String,
    /// Id of the Kafka cluster the archive backs up.
    pub cluster_id: String,
    pub writer: String,
    /// The archive's own id, 12 random hex digits drawn when it was created (archives created
    /// before it existed have none, and are named by a hash instead: see `archive_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Identity {
    /// A short stable name of the archive: its random `id`, or for an archive created without one,
    /// 12 hex digits of a hash (64-bit FNV-1a) of its cluster id and creation time. Every spelling
    /// of the archive's URL, and every copy of the configuration, names the same archive; a
    /// byte-for-byte copy of the archive keeps it too. (A hash alone named two archives created in
    /// the same millisecond alike.)
    pub fn archive_id(&self) -> String {
        if let Some(id) = &self.id {
            return id.clone();
        }
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self
            .cluster_id
            .bytes()
            .chain([0])
            .chain(self.created_at.bytes())
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:012x}", hash >> 16)
    }
}

/// Latest durable position of one partition's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format_version: u32,
    pub topic: String,
    pub partition: i32,
    /// Offset after the last durable file: where the chain continues.
    pub end: i64,
    /// Key of the last durable file.
    pub last_file: String,
    /// Newest record timestamp archived so far (milliseconds), if any had one.
    pub max_timestamp: Option<i64>,
    pub updated_at: String,
}

/// `_topics/<topic>.json`: what is needed to recreate the topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Non-default topic configs (`cleanup.policy`, `retention.ms`, ...).
    pub configs: BTreeMap<String, String>,
    pub updated_at: String,
}

/// A recorded hole in a chain: offsets `[start, end)` were never archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
    /// e.g. `retention`: the broker had deleted the records before they were archived.
    pub reason: String,
    pub detected_at: String,
}

/// `_claims/<topic>/<p>/<start:020>.json`: which data file holds the chain's range starting at
/// `start`. Data file keys carry a time bucket, so two writers that disagree on the bucket of a
/// range's first record (a record compacted away between their reads, a record without a timestamp)
/// can both create a file at one start; the claim, created only if absent, is what publishes one of
/// them. A file another file's claim outranks is an orphan its writer deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    /// Key of the claimed data file, or of the gap document (`_gaps/…`) when the range is a
    /// recorded gap.
    pub key: String,
    /// For a gap, and for a compacted file (which `rewind compact` hands the claim to): where it
    /// ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
    pub created_at: String,
}

impl Claim {
    /// The range is a recorded gap, not a data file.
    pub fn is_gap(&self) -> bool {
        self.key.starts_with(super::paths::GAPS_PREFIX)
    }
}

/// Claim a start for `claim.key`, create-only. Returns the claim now stored: `claim` itself, or the
/// one another writer created first.
pub async fn claim(store: &dyn ObjectStore, claim: &Claim) -> Result<Claim, ArchiveError> {
    let key = claim_key(&claim.topic, claim.partition, claim.start);
    match store.put(&key, to_json(claim), PutMode::Create).await {
        Ok(_) => Ok(claim.clone()),
        Err(StorageError::AlreadyExists { .. }) => match read_doc::<Claim>(store, &key).await? {
            Some(stored) => Ok(stored),
            // Deleted in between (retention removing the range): nothing claims it now.
            None => Err(StorageError::NotFound {
                url: store.url().to_string(),
                key,
            }
            .into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// The claim of the range of one partition that starts at `start`, if any.
pub async fn read_claim(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    start: i64,
) -> Result<Option<Claim>, ArchiveError> {
    read_doc(store, &claim_key(topic, partition, start)).await
}

/// `_groups/<group>/<taken_at:020>.json`: the committed offsets of one consumer group at one moment,
/// so that a restore can move the group to the matching place in the target cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSnapshot {
    pub group: String,
    /// Milliseconds since the epoch when the offsets were read.
    pub taken_at_ms: i64,
    pub taken_at: String,
    /// topic → partition → committed offset (the next record the group would read).
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// `_retention/<topic>/<p>.json`: where a partition's chain begins after `rewind retention` deleted
/// its oldest files. Files and gaps before `start` are no longer part of the chain (a retention run
/// that stopped half-way may have left some; the next run deletes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStart {
    pub topic: String,
    pub partition: i32,
    /// First offset of the chain.
    pub start: i64,
    /// Records older than this (RFC 3339) were deleted.
    pub cutoff: String,
    pub updated_at: String,
}

/// A partition's chain start, if retention ever moved it.
pub async fn read_chain_start(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
) -> Result<Option<ChainStart>, ArchiveError> {
    read_doc(store, &chain_start_key(topic, partition)).await
}

/// Record a partition's chain start by compare-and-swap, never moving it backwards (two retention
/// runs racing keep the later start; an unreadable document is replaced).
pub async fn advance_chain_start(
    store: &dyn ObjectStore,
    start: &ChainStart,
) -> Result<(), ArchiveError> {
    let key = chain_start_key(&start.topic, start.partition);
    loop {
        let mode = match store.get(&key).await {
            Ok(got) => {
                let current: Option<ChainStart> = serde_json::from_slice(&got.body).ok();
                if current.is_some_and(|c| c.start >= start.start) {
                    return Ok(());
                }
                PutMode::Update {
                    etag: got.meta.etag,
                }
            }
            Err(StorageError::NotFound { .. }) => PutMode::Create,
            Err(e) => return Err(e.into()),
        };
        match store.put(&key, to_json(start), mode).await {
            Ok(_) => return Ok(()),
            Err(
                StorageError::AlreadyExists { .. }
                | StorageError::PreconditionFailed { .. }
                | StorageError::NotFound { .. },
            ) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// How the default group of a Rewind sink is named (`rewind-sink-<archive id>`).
pub const SINK_GROUP_PREFIX: &str = "rewind-sink-";

/// Whether a group is a Rewind sink's by its default name. Such groups are never snapshotted nor
/// moved by `restore --groups`: their offsets say where a backup stands in the source cluster, and
/// moving them in a target would make a sink of the target skip or repeat records. (A sink's group
/// with a name of the user's choosing is known by its commit marker when snapshots are taken.)
pub fn is_sink_group(group: &str) -> bool {
    group.starts_with(SINK_GROUP_PREFIX)
}

/// Whether a consumer group id can name a `_groups/` folder as it is. Other groups are skipped
/// (with a warning) rather than escaped, so that the folder name always is the group id.
pub fn storable_group(group: &str) -> bool {
    !group.is_empty()
        && group.len() <= 249
        && group != "."
        && group != ".."
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@+=".contains(&b))
}

fn to_json<T: Serialize>(doc: &T) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(doc).expect("archive documents serialize"))
}

fn from_json<T: for<'de> Deserialize<'de>>(
    store: &dyn ObjectStore,
    key: &str,
    body: &[u8],
) -> Result<T, ArchiveError> {
    serde_json::from_slice(body).map_err(|e| ArchiveError::Corrupt {
        url: store.url().to_string(),
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// Read and parse a JSON document of the archive; `None` when it does not exist.
pub async fn read_doc<T: for<'de> Deserialize<'de>>(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<T>, ArchiveError> {
    match store.get(key).await {
        Ok(got) => Ok(Some(from_json(store, key, &got.body)?)),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Write a JSON document of the archive according to `mode`.
pub async fn write_doc<T: Serialize>(
    store: &dyn ObjectStore,
    key: &str,
    doc: &T,
    mode: PutMode,
) -> Result<(), ArchiveError> {
    store.put(key, to_json(doc), mode).await?;
    Ok(())
}

/// Every recorded gap of one partition, in offset order.
pub async fn read_gaps(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
) -> Result<Vec<Gap>, ArchiveError> {
    let mut gaps = Vec::new();
    for object in store
        .list(&format!(
            "{}{topic}/{partition}/",
            super::paths::GAPS_PREFIX
        ))
        .await?
    {
        if let Some(gap) = read_doc::<Gap>(store, &object.key).await? {
            gaps.push(gap);
        }
    }
    gaps.sort_by_key(|g| g.start);
    Ok(gaps)
}

/// Read `_archive.json`, or `None` for an archive nobody wrote to yet.
pub async fn read_identity(store: &dyn ObjectStore) -> Result<Option<Identity>, ArchiveError> {
    match store.get(super::paths::ARCHIVE_KEY).await {
        Ok(got) => {
            let identity: Identity = from_json(store, super::paths::ARCHIVE_KEY, &got.body)?;
            if !(1..=ARCHIVE_FORMAT_VERSION).contains(&identity.format_version) {
                return Err(ArchiveError::UnsupportedVersion {
                    url: store.url().to_string(),
                    found: identity.format_version,
                });
            }
            Ok(Some(identity))
        }
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Make sure the archive exists and belongs to `cluster_id` (created on first use). With
/// `allow_other`, an archive of another cluster is accepted as it is.
pub async fn ensure_identity(
    store: &dyn ObjectStore,
    cluster_id: &str,
    allow_other: bool,
    now_ms: i64,
) -> Result<Identity, ArchiveError> {
    let identity = match read_identity(store).await? {
        Some(identity) => identity,
        None => {
            let fresh = Identity {
                format_version: FORMAT_VERSION,
                created_at: rfc3339_millis(now_ms),
                cluster_id: cluster_id.to_string(),
                writer: concat!("rewind ", env!("CARGO_PKG_VERSION")).to_string(),
                id: Some(format!("{:012x}", rand::random::<u64>() >> 16)),
            };
            match store
                .put(super::paths::ARCHIVE_KEY, to_json(&fresh), PutMode::Create)
                .await
            {
                Ok(_) => fresh,
                // Another worker created it first: theirs is the identity.
                Err(StorageError::AlreadyExists { .. }) => {
                    read_identity(store).await?.unwrap_or(fresh)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if identity.cluster_id != cluster_id && !allow_other {
        return Err(ArchiveError::OtherCluster {
            url: store.url().to_string(),
            archived: identity.cluster_id,
            connected: cluster_id.to_string(),
        });
    }
    Ok(identity)
}

/// Record in `_archive.json` that the archive uses format version `version` (2: it may hold
/// compacted files), before anything of that version is written, so that a build which reads only
/// earlier versions refuses the archive instead of misreading its chains. Never lowers it.
pub async fn require_format_version(
    store: &dyn ObjectStore,
    version: u32,
) -> Result<Identity, ArchiveError> {
    let url = || store.url().to_string();
    loop {
        let got = match store.get(super::paths::ARCHIVE_KEY).await {
            Ok(got) => got,
            Err(StorageError::NotFound { .. }) => {
                return Err(ArchiveError::Storage(StorageError::NotFound {
                    url: url(),
                    key: super::paths::ARCHIVE_KEY.to_string(),
                }))
            }
            Err(e) => return Err(e.into()),
        };
        let mut identity: Identity = from_json(store, super::paths::ARCHIVE_KEY, &got.body)?;
        if identity.format_version > ARCHIVE_FORMAT_VERSION {
            return Err(ArchiveError::UnsupportedVersion {
                url: url(),
                found: identity.format_version,
            });
        }
        if identity.format_version >= version {
            return Ok(identity);
        }
        identity.format_version = version;
        let mode = PutMode::Update {
            etag: got.meta.etag,
        };
        match store
            .put(super::paths::ARCHIVE_KEY, to_json(&identity), mode)
            .await
        {
            Ok(_) => return Ok(identity),
            // Another writer changed it meanwhile (or a lost reply hid our own write): look again.
            Err(StorageError::PreconditionFailed { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A claim with the version tag needed to replace it.
pub async fn read_claim_versioned(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    start: i64,
) -> Result<Option<Versioned<Claim>>, ArchiveError> {
    read_versioned(store, &claim_key(topic, partition, start)).await
}

/// A document with the version tag needed to replace it, or `None` when there is none.
async fn read_versioned<T: for<'de> Deserialize<'de>>(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<Versioned<T>>, ArchiveError> {
    match store.get(key).await {
        Ok(got) => Ok(Some(Versioned {
            doc: from_json(store, key, &got.body)?,
            etag: got.meta.etag,
        })),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Hand the start of a claim to a compacted file (`next`), only if the claim is still the version
/// `known` (compare-and-swap). Returns the claim now stored: `next`, or what another writer stored
/// first (or `None` when the claim is gone).
pub async fn replace_claim(
    store: &dyn ObjectStore,
    next: &Claim,
    known: &Versioned<Claim>,
) -> Result<Option<Claim>, ArchiveError> {
    let key = claim_key(&next.topic, next.partition, next.start);
    let mode = PutMode::Update {
        etag: known.etag.clone(),
    };
    match store.put(&key, to_json(next), mode).await {
        Ok(_) => Ok(Some(next.clone())),
        Err(StorageError::PreconditionFailed { .. } | StorageError::NotFound { .. }) => {
            read_claim(store, &next.topic, next.partition, next.start).await
        }
        Err(e) => Err(e.into()),
    }
}

/// A checkpoint with the version tag needed to replace it.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub doc: T,
    pub etag: String,
}

pub async fn read_checkpoint(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
) -> Result<Option<Versioned<Checkpoint>>, ArchiveError> {
    read_versioned(store, &super::paths::checkpoint_key(topic, partition)).await
}

/// Create a partition's first checkpoint, where its chain begins, unless one exists. Returns the
/// checkpoint now stored: `first`, or the one another worker created first, whose start is then
/// the chain's (two workers starting an empty partition at different log starts must not begin
/// two chains).
pub async fn create_checkpoint(
    store: &dyn ObjectStore,
    first: &Checkpoint,
) -> Result<Versioned<Checkpoint>, ArchiveError> {
    let key = super::paths::checkpoint_key(&first.topic, first.partition);
    loop {
        match store.put(&key, to_json(first), PutMode::Create).await {
            Ok(put) => {
                return Ok(Versioned {
                    doc: first.clone(),
                    etag: put.etag,
                })
            }
            Err(StorageError::AlreadyExists { .. }) => {
                if let Some(stored) = read_checkpoint(store, &first.topic, first.partition).await? {
                    return Ok(stored);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Move a partition's checkpoint forward to `next` (never backwards) over the chain's files and
/// gaps from `from`, the start of the last one the caller claimed. `known` is the version the
/// caller last saw. Returns the checkpoint now stored: `next`, a later one another writer stored
/// first, or one strictly inside `(from, next.end)`, which is left as it is. The chain passed
/// `from` through a file other than the caller's then: the claim the caller holds at `from` was
/// recreated after retention deleted the chain's own (a late worker writing that file again), and
/// its file lies before the chain's recorded start.
pub async fn advance_checkpoint(
    store: &dyn ObjectStore,
    next: &Checkpoint,
    from: i64,
    mut known: Option<Versioned<Checkpoint>>,
) -> Result<Versioned<Checkpoint>, ArchiveError> {
    let key = super::paths::checkpoint_key(&next.topic, next.partition);
    loop {
        if let Some(current) = &known {
            if current.doc.end >= next.end || current.doc.end > from {
                return Ok(current.clone());
            }
        }
        let mode = match &known {
            Some(current) => PutMode::Update {
                etag: current.etag.clone(),
            },
            None => PutMode::Create,
        };
        match store.put(&key, to_json(next), mode).await {
            Ok(put) => {
                return Ok(Versioned {
                    doc: next.clone(),
                    etag: put.etag,
                })
            }
            Err(
                StorageError::AlreadyExists { .. }
                | StorageError::PreconditionFailed { .. }
                | StorageError::NotFound { .. },
            ) => {
                known = read_checkpoint(store, &next.topic, next.partition).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Write `_topics/<topic>.json` when it differs from what is stored (ignoring `updated_at`).
pub async fn write_topic_meta(
    store: &dyn ObjectStore,
    meta: &TopicMeta,
) -> Result<bool, ArchiveError> {
    let key = super::paths::topic_key(&meta.topic);
    match store.get(&key).await {
        Ok(got) => {
            let stored: TopicMeta = from_json(store, &key, &got.body)?;
            if (TopicMeta {
                updated_at: meta.updated_at.clone(),
                ..stored
            }) == *meta
            {
                return Ok(false);
            }
        }
        Err(StorageError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    store.put(&key, to_json(meta), PutMode::Overwrite).await?;
    Ok(true)
}

/// Record a gap; recording the same gap twice is harmless.
pub async fn record_gap(store: &dyn ObjectStore, gap: &Gap) -> Result<(), ArchiveError> {
    match store
        .put(
            &gap_key(&gap.topic, gap.partition, gap.start),
            to_json(gap),
            PutMode::Create,
        )
        .await
    {
        Ok(_) | Err(StorageError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::{LocalStore, StorageUrl};

    fn store(dir: &tempfile::TempDir) -> Arc<dyn ObjectStore> {
        Arc::new(
            LocalStore::open(
                StorageUrl::parse(&format!("file://{}", dir.path().display())).unwrap(),
            )
            .unwrap(),
        )
    }

    fn checkpoint(end: i64) -> Checkpoint {
        Checkpoint {
            format_version: FORMAT_VERSION,
            topic: "t".into(),
            partition: 0,
            end,
            last_file: format!("f{end}"),
            max_timestamp: None,
            updated_at: rfc3339_millis(0),
        }
    }

    #[tokio::test]
    async fn identity_is_created_once_and_guards_the_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let first = ensure_identity(&*store, "cluster-a", false, 0)
            .await
            .unwrap();
        assert_eq!(first.cluster_id, "cluster-a");
        assert_eq!(
            ensure_identity(&*store, "cluster-a", false, 5)
                .await
                .unwrap(),
            first,
            "not rewritten"
        );
        let err = ensure_identity(&*store, "cluster-b", false, 0)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("belongs to Kafka cluster \"cluster-a\", not \"cluster-b\""),
            "{err}"
        );
        assert_eq!(
            ensure_identity(&*store, "cluster-b", true, 0)
                .await
                .unwrap(),
            first
        );

        store
            .put(
                "_archive.json",
                Bytes::from_static(
                    br#"{"format_version":9,"created_at":"","cluster_id":"x","writer":""}"#,
                ),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let err = read_identity(&*store).await.unwrap_err();
        assert!(
            matches!(err, ArchiveError::UnsupportedVersion { found: 9, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn checkpoints_never_move_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let v10 = advance_checkpoint(&*store, &checkpoint(10), 0, None)
            .await
            .unwrap();
        let v20 = advance_checkpoint(&*store, &checkpoint(20), 10, Some(v10.clone()))
            .await
            .unwrap();
        assert_eq!(v20.doc.end, 20);
        // A zombie that still believes in version 10 tries to store 15: refused, 20 stays.
        let after = advance_checkpoint(&*store, &checkpoint(15), 10, Some(v10.clone()))
            .await
            .unwrap();
        assert_eq!(after.doc.end, 20);
        // A zombie that saw nothing tries to create: the stored one wins.
        let after = advance_checkpoint(&*store, &checkpoint(12), 0, None)
            .await
            .unwrap();
        assert_eq!(after.doc.end, 20);
        // A stale version but a further position: it moves forward.
        let after = advance_checkpoint(&*store, &checkpoint(30), 20, Some(v10))
            .await
            .unwrap();
        assert_eq!(after.doc.end, 30);
        assert_eq!(
            read_checkpoint(&*store, "t", 0)
                .await
                .unwrap()
                .unwrap()
                .doc
                .end,
            30
        );
        // A late worker whose file at 5 (claimed again after retention deleted the chain's own)
        // reaches 40: the chain passed 5 elsewhere, so 30 stays.
        let after = advance_checkpoint(&*store, &checkpoint(40), 5, None)
            .await
            .unwrap();
        assert_eq!(after.doc.end, 30);
    }

    #[tokio::test]
    async fn topic_metadata_is_rewritten_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let mut meta = TopicMeta {
            topic: "t".into(),
            partitions: 3,
            replication_factor: 1,
            configs: BTreeMap::new(),
            updated_at: "a".into(),
        };
        assert!(write_topic_meta(&*store, &meta).await.unwrap());
        meta.updated_at = "b".into();
        assert!(!write_topic_meta(&*store, &meta).await.unwrap());
        meta.partitions = 6;
        assert!(write_topic_meta(&*store, &meta).await.unwrap());
    }
}
