//! When an open data file is closed ("rolled"), as data: a [`RollingPolicy`] of limits and one pure
//! function, [`RollingPolicy::decide`], that the sink consults on every event. Every file the sink
//! writes was closed by one of its answers, which label `rewind_sink_files_written_total{reason}`;
//! the rolls no limit decides (a later hour, a gap, the partition leaving or reaching its end) are
//! [`boundary`], which the chain also consults where it splits buffered records into files.
//!
//! Rewind keeps this policy as its own code: it is a few lines, and it defines the archive's
//! bucket rule, which no general-purpose crate knows.
//!
//! Invariant kept for restore planning: a record whose time bucket is later than the open file's
//! closes the file before it is appended, so every record of a file in bucket `H` is earlier than
//! the end of `H` (late records, with earlier timestamps, stay in the open file).

use std::time::Duration;

use super::time::HourBucket;

/// Limits of one open data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollingPolicy {
    /// Close after this many records.
    pub max_records: u64,
    /// Close once the buffered record bytes reach this.
    pub max_bytes: u64,
    /// Close once the file has been open this long: the recovery point objective.
    pub max_age: Duration,
}

impl Default for RollingPolicy {
    fn default() -> Self {
        RollingPolicy {
            max_records: 1_000_000,
            max_bytes: 128 * 1024 * 1024,
            max_age: Duration::from_secs(60),
        }
    }
}

/// What the sink knows about the open file of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFile {
    pub records: u64,
    pub bytes: u64,
    /// Bucket of the file's first record.
    pub bucket: HourBucket,
    /// When the first record was buffered (milliseconds on the sink's monotonic clock).
    pub opened_at_ms: u64,
}

/// Something that happened to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A record of `bucket` is about to be appended.
    BeforeAppend { bucket: HourBucket },
    /// A record was appended (the open file's counters include it).
    AfterAppend,
    /// Time passed; `now_ms` on the same clock as [`OpenFile::opened_at_ms`].
    Tick { now_ms: u64 },
    /// The partition was taken away by a rebalance.
    Revoked,
    /// The worker is stopping.
    Shutdown,
    /// The global buffer budget is reached and this partition holds one of the largest buffers.
    MemoryPressure,
    /// The next record is after offsets the broker deleted before they were read: the records
    /// before them are one file, and the gap is recorded between it and the next.
    Gap,
    /// Snapshot mode (`--once`): the partition reached the offset the snapshot runs to.
    TargetReached,
    /// The next record's schema changed a field of the open file's typed columns to another type.
    SchemaChange,
}

/// Why a file was closed; also the label of the rotation metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RollReason {
    Records,
    Bytes,
    Age,
    LaterBucket,
    Revoked,
    Shutdown,
    MemoryPressure,
    /// Records were deleted before they were read: what was read before them is one file.
    Gap,
    /// A snapshot (`--once`) reached its end in this partition.
    SnapshotEnd,
    /// A schema changed a field's type (typed columns).
    Schema,
}

impl RollReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RollReason::Records => "records",
            RollReason::Bytes => "bytes",
            RollReason::Age => "age",
            RollReason::LaterBucket => "later_bucket",
            RollReason::Revoked => "revoked",
            RollReason::Shutdown => "shutdown",
            RollReason::MemoryPressure => "memory_pressure",
            RollReason::Gap => "gap",
            RollReason::SnapshotEnd => "snapshot_end",
            RollReason::Schema => "schema",
        }
    }
}

impl RollingPolicy {
    /// Whether `event` closes the open file `file`, and why. An empty (absent) file never rolls.
    pub fn decide(&self, file: Option<&OpenFile>, event: Event) -> Option<RollReason> {
        let file = file.filter(|f| f.records > 0)?;
        match event {
            Event::AfterAppend if file.records >= self.max_records => Some(RollReason::Records),
            Event::AfterAppend if file.bytes >= self.max_bytes => Some(RollReason::Bytes),
            Event::AfterAppend => None,
            Event::Tick { now_ms }
                if now_ms.saturating_sub(file.opened_at_ms) >= self.max_age.as_millis() as u64 =>
            {
                Some(RollReason::Age)
            }
            Event::Tick { .. } => None,
            other => boundary(Some(file), other),
        }
    }
}

/// The rolls that no limit decides: a record of a later hour (the bucket rule), a gap, and the
/// partition leaving, stopping, giving way to memory pressure or reaching its snapshot's end. An
/// empty (absent) file never rolls; limit events ([`Event::AfterAppend`], [`Event::Tick`]) are
/// the policy's.
pub fn boundary(file: Option<&OpenFile>, event: Event) -> Option<RollReason> {
    let file = file.filter(|f| f.records > 0)?;
    match event {
        Event::BeforeAppend { bucket } if bucket > file.bucket => Some(RollReason::LaterBucket),
        Event::BeforeAppend { .. } | Event::AfterAppend | Event::Tick { .. } => None,
        Event::Revoked => Some(RollReason::Revoked),
        Event::Shutdown => Some(RollReason::Shutdown),
        Event::MemoryPressure => Some(RollReason::MemoryPressure),
        Event::Gap => Some(RollReason::Gap),
        Event::TargetReached => Some(RollReason::SnapshotEnd),
        Event::SchemaChange => Some(RollReason::Schema),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A record as the simulation sees it: timestamp, size, arrival time.
    #[derive(Debug, Clone, Copy)]
    struct Rec {
        ts: i64,
        size: u64,
        at_ms: u64,
    }

    /// Split a stream into files by consulting the policy the way the sink does.
    fn simulate(policy: &RollingPolicy, records: &[Rec]) -> Vec<(OpenFile, Vec<Rec>, RollReason)> {
        let mut files = Vec::new();
        let mut open: Option<(OpenFile, Vec<Rec>)> = None;
        for r in records {
            let bucket = HourBucket::of_millis(r.ts);
            for event in [
                Event::Tick { now_ms: r.at_ms },
                Event::BeforeAppend { bucket },
            ] {
                if let Some(reason) = policy.decide(open.as_ref().map(|(f, _)| f), event) {
                    let (f, rs) = open.take().unwrap();
                    files.push((f, rs, reason));
                }
            }
            let (file, rs) = open.get_or_insert_with(|| {
                (
                    OpenFile {
                        records: 0,
                        bytes: 0,
                        bucket,
                        opened_at_ms: r.at_ms,
                    },
                    Vec::new(),
                )
            });
            file.records += 1;
            file.bytes += r.size;
            rs.push(*r);
            if let Some(reason) = policy.decide(Some(file), Event::AfterAppend) {
                let (f, rs) = open.take().unwrap();
                files.push((f, rs, reason));
            }
        }
        if let Some((f, rs)) = open.take() {
            assert_eq!(
                policy.decide(Some(&f), Event::Shutdown),
                Some(RollReason::Shutdown)
            );
            files.push((f, rs, RollReason::Shutdown));
        }
        files
    }

    fn records() -> impl Strategy<Value = Vec<Rec>> {
        // Timestamps wander forward with occasional late records; arrival times only move forward.
        prop::collection::vec(
            (-7_200_000i64..3_600_000, 1u64..5_000, 0u64..20_000),
            0..400,
        )
        .prop_map(|steps| {
            let (mut ts, mut at) = (1_795_428_900_000i64, 0u64);
            steps
                .into_iter()
                .map(|(dt, size, dat)| {
                    ts += dt / 10;
                    at += dat;
                    Rec {
                        ts: ts + dt.min(0),
                        size,
                        at_ms: at,
                    }
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn files_keep_the_bucket_rule_and_the_limits(
            records in records(),
            max_records in 1u64..50,
            max_bytes in 1u64..100_000,
            max_age_ms in 1u64..200_000,
        ) {
            let policy = RollingPolicy { max_records, max_bytes, max_age: Duration::from_millis(max_age_ms) };
            let files = simulate(&policy, &records);

            // Nothing lost, nothing duplicated, order kept.
            let flat: Vec<i64> = files.iter().flat_map(|(_, rs, _)| rs.iter().map(|r| r.ts)).collect();
            prop_assert_eq!(flat, records.iter().map(|r| r.ts).collect::<Vec<_>>());

            for (file, rs, reason) in &files {
                prop_assert!(!rs.is_empty());
                // The bucket is the first record's, and no record is past the end of it.
                prop_assert_eq!(file.bucket, HourBucket::of_millis(rs[0].ts));
                prop_assert!(rs.iter().all(|r| r.ts < file.bucket.end_millis()));
                prop_assert!(file.records <= max_records);
                // A file stops growing as soon as it reaches the byte limit.
                let before_last: u64 = rs[..rs.len() - 1].iter().map(|r| r.size).sum();
                prop_assert!(before_last < max_bytes);
                // Only the open file's age, records, bytes or bucket change (or the end) close it.
                prop_assert!(matches!(reason, RollReason::Records | RollReason::Bytes | RollReason::Age | RollReason::LaterBucket | RollReason::Shutdown));
                // No file outlives max_age by the time a later record arrives.
                let last_at = rs.last().unwrap().at_ms;
                prop_assert!(last_at - file.opened_at_ms < max_age_ms);
            }
        }
    }

    #[test]
    fn lifecycle_events_close_any_non_empty_file() {
        let policy = RollingPolicy::default();
        let file = OpenFile {
            records: 1,
            bytes: 10,
            bucket: HourBucket(1),
            opened_at_ms: 0,
        };
        for (event, reason) in [
            (Event::Revoked, RollReason::Revoked),
            (Event::Shutdown, RollReason::Shutdown),
            (Event::MemoryPressure, RollReason::MemoryPressure),
            (Event::Gap, RollReason::Gap),
            (Event::TargetReached, RollReason::SnapshotEnd),
            (Event::Tick { now_ms: 60_000 }, RollReason::Age),
            (
                Event::BeforeAppend {
                    bucket: HourBucket(2),
                },
                RollReason::LaterBucket,
            ),
        ] {
            assert_eq!(policy.decide(Some(&file), event), Some(reason));
            assert_eq!(
                policy.decide(None, event),
                None,
                "no open file, nothing to close"
            );
        }
        assert_eq!(
            policy.decide(
                Some(&file),
                Event::BeforeAppend {
                    bucket: HourBucket(0)
                }
            ),
            None,
            "late records stay"
        );
        assert_eq!(
            policy.decide(Some(&file), Event::Tick { now_ms: 59_999 }),
            None
        );
    }
}
