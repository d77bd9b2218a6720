//! What a sink is asked to do ([`SinkOptions`], from the configuration's `[sink]` section or a
//! pipeline's), how it can fail ([`SinkError`]) and what it reports ([`SinkReport`]).

use std::sync::Arc;
use std::time::Duration;

use super::ownership;
use super::partition::FlushError;
use crate::archive::documents::ArchiveError;
use crate::archive::rotation::RollingPolicy;
use crate::kafka::topics::TopicSelector;

/// What a sink does, beyond where it reads and writes.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Topics to back up, less those excluded (see [`TopicSelector`]).
    pub topics: TopicSelector,
    /// Consumer group the sink commits to (lag monitoring only); `None`: the archive's own,
    /// `rewind-sink-<archive id>` (see [`ownership`]).
    pub group: Option<String>,
    /// Snapshot mode: archive up to the high watermarks seen at start, then stop.
    pub once: bool,
    pub policy: RollingPolicy,
    /// Total bytes buffered across all partitions before the largest buffers are flushed early.
    pub buffer_budget: u64,
    /// Files larger than this go up as multipart uploads of parts this size.
    pub part_size: usize,
    /// Full files uploaded in the background at once while their partitions read on (0: none;
    /// every flush waits for its file).
    pub uploads_in_flight: usize,
    /// How often new topics and partitions are looked for.
    pub discovery_interval: Duration,
    /// Accept an archive written from another Kafka cluster.
    pub allow_cluster_change: bool,
    /// How long a graceful stop may take to flush.
    pub drain_timeout: Duration,
    /// Print a status line to stderr every 10 seconds (for a terminal).
    pub progress: bool,
    /// How often consumer-group offsets are snapshotted into `_groups/` (zero: never). Snapshot
    /// mode takes one snapshot at the end.
    pub group_snapshot_interval: Duration,
    /// Where the service's API reads this run's partitions, lag and totals.
    pub live: Option<Arc<crate::live::Live>>,
    /// The cluster answers the admin API, so each topic's dynamic configs (DescribeConfigs) go
    /// into `_topics/` and restores can create targets like the source. Off for a cluster whose
    /// admin requests cannot succeed: the demo's embedded Kafka, and Amazon MSK IAM (rust-rdkafka's
    /// admin client cannot refresh OAUTHBEARER tokens, rust-rdkafka#757); `_topics/` then keeps
    /// partition count and replication only.
    pub admin_api: bool,
    /// What decodes typed columns (`[sink.decode]`), if anything.
    pub decoders: Option<Arc<super::decode::Decoders>>,
}

impl SinkOptions {
    /// Options from the configuration's `[sink]` section (or a sink pipeline's); `once`,
    /// `allow_cluster_change`, `progress` and `live` are the caller's to set. `progress_topic` (the
    /// restores' progress topic of the same configuration) is never archived, like the default
    /// one, whose `__` prefix keeps it out.
    pub fn from_config(
        s: &crate::config::SinkConfig,
        part_size: u64,
        progress_topic: &str,
    ) -> Result<SinkOptions, String> {
        let invalid = |key: &str, pattern: &str, e: regex::Error| {
            format!(
                "sink.{key} {pattern:?} is not a valid regular expression: {}",
                crate::kafka::topics::regex_problem(&e)
            )
        };
        if let Some(exclude) = &s.exclude {
            TopicSelector::new(exclude).map_err(|e| invalid("exclude", exclude, e))?;
        }
        let progress = regex::escape(progress_topic);
        let exclude = match &s.exclude {
            Some(exclude) => format!("(?:{exclude})|{progress}"),
            None => progress,
        };
        let topics = TopicSelector::new(&s.topics)
            .map_err(|e| invalid("topics", &s.topics, e))?
            .excluding(Some(&exclude))
            .map_err(|e| invalid("exclude", &exclude, e))?;
        Ok(SinkOptions {
            topics,
            group: s.group.clone(),
            once: false,
            policy: RollingPolicy {
                max_records: s.max_file_records,
                max_bytes: s.max_file_bytes.bytes(),
                max_age: s.max_file_age,
            },
            buffer_budget: s.buffer_budget.bytes(),
            part_size: part_size as usize,
            uploads_in_flight: s.uploads_in_flight,
            discovery_interval: s.discovery_interval,
            allow_cluster_change: false,
            drain_timeout: s.drain_timeout,
            progress: false,
            group_snapshot_interval: s.group_snapshot_interval,
            live: None,
            admin_api: true,
            decoders: super::decode::Decoders::from_config(&s.decode)?,
        })
    }

    /// Whether a topic is selected.
    pub fn selects(&self, topic: &str) -> bool {
        self.topics.selects(topic)
    }
}

/// Why the sink stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Kafka(#[from] crate::kafka::ClusterError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error(transparent)]
    Store(#[from] crate::storage::ProbeError),
    #[error("kafka: could not seek {topic}/{partition} to offset {offset}: {message}; the sink stops rather than read past records it has not archived")]
    Seek {
        topic: String,
        partition: i32,
        offset: i64,
        message: String,
    },
    #[error("no topic matches --topics {0:?} (after --exclude); nothing to back up")]
    NoTopics(String),
    #[error("consumer group {:?} holds the commits of another archive ({}), not of {url} (archive {id}); sinks of two archives in one group split the partitions and leave both incomplete: pass a --group of this archive's own (without --group the sink uses rewind-sink-{id})", .foreign.group, other_archive(.foreign))]
    GroupOfOtherArchive {
        foreign: ownership::Foreign,
        url: String,
        id: String,
    },
    #[error("{} partition(s) were not backed up because their offsets went backwards (topic deleted and recreated?): {}; the archived chains are untouched — move them aside (data/topic=<t>/, _checkpoints/<t>/, _claims/<t>/, _gaps/<t>/) or back up into a new archive", .0.len(), .0.join(", "))]
    OffsetsWentBackwards(Vec<String>),
}

fn other_archive(foreign: &ownership::Foreign) -> String {
    if foreign.other_url.is_empty() {
        format!("archive {}", foreign.other_id)
    } else {
        format!("archive {} at {}", foreign.other_id, foreign.other_url)
    }
}

/// Totals of one sink run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SinkReport {
    pub partitions: usize,
    /// Records made durable in the archive.
    pub records: u64,
    /// Records read from Kafka, archived or not yet (a record read again after a seek counts
    /// again).
    pub read: u64,
    pub bytes: u64,
    pub files: u64,
    pub adopted_files: u64,
    pub gaps: u64,
    /// Most record bytes buffered at once across all partitions.
    pub peak_buffered: u64,
    /// Times the broker was asked for a partition's log start before a file with offset jumps
    /// was made durable (at most one per file, never one per jump).
    pub log_start_queries: u64,
    /// Files sealed and uploaded in the background while their partitions read on.
    pub background_uploads: u64,
    /// Partitions refused because their log ends before the archived chain (`topic/partition`).
    pub refused: Vec<String>,
}

/// `sink.uploads_in_flight`'s default: one background upload per core, between 2 and 8.
pub fn default_uploads_in_flight() -> usize {
    crate::config::SinkConfig::default().uploads_in_flight
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rewind's own progress topic stays out of the archive, whatever its name: the default is
    /// internal (`__`), and a configured one is left out by name; the user's exclusion still holds.
    #[test]
    fn the_restores_progress_topic_is_never_archived() {
        let mut config = crate::config::SinkConfig::default();
        let opts = SinkOptions::from_config(&config, 5 << 20, "__rewind_restores").unwrap();
        assert!(!opts.selects("__rewind_restores"));
        assert!(opts.selects("orders") && opts.selects("rewind-progress"));
        let opts = SinkOptions::from_config(&config, 5 << 20, "rewind-progress").unwrap();
        assert!(!opts.selects("rewind-progress"));
        assert!(opts.selects("rewind-progress2") && opts.selects("orders"));
        config.exclude = Some(".*-tmp".into());
        let opts = SinkOptions::from_config(&config, 5 << 20, "rewind.progress").unwrap();
        assert!(!opts.selects("rewind.progress") && !opts.selects("orders-tmp"));
        assert!(
            opts.selects("rewindxprogress"),
            "the name is matched literally"
        );
        config.exclude = Some("(".into());
        let err = SinkOptions::from_config(&config, 5 << 20, "p").unwrap_err();
        assert!(
            err.starts_with("sink.exclude \"(\" is not a valid"),
            "{err}"
        );
    }
}
