//! Reading a partition back the way Rewind's readers do (`chain::load`: claims decide between files
//! that share a start, orphans are skipped), checking every file against its key and the chain on
//! the way, and comparing the result with what a `read_committed` consumer reads, with a report that
//! names the offsets and files involved.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use rewind::archive::chain::{self, ChainFile};
use rewind::archive::datafile;
use rewind::archive::documents;
use rewind::archive::paths::DataFileKey;
use rewind::archive::time::HourBucket;
use rewind::archive::Record;
use rewind::storage::ObjectStore;

/// One partition as the archive holds it.
pub struct Archived {
    pub files: Vec<ChainFile>,
    /// Files that share a start with the chain's file and lost its claim.
    pub orphans: Vec<String>,
    pub gaps: Vec<documents::Gap>,
    pub checkpoint_end: Option<i64>,
    /// Every record along the chain, with the index of its file.
    pub records: Vec<(Record, usize)>,
    /// What is wrong with the files themselves.
    pub problems: Vec<String>,
}

/// The chain's end (the offset after its last file), as a reader sees it now.
pub async fn chain_end(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, String> {
    let listed = chain::list_files(&**store, &DataFileKey::partition_prefix(topic, partition))
        .await
        .map_err(|e| e.to_string())?;
    let Some(files) = listed.get(&(topic.to_string(), partition)) else {
        return Ok(None);
    };
    let chain = chain::load(&**store, topic, partition, files, &BTreeMap::new())
        .await
        .map_err(|e| e.to_string())?;
    Ok(chain.end())
}

/// Read one partition's chain and every record in it.
pub async fn read(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    partition: i32,
) -> Result<Archived, String> {
    let listed = chain::list_files(&**store, &DataFileKey::partition_prefix(topic, partition))
        .await
        .map_err(|e| e.to_string())?;
    let files = listed
        .get(&(topic.to_string(), partition))
        .cloned()
        .unwrap_or_default();
    let chain = chain::load(&**store, topic, partition, &files, &BTreeMap::new())
        .await
        .map_err(|e| {
            let listing: Vec<String> = files.iter().map(|(k, _)| format!("    {k}")).collect();
            format!(
                "the chain does not load: {e}\n  files:\n{}",
                listing.join("\n")
            )
        })?;
    let in_chain: BTreeSet<&str> = chain.files.iter().map(|f| f.key.as_str()).collect();
    let orphans = files
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| !in_chain.contains(k.as_str()))
        .collect();
    let checkpoint_end = documents::read_checkpoint(&**store, topic, partition)
        .await
        .map_err(|e| e.to_string())?
        .map(|c| c.doc.end);
    let mut problems = Vec::new();
    let mut records = Vec::new();
    for (i, file) in chain.files.iter().enumerate() {
        let got = store
            .get(&file.key)
            .await
            .map_err(|e| format!("{}: {e}", file.key))?;
        if got.meta.crc32c != Some(rewind::storage::crc32c(&got.body)) {
            problems.push(format!(
                "{}: stored CRC32C {:?} is not the CRC32C of its bytes",
                file.key, got.meta.crc32c
            ));
        }
        let (meta, rows) = match datafile::decode(got.body) {
            Ok(decoded) => decoded,
            Err(e) => {
                problems.push(format!("{}: does not decode: {e}", file.key));
                continue;
            }
        };
        let mut wrong = |what: String| problems.push(format!("{}: {what}", file.key));
        if (meta.topic.as_str(), meta.partition, meta.start, meta.end)
            != (topic, partition, file.start, file.end)
        {
            wrong(format!(
                "footer says {}/{} [{}, {}), the chain [{}, {})",
                meta.topic, meta.partition, meta.start, meta.end, file.start, file.end
            ));
        }
        if meta.record_count as usize != rows.len() || rows.is_empty() {
            wrong(format!(
                "footer counts {} records, the file holds {}",
                meta.record_count,
                rows.len()
            ));
        }
        if let Some(last) = rows.last() {
            if last.offset + 1 != meta.end {
                wrong(format!(
                    "ends at {} but its last record is {}",
                    meta.end, last.offset
                ));
            }
        }
        if !rows.windows(2).all(|w| w[0].offset < w[1].offset)
            || rows
                .iter()
                .any(|r| r.offset < meta.start || r.offset >= meta.end)
        {
            wrong("offsets not increasing inside [start, end)".into());
        }
        // The time-bucket rule restore relies on: the first record is in the file's hour, and
        // every record is before the hour's end.
        let key = DataFileKey::parse(&file.key).unwrap();
        if let Some(first) = rows.first().and_then(|r| r.timestamp) {
            if HourBucket::of_millis(first) != key.bucket {
                wrong(format!(
                    "its first record ({first}) is not in its hour {}",
                    key.bucket
                ));
            }
        }
        if let Some(r) = rows
            .iter()
            .find(|r| r.timestamp.unwrap_or(i64::MIN) >= key.bucket.end_millis())
        {
            wrong(format!(
                "record {} ({:?}) is after its hour {}",
                r.offset, r.timestamp, key.bucket
            ));
        }
        records.extend(rows.into_iter().map(|r| (r, i)));
    }
    Ok(Archived {
        files: chain.files,
        orphans,
        gaps: chain.gaps,
        checkpoint_end,
        records,
        problems,
    })
}

/// Offsets as ranges `a..=b`, at most `max` of them.
fn ranges(offsets: &[i64], max: usize) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < offsets.len() {
        let mut j = i;
        while j + 1 < offsets.len() && offsets[j + 1] == offsets[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            offsets[i].to_string()
        } else {
            format!("{}..={}", offsets[i], offsets[j])
        });
        i = j + 1;
    }
    let more = out.len().saturating_sub(max);
    out.truncate(max);
    if more > 0 {
        out.push(format!("and {more} more ranges"));
    }
    format!("[{}]", out.join(", "))
}

fn short(r: &Record) -> String {
    let cut = |b: &Option<Vec<u8>>| {
        b.as_ref()
            .map(|b| format!("{} bytes {:02x?}", b.len(), &b[..b.len().min(12)]))
    };
    format!(
        "offset {} ts {:?} {:?} key {:?} value {:?} headers {}",
        r.offset,
        r.timestamp,
        r.timestamp_type,
        cut(&r.key),
        cut(&r.value),
        r.headers.len()
    )
}

/// What differs between the archive and the topic in one partition, or `None` when they are equal
/// offset for offset and byte for byte and the chain is sound.
pub fn compare(partition: i32, archived: &Archived, topic: &[Record]) -> Option<String> {
    let mut report = String::new();
    for p in &archived.problems {
        let _ = writeln!(report, "  bad file: {p}");
    }
    if !archived.gaps.is_empty() {
        let _ = writeln!(report, "  gaps recorded: {:?}", archived.gaps);
    }
    if let Some(first) = archived.files.first() {
        if first.start != 0 {
            let _ = writeln!(
                report,
                "  the chain begins at {}, not at 0 (the topic is new)",
                first.start
            );
        }
    }
    let end = archived.files.last().map(|f| f.end);
    if archived.checkpoint_end != end {
        let _ = writeln!(
            report,
            "  the checkpoint says {:?}, the chain ends at {end:?}",
            archived.checkpoint_end
        );
    }
    let got: Vec<&Record> = archived.records.iter().map(|(r, _)| r).collect();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &got {
        *counts.entry(r.offset).or_default() += 1;
    }
    let want: BTreeMap<i64, &Record> = topic.iter().map(|r| (r.offset, r)).collect();
    let missing: Vec<i64> = want
        .keys()
        .filter(|o| !counts.contains_key(o))
        .copied()
        .collect();
    let extra: Vec<i64> = counts
        .keys()
        .filter(|o| !want.contains_key(o))
        .copied()
        .collect();
    let duplicated: Vec<i64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(o, _)| *o)
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(
            report,
            "  {} offsets the topic has are not archived: {}",
            missing.len(),
            ranges(&missing, 20)
        );
    }
    if !extra.is_empty() {
        let _ = writeln!(
            report,
            "  {} archived offsets a read_committed consumer does not see: {}",
            extra.len(),
            ranges(&extra, 20)
        );
    }
    if !duplicated.is_empty() {
        let _ = writeln!(
            report,
            "  {} offsets archived more than once: {}",
            duplicated.len(),
            ranges(&duplicated, 20)
        );
    }
    let mut differ = 0;
    for (r, file) in &archived.records {
        if let Some(w) = want.get(&r.offset) {
            if r != *w {
                differ += 1;
                if differ <= 5 {
                    let _ = writeln!(
                        report,
                        "  differs in {}:\n    archived {}\n    topic    {}",
                        archived.files[*file].key,
                        short(r),
                        short(w)
                    );
                }
            }
        }
    }
    if differ > 5 {
        let _ = writeln!(report, "  and {} more records differ", differ - 5);
    }
    if report.is_empty() {
        return None;
    }
    let mut listing = String::new();
    for f in &archived.files {
        let _ = writeln!(listing, "    {} [{}, {})", f.key, f.start, f.end);
    }
    for o in &archived.orphans {
        let _ = writeln!(listing, "    orphan {o}");
    }
    Some(format!(
        "partition {partition}: {} archived records, {} in the topic\n{report}  files:\n{listing}",
        got.len(),
        topic.len()
    ))
}
