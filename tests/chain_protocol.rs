//! The chain protocol step by step, against a local archive and a store that refuses writes: the
//! middle test tier under the model-based test (`chain_model.rs`), which drives the same code
//! through generated interleavings. Each test names one rule of DESIGN.md's "The chain" and runs
//! in milliseconds, without Kafka.

use std::sync::atomic::{AtomicU32, Ordering};

use rewind::archive::rotation::RollReason;
use rewind::archive::time::HourBucket;
use rewind::archive::{documents, Record, TimestampType};
use rewind::sink::{Admission, PartitionChain};
use rewind::storage::{
    Hooks, Intercept, LocalStore, ObjectStore, StorageError, StorageResult, StorageUrl,
};

const TOPIC: &str = "protocol";
const HOUR: i64 = 3_600_000;
const BASE: i64 = 492_000 * HOUR;

fn local() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = StorageUrl::parse(&format!("file://{}", dir.path().display())).unwrap();
    let store = LocalStore::open(url).unwrap();
    (dir, store)
}

/// Buffer the records at `offsets` (in one hour) as the consumer would deliver them.
fn buffer(chain: &mut PartitionChain, offsets: impl IntoIterator<Item = i64>) {
    for offset in offsets {
        let record = Record {
            offset,
            timestamp: Some(BASE + offset),
            timestamp_type: Some(TimestampType::Create),
            key: Some(format!("k{offset}").into_bytes()),
            value: Some(format!("v{offset}").into_bytes()),
            headers: vec![],
        };
        let Admission::Keep(ticket) = chain.admit(offset) else {
            panic!("offset {offset} was not admitted");
        };
        assert!(chain.push(ticket, record, HourBucket::of_millis(BASE), 0));
    }
}

async fn resume(store: &dyn ObjectStore, low: i64) -> PartitionChain {
    let mut chain = PartitionChain::resume(store, TOPIC, 0, low).await.unwrap();
    chain.positioned_at(chain.end);
    chain
}

/// A chain starts where the log starts, and a chain resumed later starts at its checkpoint.
#[tokio::test]
async fn a_chain_resumes_at_the_log_start_then_at_its_checkpoint() {
    let (_dir, store) = local();
    let mut chain = resume(&store, 7).await;
    assert_eq!(chain.end, 7);
    buffer(&mut chain, 7..12);
    let flushed = chain
        .flush(&store, "c", 5 << 20, BASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((flushed.start, flushed.end, flushed.records), (7, 12, 5));
    assert!(!flushed.adopted);
    assert_eq!(chain.end, 12);
    assert_eq!(
        resume(&store, 0).await.end,
        12,
        "the checkpoint, not the log"
    );
}

/// Two writers of one start (a rebalance, a zombie, a second sink): the second adopts the first's
/// file, drops what it buffered, and reads again from that file's end. Nothing is lost: the
/// records after the adopted file are read again.
#[tokio::test]
async fn the_second_writer_of_a_start_adopts_the_first_ones_file() {
    let (_dir, store) = local();
    let mut first = resume(&store, 0).await;
    let mut second = resume(&store, 0).await;
    buffer(&mut first, 0..5);
    buffer(&mut second, 0..10);
    first.flush(&store, "c", 5 << 20, BASE).await.unwrap();
    let adopted = second
        .flush(&store, "c", 5 << 20, BASE)
        .await
        .unwrap()
        .unwrap();
    assert!(adopted.adopted);
    assert_eq!((adopted.start, adopted.end), (0, 5));
    assert_eq!(second.end, 5);
    assert_eq!(second.buffered_records(), 0);
    // The record that caused the flush is never buffered into a file at the wrong start: the
    // consumer first goes back to the adopted file's end.
    assert!(matches!(second.admit(10), Admission::Reposition));
    assert_eq!(second.take_seek(), Some(5), "reads 5..10 again");
    buffer(&mut second, 5..10);
    second.flush(&store, "c", 5 << 20, BASE).await.unwrap();
    assert_eq!(resume(&store, 0).await.end, 10);
}

/// A store that refuses writes leaves the records buffered and the chain where it was; the same
/// flush succeeds once the store is back.
#[tokio::test]
async fn a_refused_write_keeps_the_records_and_the_chain() {
    let (_dir, inner) = local();
    let store = Intercept {
        inner,
        hooks: Refuse::default(),
    };
    let mut chain = resume(&store, 0).await;
    store.hooks.refuse.store(1, Ordering::SeqCst);
    buffer(&mut chain, 0..4);
    let failed = chain.flush(&store, "c", 5 << 20, BASE).await.unwrap_err();
    assert!(failed.is_transient(), "{failed}");
    assert_eq!((chain.end, chain.buffered_records()), (0, 4));
    let flushed = chain
        .flush(&store, "c", 5 << 20, BASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((flushed.start, flushed.end), (0, 4));
    assert_eq!(resume(&store, 0).await.end, 4);
}

/// Records read before retention deleted the ones between them: the file before the deleted
/// offsets is closed for the gap (and labelled so), the gap is recorded, and the chain continues
/// after it.
#[tokio::test]
async fn a_gap_closes_the_file_before_it_for_that_reason() {
    let (_dir, store) = local();
    let mut chain = resume(&store, 0).await;
    buffer(&mut chain, (0..5).chain(10..15));
    let (files, gaps) = chain
        .flush_checked(&store, Some(12), "c", 5 << 20, BASE)
        .await
        .unwrap();
    let files: Vec<(i64, i64, Option<RollReason>)> =
        files.iter().map(|f| (f.start, f.end, f.cut)).collect();
    assert_eq!(
        files,
        vec![(0, 5, Some(RollReason::Gap)), (10, 15, None)],
        "the last file is closed by the flush's own reason"
    );
    let gaps: Vec<(i64, i64)> = gaps.iter().map(|g| (g.start, g.end)).collect();
    assert_eq!(gaps, vec![(5, 10)]);
    assert_eq!(resume(&store, 12).await.end, 15);
}

/// A gap recorded on an empty chain skips it forward, checkpoint and all: a restart never looks
/// for files inside the gap, and the gap document says why the offsets are missing.
#[tokio::test]
async fn a_recorded_gap_skips_the_chain_forward() {
    let (_dir, store) = local();
    let mut chain = resume(&store, 3).await;
    let gaps = chain.record_gap(&store, 20).await.unwrap();
    assert_eq!(
        gaps.iter().map(|g| (g.start, g.end)).collect::<Vec<_>>(),
        vec![(3, 20)]
    );
    assert_eq!(chain.end, 20);
    assert_eq!(resume(&store, 0).await.end, 20);
    let recorded = documents::read_gaps(&store, TOPIC, 0).await.unwrap();
    assert_eq!(
        recorded
            .iter()
            .map(|g| (g.start, g.end))
            .collect::<Vec<_>>(),
        vec![(3, 20)]
    );
}

/// Hooks that refuse the next `refuse` writes as if the store were away.
#[derive(Debug, Default)]
struct Refuse {
    refuse: AtomicU32,
}

impl Hooks for Refuse {
    fn before_write(&self, op: &str, _key: &str) -> StorageResult<()> {
        let take = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match take {
            Ok(_) => Err(StorageError::Transient {
                url: "file:///refused".into(),
                op: op.to_string(),
                message: "refused by the test".into(),
                attempts: 1,
            }),
            Err(_) => Ok(()),
        }
    }
}
