//! Object keys of the archive (format versions 1 and 2), every one built and parsed here: nothing outside
//! `archive/` spells a prefix. Everything that is not data starts with `_`, so Hive-style readers
//! of `data/**` skip it, and a data file's name is its zero-padded start offset, so lexical order
//! is offset order within a folder. (The storage layer's own `_probe/` is the one exception: it
//! lies below the archive and knows nothing of it.)

use std::fmt;

use super::time::HourBucket;

/// The archive's identity document.
pub const ARCHIVE_KEY: &str = "_archive.json";
/// Prefix of every data file.
pub const DATA_PREFIX: &str = "data/";

/// Where one data file lives and which range it starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataFileKey {
    pub topic: String,
    pub partition: i32,
    pub bucket: HourBucket,
    /// First offset of the half-open range the file covers.
    pub start: i64,
    /// For a file `rewind compact` wrote (format version 2), the end of its range, which its name
    /// carries: `<start:020>-<end:020>.parquet`. The file replaces the files it merged, which the
    /// chain then skips (see [`crate::archive::chain`]).
    pub end: Option<i64>,
}

impl DataFileKey {
    /// Parse a key written by [`DataFileKey`]'s `Display`; `None` for anything else.
    pub fn parse(key: &str) -> Option<DataFileKey> {
        let rest = key.strip_prefix(DATA_PREFIX)?;
        let mut parts = rest.split('/');
        let topic = parts.next()?.strip_prefix("topic=")?;
        let partition = parts
            .next()?
            .strip_prefix("partition=")?
            .parse::<i32>()
            .ok()?;
        let date = parts.next()?.strip_prefix("date=")?;
        let hour = parts.next()?.strip_prefix("hour=")?;
        let file = parts.next()?.strip_suffix(".parquet")?;
        if parts.next().is_some() || !valid_topic(topic) || partition < 0 || hour.len() != 2 {
            return None;
        }
        let (start, end) = match file.split_once('-') {
            Some((start, end)) if end.len() == 20 => (start, Some(end)),
            Some(_) => return None,
            None => (file, None),
        };
        if start.len() != 20
            || !start
                .bytes()
                .chain(end.unwrap_or("").bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let start = start.parse::<i64>().ok()?;
        let end = match end {
            Some(end) => Some(end.parse::<i64>().ok().filter(|e| *e > start)?),
            None => None,
        };
        let (y, md) = date.split_once('-')?;
        let (m, d) = md.split_once('-')?;
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return None;
        }
        let bucket = HourBucket::from_civil(
            y.parse().ok()?,
            m.parse().ok()?,
            d.parse().ok()?,
            hour.parse().ok()?,
        )?;
        Some(DataFileKey {
            topic: topic.to_string(),
            partition,
            bucket,
            start,
            end,
        })
    }

    /// The folder of every data file of one partition.
    pub fn partition_prefix(topic: &str, partition: i32) -> String {
        format!("{DATA_PREFIX}topic={topic}/partition={partition}/")
    }
}

impl fmt::Display for DataFileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}date={}/hour={}/{:020}",
            DataFileKey::partition_prefix(&self.topic, self.partition),
            self.bucket.date(),
            self.bucket.hour(),
            self.start
        )?;
        if let Some(end) = self.end {
            write!(f, "-{end:020}")?;
        }
        f.write_str(".parquet")
    }
}

/// Where every partition's checkpoint lives.
pub const CHECKPOINTS_PREFIX: &str = "_checkpoints/";

/// The checkpoint of one partition: its latest durable position.
pub fn checkpoint_key(topic: &str, partition: i32) -> String {
    format!("{CHECKPOINTS_PREFIX}{topic}/{partition}.json")
}

/// The topic and partition of a key written by [`checkpoint_key`]; `None` for other keys.
pub fn parse_checkpoint_key(key: &str) -> Option<(String, i32)> {
    let (topic, partition) = key
        .strip_prefix(CHECKPOINTS_PREFIX)?
        .strip_suffix(".json")?
        .rsplit_once('/')?;
    Some((topic.to_string(), partition.parse().ok()?))
}

/// Where every topic's metadata lives.
pub const TOPICS_PREFIX: &str = "_topics/";

/// A topic's metadata (partition count, replication factor, configs).
pub fn topic_key(topic: &str) -> String {
    format!("{TOPICS_PREFIX}{topic}.json")
}

/// Where every recorded gap lives.
pub const GAPS_PREFIX: &str = "_gaps/";

/// Key of a recorded gap.
pub fn gap_key(topic: &str, partition: i32, start: i64) -> String {
    format!("{GAPS_PREFIX}{topic}/{partition}/{start:020}.json")
}

/// Prefix of every claim.
pub const CLAIMS_PREFIX: &str = "_claims/";

/// Key of the claim of the range that starts at `start`.
pub fn claim_key(topic: &str, partition: i32, start: i64) -> String {
    format!("{CLAIMS_PREFIX}{topic}/{partition}/{start:020}.json")
}

/// Prefix of every chain start document.
pub const RETENTION_PREFIX: &str = "_retention/";

/// Key of a partition's chain start.
pub fn chain_start_key(topic: &str, partition: i32) -> String {
    format!("{RETENTION_PREFIX}{topic}/{partition}.json")
}

/// Where every consumer-group snapshot lives.
pub const GROUPS_PREFIX: &str = "_groups/";

/// Folder of one group's snapshots.
pub fn group_prefix(group: &str) -> String {
    format!("{GROUPS_PREFIX}{group}/")
}

/// Key of one group snapshot: lexical order is time order.
pub fn group_snapshot_key(group: &str, taken_at_ms: i64) -> String {
    format!("{}{taken_at_ms:020}.json", group_prefix(group))
}

/// The group and time of a snapshot key written by [`group_snapshot_key`]; `None` for other keys.
pub fn parse_group_snapshot_key(key: &str) -> Option<(&str, i64)> {
    let mut parts = key.strip_prefix(GROUPS_PREFIX)?.split('/');
    let (Some(group), Some(file), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let taken = file.strip_suffix(".json")?.parse::<i64>().ok()?;
    Some((group, taken))
}

/// Where the service keeps what it decides through its API (see `service::control`).
pub const CONTROL_PREFIX: &str = "_control/";

/// Whether the pipeline of `kind` (`sink`, `restore`) and `name` is paused. A sink and a restore
/// pipeline of one name are two pipelines: the key names the kind.
pub fn control_pipeline_key(kind: &str, name: &str) -> String {
    format!("{CONTROL_PREFIX}pipelines/{kind}/{name}.json")
}

/// Where the service's restores are remembered.
pub fn control_restores_prefix() -> String {
    format!("{CONTROL_PREFIX}restores/")
}

/// A restore started through the service's API.
pub fn control_restore_key(id: &str) -> String {
    format!("{}{id}.json", control_restores_prefix())
}

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, and neither `.` nor `..`.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn every_document_key_parses_back() {
        let key = checkpoint_key("orders.v1", 12);
        assert_eq!(key, "_checkpoints/orders.v1/12.json");
        assert_eq!(
            parse_checkpoint_key(&key),
            Some(("orders.v1".to_string(), 12))
        );
        assert_eq!(parse_checkpoint_key("_checkpoints/orders/x.json"), None);
        assert_eq!(parse_checkpoint_key("_gaps/orders/1.json"), None);
        let key = group_snapshot_key("billing", 1_700_000_000_000);
        assert_eq!(key, "_groups/billing/00000001700000000000.json");
        assert_eq!(
            parse_group_snapshot_key(&key),
            Some(("billing", 1_700_000_000_000))
        );
        assert_eq!(parse_group_snapshot_key("_groups/billing/x/1.json"), None);
        assert_eq!(
            control_restore_key("r1"),
            format!("{}r1.json", control_restores_prefix())
        );
        assert!(gap_key("t", 0, 5).starts_with(GAPS_PREFIX));
        assert!(topic_key("t").starts_with(TOPICS_PREFIX));
    }

    #[test]
    fn data_keys_follow_the_format() {
        let key = DataFileKey {
            topic: "orders.v1-eu".into(),
            partition: 7,
            bucket: HourBucket::from_civil(2026, 11, 23, 9).unwrap(),
            start: 1_234,
            end: None,
        };
        assert_eq!(key.to_string(), "data/topic=orders.v1-eu/partition=7/date=2026-11-23/hour=09/00000000000000001234.parquet");
        assert_eq!(DataFileKey::parse(&key.to_string()), Some(key.clone()));
        let compacted = DataFileKey {
            end: Some(5_000),
            ..key
        };
        assert_eq!(compacted.to_string(), "data/topic=orders.v1-eu/partition=7/date=2026-11-23/hour=09/00000000000000001234-00000000000000005000.parquet");
        assert_eq!(DataFileKey::parse(&compacted.to_string()), Some(compacted));
        assert_eq!(
            checkpoint_key("_schemas", 0),
            "_checkpoints/_schemas/0.json"
        );
        assert_eq!(topic_key("a.b"), "_topics/a.b.json");
    }

    #[test]
    fn foreign_keys_are_not_data_files() {
        for key in [
            "_archive.json",
            "data/topic=a/partition=0/date=2026-11-23/hour=09/1234.parquet",
            "data/topic=a/partition=-1/date=2026-11-23/hour=09/00000000000000001234.parquet",
            "data/topic=a/partition=0/date=2026-02-30/hour=09/00000000000000001234.parquet",
            "data/topic=a/partition=0/date=2026-11-23/hour=24/00000000000000001234.parquet",
            "data/topic=a b/partition=0/date=2026-11-23/hour=09/00000000000000001234.parquet",
            "data/topic=a/partition=0/date=2026-11-23/hour=09/00000000000000001234.parquet.tmp",
            "data/topic=a/partition=0/date=2026-11-23/hour=09/x/00000000000000001234.parquet",
            "data/topic=a/partition=0/date=2026-11-23/hour=09/00000000000000001234-5000.parquet",
            "data/topic=a/partition=0/date=2026-11-23/hour=09/00000000000000001234-00000000000000001234.parquet",
            "data/topic=a/partition=0/date=2026-11-23/hour=09/+0000000000000001234.parquet",
            "data/topic=a/partition=0/date=2026-11-23/hour=09/00000000000000001234-00000000000000005000-1.parquet",
        ] {
            assert_eq!(DataFileKey::parse(key), None, "{key}");
        }
    }

    proptest! {
        #[test]
        fn keys_round_trip_and_sort_by_offset_within_a_folder(
            topic in "[a-zA-Z0-9._-]{1,40}",
            partition in 0i32..100_000,
            hour in 0i64..1_000_000,
            a in 0i64..i64::MAX,
            b in 0i64..i64::MAX,
        ) {
            prop_assume!(valid_topic(&topic));
            let key = |start| DataFileKey { topic: topic.clone(), partition, bucket: HourBucket(hour), start, end: None };
            let (ka, kb) = (key(a), key(b));
            prop_assert_eq!(DataFileKey::parse(&ka.to_string()), Some(ka.clone()));
            prop_assert_eq!(ka.to_string().cmp(&kb.to_string()), a.cmp(&b));
        }
    }
}
