//! Planning a restore: cut each selected partition's chain at the window's ends the way Kafka's
//! `offsetsForTimes` would on the source cluster, and count what lies between.
//!
//! Invariant: the cut for a time `t` is the first archived offset whose timestamp is `>= t` (the
//! chain's end when there is none). The bucket rule of the archive (every record of a file in
//! bucket `H` is earlier than the end of `H`, and its first record is in `H`) plus the footers'
//! timestamp ranges mean that at most one file per cut is read, and only its offset and timestamp
//! columns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::file::metadata::ParquetMetaData;
use serde::Serialize;

use crate::archive::chain::{self, Chain, ChainError, ChainFile};
use crate::archive::datafile;
use crate::archive::documents;
use crate::archive::marks::{self, Mark};
use crate::archive::time::rfc3339_millis;
use crate::storage::ObjectStore;

use super::{RestoreError, RestoreOptions};

/// A point-in-time window; `None` ends are open (`earliest`, `latest`). An end may instead be a
/// named restore point (`rewind mark`), which cuts each partition at the offset it recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Window {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub from_mark: Option<String>,
    pub to_mark: Option<String>,
}

impl Window {
    /// The window as a user wrote it, for messages and for recognising a resumed restore.
    pub fn describe(&self) -> String {
        let end = |t: Option<i64>, mark: &Option<String>, open: &str| match mark {
            Some(name) => format!("mark {name}"),
            None => t.map_or(open.to_string(), rfc3339_millis),
        };
        format!(
            "[{}, {})",
            end(self.from, &self.from_mark, "earliest"),
            end(self.to, &self.to_mark, "latest")
        )
    }

    /// Whether a record's own timestamp is inside the window (strict mode).
    pub fn contains(&self, timestamp: Option<i64>) -> bool {
        match timestamp {
            Some(t) => self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|e| t < e),
            None => self.from.is_none() && self.to.is_none(),
        }
    }
}

/// The named restore points a window begins or ends at, read from the archive.
#[derive(Debug, Clone, Default)]
pub struct Cuts {
    pub from: Option<Arc<Mark>>,
    pub to: Option<Arc<Mark>>,
}

impl Cuts {
    /// Read the marks `window` names; a name the archive does not hold is refused.
    pub async fn load(store: &dyn ObjectStore, window: &Window) -> Result<Cuts, RestoreError> {
        let read = |name: Option<String>| async move {
            let Some(name) = name else { return Ok(None) };
            match marks::read(store, &name).await? {
                Some(mark) => Ok(Some(Arc::new(mark))),
                None => Err(RestoreError::Target(format!(
                    "the archive holds no mark named {name:?}; `rewind ls` lists its marks"
                ))),
            }
        };
        Ok(Cuts {
            from: read(window.from_mark.clone()).await?,
            to: read(window.to_mark.clone()).await?,
        })
    }

    /// Whether the marks leave `topic` in the restore: an end mark restores the topics it recorded;
    /// a start mark alone keeps every topic (one it lacks came after it: all of it is after it).
    fn covers(&self, topic: &str) -> bool {
        self.to.as_ref().is_none_or(|m| m.has_topic(topic))
    }

    /// The time the window ends at, for consumer groups: the end mark's.
    pub fn to_time(&self) -> Option<i64> {
        self.to.as_ref().map(|m| m.taken_at_ms)
    }
}

/// What one partition contributes to a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionPlan {
    pub topic: String,
    pub partition: i32,
    pub target_topic: String,
    /// Source offsets `[start, end)` to restore.
    pub start: i64,
    pub end: i64,
    /// Archived records in `[start, end)` (strict mode may restore fewer).
    pub records: u64,
    /// Bytes of their keys, values and headers: what the restore's summary counts (in a file the
    /// window cuts, its share by records).
    pub bytes: u64,
    /// Stored bytes of the files that have to be read.
    pub stored_bytes: u64,
    /// Those files.
    pub files: usize,
}

/// Plan one partition of `chain` for `window`. Reads the footers of the files in the planned range
/// (for their record counts) and, to find each cut, those of one hour's files plus the offset and
/// timestamp columns of at most one file.
pub async fn plan_partition(
    store: &dyn ObjectStore,
    chain: &mut Chain,
    window: &Window,
    cuts: &Cuts,
    target_topic: &str,
) -> Result<PartitionPlan, ChainError> {
    let (first, last) = match (chain.start(), chain.end()) {
        (Some(first), Some(last)) => (first, last),
        _ => {
            return Ok(PartitionPlan {
                topic: chain.topic.clone(),
                partition: chain.partition,
                target_topic: target_topic.to_string(),
                start: 0,
                end: 0,
                records: 0,
                bytes: 0,
                stored_bytes: 0,
                files: 0,
            })
        }
    };
    let mut offsets: HashMap<String, Vec<(i64, Option<i64>)>> = HashMap::new();
    // A mark cuts at the offsets it recorded. A partition the start mark does not hold appeared
    // after it: all of it is after the mark. One the end mark does not hold has nothing before it.
    let (topic, partition) = (chain.topic.clone(), chain.partition);
    let start = match (&cuts.from, window.from) {
        (Some(mark), _) => mark
            .offset_of(&topic, partition)
            .map_or(first, |p| p.offset.clamp(first, last)),
        (None, None) => first,
        (None, Some(t)) => cut(store, chain, t, last, &mut offsets).await?,
    };
    let end = match (&cuts.to, window.to) {
        (Some(mark), _) => mark
            .offset_of(&topic, partition)
            .map_or(start, |p| p.offset.min(last)),
        (None, None) => last,
        (None, Some(t)) => cut(store, chain, t, last, &mut offsets).await?,
    }
    .max(start);
    chain::read_footers(store, chain, |_, f| f.end > start && f.start < end).await?;
    let mut plan = PartitionPlan {
        topic: chain.topic.clone(),
        partition: chain.partition,
        target_topic: target_topic.to_string(),
        start,
        end,
        records: 0,
        bytes: 0,
        stored_bytes: 0,
        files: 0,
    };
    for file in files_in(&chain.files, start, end) {
        plan.files += 1;
        plan.stored_bytes += file.size;
        let records = records_of(store, file, start, end, &mut offsets).await?;
        plan.records += records;
        // Files of another writer may lack size statistics: their stored size stands in.
        let (payload, all) = file.footer.map_or((file.size, 1), |f| {
            (f.payload_bytes.unwrap_or(file.size), f.records.max(1))
        });
        plan.bytes += (u128::from(payload) * u128::from(records.min(all)) / u128::from(all)) as u64;
    }
    Ok(plan)
}

/// Archived records of `file` in `[start, end)`: its footer's count when the file lies inside,
/// else its offsets, read once into `cache`.
async fn records_of(
    store: &dyn ObjectStore,
    file: &ChainFile,
    start: i64,
    end: i64,
    cache: &mut HashMap<String, Vec<(i64, Option<i64>)>>,
) -> Result<u64, ChainError> {
    if let Some(footer) = file
        .footer
        .filter(|_| file.start >= start && file.end <= end)
    {
        return Ok(footer.records);
    }
    let in_range = |offsets: &[(i64, Option<i64>)]| {
        offsets
            .iter()
            .filter(|(o, _)| (start..end).contains(o))
            .count() as u64
    };
    if let Some(offsets) = cache.get(&file.key) {
        return Ok(in_range(offsets));
    }
    // Row groups outside the range hold none of its records (see `row_groups_holding`).
    let groups = |parquet: &ParquetMetaData| datafile::row_groups_holding(parquet, start, end);
    let (offsets, complete) = read_offsets(store, file, groups, |_| true).await?;
    let count = in_range(&offsets);
    if complete {
        cache.insert(file.key.clone(), offsets);
    }
    Ok(count)
}

/// Archived records of `chain` in `[start, end)`, reading the footers it needs.
pub(super) async fn records_between(
    store: &dyn ObjectStore,
    chain: &mut Chain,
    start: i64,
    end: i64,
) -> Result<u64, ChainError> {
    chain::read_footers(store, chain, |_, f| f.end > start && f.start < end).await?;
    let mut cache = HashMap::new();
    let mut records = 0;
    for file in files_in(&chain.files, start, end) {
        records += records_of(store, file, start, end, &mut cache).await?;
    }
    Ok(records)
}

/// The files of a chain that hold offsets of `[start, end)`.
pub fn files_in(files: &[ChainFile], start: i64, end: i64) -> impl Iterator<Item = &ChainFile> {
    files
        .iter()
        .filter(move |f| f.end > start && f.start < end && start < end)
}

/// The first archived offset whose timestamp is `>= t`, or `end` when none is.
async fn cut(
    store: &dyn ObjectStore,
    chain: &mut Chain,
    t: i64,
    end: i64,
    cache: &mut HashMap<String, Vec<(i64, Option<i64>)>>,
) -> Result<i64, ChainError> {
    for i in 0..chain.files.len() {
        let bucket = chain.files[i].bucket;
        // Every record of the file is earlier than the end of its hour.
        if bucket.end_millis() <= t {
            continue;
        }
        // Its first record is in its hour, which starts at or after `t`.
        if bucket.start_millis() >= t {
            return Ok(chain.files[i].start);
        }
        // The file's hour holds `t`: the footers of that hour's files say which reach `t`.
        chain::read_footers(store, chain, |_, f| f.bucket == bucket).await?;
        let file = &chain.files[i];
        if file
            .footer
            .and_then(|f| f.max_timestamp)
            .is_none_or(|max| max < t)
        {
            continue;
        }
        // Row groups in order up to the first that holds the cut. (Timestamps need not increase,
        // and the footer's statistics are not under a checksum, so no row group is skipped on
        // their word: a damaged bound would move the cut silently.)
        let reaches = |ts: &Option<i64>| ts.is_some_and(|ts| ts >= t);
        let every = |parquet: &ParquetMetaData| (0..parquet.num_row_groups()).collect();
        let (offsets, complete) = read_offsets(store, file, every, |read| {
            !read.iter().any(|(_, ts)| reaches(ts))
        })
        .await?;
        let found = offsets.iter().find(|(_, ts)| reaches(ts)).map(|(o, _)| *o);
        if complete {
            cache.insert(file.key.clone(), offsets);
        }
        if let Some(offset) = found {
            return Ok(offset);
        }
    }
    Ok(end)
}

/// Files up to this size are read whole for their offsets; larger ones a row group at a time, so
/// that planning holds one row group, not a whole file.
const WHOLE_FILE_BYTES: u64 = 16 << 20;

/// The offsets and timestamps of `file`, in order, and whether that is all of them. A file up to
/// [`WHOLE_FILE_BYTES`] is read whole; a larger one a row group at a time (each checked against
/// its checksum): the row groups `groups` picks from the footer, in order, while `more` says so
/// given what was read before, so that planning holds one row group, not a whole file, and reads
/// only around its cuts.
async fn read_offsets(
    store: &dyn ObjectStore,
    file: &ChainFile,
    groups: impl FnOnce(&ParquetMetaData) -> Vec<usize>,
    mut more: impl FnMut(&[(i64, Option<i64>)]) -> bool,
) -> Result<(Vec<(i64, Option<i64>)>, bool), ChainError> {
    let bad = |message: String| ChainError::BadFile {
        url: store.url().to_string(),
        key: file.key.clone(),
        message,
    };
    let whole = |bytes: bytes::Bytes| async move {
        tokio::task::spawn_blocking(move || datafile::read_offsets(bytes))
            .await
            .expect("offset reader does not panic")
            .map(|offsets| (offsets, true))
    };
    if file.size <= WHOLE_FILE_BYTES {
        let bytes = store.get(&file.key).await?.body;
        return whole(bytes).await.map_err(|e| bad(e.to_string()));
    }
    let parquet = chain::read_file_metadata(store, &file.key, file.size).await?;
    let footer = datafile::Footer::of(&parquet).map_err(|e| bad(e.to_string()))?;
    if footer.meta.start != file.start || footer.meta.end != file.end {
        return Err(bad(format!(
            "its footer now says [{}, {}) where [{}, {}) was listed",
            footer.meta.start, footer.meta.end, file.start, file.end
        )));
    }
    if footer.checksums.is_none() {
        // Written before files carried checksums: only the whole file can be checked.
        let bytes = store.get(&file.key).await?.body;
        return whole(bytes).await.map_err(|e| bad(e.to_string()));
    }
    let wanted = groups(&parquet);
    let mut complete = wanted.len() == parquet.num_row_groups();
    let metadata = ArrowReaderMetadata::try_new(Arc::new(parquet), Default::default())
        .map_err(|e| bad(e.to_string()))?;
    let mut offsets = Vec::new();
    for group in wanted {
        if !more(&offsets) {
            complete = false;
            break;
        }
        let range = datafile::integrity::row_group_range(metadata.metadata(), group)
            .filter(|r| r.start < r.end && r.end <= file.size)
            .ok_or_else(|| bad(format!("its row group {group} lies outside the file")))?;
        let bytes = store.get_range(&file.key, range.clone()).await?;
        let read = metadata.clone();
        offsets = tokio::task::spawn_blocking(move || {
            datafile::read_row_group_offsets(&read, group, range.start, bytes, &mut offsets)
                .map(|()| offsets)
        })
        .await
        .expect("offset reader does not panic")
        .map_err(|e| bad(e.to_string()))?;
    }
    Ok((offsets, complete))
}

/// The chains a restore reads and its plan for each.
#[derive(Debug, Clone)]
pub struct Planned {
    pub chains: Vec<Chain>,
    pub partitions: Vec<PartitionPlan>,
    /// The marks the window begins or ends at.
    pub cuts: Cuts,
}

/// The topics a restore selects and where they go, as recorded with its progress.
pub(super) fn selection(opts: &RestoreOptions) -> String {
    let mut out = format!("--topics {}", opts.topics.pattern());
    for (from, to) in &opts.renames {
        out.push_str(&format!(" --rename {from}={to}"));
    }
    for (on, flag) in [
        (opts.strict, " --strict"),
        (opts.repartition_by_key, " --repartition-by-key"),
        (opts.provenance_headers, " --provenance-headers"),
        (opts.groups, " --groups"),
        (opts.shared, " --shared"),
    ] {
        if on {
            out.push_str(flag);
        }
    }
    if let Some(ids) = &opts.schema_ids {
        out.push_str(ids.describe());
    }
    out
}

pub(super) fn target_of<'a>(opts: &'a RestoreOptions, topic: &'a str) -> &'a str {
    opts.renames.get(topic).map_or(topic, String::as_str)
}

/// Load the chains of every selected partition and plan the window on each (no cluster needed).
pub async fn plan(store: &dyn ObjectStore, opts: &RestoreOptions) -> Result<Planned, RestoreError> {
    if documents::read_identity(store).await?.is_none() {
        return Err(RestoreError::NoArchive(store.url().to_string()));
    }
    let listed = chain::list_all(store)
        .await
        .map_err(|e| RestoreError::Archive(e.into()))?;
    let archived: BTreeSet<&str> = listed.keys().map(|(t, _)| t.as_str()).collect();
    let cuts = Cuts::load(store, &opts.window).await?;
    let selected: Vec<_> = listed
        .iter()
        .filter(|((topic, _), _)| opts.topics.is_match(topic) && cuts.covers(topic))
        .collect();
    if selected.is_empty() && (cuts.from.is_some() || cuts.to.is_some()) {
        return Err(RestoreError::Target(format!(
            "no archived topic that --topics {} selects is in {}; a restore at a mark restores the topics it recorded",
            opts.topics.pattern(),
            [&cuts.from, &cuts.to]
                .into_iter()
                .flatten()
                .map(|m| format!("mark {} ({})", m.name, m.partitions.iter().map(|p| p.topic.as_str()).collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(", ")))
                .collect::<Vec<_>>()
                .join(" and ")
        )));
    }
    if selected.is_empty() {
        return Err(RestoreError::NoTopics {
            pattern: opts.topics.pattern().to_string(),
            archived: if archived.is_empty() {
                "nothing yet".into()
            } else {
                archived.into_iter().collect::<Vec<_>>().join(", ")
            },
        });
    }
    // A rename of a topic that is not restored would silently restore it under its own name (a
    // typo next to the default --topics .* fills production-named topics): refused.
    let chosen: BTreeSet<&str> = selected.iter().map(|((t, _), _)| t.as_str()).collect();
    for (from, to) in &opts.renames {
        if chosen.contains(from.as_str()) {
            continue;
        }
        let why = if archived.contains(from.as_str()) {
            format!("--topics {} does not select it", opts.topics.pattern())
        } else {
            "the archive holds no such topic".to_string()
        };
        if opts.follow && !archived.contains(from.as_str()) && opts.topics.is_match(from) {
            // A standby may be set up before the topic's first file is archived.
            tracing::warn!(rename = %format!("{from}={to}"), "{why}: the rename applies only to a topic archived and selected later");
            continue;
        }
        return Err(RestoreError::Target(format!(
            "--rename {from}={to} renames nothing: {why} (it holds {})",
            archived.iter().copied().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
    for (topic, _) in selected.iter().map(|(k, _)| k) {
        let target = target_of(opts, topic);
        if let Some(other) = targets.insert(target, topic) {
            if other != topic.as_str() {
                return Err(RestoreError::Target(format!(
                    "{other} and {topic} would both be restored into {target}; rename one of them with --rename"
                )));
            }
        }
    }
    let known = BTreeMap::new();
    // The futures are collected before they are streamed, so that the stream's type holds no
    // closure over borrowed arguments (which keeps this future provably `Send` for the service).
    let loads: Vec<_> = selected
        .into_iter()
        .map(|((t, p), files)| chain::load(store, t, *p, files, &known))
        .collect();
    let mut chains: Vec<Chain> = futures::stream::iter(loads)
        .buffered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    if let Some(mark) = &cuts.to {
        pending(mark, &chains, |t| opts.topics.is_match(t))?;
    }
    let plans: Vec<_> = chains
        .iter_mut()
        .map(|chain| {
            let target = target_of(opts, &chain.topic).to_string();
            let cuts = &cuts;
            async move { plan_partition(store, chain, &opts.window, cuts, &target).await }
        })
        .collect();
    let partitions: Vec<PartitionPlan> = futures::stream::iter(plans)
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(Planned {
        chains,
        partitions,
        cuts,
    })
}

/// Refuse a restore to `mark` while a selected chain has not reached it: the restore would end
/// short of the mark without a word.
fn pending(
    mark: &Mark,
    chains: &[Chain],
    selected: impl Fn(&str) -> bool,
) -> Result<(), RestoreError> {
    for cut in mark.partitions.iter().filter(|p| selected(&p.topic)) {
        if cut.records_end <= cut.log_start {
            // No committed record below the cut: nothing to wait for.
            continue;
        }
        let reached = chains
            .iter()
            .find(|c| c.topic == cut.topic && c.partition == cut.partition)
            .and_then(|chain| {
                [chain.end(), chain.gaps.iter().map(|g| g.end).max()]
                    .into_iter()
                    .flatten()
                    .max()
            });
        if let Some(gap) = chains
            .iter()
            .find(|c| c.topic == cut.topic && c.partition == cut.partition)
            .and_then(|c| {
                c.gaps
                    .iter()
                    .find(|g| g.start < cut.records_end && g.end > cut.log_start)
            })
        {
            tracing::warn!(
                mark = mark.name,
                topic = cut.topic,
                partition = cut.partition,
                "offsets [{}, {}) below the mark were deleted by the broker before they were archived (a recorded gap): the restore to the mark lacks them",
                gap.start,
                gap.end
            );
        }
        if reached.is_none_or(|r| r < cut.records_end) {
            return Err(RestoreError::Target(format!(
                "mark {} is not archived yet: {}/{} is archived up to offset {} and the mark needs {}; wait until the sink reaches it (`rewind mark --wait` or `rewind ls` show it), then restore",
                mark.name,
                cut.topic,
                cut.partition,
                reached.map_or("none".to_string(), |r| r.to_string()),
                cut.records_end
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::archive::chain;
    use crate::archive::datafile::{encode, file_meta};
    use crate::archive::paths::DataFileKey;
    use crate::archive::time::HourBucket;
    use crate::archive::{Record, TimestampType};
    use crate::storage::{LocalStore, PutMode, StorageUrl};

    const H: i64 = 3_600_000;
    const BASE: i64 = 1_795_424_400_000; // an hour boundary

    fn record(offset: i64, ts: i64) -> Record {
        Record {
            offset,
            timestamp: Some(ts),
            timestamp_type: Some(TimestampType::Create),
            key: None,
            value: Some(offset.to_string().into_bytes()),
            headers: vec![],
        }
    }

    /// Write files the way the sink would, each `(records, end)` starting where the previous ended.
    async fn archive(files: &[(Vec<Record>, i64)]) -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
        let dir = tempfile::tempdir().unwrap();
        let url = StorageUrl::parse(&format!("file://{}", dir.path().display())).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(url).unwrap());
        let mut start = 0;
        for (records, end) in files {
            let meta = file_meta("t", 0, start, *end, records, "c", 0);
            let key = DataFileKey {
                topic: "t".into(),
                partition: 0,
                bucket: HourBucket::of_millis(records[0].timestamp.unwrap()),
                start,
                end: None,
            };
            store
                .put(
                    &key.to_string(),
                    encode(&meta, records).unwrap(),
                    PutMode::Create,
                )
                .await
                .unwrap();
            start = *end;
        }
        (dir, store)
    }

    async fn chain_of(store: &dyn ObjectStore) -> Chain {
        let listed = chain::list_all(store).await.unwrap();
        chain::load(
            store,
            "t",
            0,
            &listed[&("t".to_string(), 0)],
            &Default::default(),
        )
        .await
        .unwrap()
    }

    /// The oracle: what `offsetsForTimes` answers over the whole partition.
    fn offsets_for_time(records: &[Record], t: i64, end: i64) -> i64 {
        records
            .iter()
            .find(|r| r.timestamp.unwrap() >= t)
            .map_or(end, |r| r.offset)
    }

    #[tokio::test]
    async fn cuts_match_offsets_for_times_with_late_records_and_holes() {
        // Bucket 0 holds a late record; the second file is in bucket 1 but its last record is late
        // (earlier than bucket 1); offsets 7 and 8 are absent (compaction).
        let files = vec![
            (
                vec![
                    record(0, BASE + 10),
                    record(1, BASE + 5),
                    record(2, BASE + H - 1),
                ],
                3,
            ),
            (
                vec![
                    record(3, BASE + H),
                    record(4, BASE + H + 500),
                    record(5, BASE + 20),
                ],
                6,
            ),
            (
                vec![record(6, BASE + 2 * H + 7), record(9, BASE + 3 * H - 1)],
                10,
            ),
            (vec![record(10, BASE + 5 * H)], 11),
        ];
        let all: Vec<Record> = files.iter().flat_map(|(r, _)| r.clone()).collect();
        let (_dir, store) = archive(&files).await;
        let mut chain = chain_of(&*store).await;
        let probes = [
            BASE - 1,
            BASE,
            BASE + 5,
            BASE + 6,
            BASE + 11,
            BASE + H - 1,
            BASE + H,
            BASE + H + 1,
            BASE + H + 500,
            BASE + 2 * H,
            BASE + 2 * H + 8,
            BASE + 3 * H - 1,
            BASE + 3 * H,
            BASE + 5 * H,
            BASE + 9 * H,
        ];
        for from in probes {
            for to in probes {
                let window = Window {
                    from: Some(from),
                    to: Some(to),
                    ..Window::default()
                };
                let plan = plan_partition(&*store, &mut chain, &window, &Cuts::default(), "t2")
                    .await
                    .unwrap();
                let start = offsets_for_time(&all, from, 11);
                let end = offsets_for_time(&all, to, 11).max(start);
                assert_eq!(
                    (plan.start, plan.end),
                    (start, end),
                    "window {}",
                    window.describe()
                );
                let expected = all
                    .iter()
                    .filter(|r| (start..end).contains(&r.offset))
                    .count() as u64;
                assert_eq!(plan.records, expected, "window {}", window.describe());
            }
        }
        let open = plan_partition(
            &*store,
            &mut chain,
            &Window::default(),
            &Cuts::default(),
            "t",
        )
        .await
        .unwrap();
        assert_eq!(
            (open.start, open.end, open.records, open.files),
            (0, 11, 9, 4)
        );
        // Marks cut at the offsets they recorded, whatever the timestamps; a partition the start
        // mark lacks came after it (all of it counts), one the end mark lacks has nothing before.
        let mark = |partition: i32, offset: i64| {
            Some(Arc::new(Mark {
                format_version: 1,
                name: "m".into(),
                taken_at: String::new(),
                taken_at_ms: 0,
                cluster_id: None,
                topics: ".*".into(),
                taken_by: String::new(),
                partitions: vec![marks::MarkedPartition {
                    topic: chain.topic.clone(),
                    partition,
                    log_start: 0,
                    offset,
                    records_end: offset,
                }],
            }))
        };
        // A topic the start mark lacks is all after it; one the end mark lacks is not restored.
        let other = mark(chain.partition, 3).map(|m| {
            let mut m = (*m).clone();
            m.partitions[0].topic = "another".into();
            Arc::new(m)
        });
        let only_from = Cuts {
            from: other.clone(),
            to: None,
        };
        assert!(only_from.covers(&chain.topic));
        let with_to = Cuts {
            from: None,
            to: other,
        };
        assert!(!with_to.covers(&chain.topic));
        let cases = [
            (mark(chain.partition, 3), mark(chain.partition, 9), (3, 9)),
            (None, mark(chain.partition, 100), (0, 11)),
            (mark(chain.partition + 1, 3), None, (0, 11)),
            (None, mark(chain.partition + 1, 5), (0, 0)),
        ];
        for (from, to, expected) in cases {
            let cuts = Cuts { from, to };
            let plan = plan_partition(&*store, &mut chain, &Window::default(), &cuts, "t")
                .await
                .unwrap();
            assert_eq!((plan.start, plan.end), expected);
            let records = all
                .iter()
                .filter(|r| (expected.0..expected.1).contains(&r.offset))
                .count() as u64;
            assert_eq!(plan.records, records);
        }
    }
    #[tokio::test]
    async fn a_short_window_on_a_long_chain_reads_only_the_files_around_it() {
        // Twenty hours, three files an hour (20 minutes apart, three records each).
        let files: Vec<(Vec<Record>, i64)> = (0..60i64)
            .map(|f| {
                let t = BASE + f * 20 * 60_000;
                (
                    (0..3).map(|i| record(f * 3 + i, t + i)).collect(),
                    f * 3 + 3,
                )
            })
            .collect();
        let (_dir, inner) = archive(&files).await;
        let store = crate::storage::testing::Counting::new(inner);
        let mut chain = chain_of(&store).await;
        // [hour 10 + 30 min, hour 11 + 30 min): cuts inside files of hours 10 and 11.
        let window = Window {
            from: Some(BASE + 10 * H + 30 * 60_000),
            to: Some(BASE + 11 * H + 30 * 60_000),
            ..Window::default()
        };
        let plan = plan_partition(&store, &mut chain, &window, &Cuts::default(), "t")
            .await
            .unwrap();
        // Files 30, 31, 32 are hour 10 (minutes 0, 20, 40), 33–35 hour 11. The window starts with
        // file 32 (minute 40 of hour 10) and ends before file 35 (minute 40 of hour 11).
        assert_eq!((plan.start, plan.end), (32 * 3, 35 * 3));
        assert_eq!(plan.records, 9);
        let reads = store.reads.lock().unwrap().clone();
        let read_files: std::collections::BTreeSet<i64> = reads
            .keys()
            .filter_map(|k| DataFileKey::parse(k))
            .map(|k| k.start / 3)
            .collect();
        // The cut hours' footers (files 30–35), the window's (32–34) and the last file's (59),
        // and nothing else: 53 of the 60 files are never touched.
        assert_eq!(
            read_files,
            [30, 31, 32, 33, 34, 35, 59].into_iter().collect(),
            "reads: {reads:?}"
        );
    }
}
