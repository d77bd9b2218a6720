//! `rewind retention --older-than D`: delete the files whose newest record is older than the
//! cutoff, only from the beginning of each chain, never a partition's newest file nor one its
//! checkpoint has not passed, and the consumer-group snapshots no restore inside the kept history
//! needs. Compacted topics (`cleanup.policy` containing `compact` in their `_topics/` document,
//! or no document to tell) are left out unless asked for: Kafka keeps a compacted key's latest
//! value forever, so age says nothing about whether the archive still needs it.
//!
//! Invariant: the chain stays a contiguous suffix. The new start is recorded
//! (`_retention/<topic>/<p>.json`) before anything is deleted, so a run that stops half-way leaves
//! files before the start that readers ignore and the next run deletes, never a hole.

use std::collections::BTreeMap;

use crate::kafka::topics::TopicSelector;
use futures::StreamExt;
use serde::Serialize;

use super::{identity, OpsError, Progress};
use crate::archive::chain;
use crate::archive::documents::{self, gap_key, ChainStart, TopicMeta, CLAIMS_PREFIX};
use crate::archive::paths::{topic_key, DATA_PREFIX};
use crate::archive::time::rfc3339_millis;
use crate::storage::ObjectStore;

/// Keys per delete request.
const DELETE_BATCH: usize = 500;
/// Partitions planned at once.
const CONCURRENCY: usize = 8;

/// What one retention run deletes (or would delete with `--dry-run`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    pub cutoff: String,
    pub dry_run: bool,
    /// Data files, with their partition's new start.
    pub files: Vec<DeletedFile>,
    pub bytes: u64,
    pub records: u64,
    /// Gap documents, chain-start left-overs, and group snapshots.
    pub documents: Vec<String>,
    pub group_snapshots: usize,
    /// Keys of unfinished uploads (a writer killed mid-upload) aborted, or with `--dry-run` all
    /// unfinished uploads there are.
    pub abandoned_uploads: Vec<String>,
    /// Selected topics left alone because they are compacted (or have no `_topics/` document to
    /// tell); `include_compacted` applies retention to them too.
    pub skipped_compacted: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeletedFile {
    pub key: String,
    pub topic: String,
    pub partition: i32,
    pub bytes: u64,
    pub records: Option<u64>,
    pub max_timestamp: Option<String>,
}

/// Apply retention with `cutoff_ms` to the topics `topics` selects, compacted ones only when
/// `include_compacted`; group snapshots and unfinished uploads started before `abandoned_before`
/// are cleaned only when `prune_groups` (every topic selected).
pub async fn retention(
    store: &dyn ObjectStore,
    topics: &TopicSelector,
    cutoff_ms: i64,
    include_compacted: bool,
    prune_groups: bool,
    abandoned_before: std::time::SystemTime,
    dry_run: bool,
) -> Result<RetentionReport, OpsError> {
    identity(store).await?;
    let listed = chain::list_all(store).await?;
    let mut report = RetentionReport {
        cutoff: rfc3339_millis(cutoff_ms),
        dry_run,
        ..RetentionReport::default()
    };
    let names: std::collections::BTreeSet<&str> = listed
        .keys()
        .map(|(t, _)| t.as_str())
        .filter(|t| topics.is_match(t))
        .collect();
    if !include_compacted {
        for topic in names {
            if let Some(why) = compacted(store, topic).await? {
                tracing::warn!(
                    topic,
                    "{why}: left out of retention (--include-compacted applies it)"
                );
                report.skipped_compacted.push(topic.to_string());
            }
        }
    }
    let selected: Vec<_> = listed
        .iter()
        .filter(|((t, _), _)| topics.is_match(t) && !report.skipped_compacted.contains(t))
        .collect();
    let mut progress = Progress::new("retention", "partitions", selected.len() as u64);
    let mut plans =
        futures::stream::iter(selected.into_iter().map(|((topic, partition), files)| {
            plan_partition(store, topic, *partition, files, cutoff_ms)
        }))
        .buffered(CONCURRENCY);
    let mut work = Vec::new();
    while let Some(plan) = plans.next().await {
        progress.add(1);
        if let Some(plan) = plan? {
            work.push(plan);
        }
    }
    progress.finish();
    for plan in work {
        if !dry_run {
            if let Some(start) = &plan.start {
                // The new start first: from here on readers ignore what is about to go.
                documents::advance_chain_start(store, start).await?;
            }
            let keys: Vec<String> = plan
                .files
                .iter()
                .map(|f| f.key.clone())
                .chain(plan.documents.iter().cloned())
                .collect();
            delete(store, &keys).await?;
        }
        report.bytes += plan.files.iter().map(|f| f.bytes).sum::<u64>();
        report.records += plan.files.iter().filter_map(|f| f.records).sum::<u64>();
        report.files.extend(plan.files);
        report.documents.extend(plan.documents);
    }
    if prune_groups {
        let snapshots = old_group_snapshots(store, cutoff_ms).await?;
        if !dry_run {
            delete(store, &snapshots).await?;
        }
        report.group_snapshots = snapshots.len();
        report.documents.extend(snapshots);
        // Unfinished uploads older than a writer could still be working on one; best effort:
        // a store that cannot list or abort them does not undo what was pruned above.
        let uploads = if dry_run {
            store.incomplete_uploads(DATA_PREFIX).await
        } else {
            store
                .abort_incomplete_uploads(DATA_PREFIX, abandoned_before)
                .await
        };
        match uploads {
            Ok(keys) => report.abandoned_uploads = keys,
            Err(e) => {
                tracing::warn!(error = %e, "unfinished uploads could not be listed or aborted; an S3 lifecycle rule with AbortIncompleteMultipartUpload cleans them")
            }
        }
    }
    Ok(report)
}

/// Why `topic` is to be treated as compacted, if it is: its `_topics/` document says
/// `cleanup.policy` holds `compact`, or there is no document to say it does not.
async fn compacted(store: &dyn ObjectStore, topic: &str) -> Result<Option<String>, OpsError> {
    let key = topic_key(topic);
    Ok(match documents::read_doc::<TopicMeta>(store, &key).await? {
        None => Some(format!(
            "topic {topic} has no {key}, so whether it is compacted is unknown"
        )),
        Some(meta) => meta
            .configs
            .get("cleanup.policy")
            .filter(|policy| policy.split(',').any(|p| p.trim() == "compact"))
            .map(|policy| format!("topic {topic} is compacted (cleanup.policy={policy})")),
    })
}

struct PartitionRetention {
    start: Option<ChainStart>,
    files: Vec<DeletedFile>,
    documents: Vec<String>,
}

/// What retention removes from one partition: the longest prefix of its chain (never the last
/// file) whose files' newest records are older than the cutoff, plus anything left before the
/// recorded start by an earlier run.
async fn plan_partition(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    files: &[(crate::archive::paths::DataFileKey, u64)],
    cutoff_ms: i64,
) -> Result<Option<PartitionRetention>, OpsError> {
    let mut chain = chain::load(store, topic, partition, files, &BTreeMap::new()).await?;
    let mut out = PartitionRetention {
        start: None,
        files: Vec::new(),
        documents: Vec::new(),
    };
    // Left-overs of an interrupted run: files and gaps before the recorded start. A start past
    // every file (a stale or hand-made document) is not trusted: nothing is a left-over then, and
    // the newest listed file is never one.
    let recorded = documents::read_chain_start(store, topic, partition).await?;
    let first = match (&recorded, chain.start()) {
        // Only a start that a file begins at is one retention wrote for these files; anything
        // else (a stale document, a partition moved aside and backed up again) is left alone.
        (Some(r), Some(first)) if r.start == first => first,
        (None, Some(first)) => first,
        _ => {
            tracing::warn!(
                topic,
                partition,
                "the chain start recorded in _retention/ matches no data file of the partition; leaving the partition alone (run `rewind verify`)"
            );
            return Ok(None);
        }
    };
    let newest = files.last().map(|(k, _)| k.start);
    for (key, size) in files
        .iter()
        .filter(|(k, _)| k.start < first && Some(k.start) != newest)
    {
        out.files.push(DeletedFile {
            key: key.to_string(),
            topic: topic.to_string(),
            partition,
            bytes: *size,
            records: None,
            max_timestamp: None,
        });
    }
    // The deletable prefix, reading footers a batch at a time until a file is young enough. Never
    // the newest file, and never past the checkpoint: a sink resumes there, and must find the
    // chain in front of it (a checkpoint lags the files only after a crash, briefly).
    let checkpoint_end = documents::read_checkpoint(store, topic, partition)
        .await?
        .map_or(i64::MIN, |c| c.doc.end);
    let candidates = chain
        .files
        .iter()
        .take(chain.files.len().saturating_sub(1))
        .take_while(|f| f.end <= checkpoint_end)
        .count();
    let mut cut = 0;
    'walk: while cut < candidates {
        let batch = cut..(cut + 16).min(candidates);
        chain::read_footers(store, &mut chain, |i, _| batch.contains(&i)).await?;
        for i in batch {
            match chain.files[i].footer.and_then(|f| f.max_timestamp) {
                Some(max) if max < cutoff_ms => cut = i + 1,
                _ => break 'walk,
            }
        }
    }
    for f in &chain.files[..cut] {
        let footer = f.footer.expect("read above");
        out.files.push(DeletedFile {
            key: f.key.clone(),
            topic: topic.to_string(),
            partition,
            bytes: f.size,
            records: Some(footer.records),
            max_timestamp: footer.max_timestamp.map(rfc3339_millis),
        });
    }
    let new_start = chain.files.get(cut).map_or(first, |f| f.start);
    if cut > 0 {
        out.start = Some(ChainStart {
            topic: topic.to_string(),
            partition,
            start: new_start,
            cutoff: rfc3339_millis(cutoff_ms),
            updated_at: rfc3339_millis(crate::archive::time::now_ms()),
        });
    }
    for gap in documents::read_gaps(store, topic, partition).await? {
        // A gap ending at the new start stays: it says those offsets were never archived, which
        // a restore that had reached them must be able to tell from offsets retention deleted.
        if gap.end < new_start {
            out.documents.push(gap_key(topic, partition, gap.start));
        }
    }
    if !out.files.is_empty() {
        // The claims of the ranges that go (see the chain in docs/archive-format.md).
        let prefix = format!("{CLAIMS_PREFIX}{topic}/{partition}/");
        for object in store.list(&prefix).await? {
            let start = object
                .key
                .strip_prefix(&prefix)
                .and_then(|name| name.strip_suffix(".json"))
                .and_then(|n| n.parse::<i64>().ok());
            if start.is_some_and(|s| s < new_start) {
                out.documents.push(object.key);
            }
        }
    }
    Ok((!out.files.is_empty() || !out.documents.is_empty()).then_some(out))
}

/// Group snapshots older than the newest one at or before the cutoff, per group: the group's
/// position at any time after the cutoff stays known.
async fn old_group_snapshots(
    store: &dyn ObjectStore,
    cutoff_ms: i64,
) -> Result<Vec<String>, OpsError> {
    let mut by_group: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for object in store.list(crate::archive::paths::GROUPS_PREFIX).await? {
        if let Some((group, taken)) = documents::parse_group_snapshot_key(&object.key) {
            by_group
                .entry(group.to_string())
                .or_default()
                .push((taken, object.key.clone()));
        }
    }
    let mut old = Vec::new();
    for mut snapshots in by_group.into_values() {
        snapshots.sort();
        // The newest at or before the cutoff is kept: it is the position as of the cutoff.
        let keep_from = snapshots
            .iter()
            .rposition(|(t, _)| *t <= cutoff_ms)
            .unwrap_or(0);
        old.extend(snapshots.drain(..keep_from).map(|(_, k)| k));
    }
    Ok(old)
}

async fn delete(store: &dyn ObjectStore, keys: &[String]) -> Result<(), OpsError> {
    for batch in keys.chunks(DELETE_BATCH) {
        store.delete_many(batch).await?;
    }
    Ok(())
}
