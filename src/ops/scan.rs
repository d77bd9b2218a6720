//! One pass over an archive's metadata: every data file's key, size and footer (one ranged read of
//! its tail each, several at once), and every checkpoint, gap, chain start and topic document.
//! `verify` judges what it finds; `ls` sums it up. No data page is read.

use std::collections::BTreeMap;

use crate::kafka::topics::TopicSelector;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::{identity, OpsError, Progress};
use crate::archive::chain::{self, FileFooter};
use crate::archive::documents::{
    self, ChainStart, Checkpoint, Gap, Identity, TopicMeta, RETENTION_PREFIX,
};
use crate::archive::paths::{self, DataFileKey, DATA_PREFIX};
use crate::storage::ObjectStore;

/// Requests in flight at once.
const CONCURRENCY: usize = 32;

/// A data file as listed, with its footer or why it could not be read.
#[derive(Debug, Clone)]
pub struct ScannedFile {
    pub key: String,
    pub parsed: DataFileKey,
    pub size: u64,
    pub footer: Result<FileFooter, String>,
}

/// What the archive holds for one partition.
#[derive(Debug, Clone)]
pub struct PartitionScan {
    pub topic: String,
    pub partition: i32,
    /// In offset order of their keys, including files before the chain's recorded start.
    pub files: Vec<ScannedFile>,
    /// Recorded gaps (key, gap) in offset order.
    pub gaps: Vec<(String, Gap)>,
    /// Where retention says the chain begins.
    pub start: Option<ChainStart>,
    pub checkpoint: Option<Checkpoint>,
    /// Files that share a start with the chain's file there and lost its claim: a writer died
    /// before deleting what it wrote in a lost race. Readers skip them.
    pub orphans: Vec<ScannedFile>,
    /// Files inside the range of a compacted file of the chain, which replaced them: a compaction
    /// stopped before deleting them. Readers skip them.
    pub covered: Vec<ScannedFile>,
}

impl PartitionScan {
    /// The files of the chain: those at or after its effective start ([`chain::effective_start`]).
    pub fn chain_files(&self) -> &[ScannedFile] {
        let recorded = self.start.as_ref().map(|s| s.start);
        match chain::effective_start(
            recorded,
            self.files.iter().map(|f| (f.parsed.start, f.parsed.end)),
        ) {
            Some(first) => &self.files[self.files.partition_point(|f| f.parsed.start < first)..],
            None => &self.files,
        }
    }
}

/// Everything one scan found.
#[derive(Debug)]
pub struct Scan {
    pub identity: Identity,
    pub partitions: Vec<PartitionScan>,
    /// `_topics/` documents of the selected topics.
    pub topics: BTreeMap<String, TopicMeta>,
    /// Documents that exist but could not be read: (key, why).
    pub unreadable: Vec<(String, String)>,
    /// Objects under `data/` that are not data files.
    pub stray: Vec<String>,
}

impl Scan {
    /// Data files scanned.
    pub fn files(&self) -> usize {
        self.partitions.iter().map(|p| p.files.len()).sum()
    }

    /// Partitions that a topic's `_topics/` document counts and the archive knows nothing of (no
    /// file, checkpoint, gap or chain start), by topic. The sink writes a partition's first
    /// checkpoint when it opens it, so even a partition that never had a record is known; a
    /// missing one was never backed up into this archive (another archive's sink in the same
    /// consumer group, say).
    pub fn missing_partitions(&self) -> BTreeMap<&str, Vec<i32>> {
        let known: std::collections::BTreeSet<(&str, i32)> = self
            .partitions
            .iter()
            .map(|p| (p.topic.as_str(), p.partition))
            .collect();
        let mut missing = BTreeMap::new();
        for meta in self.topics.values() {
            let lacking: Vec<i32> = (0..meta.partitions)
                .filter(|p| !known.contains(&(meta.topic.as_str(), *p)))
                .collect();
            missing.insert(meta.topic.as_str(), lacking);
        }
        missing
    }
}

/// Scan the partitions of the topics `topics` selects. `label` names the progress line.
pub async fn scan(
    store: &dyn ObjectStore,
    topics: &TopicSelector,
    label: &'static str,
) -> Result<Scan, OpsError> {
    let identity = identity(store).await?;
    let mut partitions: BTreeMap<(String, i32), PartitionScan> = BTreeMap::new();
    let mut unreadable = Vec::new();
    // Checkpoints before the data listing: a checkpoint only moves after its file is durable, so
    // every file a checkpoint read here vouches for is in the listing, even while a sink writes.
    // Gaps after it: a gap is recorded before the file that follows it is written.
    let checkpoints: Vec<(String, Checkpoint)> =
        read_docs(store, paths::CHECKPOINTS_PREFIX, topics, &mut unreadable).await?;
    let mut stray = Vec::new();
    let mut listed = Vec::new();
    for object in store.list(DATA_PREFIX).await? {
        match DataFileKey::parse(&object.key) {
            Some(parsed) if topics.is_match(&parsed.topic) => listed.push((object, parsed)),
            Some(_) => {}
            None => stray.push(object.key),
        }
    }

    // The other small documents, keyed by what they describe.
    let gaps: Vec<(String, Gap)> =
        read_docs(store, paths::GAPS_PREFIX, topics, &mut unreadable).await?;
    let starts: Vec<(String, ChainStart)> =
        read_docs(store, RETENTION_PREFIX, topics, &mut unreadable).await?;
    let metas: Vec<(String, TopicMeta)> =
        read_docs(store, paths::TOPICS_PREFIX, topics, &mut unreadable).await?;
    for (_, c) in checkpoints {
        let (topic, partition) = (c.topic.clone(), c.partition);
        part(&mut partitions, &topic, partition).checkpoint = Some(c);
    }
    for (key, g) in gaps {
        part(&mut partitions, &g.topic.clone(), g.partition)
            .gaps
            .push((key, g));
    }
    for (_, s) in starts {
        let (topic, partition) = (s.topic.clone(), s.partition);
        part(&mut partitions, &topic, partition).start = Some(s);
    }

    // Footers, several at once, with a progress line on a terminal.
    let mut progress = Progress::new(label, "files", listed.len() as u64);
    let mut footers =
        futures::stream::iter(listed.into_iter().map(|(object, parsed)| async move {
            let footer = chain::read_file_footer(store, &object.key, object.size).await;
            (object, parsed, footer)
        }))
        .buffer_unordered(CONCURRENCY);
    while let Some((object, parsed, footer)) = footers.next().await {
        progress.add(1);
        let footer = match footer {
            Ok(f) => Ok(f),
            Err(chain::ChainError::BadFile { message, .. }) => Err(message),
            Err(chain::ChainError::Archive(documents::ArchiveError::Storage(
                crate::storage::StorageError::NotFound { .. },
            ))) => {
                // Deleted since it was listed (retention running): not part of the archive now.
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        part(&mut partitions, &parsed.topic.clone(), parsed.partition)
            .files
            .push(ScannedFile {
                key: object.key,
                parsed,
                size: object.size,
                footer,
            });
    }
    progress.finish();
    let mut partitions: Vec<PartitionScan> = partitions.into_values().collect();
    for p in &mut partitions {
        p.files.sort_by_key(|f| (f.parsed.start, f.key.clone()));
        p.gaps.sort_by_key(|(_, g)| g.start);
        // Files that lost the claim of their start to another file are not the chain's.
        let keys: Vec<(DataFileKey, u64)> =
            p.files.iter().map(|f| (f.parsed.clone(), f.size)).collect();
        let gap_starts = p.gaps.iter().map(|(_, g)| g.start).collect();
        let (_, orphans) =
            chain::without_orphans(store, &p.topic, p.partition, &keys, &gap_starts).await?;
        if !orphans.is_empty() {
            let orphans: std::collections::BTreeSet<String> =
                orphans.iter().map(|(k, _)| k.to_string()).collect();
            let (orphaned, kept): (Vec<ScannedFile>, Vec<ScannedFile>) =
                std::mem::take(&mut p.files)
                    .into_iter()
                    .partition(|f| orphans.contains(&f.key));
            p.files = kept;
            p.orphans = orphaned;
        }
        // Then the files a compacted file of the chain replaced.
        let skip = p.files.len() - p.chain_files().len();
        let keys: Vec<(DataFileKey, u64)> = p.files[skip..]
            .iter()
            .map(|f| (f.parsed.clone(), f.size))
            .collect();
        let (_, covered) = chain::without_covered(&keys);
        if !covered.is_empty() {
            let covered: std::collections::BTreeSet<String> =
                covered.iter().map(|(k, _)| k.to_string()).collect();
            let (replaced, kept): (Vec<ScannedFile>, Vec<ScannedFile>) =
                std::mem::take(&mut p.files)
                    .into_iter()
                    .partition(|f| covered.contains(&f.key));
            p.files = kept;
            p.covered = replaced;
        }
    }
    Ok(Scan {
        identity,
        partitions,
        topics: metas
            .into_iter()
            .map(|(_, m)| (m.topic.clone(), m))
            .collect(),
        unreadable,
        stray,
    })
}

fn part<'a>(
    partitions: &'a mut BTreeMap<(String, i32), PartitionScan>,
    topic: &str,
    partition: i32,
) -> &'a mut PartitionScan {
    partitions
        .entry((topic.to_string(), partition))
        .or_insert_with(|| PartitionScan {
            topic: topic.to_string(),
            partition,
            files: Vec::new(),
            gaps: Vec::new(),
            start: None,
            checkpoint: None,
            orphans: Vec::new(),
            covered: Vec::new(),
        })
}

/// The topic a document key under `prefix` belongs to: the first path segment after the prefix,
/// without `.json` (`_topics/<t>.json`, `_checkpoints/<t>/<p>.json`, ...).
fn topic_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    let first = rest.split('/').next()?;
    Some(first.strip_suffix(".json").unwrap_or(first))
}

/// Read every JSON document under `prefix` of the selected topics, several at once; documents that
/// do not parse go to `unreadable`.
async fn read_docs<T: DeserializeOwned + Send>(
    store: &dyn ObjectStore,
    prefix: &str,
    topics: &TopicSelector,
    unreadable: &mut Vec<(String, String)>,
) -> Result<Vec<(String, T)>, OpsError> {
    let keys: Vec<String> = store
        .list(prefix)
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with(".json") && topic_of(prefix, k).is_some_and(|t| topics.is_match(t)))
        .collect();
    let read: Vec<_> = futures::stream::iter(keys.into_iter().map(|key| async move {
        let doc = documents::read_doc::<T>(store, &key).await;
        (key, doc)
    }))
    .buffered(CONCURRENCY)
    .collect()
    .await;
    let mut out = Vec::new();
    for (key, doc) in read {
        match doc {
            Ok(Some(doc)) => out.push((key, doc)),
            Ok(None) => {}
            Err(documents::ArchiveError::Corrupt { message, .. }) => {
                unreadable.push((key, message))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}
