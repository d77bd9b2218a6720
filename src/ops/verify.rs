//! `rewind verify`: is the archive a sound set of chains that restores? Per partition: the chain is
//! contiguous (every file starts where the previous ends, or a gap records why not), every footer
//! agrees with its key, its row-group statistics and its hour folder, checkpoints do not point past
//! the chain, and every archived topic has its `_topics/` document. All of that comes from footers
//! (one ranged read per file); `--deep` also reads every file whole, checks it against the checksum
//! inside it and the one stored with it, and decodes every row. A file neither checksum can vouch
//! for is a problem under `--deep`: its bytes cannot be told from damaged ones.
//!
//! Invariant: every problem names the object key it is about, so an operator can look at it.

use std::time::Instant;

use crate::kafka::topics::TopicSelector;
use futures::StreamExt;
use serde::Serialize;

use super::scan::{self, PartitionScan, Scan, ScannedFile};
use super::{OpsError, Progress};
use crate::archive::chain::FileFooter;
use crate::archive::datafile;
use crate::archive::documents::{chain_start_key, Gap};
use crate::archive::paths::{checkpoint_key, topic_key, DATA_PREFIX};
use crate::archive::time::rfc3339_millis;
use crate::archive::FORMAT_VERSION;
use crate::storage::{self, ObjectStore};

/// Files read whole at once by `--deep`.
const DEEP_CONCURRENCY: usize = 4;
/// Records decoded at a time by `--deep`.
const DEEP_CHUNK_BYTES: u64 = 8 << 20;

/// One finding, about one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The object the finding is about.
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// A short stable name: `unreadable`, `footer`, `hole`, `overlap`, `checkpoint`, ...
    pub kind: &'static str,
    pub message: String,
}

/// What verify found on one partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionSummary {
    pub topic: String,
    pub partition: i32,
    pub files: usize,
    pub bytes: u64,
    pub records: u64,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub problems: usize,
}

/// The outcome of one verify run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub archive: String,
    pub deep: bool,
    pub clean: bool,
    pub files: usize,
    pub bytes: u64,
    pub records: u64,
    pub seconds: f64,
    pub partitions: Vec<PartitionSummary>,
    /// Findings that make the archive unsound (exit 1).
    pub problems: Vec<Problem>,
    /// Findings worth knowing that do not (left-overs, missing optional checksums).
    pub warnings: Vec<Problem>,
}

struct Findings {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Findings {
    fn problem(&mut self, p: &PartitionScan, key: &str, kind: &'static str, message: String) {
        self.problems.push(Problem {
            key: key.to_string(),
            topic: Some(p.topic.clone()),
            partition: Some(p.partition),
            kind,
            message,
        });
    }

    fn warning(&mut self, p: &PartitionScan, key: &str, kind: &'static str, message: String) {
        self.warnings.push(Problem {
            key: key.to_string(),
            topic: Some(p.topic.clone()),
            partition: Some(p.partition),
            kind,
            message,
        });
    }
}

/// Verify the partitions of the topics `topics` selects.
pub async fn verify(
    store: &dyn ObjectStore,
    topics: &TopicSelector,
    deep: bool,
) -> Result<Report, OpsError> {
    let started = Instant::now();
    let scan = scan::scan(store, topics, "verify").await?;
    let mut found = Findings {
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    for (key, message) in &scan.unreadable {
        found.problems.push(Problem {
            key: key.clone(),
            topic: None,
            partition: None,
            kind: "document",
            message: format!("is not a valid archive document: {message}"),
        });
    }
    for key in &scan.stray {
        found.warnings.push(Problem {
            key: key.clone(),
            topic: None,
            partition: None,
            kind: "stray",
            message:
                "is under data/ but is not a Rewind data file; readers of data/** may trip on it"
                    .into(),
        });
    }
    // Writes a killed writer left behind: not part of the archive, but they cost storage.
    match store.incomplete_uploads(DATA_PREFIX).await {
        Ok(keys) => found.warnings.extend(keys.into_iter().map(|key| Problem {
            key,
            topic: None,
            partition: None,
            kind: "incomplete_upload",
            message: "has an unfinished upload (a writer stopped mid-write); it is not part of the archive, but its parts cost storage until they are aborted (an S3 lifecycle rule with AbortIncompleteMultipartUpload does it)".into(),
        })),
        Err(e) => found.warnings.push(Problem {
            key: DATA_PREFIX.to_string(),
            topic: None,
            partition: None,
            kind: "incomplete_upload",
            message: format!("unfinished uploads could not be listed: {e}"),
        }),
    }
    check_topics(&scan, &mut found);
    for (topic, partitions) in scan.missing_partitions() {
        let count = scan.topics.get(topic).map_or(0, |m| m.partitions);
        for partition in partitions {
            found.problems.push(Problem {
                key: topic_key(topic),
                topic: Some(topic.to_string()),
                partition: Some(partition),
                kind: "missing_partition",
                message: format!(
                    "says {topic} has {count} partitions, but partition {partition} is not in the archive (no file, checkpoint or gap): no sink of this archive backed it up (did a sink of another archive share its consumer group?)"
                ),
            });
        }
    }
    let mut summaries = Vec::new();
    for p in &scan.partitions {
        let before = found.problems.len();
        for f in &p.orphans {
            found.warning(
                p,
                &f.key,
                "orphan",
                format!(
                    "lost the claim of offset {} to another file (two writers raced; the one that lost died before deleting it): readers of the chain skip it, but SQL readers of data/** count its records twice — delete it",
                    f.parsed.start
                ),
            );
        }
        for f in &p.covered {
            found.warning(
                p,
                &f.key,
                "covered",
                format!(
                    "starts at offset {}, inside the range of a compacted file that replaced it (a compaction stopped before deleting it): readers of the chain skip it, but SQL readers of data/** count its records twice; `rewind compact` deletes it",
                    f.parsed.start
                ),
            );
        }
        check_partition(p, &mut found);
        let files = p.chain_files();
        summaries.push(PartitionSummary {
            topic: p.topic.clone(),
            partition: p.partition,
            files: files.len(),
            bytes: files.iter().map(|f| f.size).sum(),
            records: files
                .iter()
                .filter_map(|f| f.footer.as_ref().ok())
                .map(|f| f.meta.record_count)
                .sum(),
            start: files.first().map(|f| f.parsed.start),
            end: files
                .last()
                .and_then(|f| f.footer.as_ref().ok())
                .map(|f| f.meta.end),
            problems: found.problems.len() - before,
        });
    }
    if deep {
        deep_check(store, &scan, &mut found, &mut summaries).await?;
    }
    Ok(Report {
        archive: store.url().to_string(),
        deep,
        clean: found.problems.is_empty(),
        files: summaries.iter().map(|s| s.files).sum(),
        bytes: summaries.iter().map(|s| s.bytes).sum(),
        records: summaries.iter().map(|s| s.records).sum(),
        seconds: started.elapsed().as_secs_f64(),
        partitions: summaries,
        problems: found.problems,
        warnings: found.warnings,
    })
}

/// Every archived topic has its `_topics/` document (one problem per topic), and its partitions
/// exist there.
fn check_topics(scan: &Scan, found: &mut Findings) {
    let mut missing = std::collections::BTreeSet::new();
    for p in scan
        .partitions
        .iter()
        .filter(|p| !p.chain_files().is_empty())
    {
        match scan.topics.get(&p.topic) {
            None if missing.insert(p.topic.as_str()) => found.problem(
                p,
                &topic_key(&p.topic),
                "topic",
                format!(
                    "is missing: topic {} is archived but its metadata is not, so a restore cannot create it",
                    p.topic
                ),
            ),
            Some(meta) if p.partition >= meta.partitions => found.warning(
                p,
                &topic_key(&p.topic),
                "topic",
                format!(
                    "says {} has {} partitions, but partition {} is archived",
                    p.topic, meta.partitions, p.partition
                ),
            ),
            _ => {}
        }
    }
}

/// The chain rules, the footers and the checkpoint of one partition.
fn check_partition(p: &PartitionScan, found: &mut Findings) {
    for f in &p.files[..p.files.len() - p.chain_files().len()] {
        found.warning(
            p,
            &f.key,
            "leftover",
            format!(
                "lies before the chain's start {} (recorded by retention): a retention run stopped before deleting it; run `rewind retention` again",
                p.start.as_ref().map_or(0, |s| s.start)
            ),
        );
    }
    let files = p.chain_files();
    if let (Some(start), Some(first)) = (&p.start, files.first()) {
        // A compacted file that begins before the recorded start and holds it is the chain's start.
        let holds =
            first.parsed.start < start.start && first.parsed.end.is_some_and(|e| start.start < e);
        // Retention recorded it at a file that then lost the claim of its start to a gap.
        let gap_first = start.start < first.parsed.start
            && gaps_cover(&p.gaps, start.start, first.parsed.start);
        if first.parsed.start != start.start && !holds && !gap_first {
            found.problem(
                p,
                &chain_start_key(&p.topic, p.partition),
                "start",
                format!(
                    "says the chain starts at offset {}, but its first file {} starts at {}",
                    start.start, first.key, first.parsed.start
                ),
            );
        }
    }
    if let (Some(start), None) = (&p.start, files.first()) {
        found.problem(
            p,
            &chain_start_key(&p.topic, p.partition),
            "start",
            format!(
                "says the chain starts at offset {}, but no data file of {}/{} is left",
                start.start, p.topic, p.partition
            ),
        );
    }
    // Walk the chain; `reach` is where the files so far end.
    let mut reach: Option<(i64, &str)> = None;
    for (i, f) in files.iter().enumerate() {
        let end = match &f.footer {
            Ok(footer) => {
                check_footer(p, f, footer, found);
                footer.meta.end
            }
            Err(message) => {
                found.problem(
                    p,
                    &f.key,
                    "unreadable",
                    format!("is not a readable Rewind data file: {message}"),
                );
                // Assume it ends where the next file starts, so one bad file is one problem.
                files
                    .get(i + 1)
                    .map_or(f.parsed.start + 1, |n| n.parsed.start)
            }
        };
        if let Some((prev_end, prev_key)) = reach {
            let start = f.parsed.start;
            if start < prev_end {
                found.problem(
                    p,
                    &f.key,
                    "overlap",
                    format!(
                        "starts at offset {start}, inside the range of {prev_key}, which ends at {prev_end}: two files hold the same offsets"
                    ),
                );
            } else if start > prev_end && !gaps_cover(&p.gaps, prev_end, start) {
                found.problem(
                    p,
                    &f.key,
                    "hole",
                    format!(
                        "starts at offset {start}, but the previous file {prev_key} ends at {prev_end} and no gap records why offsets [{prev_end}, {start}) are missing"
                    ),
                );
            }
        }
        if reach.is_none_or(|(e, _)| end > e) {
            reach = Some((end, &f.key));
        }
    }
    let chain_start = files.first().map_or(i64::MAX, |f| f.parsed.start);
    for (key, gap) in &p.gaps {
        if gap.end < chain_start && p.start.is_some() {
            found.warning(p, key, "leftover", "lies before the chain's start (recorded by retention); run `rewind retention` again".into());
            continue;
        }
        let overlaps = files.iter().any(|f| {
            f.footer
                .as_ref()
                .is_ok_and(|ft| f.parsed.start < gap.end && gap.start < ft.meta.end)
        });
        if gap.start >= gap.end || overlaps {
            found.problem(
                p,
                key,
                "gap",
                format!(
                    "records offsets [{}, {}) as missing, but {}",
                    gap.start,
                    gap.end,
                    if overlaps {
                        "data files hold some of them"
                    } else {
                        "that range is empty"
                    }
                ),
            );
        }
    }
    // The chain's end, past any gaps recorded after its last file (offsets the broker had deleted
    // when the sink came back, after which the checkpoint moves on with no new file).
    let chain_end = files.last().and_then(|f| f.footer.as_ref().ok()).map(|f| {
        p.gaps.iter().fold(f.meta.end, |end, (_, g)| {
            if g.start <= end && g.end > end {
                g.end
            } else {
                end
            }
        })
    });
    let key = checkpoint_key(&p.topic, p.partition);
    match (&p.checkpoint, chain_end) {
        (Some(c), Some(end)) if c.end > end => found.problem(
            p,
            &key,
            "checkpoint",
            format!(
                "says offsets up to {} are archived, but the chain ends at {end}: the files it vouches for are missing",
                c.end
            ),
        ),
        // A partition whose only history is a gap (the broker had deleted every record before the
        // first sink run read it) has a checkpoint at the gap's end and no file.
        // A first checkpoint (no file named) only says where the chain will begin.
        (Some(c), None)
            if files.is_empty()
                && !c.last_file.is_empty()
                && !p.gaps.iter().any(|(_, g)| g.end == c.end) =>
        {
            found.problem(
            p,
            &key,
            "checkpoint",
            format!(
                "says offsets up to {} are archived, but {}/{} has no data file",
                c.end, p.topic, p.partition
            ),
            )
        }
        (None, Some(_)) => found.warning(
            p,
            &key,
            "checkpoint",
            "is missing: the sink stopped before its first checkpoint; the next sink run writes it"
                .into(),
        ),
        _ => {}
    }
}

/// Whether recorded gaps, one or a run of them, cover `[from, to)`.
fn gaps_cover(gaps: &[(String, Gap)], from: i64, to: i64) -> bool {
    let mut reached = from;
    while reached < to {
        match gaps
            .iter()
            .filter(|(_, g)| g.start <= reached && g.end > reached)
            .map(|(_, g)| g.end)
            .max()
        {
            Some(end) => reached = end,
            None => return false,
        }
    }
    true
}

/// What a footer says must agree with its key, its statistics and its hour folder.
fn check_footer(p: &PartitionScan, f: &ScannedFile, footer: &FileFooter, found: &mut Findings) {
    let meta = &footer.meta;
    let mut bad = |message: String| found.problem(p, &f.key, "footer", message);
    if meta.format_version != FORMAT_VERSION {
        bad(format!(
            "has format version {}, not {FORMAT_VERSION}",
            meta.format_version
        ));
    }
    if meta.topic != f.parsed.topic
        || meta.partition != f.parsed.partition
        || meta.start != f.parsed.start
    {
        bad(format!(
            "footer says {}/{} from offset {}, which does not match its key",
            meta.topic, meta.partition, meta.start
        ));
    }
    if meta.end <= meta.start {
        bad(format!(
            "footer range [{}, {}) is empty",
            meta.start, meta.end
        ));
    }
    if let Some(end) = f.parsed.end.filter(|e| *e != meta.end) {
        bad(format!(
            "footer says its range ends at offset {}, but its name says {end}",
            meta.end
        ));
    }
    if meta.record_count == 0 || footer.rows != meta.record_count {
        bad(format!(
            "footer says {} records, but its row groups hold {} rows",
            meta.record_count, footer.rows
        ));
    }
    match footer.offsets {
        None => bad("has no offset statistics, so its range cannot be checked".into()),
        Some((lo, hi)) if lo < meta.start || hi >= meta.end || hi + 1 != meta.end => bad(format!(
            "holds offsets {lo} to {hi}, but its footer says [{}, {}) (the last offset must be end - 1)",
            meta.start, meta.end
        )),
        Some((lo, hi)) if (hi - lo + 1) < meta.record_count as i64 => bad(format!(
            "claims {} records in offsets {lo} to {hi}, more than the range holds",
            meta.record_count
        )),
        _ => {}
    }
    let footer_span = meta.min_timestamp.zip(meta.max_timestamp);
    if footer.timestamps != footer_span {
        bad(format!(
            "footer says timestamps {}, but its statistics say {}",
            span(footer_span),
            span(footer.timestamps)
        ));
    }
    if let Some(max) = meta.max_timestamp {
        let bucket = f.parsed.bucket;
        if max >= bucket.end_millis() {
            bad(format!(
                "holds a record at {}, after the end of its hour folder {}T{}: a restore cutting a window there would miss it",
                rfc3339_millis(max),
                bucket.date(),
                bucket.hour()
            ));
        }
    }
    if !footer.key_bloom_filter {
        found.warning(
            p,
            &f.key,
            "bloom",
            "has no bloom filter on key: key look-ups read all of it".into(),
        );
    }
}

fn span(s: Option<(i64, i64)>) -> String {
    s.map_or("none".into(), |(lo, hi)| {
        format!("{} to {}", rfc3339_millis(lo), rfc3339_millis(hi))
    })
}

/// Read every chain file whole: the checksum inside it and its stored CRC32C must match its bytes
/// (at least one must exist), and every row must decode and agree with the footer.
async fn deep_check(
    store: &dyn ObjectStore,
    scan: &Scan,
    found: &mut Findings,
    summaries: &mut [PartitionSummary],
) -> Result<(), OpsError> {
    let todo: Vec<(usize, &PartitionScan, &ScannedFile)> = scan
        .partitions
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.chain_files().iter().map(move |f| (i, p, f)))
        .filter(|(_, _, f)| f.footer.is_ok())
        .collect();
    let mut progress = Progress::new("verify --deep", "files", todo.len() as u64);
    let mut checks = futures::stream::iter(todo.into_iter().map(|(i, p, f)| async move {
        let got = match store.get(&f.key).await {
            Ok(got) => got,
            // Deleted since the scan listed it (retention running): no longer part of the
            // archive, as in the scan.
            Err(storage::StorageError::NotFound { .. }) => return Ok((i, p, f, Vec::new())),
            Err(e) => return Err(OpsError::from(e)),
        };
        let footer = f.footer.clone().expect("filtered");
        let bucket = f.parsed.bucket;
        // A decoder that panics on a damaged file is a finding about that file.
        let issues =
            match tokio::task::spawn_blocking(move || deep_file(got, &footer, bucket)).await {
                Ok(found) => found,
                Err(e) => vec![(
                    "decode",
                    format!("does not decode: the decoder failed ({e})"),
                )],
            };
        Ok((i, p, f, issues))
    }))
    .buffer_unordered(DEEP_CONCURRENCY);
    while let Some(result) = checks.next().await {
        let (i, p, f, issues) = result?;
        progress.add(1);
        summaries[i].problems += issues.len();
        for (kind, message) in issues {
            found.problem(p, &f.key, kind, message);
        }
    }
    Ok(())
}

/// Problems (kind, message) of one file read whole.
fn deep_file(
    got: storage::GetResult,
    footer: &FileFooter,
    bucket: crate::archive::time::HourBucket,
) -> Vec<(&'static str, String)> {
    let mut issues = Vec::new();
    if got.meta.crc32c.is_none() && footer.checksums.is_none() {
        issues.push((
            "checksum",
            "cannot be checked: it has no checksum inside it (written before Rewind kept one there) and none was stored with it (copied without extended attributes or checksums, or written by another tool); restore it from a copy that kept its stored checksum, or rewrite it".to_string(),
        ));
    }
    if let Some(stored) = got.meta.crc32c {
        let actual = storage::crc32c(&got.body);
        if actual != stored {
            issues.push((
                "checksum",
                format!(
                    "is damaged: its bytes have CRC32C {actual:08x}, but it was stored with {stored:08x}"
                ),
            ));
        }
    }
    let meta = &footer.meta;
    let mut count = 0u64;
    let mut last: Option<i64> = None;
    let mut first_ts: Option<Option<i64>> = None;
    let mut span: Option<(i64, i64)> = None;
    let mut order = None;
    let decoded = datafile::decode_chunks(got.body, DEEP_CHUNK_BYTES, |records| {
        for r in records {
            if order.is_none() {
                if r.offset < meta.start || r.offset >= meta.end {
                    order = Some(format!(
                        "row {count} has offset {}, outside the file's range [{}, {})",
                        r.offset, meta.start, meta.end
                    ));
                } else if let Some(l) = last.filter(|l| r.offset <= *l) {
                    order = Some(format!(
                        "row {count} has offset {}, not after the previous row's {l} (offsets must increase strictly)",
                        r.offset
                    ));
                }
            }
            first_ts.get_or_insert(r.timestamp);
            if let Some(t) = r.timestamp {
                span = Some(span.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
            }
            last = Some(r.offset);
            count += 1;
        }
        true
    });
    match decoded {
        // The decoder checked the file against the checksum inside it first.
        Err(datafile::DataFileError::Damaged(why)) => {
            issues.push(("checksum", format!("is damaged: {why}")));
            return issues;
        }
        Err(e) => {
            issues.push(("decode", format!("does not decode: {e}")));
            return issues;
        }
        Ok(_) => {}
    }
    if let Some(order) = order {
        issues.push(("rows", order));
    }
    // The time-bucket rule: the first record is in the file's hour (the footer check covered
    // "every record before the hour's end").
    if let Some(Some(first)) = first_ts {
        if first < bucket.start_millis() || first >= bucket.end_millis() {
            issues.push((
                "rows",
                format!(
                    "its first record is at {}, outside its hour folder {}T{}: a restore cutting a window there would start in the wrong place",
                    rfc3339_millis(first),
                    bucket.date(),
                    bucket.hour()
                ),
            ));
        }
    }
    if count != meta.record_count {
        issues.push((
            "rows",
            format!(
                "holds {count} rows, but its footer says {}",
                meta.record_count
            ),
        ));
    }
    if last.is_some_and(|l| l + 1 != meta.end) {
        issues.push((
            "rows",
            format!(
                "its last row has offset {}, but its footer says the range ends at {}",
                last.unwrap_or_default(),
                meta.end
            ),
        ));
    }
    if span != meta.min_timestamp.zip(meta.max_timestamp) {
        issues.push((
            "rows",
            format!(
                "its rows have timestamps {}, but its footer says {}",
                self::span(span),
                self::span(meta.min_timestamp.zip(meta.max_timestamp))
            ),
        ));
    }
    issues
}

#[cfg(test)]
mod tests;
