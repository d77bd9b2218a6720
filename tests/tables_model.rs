//! Model-based test of the Iceberg table commit protocol (`rewind tables sync` and retention's
//! delete snapshot). Generated interleavings drive the real code: partitions grow file by file
//! (data file, then checkpoint, as a sink does), several sync workers run concurrently in the
//! background, and retention deletes old files, against a store that refuses table writes, loses
//! the replies of ones it applied, and stalls reads at random. After every step:
//!
//! - the hint never points past the newest version, whose snapshot lists every file at most once;
//! - every file the current snapshot lists exists (retention never deletes a listed file) and is
//!   a file of its partition's chain;
//! - once the workers settle and one more sync runs without faults, the table lists exactly the
//!   chain files below the checkpoints: no file a worker saw was lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rewind::archive::datafile;
use rewind::archive::documents::{self, Checkpoint};
use rewind::archive::paths::{self, DataFileKey};
use rewind::archive::time::HourBucket;
use rewind::archive::Record;
use rewind::kafka::topics::TopicSelector;
use rewind::ops::retention::{retention, RetentionOptions};
use rewind::storage::{
    Hooks, Intercept, MemoryStore, ObjectStore, PutMode, StorageError, StorageResult,
};
use rewind::tables::{self, manifest, metadata::TableMetadata, TableOptions};

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 2;
const FILES: usize = 8;
const RECORDS: i64 = 3;
const BASE: i64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    /// The next file of a partition lands (data file, then checkpoint).
    Grow(i32),
    /// A sync worker starts in the background.
    Sync,
    /// Retention deletes the files whose records are all older than file N's.
    Retain(usize),
    /// Wait for the background workers.
    Settle,
    /// Someone deletes the tables' folder while no sync runs (the format allows it).
    Wipe,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PARTITIONS).prop_map(Op::Grow),
        4 => Just(Op::Sync),
        1 => (1..FILES).prop_map(Op::Retain),
        1 => Just(Op::Settle),
        1 => Just(Op::Wipe),
    ]
}

/// Refuses a table write, or loses its reply, now and then; stalls reads to shuffle the workers.
#[derive(Debug)]
struct Faults {
    rng: Mutex<StdRng>,
    on: std::sync::atomic::AtomicBool,
}

impl Faults {
    fn roll(&self, percent: u32) -> bool {
        self.on.load(std::sync::atomic::Ordering::Relaxed)
            && self.rng.lock().unwrap().random_range(0..100) < percent
    }
}

fn refused(key: &str) -> StorageError {
    StorageError::Transient {
        url: "memory://".into(),
        op: format!("write {key}"),
        message: "injected".into(),
        attempts: 1,
    }
}

impl Hooks for Faults {
    fn before_write(&self, op: &str, key: &str) -> StorageResult<()> {
        if key.starts_with("_tables/") && self.roll(8) {
            trace(|| format!("refused {op} {key}"));
            return Err(refused(key));
        }
        Ok(())
    }
    fn after_write(&self, op: &str, key: &str) -> StorageResult<()> {
        trace(|| format!("applied {op} {key}"));
        if key.starts_with("_tables/") && self.roll(5) {
            trace(|| format!("lost the reply of {op} {key}"));
            return Err(refused(key));
        }
        // S3's client retries a create whose reply was lost, and the retry reads "already exists".
        if key.ends_with(".metadata.json") && self.roll(5) {
            trace(|| format!("lost the reply of {op} {key}, and the retry was refused"));
            return Err(StorageError::AlreadyExists {
                url: "memory://".into(),
                key: key.to_string(),
            });
        }
        Ok(())
    }
    fn before_read(&self, op: &str, key: &str) -> StorageResult<()> {
        if self.roll(2) {
            trace(|| format!("refused {op} {key}"));
            return Err(refused(key));
        }
        if self.roll(10) {
            let micros = self.rng.lock().unwrap().random_range(0..1500);
            std::thread::sleep(std::time::Duration::from_micros(micros));
        }
        Ok(())
    }
}

fn file(partition: i32, index: usize) -> (String, bytes::Bytes, i64) {
    let start = index as i64 * RECORDS;
    let records: Vec<Record> = (0..RECORDS)
        .map(|i| Record {
            offset: start + i,
            timestamp: Some(BASE + index as i64 * 1000 + i),
            timestamp_type: None,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(vec![partition as u8; 4]),
            headers: Vec::new(),
        })
        .collect();
    let meta = datafile::file_meta(
        TOPIC,
        partition,
        start,
        start + RECORDS,
        &records,
        "c",
        BASE,
    );
    let key = DataFileKey {
        topic: TOPIC.into(),
        partition,
        bucket: HourBucket::of_millis(BASE),
        start,
        end: None,
    };
    (
        key.to_string(),
        datafile::encode(&meta, &records).unwrap(),
        start + RECORDS,
    )
}

async fn grow(store: &dyn ObjectStore, partition: i32, index: usize) {
    let (key, body, end) = file(partition, index);
    store.put(&key, body, PutMode::Create).await.unwrap();
    let checkpoint = Checkpoint {
        format_version: 1,
        topic: TOPIC.into(),
        partition,
        end,
        last_file: key,
        max_timestamp: None,
        updated_at: "2026-12-04T00:00:00.000Z".into(),
    };
    store
        .put(
            &paths::checkpoint_key(TOPIC, partition),
            serde_json::to_vec(&checkpoint).unwrap().into(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
}

/// The table's current files (absolute URIs) as the inner store holds it, checking versions and
/// duplicates on the way.
async fn table_files(store: &dyn ObjectStore) -> Result<Vec<String>, String> {
    let prefix = format!("{}metadata/", tables::table_prefix(TOPIC));
    // The hint before the listing: workers may commit in between, never un-commit.
    let hint: Option<u64> = match store.get(&format!("{prefix}version-hint.text")).await {
        Ok(got) => Some(String::from_utf8_lossy(&got.body).parse().unwrap()),
        Err(_) => None,
    };
    let versions: BTreeSet<u64> = store
        .list(&prefix)
        .await
        .unwrap()
        .iter()
        .filter_map(|o| {
            o.key[prefix.len()..]
                .strip_prefix('v')?
                .strip_suffix(".metadata.json")?
                .parse()
                .ok()
        })
        .collect();
    let Some(&newest) = versions.last() else {
        return Ok(Vec::new());
    };
    // Old versions go (a failed clean-up can leave an older one behind a deleted one); the newest
    // is what readers load, and the hint never points past it.
    if let Some(hint) = hint.filter(|&h| h > newest) {
        return Err(format!(
            "version-hint.text says {hint}, the newest is {newest}"
        ));
    }
    let body = store
        .get(&format!("{prefix}v{newest}.metadata.json"))
        .await
        .unwrap()
        .body;
    let meta: TableMetadata = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let Some(current) = meta.current() else {
        return Ok(Vec::new());
    };
    let key = |u: &str| u.strip_prefix("file:///memory/").unwrap_or(u).to_string();
    let list = store
        .get(&key(&current.manifest_list))
        .await
        .map_err(|e| format!("the current manifest list: {e}"))?
        .body;
    let mut files = Vec::new();
    for m in manifest::read_manifest_list(&list).map_err(|e| e.to_string())? {
        let body = store
            .get(&key(&m.path))
            .await
            .map_err(|e| format!("a current manifest: {e}"))?
            .body;
        for e in manifest::read_manifest(&body, &m).map_err(|e| e.to_string())? {
            if e.status != manifest::Status::Deleted {
                files.push(key(&e.file.path));
            }
        }
    }
    let unique: BTreeSet<&String> = files.iter().collect();
    if unique.len() != files.len() {
        return Err(format!("a file is listed twice: {files:?}"));
    }
    Ok(files)
}

fn run_case(ops: &[Op], seed: u64) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        trace(|| format!("=== case {ops:?}"));
        let inner = MemoryStore::new();
        let faults = Arc::new(Faults {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            on: true.into(),
        });
        #[derive(Debug)]
        struct Shared(Arc<Faults>);
        impl Hooks for Shared {
            fn before_write(&self, op: &str, key: &str) -> StorageResult<()> {
                self.0.before_write(op, key)
            }
            fn after_write(&self, op: &str, key: &str) -> StorageResult<()> {
                self.0.after_write(op, key)
            }
            fn before_read(&self, op: &str, key: &str) -> StorageResult<()> {
                self.0.before_read(op, key)
            }
        }
        let store: Arc<dyn ObjectStore> = Arc::new(Intercept {
            inner: inner.clone(),
            hooks: Shared(faults.clone()),
        });
        documents::ensure_identity(&inner, "c", false, BASE)
            .await
            .unwrap();
        let opts = TableOptions {
            max_manifests: Some(4),
            previous_versions: Some(3),
            ..TableOptions::default()
        };
        let mut grown = [0usize; PARTITIONS as usize];
        let mut workers = Vec::new();
        for op in ops {
            match op {
                Op::Grow(p) => {
                    let i = grown[*p as usize];
                    if i < FILES {
                        grow(&inner, *p, i).await;
                        grown[*p as usize] += 1;
                    }
                }
                Op::Sync => {
                    let (store, opts) = (store.clone(), opts.clone());
                    workers.push(tokio::spawn(async move {
                        let _ = tables::sync_topic(&*store, TOPIC, &opts).await;
                    }));
                }
                Op::Retain(n) => {
                    let opts = RetentionOptions {
                        topics: TopicSelector::all(),
                        cutoff_ms: BASE + *n as i64 * 1000,
                        include_compacted: true,
                        prune_groups: false,
                        abandoned_before: std::time::UNIX_EPOCH,
                        dry_run: false,
                        keep_marks: Vec::new(),
                        now_ms: BASE,
                    };
                    // It may fail on a refused read: what it did so far must leave the table sound.
                    if let Err(e) = retention(&*store, &opts).await {
                        trace(|| format!("retention failed: {e}"));
                    }
                }
                Op::Wipe => {
                    // With no sync running, as the format asks.
                    for w in workers.drain(..) {
                        w.await.unwrap();
                    }
                    let keys: Vec<String> = inner
                        .list(&tables::table_prefix(TOPIC))
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|o| o.key)
                        .collect();
                    inner.delete_many(&keys).await.unwrap();
                }
                Op::Settle => {
                    for w in workers.drain(..) {
                        w.await.unwrap();
                    }
                }
            }
            // Every listed file exists and is a file of its partition.
            for f in table_files(&inner).await? {
                if inner.head(&f).await.is_err() {
                    return Err(format!("after {op:?}: the table lists {f}, which is gone"));
                }
            }
        }
        for w in workers.drain(..) {
            w.await.unwrap();
        }
        faults.on.store(false, std::sync::atomic::Ordering::Relaxed);
        tables::sync_topic(&*store, TOPIC, &opts)
            .await
            .map_err(|e| format!("the last sync: {e}"))?;
        let listed: BTreeSet<String> = table_files(&inner).await?.into_iter().collect();
        let archived: BTreeSet<String> = inner
            .list(paths::DATA_PREFIX)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        // Retention may leave a file before the new start (its table commit failed): readers
        // ignore it, and so does the table.
        let mut starts: BTreeMap<i32, i64> = BTreeMap::new();
        for p in 0..PARTITIONS {
            if let Some(s) = documents::read_chain_start(&inner, TOPIC, p).await.unwrap() {
                starts.insert(p, s.start);
            }
        }
        let expected: BTreeSet<String> = archived
            .into_iter()
            .filter(|k| {
                let k = DataFileKey::parse(k).unwrap();
                k.start >= starts.get(&k.partition).copied().unwrap_or(0)
            })
            .collect();
        if listed != expected {
            return Err(format!(
                "the table lists {listed:?}, the archive's chains hold {expected:?}"
            ));
        }
        Ok(())
    })
}

fn trace(event: impl FnOnce() -> String) {
    if std::env::var_os("REWIND_MODEL_TRACE").is_some() {
        eprintln!("{}", event());
    }
}

fn seed() -> u64 {
    std::env::var("REWIND_MODEL_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(19)
}

fn cases() -> u32 {
    std::env::var("REWIND_TABLES_MODEL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed()),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_table_follows_the_archive(ops in proptest::collection::vec(op(), 1..40), faults in any::<u64>()) {
        let outcome = run_case(&ops, faults);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
