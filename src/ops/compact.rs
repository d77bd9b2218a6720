//! `rewind compact`: merge the small files of a partition's closed hours into one file each, so
//! that engines and restores make a few requests where they made hundreds, without changing one
//! byte of any record and without a moment where a reader of the chain sees a record twice or not
//! at all (a reader that listed the parts before they were deleted fails reading one, naming it,
//! and finds the compacted file when it reads the chain again).
//!
//! A run is a sequence of files `P0 … Pk` that follow each other in the chain with no gap between
//! them, all in one hour folder whose hour ended at least `settle` ago, all below the partition's
//! checkpoint and none the chain's last file (a compacted file may be one of them: an hour whose
//! last file was the chain's last when it was first compacted is merged again later). Its compacted file `W` holds their records and
//! covers their range `[P0.start, Pk.end)`, which its name carries
//! (`<start:020>-<end:020>.parquet`, archive format version 2). The commit order:
//!
//! 1. the claim of `P0.start` exists (created naming `P0` if absent: an archive from before claims);
//! 2. `_archive.json` says format version 2, so that builds which read only version 1 refuse the
//!    archive rather than misread it;
//! 3. `W` is written create-only in the hour's folder;
//! 4. the claims of `P1 … Pk`'s starts, in order, then `P0`'s, are handed from their part to `W`
//!    by compare-and-swap; `P0`'s is **the commit**. Before it `W` is an orphan readers skip (it
//!    lost the claim of its start); after it `P0` is, and `P1 … Pk` lie inside `W`'s range, which
//!    readers skip too (`chain::without_covered`). Two compactions whose runs overlap share a start
//!    both must take from its part, so at most one commits; the other gives back what it took;
//! 5. the topic's Iceberg table, if it has one, commits a `replace` snapshot;
//! 6. `P0 … Pk` are deleted (a run that stops before leaves them to the next run; `verify` names
//!    them).
//!
//! A compactor that loses a compare-and-swap deletes its `W` once it gave every claim back; one that
//! crashed between 3 and the commit left an orphan (and perhaps claims naming it) that a later run
//! of the same files finds at the same key and commits.
//! A part is deleted only once its start's claim names `W`, so that a writer still holding those
//! records (a sink that lost its partition long ago and flushes late) loses the claim of their
//! start to `W` and continues at `W`'s end.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::{identity, OpsError, Progress};
use crate::archive::chain::{self, ChainFile};
use crate::archive::datafile;
use crate::archive::documents::{self, Claim};
use crate::archive::paths::DataFileKey;
use crate::archive::time::{now_ms, rfc3339_millis};
use crate::archive::typed;
use crate::archive::Record;
use crate::kafka::topics::TopicSelector;
use crate::storage::{ObjectStore, PutMode, StorageError};

/// What one compaction run is asked to do.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    pub topics: TopicSelector,
    /// An hour is compacted once it ended at least this long ago (milliseconds): records of an
    /// hour keep arriving in its open file until a record of a later hour closes it.
    pub settle_ms: i64,
    /// Stored bytes of the files merged into one compacted file, at most (a run longer than this
    /// becomes several compacted files).
    pub max_bytes: u64,
    /// Upload part size for large compacted files.
    pub part_size: usize,
    pub dry_run: bool,
    pub now_ms: i64,
}

impl CompactOptions {
    pub const DEFAULT_SETTLE_MS: i64 = 3_600_000;
    pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;
}

/// One compacted file (or, in a dry run, one that would be written).
#[derive(Debug, Clone, Serialize)]
pub struct CompactedFile {
    pub topic: String,
    pub partition: i32,
    pub key: String,
    pub start: i64,
    pub end: i64,
    /// The files it replaced.
    pub parts: usize,
    pub records: u64,
    /// Stored bytes of the parts, and of the compacted file.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// What a compaction run did.
#[derive(Debug, Default, Serialize)]
pub struct CompactReport {
    pub archive: String,
    pub dry_run: bool,
    pub partitions: usize,
    pub compacted: Vec<CompactedFile>,
    /// Files deleted: the parts of this run's compacted files, and those earlier runs left.
    pub deleted: usize,
    /// Runs another compactor (or a sink, or retention) changed under this one; the next run
    /// looks again.
    pub skipped: usize,
    /// Topics whose Iceberg table could not take the compaction: their parts stay (readers of the
    /// chain skip them) until a run whose table commit lands.
    pub held_for_tables: Vec<String>,
    /// Partitions that could not be compacted (a file that does not read, a broken chain), with
    /// why; the others were.
    pub errors: Vec<PartitionError>,
    pub seconds: f64,
}

/// Why one partition was not compacted.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionError {
    pub topic: String,
    pub partition: i32,
    pub error: String,
}

impl CompactReport {
    pub fn files_before(&self) -> usize {
        self.compacted.iter().map(|c| c.parts).sum()
    }
}

/// Compact every selected partition.
pub async fn compact(
    store: &dyn ObjectStore,
    opts: &CompactOptions,
) -> Result<CompactReport, OpsError> {
    let started = Instant::now();
    let identity = identity(store).await?;
    let listed = chain::list_all(store).await?;
    let selected: Vec<_> = listed
        .iter()
        .filter(|((t, _), _)| opts.topics.is_match(t))
        .collect();
    let mut report = CompactReport {
        archive: store.url().to_string(),
        dry_run: opts.dry_run,
        partitions: selected.len(),
        ..CompactReport::default()
    };
    let mut progress = Progress::new("compact", "partitions", selected.len() as u64);
    // Per topic, the keys to delete once its table (if any) has taken the change.
    let mut doomed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut upgraded = false;
    for ((topic, partition), files) in selected {
        let outcome = match compact_partition(
            store,
            topic,
            *partition,
            files,
            opts,
            &identity.cluster_id,
            &mut upgraded,
        )
        .await
        {
            Ok(outcome) => outcome,
            // The store is away: nothing else would fare better.
            Err(e @ OpsError::Archive(crate::archive::documents::ArchiveError::Storage(_))) => {
                return Err(e)
            }
            // One partition's trouble is its own: the others are compacted.
            Err(e) => {
                tracing::warn!(topic, partition, error = %e, "could not compact the partition");
                report.errors.push(PartitionError {
                    topic: topic.clone(),
                    partition: *partition,
                    error: e.to_string(),
                });
                PartitionOutcome::default()
            }
        };
        progress.add(1);
        report.skipped += outcome.skipped;
        report.compacted.extend(outcome.compacted);
        if !outcome.delete.is_empty() {
            doomed
                .entry(topic.clone())
                .or_default()
                .extend(outcome.delete);
        }
    }
    progress.finish();
    if opts.dry_run {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    for (topic, keys) in doomed {
        // The table stops listing the parts (a replace snapshot) before they go, so that a query
        // never meets a file that is gone.
        if let Err(e) = crate::tables::sync_existing(store, &topic).await {
            tracing::warn!(topic, error = %e, "could not replace the compacted files in the topic's Iceberg table; they stay (readers of the chain skip them) until the next compaction");
            report.held_for_tables.push(topic);
            continue;
        }
        store.delete_many(&keys).await?;
        report.deleted += keys.len();
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[derive(Default)]
struct PartitionOutcome {
    compacted: Vec<CompactedFile>,
    /// Parts of committed compacted files (this run's and earlier runs' left-overs).
    delete: Vec<String>,
    skipped: usize,
}

async fn compact_partition(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    files: &[(DataFileKey, u64)],
    opts: &CompactOptions,
    cluster_id: &str,
    upgraded: &mut bool,
) -> Result<PartitionOutcome, OpsError> {
    let mut out = PartitionOutcome::default();
    if !opts.dry_run {
        out.delete = leftovers(store, topic, partition, files).await?;
    }
    let chain = chain::load(store, topic, partition, files, &BTreeMap::new()).await?;
    let checkpoint_end = documents::read_checkpoint(store, topic, partition)
        .await?
        .map_or(i64::MIN, |c| c.doc.end);
    for run in runs(&chain.files, checkpoint_end, opts) {
        if opts.dry_run {
            out.compacted.push(CompactedFile {
                topic: topic.to_string(),
                partition,
                key: compacted_key(&run).to_string(),
                start: run[0].start,
                end: run[run.len() - 1].end,
                parts: run.len(),
                records: 0,
                bytes_before: run.iter().map(|f| f.size).sum(),
                bytes_after: 0,
            });
            continue;
        }
        if !*upgraded {
            documents::require_format_version(store, 2).await?;
            *upgraded = true;
        }
        match compact_run(store, topic, partition, &run, opts, cluster_id).await? {
            Some(done) => {
                out.delete.extend(run.iter().map(|f| f.key.clone()));
                out.compacted.push(done);
            }
            None => out.skipped += 1,
        }
    }
    Ok(out)
}

/// Files earlier compactions replaced and did not delete: those inside the range of a compacted
/// file the chain reads, and files that lost the claim of their start to one: plain ones, and
/// compacted ones that end before it (merged into it). A compacted file that lost its claim and
/// ends after the one holding the start is left alone: it may be another compactor's, about to
/// commit (its run began with the file holding the start).
async fn leftovers(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    files: &[(DataFileKey, u64)],
) -> Result<Vec<String>, OpsError> {
    if files.iter().all(|(k, _)| k.end.is_none()) {
        return Ok(Vec::new());
    }
    let recorded = documents::read_chain_start(store, topic, partition)
        .await?
        .map(|s| s.start);
    let first = chain::effective_start(recorded, files.iter().map(|(k, _)| (k.start, k.end)))
        .unwrap_or(i64::MIN);
    let gap_starts = documents::read_gaps(store, topic, partition)
        .await?
        .iter()
        .map(|g| g.start)
        .collect();
    let (kept, orphans) =
        chain::without_orphans(store, topic, partition, files, &gap_starts).await?;
    let compacted: BTreeMap<i64, i64> = kept
        .iter()
        .filter_map(|(k, _)| Some((k.start, k.end?)))
        .collect();
    let mut out: Vec<String> = orphans
        .iter()
        .filter(|(k, _)| {
            compacted
                .get(&k.start)
                .is_some_and(|end| k.end.is_none_or(|e| e < *end))
        })
        .map(|(k, _)| k.to_string())
        .collect();
    let from = kept.partition_point(|(k, _)| k.start < first);
    // Each covered file, once the claim of its start names the compacted file that covers it.
    let mut cover: Option<(String, i64)> = None;
    for (k, _) in &kept[from..] {
        match &cover {
            Some((target, end)) if k.start < *end => {
                let part = [(k.start, k.to_string())];
                hand_claims(store, topic, partition, target, *end, &part).await?;
                out.push(k.to_string());
            }
            _ => cover = k.end.map(|end| (k.to_string(), end)),
        }
    }
    Ok(out)
}

/// The runs of `files` (a loaded chain) to compact.
fn runs(files: &[ChainFile], checkpoint_end: i64, opts: &CompactOptions) -> Vec<Vec<ChainFile>> {
    // A compacted file may be merged again: the claims of the starts it covers keep naming it,
    // and a writer adopting it there, finding it gone, follows the claim of its start, which the
    // larger file took.
    let closed = |f: &ChainFile| {
        f.bucket.end_millis() <= opts.now_ms.saturating_sub(opts.settle_ms)
            && f.end <= checkpoint_end
    };
    // Never the chain's last file: a sink resumes after it.
    let candidates = &files[..files.len().saturating_sub(1)];
    let mut runs = Vec::new();
    let mut run: Vec<ChainFile> = Vec::new();
    let mut bytes = 0;
    let close = |run: &mut Vec<ChainFile>, runs: &mut Vec<Vec<ChainFile>>| {
        if run.len() > 1 {
            runs.push(std::mem::take(run));
        }
        run.clear();
    };
    for f in candidates {
        let follows = run.last().is_some_and(|p| {
            p.end == f.start && p.bucket == f.bucket && bytes + f.size <= opts.max_bytes
        });
        if !follows {
            close(&mut run, &mut runs);
            bytes = 0;
        }
        if closed(f) {
            bytes += f.size;
            run.push(f.clone());
        } else {
            close(&mut run, &mut runs);
            bytes = 0;
        }
    }
    close(&mut run, &mut runs);
    runs
}

fn compacted_key(run: &[ChainFile]) -> DataFileKey {
    let first = DataFileKey::parse(&run[0].key).expect("chain files have data file keys");
    DataFileKey {
        end: Some(run[run.len() - 1].end),
        ..first
    }
}

/// Merge one run and commit it. `None` when the chain changed under it (the next run looks again).
async fn compact_run(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    run: &[ChainFile],
    opts: &CompactOptions,
    cluster_id: &str,
) -> Result<Option<CompactedFile>, OpsError> {
    let start = run[0].start;
    let end = run[run.len() - 1].end;
    let target = compacted_key(run).to_string();
    // 1. The claim of the start, naming the first part.
    let known = match documents::read_claim_versioned(store, topic, partition, start).await? {
        Some(c) => c,
        None => {
            let claim = Claim {
                topic: topic.to_string(),
                partition,
                start,
                key: run[0].key.clone(),
                end: None,
                created_at: rfc3339_millis(now_ms()),
            };
            documents::claim(store, &claim).await?;
            match documents::read_claim_versioned(store, topic, partition, start).await? {
                Some(c) => c,
                None => return Ok(None),
            }
        }
    };
    if known.doc.key != run[0].key {
        tracing::info!(topic, partition, start, claimed = known.doc.key, "the chain changed at this start since it was read; leaving the run to the next compaction");
        return Ok(None);
    }
    // 3. The compacted file: every record of the parts, in order.
    let mut records: Vec<Record> = Vec::new();
    let mut specs = Vec::new();
    for part in run {
        let got = match store.get(&part.key).await {
            Ok(got) => got,
            // Retention (or another compactor) removed it meanwhile.
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if let Some(expected) = got.meta.crc32c {
            let actual = crate::storage::crc32c(&got.body);
            if actual != expected {
                return Err(bad(store, &part.key, format!("its CRC32C is {actual:08x} but {expected:08x} was stored with it (damaged); nothing was compacted")));
            }
        }
        let body = got.body;
        specs.push(
            datafile::typed_spec(&body)
                .map_err(|e| bad(store, &part.key, e.to_string()))?
                .unwrap_or_default(),
        );
        let (meta, part_records) = tokio::task::spawn_blocking(move || datafile::decode(body))
            .await
            .expect("decoding does not panic")
            .map_err(|e| bad(store, &part.key, e.to_string()))?;
        if meta.topic != topic
            || meta.partition != partition
            || meta.start != part.start
            || meta.end != part.end
            || part_records.first().is_some_and(|r| r.offset < part.start)
            || part_records.last().map(|r| r.offset + 1) != Some(part.end)
        {
            return Err(bad(
                store,
                &part.key,
                format!(
                    "it holds {}/{} [{}, {}), not the chain's [{}, {}); nothing was compacted (run `rewind verify`)",
                    meta.topic, meta.partition, meta.start, meta.end, part.start, part.end
                ),
            ));
        }
        records.extend(part_records);
    }
    let count = records.len() as u64;
    let meta = datafile::file_meta(topic, partition, start, end, &records, cluster_id, now_ms());
    // Typed columns are decoded again, with the schemas every part's footer records, so the
    // compacted file has the parts' typed values (and, where a part lacked a schema another part
    // has, more of them). A run whose parts cannot be typed alike is left as it is.
    let decoding = match typed::Decoding::from_specs(&specs) {
        Ok(decoding) => decoding,
        Err(why) => {
            tracing::info!(topic, partition, start, %why, "the files' typed columns were decoded differently; leaving the run as it is");
            return Ok(None);
        }
    };
    let (body, typed) = tokio::task::spawn_blocking(move || {
        datafile::encode_decoded_to(&meta, &records, decoding.as_ref(), Vec::new(), usize::MAX)
    })
    .await
    .expect("encoding does not panic")
    .map_err(|e| OpsError::Input(format!("{}: could not encode {target}: {e}", store.url())))?;
    if let Some(why) = typed.and_then(|t| typed::lost_in_merge(&specs, &t.spec())) {
        tracing::info!(
            topic,
            partition,
            start,
            why,
            "the files' typed columns cannot share one file; leaving the run as it is"
        );
        return Ok(None);
    }
    let body = bytes::Bytes::from(body);
    let bytes_after = body.len() as u64;
    match store
        .put_multipart(&target, body, opts.part_size, PutMode::Create)
        .await
    {
        Ok(_) => {}
        // Written before: by a compaction that stopped before its commit, or by another compactor
        // of this very run. The same records either way, which its footer confirms.
        Err(StorageError::AlreadyExists { .. }) => {
            let size = store.head(&target).await?.size;
            let there = chain::read_footer(store, &target, size).await?;
            if there.start != start || there.end != end || there.record_count != count {
                return Err(bad(store, &target, format!("it is already there with [{}, {}) and {} records, not the run's [{start}, {end}) and {count}; nothing was compacted", there.start, there.end, there.record_count)));
            }
        }
        Err(e) => return Err(e.into()),
    }
    // 4. The claims of the inner starts go to the compacted file first, in order, and the first
    // start's last: the commit. Two compactions whose runs overlap (other sizes, another chain
    // start) share a start both must take from the part there, so at most one of them commits.
    let parts: Vec<(i64, String)> = run[1..].iter().map(|f| (f.start, f.key.clone())).collect();
    let mut taken: Vec<(i64, String)> = Vec::new();
    let mut lost = false;
    for (s, part) in &parts {
        match take_claim(store, topic, partition, &target, end, *s, part).await? {
            Take::Taken => taken.push((*s, part.clone())),
            Take::Already => {}
            Take::Lost => {
                lost = true;
                break;
            }
        }
    }
    // Nothing names the compacted file but these claims yet: it must still be there.
    if !lost {
        match store.head(&target).await {
            Ok(_) => {}
            Err(StorageError::NotFound { .. }) => lost = true,
            Err(e) => return Err(e.into()),
        }
    }
    let committed = !lost && {
        let next = Claim {
            topic: topic.to_string(),
            partition,
            start,
            key: target.clone(),
            end: Some(end),
            created_at: rfc3339_millis(now_ms()),
        };
        let stored = documents::replace_claim(store, &next, &known).await?;
        stored.is_some_and(|c| c.key == target)
    };
    if !committed {
        tracing::info!(
            topic,
            partition,
            start,
            "another writer changed a claim of the run first; undoing this compaction"
        );
        let undone = give_back(store, topic, partition, &target, &taken).await?;
        let named = documents::read_claim(store, topic, partition, start)
            .await?
            .is_some_and(|c| c.key == target);
        if undone && taken.len() == parts.len() && !named {
            store.delete(&target).await?;
        }
        return Ok(None);
    }
    tracing::info!(
        topic,
        partition,
        start,
        end,
        parts = run.len(),
        key = target,
        "compacted"
    );
    Ok(Some(CompactedFile {
        topic: topic.to_string(),
        partition,
        key: target,
        start,
        end,
        parts: run.len(),
        records: count,
        bytes_before: run.iter().map(|f| f.size).sum(),
        bytes_after,
    }))
}

enum Take {
    /// The claim named the part, or nothing: it names the compacted file now.
    Taken,
    /// It named the compacted file already (a compaction of the same run got here first).
    Already,
    /// It names something else: another compaction's run overlaps this one.
    Lost,
}

/// Take the claim of `start` from `part` for the compacted file `target` (ending at `end`).
async fn take_claim(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    target: &str,
    end: i64,
    start: i64,
    part: &str,
) -> Result<Take, OpsError> {
    let next = Claim {
        topic: topic.to_string(),
        partition,
        start,
        key: target.to_string(),
        end: Some(end),
        created_at: rfc3339_millis(now_ms()),
    };
    let stored = match documents::read_claim_versioned(store, topic, partition, start).await? {
        Some(known) if known.doc.key == target => return Ok(Take::Already),
        Some(known) if known.doc.key == part => {
            documents::replace_claim(store, &next, &known).await?
        }
        Some(_) => return Ok(Take::Lost),
        None => Some(documents::claim(store, &next).await?),
    };
    Ok(match stored {
        Some(c) if c.key == target => Take::Taken,
        _ => Take::Lost,
    })
}

/// Give the claims `taken` (start, part) back to their parts after a compaction that did not
/// commit. True when every one was given back.
async fn give_back(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    target: &str,
    taken: &[(i64, String)],
) -> Result<bool, OpsError> {
    let mut all = true;
    for (start, part) in taken {
        let back = Claim {
            topic: topic.to_string(),
            partition,
            start: *start,
            key: part.clone(),
            end: None,
            created_at: rfc3339_millis(now_ms()),
        };
        match documents::read_claim_versioned(store, topic, partition, *start).await? {
            Some(known) if known.doc.key == target => {
                let stored = documents::replace_claim(store, &back, &known).await?;
                all &= stored.is_some_and(|c| c.key == *part);
            }
            _ => all = false,
        }
    }
    Ok(all)
}

/// Hand the claims of the starts of `parts` (start, key), which the compacted file `target` (ending
/// at `end`) replaced, to it: each claim still naming its part (or missing, in an archive from
/// before claims) comes to name `target`. A claim naming anything else is left alone (another
/// compaction took it further).
async fn hand_claims(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    target: &str,
    end: i64,
    parts: &[(i64, String)],
) -> Result<(), OpsError> {
    for (start, key) in parts {
        let next = Claim {
            topic: topic.to_string(),
            partition,
            start: *start,
            key: target.to_string(),
            end: Some(end),
            created_at: rfc3339_millis(now_ms()),
        };
        match documents::read_claim_versioned(store, topic, partition, *start).await? {
            Some(known) if known.doc.key == *key => {
                documents::replace_claim(store, &next, &known).await?;
            }
            Some(_) => {}
            None => {
                documents::claim(store, &next).await?;
            }
        }
    }
    Ok(())
}

fn bad(store: &dyn ObjectStore, key: &str, message: String) -> OpsError {
    OpsError::Input(format!(
        "{}: {key} cannot be compacted: {message}",
        store.url()
    ))
}
