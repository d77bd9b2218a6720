//! Point-in-time restore: plan a window from the archive → read and decode files (prefetched, several
//! partitions at once, within a memory budget) → produce them with a transactional producer → commit
//! each transaction together with the restore's progress → translate consumer groups.
//!
//! Invariant: the records of a restore and its progress commit or abort together in the target
//! cluster, so a restore run again with the same id continues exactly where the committed progress
//! says: no record twice, none missing, for any interruption.

mod cluster;
mod groups;
pub mod job;
mod lane;
mod limits;
pub mod partitioner;
mod pass;
pub mod plan;
mod preview;
pub mod progress;
mod reader;
mod run;
pub mod schema_ids;
mod shared;
mod status;
mod targets;
mod transaction;
mod visible;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use plan::{plan, PartitionPlan, Planned, Window};
pub use preview::{preview, GroupMove, Preview};
pub use progress::Progress;
pub use run::run;
pub use targets::TargetCheck;

use crate::archive::chain::ChainError;
use crate::archive::documents::ArchiveError;
use crate::storage::ObjectStore;
use lane::Lane;
use transaction::Transaction;

/// Timeout of Kafka requests that should answer at once.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A restore under way: its lanes, its transaction and what it reports.
struct Restore<'a> {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) opts: &'a RestoreOptions,
    pub(super) cluster: cluster::Cluster,
    pub(super) txn: Transaction,
    /// The second producer, `rewind-restore-<id>+1`, of a restore that is not shared and has
    /// `restore.producers = 2`: it writes
    /// the odd lanes and their progress (see [`pass`]), and commits while the first one sends.
    pub(super) second: Option<Transaction>,
    pub(super) lanes: Vec<Lane>,
    pub(super) report: RestoreReport,
    /// The next watch slot of group translation (0 means none).
    pub(super) next_slot: usize,
    /// Records archived with timestamp 0, which librdkafka restamps with the current time.
    pub(super) zero_timestamps: u64,
    /// Consumer group snapshots count as of this time (see `Progress::groups_as_of`); `None`: the
    /// window's end, or the newest snapshots in follow mode.
    pub(super) groups_as_of: Option<i64>,
    /// The marks the window begins or ends at.
    pub(super) cuts: plan::Cuts,
    /// Totals for the progress line.
    pub(super) started: Instant,
    pub(super) last_status: Instant,
    /// The progress bar, when asked for one (a terminal).
    pub(super) bar: Option<indicatif::ProgressBar>,
    /// This worker's membership in a shared restore's group, once set up.
    pub(super) group: Option<shared::Group>,
    /// A shared restore's worker: its name and its own producer, fenced while setting up (the
    /// set-up's producer writes the plan).
    pub(super) worker: Option<(String, Transaction)>,
    /// The producer's `transaction.timeout.ms` (also how long a read of the progress waits for
    /// open transactions, and a minute more).
    pub(super) transaction_timeout_ms: u64,
}

/// What a restore does.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub window: Window,
    /// Source topics to restore.
    pub topics: crate::kafka::topics::TopicSelector,
    /// Source topic → target topic.
    pub renames: BTreeMap<String, String>,
    /// Names the restore for resumption; its transactional id is `rewind-restore-<id>`.
    pub restore_id: String,
    /// Translate the committed offsets of consumer groups as of the window's end.
    pub groups: bool,
    /// Keep restoring new archive files until stopped.
    pub follow: bool,
    /// How often follow mode looks for new files.
    pub poll_interval: Duration,
    /// Write into target topics that already hold records.
    pub allow_non_empty: bool,
    /// Restore only records whose own timestamp is inside the window.
    pub strict: bool,
    /// Choose target partitions with the Java client's murmur2 partitioner instead of keeping the
    /// source partition.
    pub repartition_by_key: bool,
    /// Add `rewind.source.topic`, `rewind.source.partition` and `rewind.source.offset` headers.
    pub provenance_headers: bool,
    /// Rewrite the Schema Registry ids of keys and values in the Confluent wire format from the
    /// source registry's to the target registry's (see [`schema_ids`]).
    pub schema_ids: Option<std::sync::Arc<schema_ids::SchemaIds>>,
    /// Several processes run this restore together (see [`shared`]).
    pub shared: bool,
    /// This process's name among a shared restore's workers, in its transactional id
    /// (`rewind-restore-<id>:<worker>`): a worker restarted with the same name aborts what it left
    /// open at once, instead of after the transaction timeout. Random when not given.
    pub worker_id: Option<String>,
    /// Bytes of fetched files and decoded records held at once.
    pub buffer_budget: u64,
    /// Partitions read at once.
    pub concurrency: usize,
    /// A transaction commits once it holds this many record bytes...
    pub transaction_bytes: u64,
    /// Transactional producers (1 or 2) of a restore that is not shared: with two, each owns every
    /// other lane and commits while the other sends.
    pub producers: usize,
    /// ...or has been open this long.
    pub transaction_interval: Duration,
    /// Compacted topic in the target cluster that holds restore progress.
    pub progress_topic: String,
    /// Print a progress line on stderr (for a terminal).
    pub progress: bool,
    /// What to say on stderr about resuming, once the restore committed its plan (there is then
    /// something to resume): for an id the user did not choose, or a window given in relative
    /// times.
    pub resume_hint: Option<String>,
    /// Where the service's API reads this restore's partitions, lag and totals.
    pub live: Option<std::sync::Arc<crate::live::Live>>,
    /// The target answers the admin API: missing targets and the progress topic are created,
    /// grown topics get partitions, existing targets' configs are checked (no LogAppendTime).
    /// Off for a cluster whose admin requests cannot succeed (the demo's embedded Kafka, Amazon MSK
    /// IAM: rust-rdkafka#757); every topic the restore writes to must then exist.
    pub admin_api: bool,
}

impl RestoreOptions {
    /// How many transactional producers the restore writes with: a shared restore's worker one
    /// (it changes lanes only between transactions, see [`shared`]), otherwise `producers`.
    pub(super) fn producer_count(&self) -> usize {
        if self.shared {
            1
        } else {
            self.producers.clamp(1, 2)
        }
    }
}

/// Why a restore stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}: no Rewind archive there (no _archive.json); check --archive")]
    NoArchive(String),
    #[error("no archived topic matches --topics {pattern:?}; the archive holds: {archived}")]
    NoTopics { pattern: String, archived: String },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::ClusterError),
    #[error("{0}")]
    Target(String),
    #[error("restore {id} was started for {stored}, not {asked}; run it again with the same window (as absolute times: a relative one such as now-1h is another window later) and topics, or use a new --restore-id")]
    OtherWindow {
        id: String,
        stored: String,
        asked: String,
    },
    #[error("{topic}/{partition}: offsets [{next}, {start}) that this restore has not restored yet are no longer in the archive (`rewind retention` moved the chain's start to {start}); nothing past them was written, so restore them from another copy, or start a new restore from the archive's new start")]
    Pruned {
        topic: String,
        partition: i32,
        next: i64,
        start: i64,
    },
    #[error("restore {id} committed every record, but after {waited_secs}s {count} target partitions ({partitions}) still hide some from read_committed consumers: another producer's transaction is open ahead of them until it commits, aborts or times out; running the same command with --restore-id {id} waits again")]
    NotVisible {
        id: String,
        waited_secs: u64,
        count: usize,
        partitions: String,
    },
    #[error("restore {id} stopped: {message}; what was committed stays, and running the same command with --restore-id {id} resumes")]
    Interrupted { id: String, message: String },
    #[error("{0}")]
    SchemaIds(String),
}

/// What a restore did.
#[derive(Debug, Default, Clone)]
pub struct RestoreReport {
    pub restore_id: String,
    pub partitions: usize,
    pub records: u64,
    pub bytes: u64,
    /// Whether an earlier run of the same restore id had committed progress.
    pub resumed: bool,
    pub topics_created: Vec<String>,
    pub groups_committed: Vec<String>,
    pub groups_skipped: Vec<String>,
    /// Records planned (`--to` reached) across partitions, for the summary.
    pub planned_records: u64,
    /// Each partition's source range `[start, end)` as this run restores it (the plan it committed,
    /// or resumed): `(topic, partition, start, end)`.
    pub ranges: Vec<(String, i32, i64, i64)>,
    /// The restore was asked to stop before it finished.
    pub stopped: bool,
    /// `read_committed` consumers of the target see every record the restore committed: it waited
    /// for the last stable offset of every partition it wrote (false in follow mode, and when
    /// stopped).
    pub visible: bool,
}

/// A fresh restore id: time of day plus randomness, valid in a transactional id.
pub fn new_restore_id(now_ms: i64) -> String {
    let stamp = crate::archive::time::rfc3339_millis(now_ms)
        .replace(['-', ':'], "")
        .chars()
        .take(15)
        .collect::<String>();
    format!("r{stamp}-{:04x}", rand::random::<u16>())
}
