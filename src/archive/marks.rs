//! Named restore points: `_marks/<name>.json`, a consistent cut of the source cluster taken at one
//! moment (`rewind mark`), which a restore can end or begin at exactly (`--to-mark`, `--from-mark`).
//!
//! Invariant: a mark is written once (create-only) and never changed; whether the archive has
//! reached it, and whether it still holds everything the mark needs, is worked out from the chains
//! each time it is asked, so it can never say more than the archive holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::chain;
use super::documents::{self, ArchiveError};
use crate::storage::{ObjectStore, PutMode, StorageError};

/// Where marks live.
pub const MARKS_PREFIX: &str = "_marks/";

/// The key of mark `name`.
pub fn mark_key(name: &str) -> String {
    format!("{MARKS_PREFIX}{name}.json")
}

/// Mark names appear in keys, restore windows and URLs: letters, digits, '.', '_' and '-', at most
/// 100, not starting with '.'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// One partition of a mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkedPartition {
    pub topic: String,
    pub partition: i32,
    /// The earliest offset the cluster still held (its log start).
    pub log_start: i64,
    /// The cut: the partition's last stable offset, what a `read_committed` consumer could read up
    /// to. A restore to the mark restores every archived record below it.
    pub offset: i64,
    /// One past the last committed record below `offset` (`log_start` when there was none): the
    /// offsets between it and `offset` hold only transaction markers and aborted records, which no
    /// archive holds, so the archive has reached the mark once its chain reaches this.
    pub records_end: i64,
}

/// A named restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub format_version: u32,
    pub name: String,
    /// When the cut was taken (RFC 3339) and as epoch milliseconds.
    pub taken_at: String,
    pub taken_at_ms: i64,
    /// The Kafka cluster the offsets belong to.
    pub cluster_id: Option<String>,
    /// The `--topics` pattern the mark was taken with.
    pub topics: String,
    /// Who or what took it (`rewind mark`, a schedule), for the inventory.
    #[serde(default)]
    pub taken_by: String,
    pub partitions: Vec<MarkedPartition>,
}

impl Mark {
    /// The cut of one partition, if the mark holds it.
    pub fn offset_of(&self, topic: &str, partition: i32) -> Option<&MarkedPartition> {
        self.partitions
            .iter()
            .find(|p| p.topic == topic && p.partition == partition)
    }

    /// Whether the mark covers `topic` at all.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.partitions.iter().any(|p| p.topic == topic)
    }
}

/// Write `mark` unless its name is taken; returns whether it was written.
pub async fn create(store: &dyn ObjectStore, mark: &Mark) -> Result<bool, ArchiveError> {
    match documents::write_doc(store, &mark_key(&mark.name), mark, PutMode::Create).await {
        Ok(()) => Ok(true),
        Err(ArchiveError::Storage(StorageError::AlreadyExists { .. })) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Read mark `name`; `None` when there is none.
pub async fn read(store: &dyn ObjectStore, name: &str) -> Result<Option<Mark>, ArchiveError> {
    documents::read_doc(store, &mark_key(name)).await
}

/// Every mark of the archive, oldest first.
pub async fn list(store: &dyn ObjectStore) -> Result<Vec<Mark>, ArchiveError> {
    let mut marks = Vec::new();
    for object in store.list(MARKS_PREFIX).await? {
        let Some(name) = object
            .key
            .strip_prefix(MARKS_PREFIX)
            .and_then(|k| k.strip_suffix(".json"))
        else {
            continue;
        };
        if let Some(mark) = read(store, name).await? {
            marks.push(mark);
        }
    }
    marks.sort_by(|a, b| (a.taken_at_ms, &a.name).cmp(&(b.taken_at_ms, &b.name)));
    Ok(marks)
}

/// How far the archive holds one partition: `[start, reached)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Held {
    /// The chain's first offset (after retention); `None` when nothing is archived.
    pub start: Option<i64>,
    /// Where the chain continues: its last file's or gap's end, or the checkpoint's.
    pub reached: Option<i64>,
    /// Recorded gaps `[start, end)`: offsets the broker deleted before they were archived.
    pub gaps: Vec<(i64, i64)>,
}

/// What the archive holds of a mark, partition by partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkStatus {
    /// Partitions whose chain has not reached the mark yet: `(topic, partition, reached, needed)`.
    pub behind: Vec<(String, i32, Option<i64>, i64)>,
    /// Partitions whose archive begins after the mark's log start: records the cluster held at
    /// the mark that the archive no longer (or never) holds: `(topic, partition, archive start,
    /// log start)`.
    pub short: Vec<(String, i32, i64, i64)>,
    /// Partitions with a recorded gap below the cut: records the broker deleted before the sink
    /// archived them: `(topic, partition, gap start, gap end)`.
    pub lost: Vec<(String, i32, i64, i64)>,
}

impl MarkStatus {
    /// Every partition is archived up to the mark.
    pub fn complete(&self) -> bool {
        self.behind.is_empty()
    }

    /// A restore from the archive's start to the mark gives every record the cluster held at it.
    pub fn whole(&self) -> bool {
        self.behind.is_empty() && self.short.is_empty() && self.lost.is_empty()
    }

    /// One word for the inventory.
    pub fn word(&self) -> &'static str {
        if !self.complete() {
            "pending"
        } else if !self.short.is_empty() || !self.lost.is_empty() {
            "partial"
        } else {
            "complete"
        }
    }

    /// In words: what is missing, if anything.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.behind.is_empty() {
            let (t, p, reached, needed) = &self.behind[0];
            parts.push(format!(
                "{} partition(s) not archived up to the mark yet (the first, {t}/{p}, reached {} of {needed})",
                self.behind.len(),
                reached.map_or("nothing".to_string(), |r| r.to_string())
            ));
        }
        if !self.short.is_empty() {
            let (t, p, start, log_start) = &self.short[0];
            parts.push(format!(
                "{} partition(s) whose archive begins after the mark's log start (the first, {t}/{p}, at {start} where the cluster held records from {log_start})",
                self.short.len()
            ));
        }
        if !self.lost.is_empty() {
            let (t, p, start, end) = &self.lost[0];
            parts.push(format!(
                "{} partition(s) with records below the mark that the broker deleted before they were archived (the first, {t}/{p}, offsets [{start}, {end}))",
                self.lost.len()
            ));
        }
        if parts.is_empty() {
            "archived up to the mark, from the log start it recorded".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// Compare `mark` with what the archive holds (`held`, by partition).
pub fn status(mark: &Mark, held: &BTreeMap<(String, i32), Held>) -> MarkStatus {
    let mut status = MarkStatus {
        behind: Vec::new(),
        short: Vec::new(),
        lost: Vec::new(),
    };
    for p in &mark.partitions {
        if p.records_end <= p.log_start {
            // No committed record below the cut: nothing to archive.
            continue;
        }
        let h = held
            .get(&(p.topic.clone(), p.partition))
            .cloned()
            .unwrap_or_default();
        if let Some(&(start, end)) = h
            .gaps
            .iter()
            .find(|(s, e)| *s < p.records_end && *e > p.log_start)
        {
            status.lost.push((p.topic.clone(), p.partition, start, end));
        }
        if h.reached.is_none_or(|r| r < p.records_end) {
            status
                .behind
                .push((p.topic.clone(), p.partition, h.reached, p.records_end));
        }
        if let Some(start) = h.start.filter(|s| *s > p.log_start) {
            status
                .short
                .push((p.topic.clone(), p.partition, start, p.log_start));
        }
    }
    status
}

/// How far the archive holds each partition of `topics`: one listing of `data/`, and for each
/// partition its chain (the last file's footer) and checkpoint.
pub async fn held(
    store: &dyn ObjectStore,
    wanted: impl Fn(&str, i32) -> bool,
) -> Result<BTreeMap<(String, i32), Held>, chain::ChainError> {
    let listed = chain::list_all(store).await?;
    let mut out = BTreeMap::new();
    let known = BTreeMap::new();
    let mut partitions: Vec<(String, i32)> = listed
        .keys()
        .filter(|(t, p)| wanted(t, *p))
        .cloned()
        .collect();
    for object in store.list(super::paths::CHECKPOINTS_PREFIX).await? {
        if let Some((t, p)) = super::paths::parse_checkpoint_key(&object.key) {
            if wanted(&t, p) && !listed.contains_key(&(t.clone(), p)) {
                partitions.push((t, p));
            }
        }
    }
    for (topic, partition) in partitions {
        let files = listed
            .get(&(topic.clone(), partition))
            .map_or(&[][..], Vec::as_slice);
        // One unreadable chain must not hide every other partition's state: it counts as not
        // archived (its marks stay pending), and `rewind verify` names what is wrong.
        let chain = match chain::load(store, &topic, partition, files, &known).await {
            Ok(chain) => chain,
            Err(e) => {
                tracing::warn!(topic, partition, error = %e, "cannot read the chain to check marks against it");
                continue;
            }
        };
        let checkpoint = documents::read_checkpoint(store, &topic, partition).await?;
        let gap_end = chain.gaps.iter().map(|g| g.end).max();
        let reached = [chain.end(), gap_end, checkpoint.as_ref().map(|c| c.doc.end)]
            .into_iter()
            .flatten()
            .max();
        let start = chain
            .start()
            .or_else(|| chain.gaps.first().map(|g| g.start))
            .or(reached);
        let gaps = chain.gaps.iter().map(|g| (g.start, g.end)).collect();
        out.insert(
            (topic, partition),
            Held {
                start,
                reached,
                gaps,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(parts: &[(i64, i64, i64)]) -> Mark {
        Mark {
            format_version: 1,
            name: "m".into(),
            taken_at: "2026-12-04T00:00:00.000Z".into(),
            taken_at_ms: 0,
            cluster_id: None,
            topics: ".*".into(),
            taken_by: String::new(),
            partitions: parts
                .iter()
                .enumerate()
                .map(|(i, &(log_start, records_end, offset))| MarkedPartition {
                    topic: "t".into(),
                    partition: i as i32,
                    log_start,
                    offset,
                    records_end,
                })
                .collect(),
        }
    }

    fn held(parts: &[(Option<i64>, Option<i64>)]) -> BTreeMap<(String, i32), Held> {
        parts
            .iter()
            .enumerate()
            .map(|(i, &(start, reached))| {
                (
                    ("t".to_string(), i as i32),
                    Held {
                        start,
                        reached,
                        gaps: Vec::new(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_mark_is_complete_once_every_chain_reaches_its_last_record_not_its_markers() {
        // Partition 0: records end at 10, the cut at 11 (a commit marker): reached at 10.
        let m = mark(&[(0, 10, 11), (5, 5, 5)]);
        let s = status(&m, &held(&[(Some(0), Some(10)), (None, None)]));
        assert!(s.complete() && s.whole(), "{s:?}");
        let s = status(&m, &held(&[(Some(0), Some(9)), (None, None)]));
        assert_eq!(s.behind, vec![("t".into(), 0, Some(9), 10)]);
        assert_eq!(s.word(), "pending");
        let s = status(&m, &held(&[]));
        assert_eq!(s.behind.len(), 1, "nothing archived is behind: {s:?}");
    }

    #[test]
    fn an_archive_that_begins_after_the_marks_log_start_is_partial() {
        let m = mark(&[(100, 200, 200)]);
        let s = status(&m, &held(&[(Some(150), Some(300))]));
        assert!(s.complete());
        assert!(!s.whole());
        assert_eq!(s.word(), "partial");
        assert!(s
            .describe()
            .contains("at 150 where the cluster held records from 100"));
    }

    #[test]
    fn a_gap_below_the_cut_makes_a_reached_mark_partial() {
        // The sink was away while Kafka deleted [40, 60): a gap reaches past the cut at 50.
        let m = mark(&[(0, 50, 50)]);
        let mut h = held(&[(Some(0), Some(60))]);
        h.get_mut(&("t".to_string(), 0)).unwrap().gaps = vec![(40, 60)];
        let s = status(&m, &h);
        assert!(s.complete());
        assert!(!s.whole());
        assert_eq!(s.word(), "partial");
        assert!(
            s.describe().contains("offsets [40, 60)"),
            "{}",
            s.describe()
        );
        // A gap after the cut costs the mark nothing.
        h.get_mut(&("t".to_string(), 0)).unwrap().gaps = vec![(50, 60)];
        assert!(status(&m, &h).whole());
    }

    #[test]
    fn names_are_safe_in_keys() {
        assert!(valid_name("before-migration_2026.12.04"));
        for bad in ["", ".hidden", "a/b", "a b", "ä", &"x".repeat(101)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
