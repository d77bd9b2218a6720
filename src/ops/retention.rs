//! `rewind retention --older-than D`: delete the files whose newest record is older than the
//! cutoff, only from the beginning of each chain, never a partition's newest file nor one its
//! checkpoint has not passed, and the consumer-group snapshots no restore inside the kept history
//! needs. Compacted topics (`cleanup.policy` containing `compact` in their `_topics/` document,
//! or no document to tell) are left out unless asked for: Kafka keeps a compacted key's latest
//! value forever, so age says nothing about whether the archive still needs it.
//!
//! Named restore points (`_marks/`) are kept by rules (`--keep-marks 'daily-.*=30d'`): a mark a rule
//! matches is kept while younger than its rule's age and expires after (its document goes), and a
//! mark no rule matches is kept until deleted, like a manual snapshot. A kept mark holds back every
//! file holding an offset at or after the log start it recorded, so that a restore to it still
//! gives every record the cluster held at it; the report says, per kept mark, what that costs.
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
use crate::archive::marks::{self, Mark};
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
    /// Marks kept, with what each holds back that the age alone would have deleted.
    pub kept_marks: Vec<KeptMark>,
    /// Marks past their rule's age: their documents are deleted, and retention no longer keeps
    /// what they needed.
    pub expired_marks: Vec<String>,
}

/// A mark retention keeps, and what it costs.
#[derive(Debug, Clone, Serialize)]
pub struct KeptMark {
    pub name: String,
    pub taken_at: String,
    /// The rule that keeps it (`PATTERN=AGE`), or none: a mark no rule matches is kept until it
    /// is deleted.
    pub rule: Option<String>,
    /// Files (and their bytes) older than the cutoff kept because this mark needs them (each
    /// counted for the oldest mark that needs it).
    pub files_held: usize,
    pub bytes_held: u64,
    /// Whether the archive still holds everything the mark needs (see `rewind ls`).
    pub restorable_in_full: bool,
}

/// Keep the marks whose names match `pattern` (whole name) while younger than `max_age`
/// (`None`: forever).
#[derive(Debug, Clone)]
pub struct KeepRule {
    pub pattern: TopicSelector,
    pub max_age: Option<std::time::Duration>,
    /// As the user wrote it.
    pub text: String,
}

impl KeepRule {
    /// `PATTERN=AGE`, the age a duration (`30d`) or `forever`.
    pub fn parse(s: &str) -> Result<KeepRule, String> {
        let (pattern, age) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?} is not PATTERN=AGE (e.g. 'daily-.*=30d')"))?;
        let pattern = TopicSelector::new(pattern).map_err(|e| {
            format!(
                "{pattern:?} is not a valid regular expression: {}",
                crate::kafka::topics::regex_problem(&e)
            )
        })?;
        let max_age = match age {
            "forever" => None,
            age => Some(crate::config::units::duration::parse(age).map_err(|e| {
                format!("{age:?} in {s:?} is not an age (30d, 12h or forever): {e}")
            })?),
        };
        Ok(KeepRule {
            pattern,
            max_age,
            text: s.to_string(),
        })
    }
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
    opts: &RetentionOptions,
) -> Result<RetentionReport, OpsError> {
    let RetentionOptions {
        ref topics,
        cutoff_ms,
        include_compacted,
        prune_groups,
        abandoned_before,
        dry_run,
        ref keep_marks,
        now_ms,
    } = *opts;
    identity(store).await?;
    let listed = chain::list_all(store).await?;
    let mut report = RetentionReport {
        cutoff: rfc3339_millis(cutoff_ms),
        dry_run,
        ..RetentionReport::default()
    };
    // Which marks are kept, and the offset each partition must keep from.
    let mut kept: Vec<(Mark, Option<String>)> = Vec::new();
    for mark in marks::list(store).await? {
        let rule = keep_marks.iter().find(|r| r.pattern.is_match(&mark.name));
        let expired = rule.is_some_and(|r| {
            r.max_age.is_some_and(|age| {
                now_ms.saturating_sub(mark.taken_at_ms)
                    > i64::try_from(age.as_millis()).unwrap_or(i64::MAX)
            })
        });
        if expired {
            report.expired_marks.push(mark.name.clone());
        } else {
            kept.push((mark, rule.map(|r| r.text.clone())));
        }
    }
    let mut floors: BTreeMap<(String, i32), (i64, usize)> = BTreeMap::new();
    for (i, (mark, _)) in kept.iter().enumerate() {
        for p in mark
            .partitions
            .iter()
            .filter(|p| p.records_end > p.log_start)
        {
            let floor = floors
                .entry((p.topic.clone(), p.partition))
                .or_insert((p.log_start, i));
            if p.log_start < floor.0 {
                *floor = (p.log_start, i);
            }
        }
    }
    let mut held = vec![(0usize, 0u64); kept.len()];
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
            let floor = floors.get(&(topic.clone(), *partition)).copied();
            plan_partition(store, topic, *partition, files, cutoff_ms, floor)
        }))
        .buffered(CONCURRENCY);
    let mut work = Vec::new();
    while let Some(plan) = plans.next().await {
        progress.add(1);
        if let Some(plan) = plan? {
            if let Some((mark, files, bytes)) = plan.held {
                held[mark].0 += files;
                held[mark].1 += bytes;
            }
            work.push(plan);
        }
    }
    progress.finish();
    crate::failpoint::stall(crate::failpoint::RETENTION_STALL_AFTER_PLAN).await;
    let mut held_for_tables = std::collections::BTreeSet::new();
    if !dry_run {
        for plan in &work {
            if let Some(start) = &plan.start {
                // The new start first: from here on readers ignore what is about to go.
                documents::advance_chain_start(store, start).await?;
            }
        }
        // Then the topics' Iceberg tables stop listing it (a delete snapshot), so that a query
        // never meets a file that is gone; a crash after the starts moved makes the next sync do it.
        let topics: std::collections::BTreeSet<&str> = work
            .iter()
            .flat_map(|p| p.files.iter().map(|f| f.topic.as_str()))
            .collect();
        for topic in topics {
            if let Err(e) = crate::tables::sync_existing(store, topic).await {
                // Its files stay (before the new start, where readers ignore them) until a run
                // whose table commit lands: deleting them now would leave the table naming them.
                tracing::warn!(topic, error = %e, "could not remove the files to delete from the topic's Iceberg table; they stay until the next retention run");
                held_for_tables.insert(topic.to_string());
            }
        }
    }
    for mut plan in work {
        if !dry_run {
            plan.files.retain(|f| !held_for_tables.contains(&f.topic));
            keep_claims_of_compactions(store, &mut plan).await?;
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
    // The expired marks' documents, once what they held may be gone.
    let expired: Vec<String> = report
        .expired_marks
        .iter()
        .map(|name| marks::mark_key(name))
        .collect();
    if !dry_run {
        delete(store, &expired).await?;
    }
    report.documents.extend(expired);
    let statuses = if kept.is_empty() {
        Vec::new()
    } else {
        // What the archive holds of each kept mark now (after this run, unless a dry run).
        let held_now = marks::held(store, |t, p| floors.contains_key(&(t.to_string(), p)))
            .await
            .map_err(|e| OpsError::Input(e.to_string()))?;
        kept.iter()
            .map(|(m, _)| {
                let s = marks::status(m, &held_now);
                s.short.is_empty() && s.lost.is_empty()
            })
            .collect()
    };
    report.kept_marks = kept
        .into_iter()
        .zip(held)
        .enumerate()
        .map(|(i, ((mark, rule), (files, bytes)))| KeptMark {
            name: mark.name,
            taken_at: mark.taken_at,
            rule,
            files_held: files,
            bytes_held: bytes,
            restorable_in_full: statuses.get(i).copied().unwrap_or(true),
        })
        .collect();
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

/// Recorded gaps run without a hole from `from` to `to`.
fn gaps_reach(gaps: &[documents::Gap], from: i64, to: i64) -> bool {
    let mut reached = from;
    while reached < to {
        match gaps.iter().find(|g| g.start == reached && g.end > reached) {
            Some(g) => reached = g.end,
            None => return false,
        }
    }
    true
}

/// What one retention run is asked to do.
#[derive(Debug, Clone)]
pub struct RetentionOptions {
    pub topics: TopicSelector,
    /// Files whose newest record is older than this may go.
    pub cutoff_ms: i64,
    /// Compacted topics too.
    pub include_compacted: bool,
    /// Group snapshots and unfinished uploads too (every topic selected).
    pub prune_groups: bool,
    /// Unfinished uploads started before this are aborted.
    pub abandoned_before: std::time::SystemTime,
    pub dry_run: bool,
    /// Which marks are kept, and how long.
    pub keep_marks: Vec<KeepRule>,
    /// The time marks' ages are taken at.
    pub now_ms: i64,
}

struct PartitionRetention {
    topic: String,
    partition: i32,
    start: Option<ChainStart>,
    files: Vec<DeletedFile>,
    documents: Vec<String>,
    /// Files (and bytes) old enough to go that the mark at this index of the kept marks holds.
    held: Option<(usize, usize, u64)>,
}

/// A compaction that ran meanwhile may have merged files this run planned to delete into one that
/// holds the new start, and handed it the claims of their starts: those claims stay, or a late
/// worker could claim a start the compacted file holds (and orphan it). The claims in the range
/// of every compacted file this run does not delete are taken out of `plan`.
async fn keep_claims_of_compactions(
    store: &dyn ObjectStore,
    plan: &mut PartitionRetention,
) -> Result<(), OpsError> {
    let claims = format!("{CLAIMS_PREFIX}{}/{}/", plan.topic, plan.partition);
    if !plan.documents.iter().any(|k| k.starts_with(&claims)) {
        return Ok(());
    }
    let deleted: std::collections::HashSet<&str> =
        plan.files.iter().map(|f| f.key.as_str()).collect();
    let listed = store
        .list(&crate::archive::paths::DataFileKey::partition_prefix(
            &plan.topic,
            plan.partition,
        ))
        .await?;
    let kept: Vec<(i64, i64)> = listed
        .iter()
        .filter(|o| !deleted.contains(o.key.as_str()))
        .filter_map(|o| crate::archive::paths::DataFileKey::parse(&o.key))
        .filter_map(|k| k.end.map(|end| (k.start, end)))
        .collect();
    if kept.is_empty() {
        return Ok(());
    }
    plan.documents.retain(|key| {
        let start = key
            .strip_prefix(&claims)
            .and_then(|name| name.strip_suffix(".json"))
            .and_then(|n| n.parse::<i64>().ok());
        !start.is_some_and(|s| kept.iter().any(|(a, b)| *a <= s && s < *b))
    });
    Ok(())
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
    // The offset a kept mark needs the chain to begin at or before, and which mark.
    floor: Option<(i64, usize)>,
) -> Result<Option<PartitionRetention>, OpsError> {
    let mut chain = chain::load(store, topic, partition, files, &BTreeMap::new()).await?;
    let mut out = PartitionRetention {
        topic: topic.to_string(),
        partition,
        start: None,
        files: Vec::new(),
        documents: Vec::new(),
        held: None,
    };
    // Left-overs of an interrupted run: files and gaps before the recorded start. A start past
    // every file (a stale or hand-made document) is not trusted: nothing is a left-over then, and
    // the newest listed file is never one.
    let recorded = documents::read_chain_start(store, topic, partition).await?;
    let first = match (&recorded, chain.start()) {
        // Only a start that a file begins at is one retention wrote for these files; anything
        // else (a stale document, a partition moved aside and backed up again) is left alone.
        (Some(r), Some(first)) if r.start == first => first,
        // Recorded at a file that then lost the claim of its start to a gap (a worker found the
        // offsets deleted from Kafka): the chain begins with the gap.
        (Some(r), Some(first)) if r.start < first && gaps_reach(&chain.gaps, r.start, first) => {
            first
        }
        // A compacted file that holds the recorded start begins the chain (a compaction merged
        // the file retention recorded the start at into it).
        (Some(r), Some(first))
            if first < r.start
                && chain.files[0].end > r.start
                && crate::archive::paths::DataFileKey::parse(&chain.files[0].key)
                    .is_some_and(|k| k.end.is_some()) =>
        {
            first
        }
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
    // Never a compacted file reaching past the start: it holds records the chain keeps (a
    // compaction that ran with an earlier retention merged the file the start was recorded at,
    // and its parts, still there until that compaction deletes them, begin the chain meanwhile).
    for (key, size) in files.iter().filter(|(k, _)| {
        k.start < first && Some(k.start) != newest && k.end.is_none_or(|end| end <= first)
    }) {
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
    if let Some((floor, mark)) = floor {
        // A file holding an offset at or after the mark's log start stays, with every file after it.
        let kept_from = chain.files[..cut]
            .iter()
            .position(|f| f.end > floor)
            .unwrap_or(cut);
        if kept_from < cut {
            let bytes = chain.files[kept_from..cut].iter().map(|f| f.size).sum();
            out.held = Some((mark, cut - kept_from, bytes));
            cut = kept_from;
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
    for gap in documents::read_gaps(store, topic, partition).await? {
        // A gap ending at the new start stays: it says those offsets were never archived, which
        // a restore that had reached them must be able to tell from offsets retention deleted.
        if gap.end < new_start {
            out.documents.push(gap_key(topic, partition, gap.start));
        }
    }
    // The start is recorded whenever something before it goes, gaps too: a file a late worker
    // writes there afterwards (one whose put's reply was lost, say) lies before it, where readers
    // look at nothing, instead of beginning the chain where the gap was.
    let moves = recorded.as_ref().is_none_or(|r| r.start < new_start);
    if cut > 0 || (moves && !out.documents.is_empty()) {
        out.start = Some(ChainStart {
            topic: topic.to_string(),
            partition,
            start: new_start,
            cutoff: rfc3339_millis(cutoff_ms),
            updated_at: rfc3339_millis(crate::archive::time::now_ms()),
        });
    }
    if !out.files.is_empty() || !out.documents.is_empty() {
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
    Ok((!out.files.is_empty() || !out.documents.is_empty() || out.held.is_some()).then_some(out))
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
