//! The archive tools: `verify`, `find`, `ls` and `retention`. They need the archive only (no Kafka
//! cluster); output is a table or, with `--json`, JSON (`find` always prints JSON lines).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use base64::Engine;
use clap::Args;
use serde_json::{json, Value};

use super::{load_archive_config, parse_time, print_table, ArchiveArgs, Failure};
use crate::archive::time::{parse_rfc3339_millis, rfc3339_millis};
use crate::archive::Record;
use crate::config::units::duration;
use crate::kafka::topics::TopicSelector;
use crate::ops::{self, find::KeyFilter, OpsError};
use crate::storage::{self, ObjectStore};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    common: ArchiveArgs,
    /// Regular expression of topics to verify (whole name; default all).
    #[arg(long, value_name = "REGEX", default_value = ".*")]
    topics: String,
    /// Also read every file whole: check its stored CRC32C and decode every row.
    #[arg(long)]
    deep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("keys").multiple(false))]
pub struct FindArgs {
    #[command(flatten)]
    common: ArchiveArgs,
    /// The topic to search.
    #[arg(long, value_name = "T")]
    topic: String,
    /// Only this partition.
    #[arg(long, value_name = "P")]
    partition: Option<i32>,
    /// Records whose key is exactly this UTF-8 text.
    #[arg(long, value_name = "K", group = "keys")]
    key: Option<String>,
    /// Records whose key is exactly these bytes, in hexadecimal (e.g. ff00a1).
    #[arg(long, value_name = "HEX", group = "keys")]
    key_hex: Option<String>,
    /// Records without a key.
    #[arg(long, group = "keys")]
    key_null: bool,
    /// Records with a timestamp at or after this time: RFC 3339, epoch milliseconds, earliest, or
    /// relative (now, now-1h, 2h ago, today, yesterday; UTC); a number below 1000000000000 is
    /// refused as likely epoch seconds.
    #[arg(long, value_name = "T")]
    from: Option<String>,
    /// Records with a timestamp before this time: RFC 3339, epoch milliseconds, latest, or
    /// relative (now, now-1h, 2h ago, today, yesterday; UTC); a number below 1000000000000 is
    /// refused as likely epoch seconds.
    #[arg(long, value_name = "T")]
    to: Option<String>,
    /// Records with this header (UTF-8 value; `K` alone for a null value); repeat to require several.
    #[arg(long, value_name = "K=V")]
    header: Vec<String>,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Print to stderr, as one JSON object, how many files and bytes were read versus the archive.
    #[arg(long)]
    stats: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    common: ArchiveArgs,
    /// Regular expression of topics to list (whole name; default all).
    #[arg(long, value_name = "REGEX", default_value = ".*")]
    topics: String,
    /// Print the inventory as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RetentionArgs {
    #[command(flatten)]
    common: ArchiveArgs,
    /// Delete files whose newest record is older than this, e.g. 7d or 36h.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    older_than: std::time::Duration,
    /// Regular expression of topics (whole name; default all). Group snapshots are pruned only
    /// when every topic is selected.
    #[arg(long, value_name = "REGEX")]
    topics: Option<String>,
    /// Abort unfinished uploads (left by a writer killed mid-upload) started longer ago than this
    /// (at least 1h; with every topic selected only).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = duration::parse)]
    abandoned_after: std::time::Duration,
    /// Apply retention to compacted topics too (`cleanup.policy` holding `compact` in their
    /// `_topics/` document, or no document to tell). Left out by default: Kafka keeps a compacted
    /// key's latest value forever, and the archive may hold its only other copy.
    #[arg(long)]
    include_compacted: bool,
    /// Keep the named restore points (`rewind mark`) whose whole name matches PATTERN while they
    /// are younger than AGE (`30d`, or `forever`), e.g. 'daily-.*=30d' 'weekly-.*=365d'
    /// (repeatable; the first rule that matches a mark decides). A mark past its rule's age expires:
    /// its document goes. A mark no rule matches is kept until deleted. A kept mark keeps every
    /// file from the log start it recorded.
    #[arg(long, value_name = "PATTERN=AGE")]
    keep_marks: Vec<String>,
    /// List what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn failure(e: OpsError) -> Failure {
    match e {
        OpsError::NoArchive(_) | OpsError::NoFolder(_) => Failure::usage(e),
        OpsError::Archive(crate::archive::documents::ArchiveError::UnsupportedVersion {
            ..
        }) => Failure::usage(e),
        other => Failure::found(other),
    }
}

/// How a tool uses the archive: only `retention` (unless it is a dry run) writes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
}

pub(super) async fn open_store(
    common: &ArchiveArgs,
    access: Access,
) -> Result<Arc<dyn ObjectStore>, Failure> {
    let config = load_archive_config(common)?;
    let url = config.archive_url().map_err(Failure::usage)?;
    ops::check_exists(&url).map_err(failure)?;
    let opened = match access {
        Access::Read => storage::open_reader(&url, &config.s3_options()).await,
        Access::Write => storage::open_writer(&url, &config.s3_options()).await,
    };
    opened.map_err(Failure::found)
}

pub(super) fn regex(flag: &str, pattern: &str) -> Result<TopicSelector, Failure> {
    TopicSelector::new(pattern).map_err(|e| {
        Failure::usage(format!(
            "--{flag} {pattern:?} is not a valid regular expression: {}",
            crate::kafka::topics::regex_problem(&e)
        ))
    })
}

pub async fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let topics = regex("topics", &args.topics)?;
    let store = open_store(&args.common, Access::Read).await?;
    // Exit 1 means "the archive has problems"; when verify cannot look at the archive at all
    // (store unreachable, access denied) that is not a finding about it: exit 2.
    let report = ops::verify::verify(&*store, &topics, args.deep)
        .await
        .map_err(Failure::usage)?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(Failure::found)?
        );
    } else {
        let rows: Vec<Vec<String>> = report
            .partitions
            .iter()
            .map(|p| {
                vec![
                    p.topic.clone(),
                    p.partition.to_string(),
                    p.files.to_string(),
                    p.records.to_string(),
                    p.bytes.to_string(),
                    opt(p.start),
                    opt(p.end),
                    if p.problems == 0 {
                        "ok".into()
                    } else {
                        p.problems.to_string()
                    },
                ]
            })
            .collect();
        print_table(
            &[
                "TOPIC",
                "PARTITION",
                "FILES",
                "RECORDS",
                "BYTES",
                "START",
                "END",
                "PROBLEMS",
            ],
            &rows,
            1,
        );
        for w in &report.warnings {
            outln!("warning: {}: {}", w.key, w.message);
        }
        for p in &report.problems {
            outln!("problem: {}: {}", p.key, p.message);
        }
        outln!(
            "{} {} files ({} records, {} bytes) of {} partitions in {:.1}s ({:.0} files/s): {}",
            if report.deep {
                "deep-verified"
            } else {
                "verified"
            },
            report.files,
            report.records,
            report.bytes,
            report.partitions.len(),
            report.seconds,
            report.files as f64 / report.seconds.max(0.001),
            match report.problems.len() {
                0 => "clean".to_string(),
                1 => "1 problem".to_string(),
                n => format!("{n} problems"),
            }
        );
    }
    if report.clean {
        Ok(())
    } else {
        Err(Failure::found(format!(
            "{}: {} problem(s) found; the first: {}: {}",
            report.archive,
            report.problems.len(),
            report.problems[0].key,
            report.problems[0].message
        )))
    }
}

fn opt(v: Option<i64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return Err(format!("{s:?} has an odd number of digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("{s:?} is not hexadecimal"))
        })
        .collect()
}

/// Bytes as JSON: a UTF-8 string when valid, otherwise `{"base64": "..."}`; null stays null.
fn bytes_json(b: Option<&[u8]>) -> Value {
    match b {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
        },
    }
}

fn record_json(topic: &str, partition: i32, r: &Record) -> Value {
    json!({
        "topic": topic,
        "partition": partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "timestamp_type": r.timestamp_type.map(|t| t.as_str()),
        "key": bytes_json(r.key.as_deref()),
        "value": bytes_json(r.value.as_deref()),
        "headers": r.headers.iter().map(|h| json!({"key": h.key, "value": bytes_json(h.value.as_deref())})).collect::<Vec<_>>(),
    })
}

pub async fn find(args: FindArgs) -> Result<(), Failure> {
    let key = match (&args.key, &args.key_hex, args.key_null) {
        (Some(k), _, _) => KeyFilter::Bytes(k.as_bytes().to_vec()),
        (_, Some(h), _) => {
            KeyFilter::Bytes(hex(h).map_err(|e| Failure::usage(format!("--key-hex {e}")))?)
        }
        (_, _, true) => KeyFilter::Null,
        _ => KeyFilter::Any,
    };
    // Relative times count back from one instant, taken once.
    let now = crate::archive::time::now_ms();
    let time = |flag: &str, v: &Option<String>, open: &str| match v {
        None => Ok(None),
        Some(v) => parse_time(flag, v, open, now),
    };
    let (from, to) = (
        time("from", &args.from, "earliest")?,
        time("to", &args.to, "latest")?,
    );
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(Failure::usage(format!(
                "--from {} is not before --to {}: the window is empty",
                rfc3339_millis(f),
                rfc3339_millis(t)
            )));
        }
    }
    let headers = args
        .header
        .iter()
        .map(|h| match h.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), Some(v.as_bytes().to_vec()))),
            None if !h.is_empty() => Ok((h.clone(), None)),
            _ => Err(Failure::usage(format!(
                "--header {h:?} is not K=V (or K for a null value)"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !crate::archive::paths::valid_topic(&args.topic) {
        return Err(Failure::usage(format!(
            "--topic {:?} is not a valid topic name",
            args.topic
        )));
    }
    let opts = ops::find::FindOptions {
        topic: args.topic.clone(),
        partition: args.partition,
        key,
        from,
        to,
        headers,
        limit: args.limit,
    };
    let store = open_store(&args.common, Access::Read).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_error = None;
    let stats = ops::find::find(store, &opts, |topic, partition, record| {
        if write_error.is_none() {
            if let Err(e) = writeln!(out, "{}", record_json(topic, partition, record)) {
                write_error = Some(e);
            }
        }
    })
    .await
    .map_err(failure)?;
    let _ = out.flush();
    if let Some(e) = write_error {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(Failure::found(format!("cannot write the results: {e}")));
        }
    }
    for key in &stats.unchecked {
        eprintln!(
            "warning: {key}: cannot be checked (no checksum inside it, none stored with it); its records were returned unchecked"
        );
    }
    if args.stats {
        eprintln!("{}", json!({ "stats": stats }));
    }
    Ok(())
}

pub async fn ls(args: LsArgs) -> Result<(), Failure> {
    let topics = regex("topics", &args.topics)?;
    let store = open_store(&args.common, Access::Read).await?;
    let scan = ops::scan::scan(&*store, &topics, "ls")
        .await
        .map_err(failure)?;
    let now = crate::archive::time::now_ms();
    let mut by_topic: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut totals = (0u64, 0usize, 0u64);
    for p in &scan.partitions {
        let files = p.chain_files();
        let footers: Vec<_> = files
            .iter()
            .filter_map(|f| f.footer.as_ref().ok())
            .collect();
        let records: u64 = footers.iter().map(|f| f.meta.record_count).sum();
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        let min_ts = footers.iter().filter_map(|f| f.meta.min_timestamp).min();
        let max_ts = footers.iter().filter_map(|f| f.meta.max_timestamp).max();
        let start = files.first().map(|f| f.parsed.start);
        let end = files
            .last()
            .and_then(|f| f.footer.as_ref().ok())
            .map(|f| f.meta.end);
        let gaps: Vec<_> = p
            .gaps
            .iter()
            .filter(|(_, g)| start.is_some_and(|s| g.start >= s))
            .map(|(_, g)| g)
            .collect();
        let checkpoint_age = p.checkpoint.as_ref().and_then(|c| {
            parse_rfc3339_millis(&c.updated_at).map(|t| (now - t).max(0) as f64 / 1000.0)
        });
        totals = (totals.0 + records, totals.1 + files.len(), totals.2 + bytes);
        rows.push(vec![
            p.topic.clone(),
            p.partition.to_string(),
            opt(start),
            opt(end),
            records.to_string(),
            files.len().to_string(),
            bytes.to_string(),
            gaps.len().to_string(),
            min_ts.map_or("-".into(), rfc3339_millis),
            max_ts.map_or("-".into(), rfc3339_millis),
            checkpoint_age.map_or("-".into(), |a| format!("{a:.0}s")),
        ]);
        by_topic.entry(&p.topic).or_default().push(json!({
            "partition": p.partition,
            "start": start,
            "end": end,
            "records": records,
            "files": files.len(),
            "bytes": bytes,
            "gaps": gaps.iter().map(|g| json!({"start": g.start, "end": g.end, "reason": g.reason})).collect::<Vec<_>>(),
            "min_timestamp": min_ts.map(rfc3339_millis),
            "max_timestamp": max_ts.map(rfc3339_millis),
            "checkpoint_end": p.checkpoint.as_ref().map(|c| c.end),
            "checkpoint_age_seconds": checkpoint_age,
            "unreadable_files": files.len() - footers.len(),
        }));
    }
    let missing = scan.missing_partitions();
    for (topic, partitions) in &missing {
        for partition in partitions {
            let mut row = vec![topic.to_string(), partition.to_string(), "missing".into()];
            row.resize(11, "-".into());
            rows.push(row);
        }
        if !partitions.is_empty() {
            by_topic.entry(topic).or_default();
        }
    }
    rows.sort_by_key(|r| (r[0].clone(), r[1].parse::<i32>().unwrap_or(i32::MAX)));
    // The inventory stands without the marks: a mark that cannot be read is a warning here.
    let marks = crate::marks::statuses(&*store).await.unwrap_or_else(|e| {
        eprintln!("warning: the marks (_marks/) could not be read: {e}");
        Vec::new()
    });
    if args.json {
        let topics: Vec<Value> = by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                let sum = |k: &str| {
                    partitions
                        .iter()
                        .map(|p| p[k].as_u64().unwrap_or(0))
                        .sum::<u64>()
                };
                json!({
                    "topic": topic,
                    "missing_partitions": missing.get(topic).cloned().unwrap_or_default(),
                    "records": sum("records"),
                    "bytes": sum("bytes"),
                    "files": sum("files"),
                    "partitions": partitions,
                })
            })
            .collect();
        let doc = json!({
            "archive": store.url().to_string(),
            "cluster_id": scan.identity.cluster_id,
            "created_at": scan.identity.created_at,
            "topics": topics,
            "marks": marks.iter().map(|(m, s)| json!({
                "name": m.name,
                "taken_at": m.taken_at,
                "taken_by": m.taken_by,
                "topics": m.partitions.iter().map(|p| p.topic.as_str()).collect::<std::collections::BTreeSet<_>>(),
                "partitions": m.partitions.len(),
                "status": s.word(),
                "archived": s.complete(),
                "restorable_in_full": s.whole(),
                "detail": s.describe(),
            })).collect::<Vec<_>>(),
        });
        outln!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(Failure::found)?
        );
    } else {
        outln!(
            "archive {} of cluster {} (created {})",
            store.url(),
            scan.identity.cluster_id,
            scan.identity.created_at
        );
        print_table(
            &[
                "TOPIC",
                "PARTITION",
                "START",
                "END",
                "RECORDS",
                "FILES",
                "BYTES",
                "GAPS",
                "OLDEST",
                "NEWEST",
                "CHECKPOINT AGE",
            ],
            &rows,
            1,
        );
        let (records, files, bytes) = totals;
        let lacking: usize = missing.values().map(Vec::len).sum();
        outln!(
            "total: {records} records in {files} files ({bytes} bytes), {} topics, {} partitions{}",
            by_topic.len(),
            rows.len() - lacking,
            if lacking > 0 {
                format!("; {lacking} partitions missing (in _topics/ but not in the archive; see rewind verify)")
            } else {
                String::new()
            }
        );
        if !marks.is_empty() {
            outln!("");
            let rows: Vec<Vec<String>> = marks
                .iter()
                .map(|(m, s)| {
                    vec![
                        m.name.clone(),
                        m.taken_at.clone(),
                        s.word().to_string(),
                        s.describe(),
                        m.partitions.len().to_string(),
                    ]
                })
                .collect();
            print_table(
                &["MARK", "TAKEN AT", "STATUS", "DETAIL", "PARTITIONS"],
                &rows,
                4,
            );
        }
    }
    Ok(())
}

pub async fn retention(args: RetentionArgs) -> Result<(), Failure> {
    let topics = regex("topics", args.topics.as_deref().unwrap_or(".*"))?;
    let older = i64::try_from(args.older_than.as_millis())
        .map_err(|_| Failure::usage("--older-than is too long"))?;
    let access = if args.dry_run {
        Access::Read
    } else {
        Access::Write
    };
    let store = open_store(&args.common, access).await?;
    let cutoff = crate::archive::time::now_ms() - older;
    if args.abandoned_after < std::time::Duration::from_secs(3600) {
        return Err(Failure::usage(
            "--abandoned-after must be at least 1h: a younger unfinished upload may still be in progress",
        ));
    }
    let abandoned_before = std::time::SystemTime::now()
        .checked_sub(args.abandoned_after)
        .unwrap_or(std::time::UNIX_EPOCH);
    let keep_marks = args
        .keep_marks
        .iter()
        .map(|rule| {
            ops::retention::KeepRule::parse(rule)
                .map_err(|e| Failure::usage(format!("--keep-marks {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let opts = ops::retention::RetentionOptions {
        topics,
        cutoff_ms: cutoff,
        include_compacted: args.include_compacted,
        prune_groups: args.topics.is_none(),
        abandoned_before,
        dry_run: args.dry_run,
        keep_marks,
        now_ms: crate::archive::time::now_ms(),
    };
    let report = ops::retention::retention(&*store, &opts)
        .await
        .map_err(failure)?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(Failure::found)?
        );
        return Ok(());
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for f in &report.files {
        outln!(
            "{verb} {} ({} bytes{})",
            f.key,
            f.bytes,
            f.max_timestamp
                .as_ref()
                .map_or(String::new(), |t| format!(", newest record {t}"))
        );
    }
    for d in &report.documents {
        outln!("{verb} {d}");
    }
    for t in &report.skipped_compacted {
        outln!(
            "left topic {t} alone: it is compacted (or has no _topics/ document to tell); --include-compacted applies retention to it"
        );
    }
    for m in &report.kept_marks {
        let why = m.rule.as_ref().map_or(
            "no --keep-marks rule matches it: kept until deleted".to_string(),
            |r| format!("kept by {r}"),
        );
        let cost = if m.files_held > 0 {
            format!(
                "; it holds {} files ({} bytes) older than the cutoff",
                m.files_held, m.bytes_held
            )
        } else {
            String::new()
        };
        let whole = if m.restorable_in_full {
            "restorable in full"
        } else {
            "NOT restorable in full (the archive began after its log start already)"
        };
        outln!("mark {} ({}): {why}, {whole}{cost}", m.name, m.taken_at);
    }
    let unruled: Vec<&str> = report
        .kept_marks
        .iter()
        .filter(|m| m.rule.is_none() && m.files_held > 0)
        .map(|m| m.name.as_str())
        .collect();
    if !unruled.is_empty() {
        eprintln!(
            "warning: {} mark(s) that no --keep-marks rule matches hold files back (the first, {}); they are kept until deleted: give rules for them (e.g. --keep-marks 'daily-.*=30d')",
            unruled.len(),
            unruled[0]
        );
    }
    for m in &report.expired_marks {
        outln!(
            "mark {m} {} past its --keep-marks age: restoring to it will no longer be possible in full",
            if args.dry_run { "would expire," } else { "expired," }
        );
    }
    for u in &report.abandoned_uploads {
        if args.dry_run {
            outln!("unfinished upload of {u} (aborted by a real run once older than --abandoned-after)");
        } else {
            outln!("aborted the unfinished upload of {u}");
        }
    }
    outln!(
        "{verb} {} files ({} records, {} bytes) and {} documents ({} group snapshots) older than {}{}",
        report.files.len(),
        report.records,
        report.bytes,
        report.documents.len(),
        report.group_snapshots,
        report.cutoff,
        if args.dry_run { " (dry run: nothing was deleted)" } else { "" }
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    #[command(flatten)]
    common: ArchiveArgs,
    /// Regular expression of topics (whole name; default all).
    #[arg(long, value_name = "REGEX", default_value = ".*")]
    topics: String,
    /// Compact an hour once it ended this long ago (records of an hour keep arriving until a
    /// record of a later hour closes its file), e.g. 1h or 30m.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = duration::parse)]
    settle: std::time::Duration,
    /// Largest compacted file, in stored bytes of the files it merges (a longer run of an hour
    /// becomes several files), e.g. 512MiB.
    #[arg(long, value_name = "SIZE", default_value = "512MiB")]
    max_file_size: crate::config::units::Size,
    /// List what would be compacted; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn compact(args: CompactArgs) -> Result<(), Failure> {
    let topics = regex("topics", &args.topics)?;
    let settle_ms = i64::try_from(args.settle.as_millis())
        .map_err(|_| Failure::usage("--settle is too long"))?;
    if args.max_file_size.bytes() < 1 << 20 {
        return Err(Failure::usage("--max-file-size must be at least 1MiB"));
    }
    let access = if args.dry_run {
        Access::Read
    } else {
        Access::Write
    };
    let config = load_archive_config(&args.common)?;
    let store = open_store(&args.common, access).await?;
    let opts = ops::compact::CompactOptions {
        topics,
        settle_ms,
        max_bytes: args.max_file_size.bytes(),
        part_size: config.storage.s3.part_size.bytes() as usize,
        dry_run: args.dry_run,
        now_ms: crate::archive::time::now_ms(),
    };
    let report = ops::compact::compact(&*store, &opts)
        .await
        .map_err(failure)?;
    let failed = report.errors.first().map(|e| {
        Failure::found(format!(
            "{} partitions could not be compacted; the first, {}/{}: {}",
            report.errors.len(),
            e.topic,
            e.partition,
            e.error
        ))
    });
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(Failure::found)?
        );
        return failed.map_or(Ok(()), Err);
    }
    let verb = if args.dry_run {
        "would compact"
    } else {
        "compacted"
    };
    for c in &report.compacted {
        outln!(
            "{verb} {} files of {}/{} [{}, {}) into {}{}",
            c.parts,
            c.topic,
            c.partition,
            c.start,
            c.end,
            c.key,
            if args.dry_run {
                format!(" ({} bytes)", c.bytes_before)
            } else {
                format!(
                    " ({} records, {} bytes from {})",
                    c.records, c.bytes_after, c.bytes_before
                )
            }
        );
    }
    for t in &report.held_for_tables {
        outln!("kept the replaced files of topic {t}: its Iceberg table could not take the change (the next run deletes them)");
    }
    for e in &report.errors {
        outln!("could not compact {}/{}: {}", e.topic, e.partition, e.error);
    }
    outln!(
        "{}: {} files into {} across {} partitions; {} replaced files deleted{} ({:.1}s)",
        report.archive,
        report.files_before(),
        report.compacted.len(),
        report.partitions,
        report.deleted,
        if report.skipped > 0 {
            format!(
                "; {} runs changed under this one, left to the next run",
                report.skipped
            )
        } else {
            String::new()
        },
        report.seconds
    );
    failed.map_or(Ok(()), Err)
}
