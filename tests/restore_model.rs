//! Model-based test of the restore's transaction protocol on the test bed's real broker: seeded,
//! generated interleavings of real `rewind restore` processes of one restore id (plain, which
//! fence each other through the restore's transactional id, or `--shared`, which split its
//! partitions through the group) that are started, killed with SIGKILL at any moment or at a
//! named step of a transaction (`REWIND_FAILPOINT` with `REWIND_FAILPOINT_AFTER`), frozen with
//! SIGSTOP across their session and transaction timeouts and let go, restarted under the same
//! worker id, with random pauses between. After every step, with every worker frozen, the target
//! is read back `read_committed` and checked against the source:
//!
//! - each target partition holds an exact prefix of its source partition, byte for byte: no record
//!   twice, none skipped, none out of order;
//! - what a partition shows never shrinks;
//! - when no transaction is open or ending (every last stable offset is its high watermark, and
//!   stays so while the check reads), each partition's committed progress says exactly how many of
//!   its records the target holds;
//!
//! and at the end of each case, once the surviving workers and one more have finished, the target
//! equals the source and every partition's progress is complete. No worker may panic; a worker
//! exits 0, or 1 when fenced or refused.
//!
//! `REWIND_RESTORE_MODEL_CASES` sets the cases of each mode (3 by default, so that CI stays fast;
//! `scripts/bench --only model` runs a long sweep), `REWIND_MODEL_SEED` the seed.

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::kafka::{self, record};
use common::watched::Watched;
use proptest::prelude::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rewind::archive::Record;
use rewind::restore::progress::Progress;

const PARTITIONS: i32 = 4;
const PER_PARTITION: i64 = 2_500;
const WORKERS: usize = 3;
/// Short, so that a transaction left open by a killed or frozen worker ends soon.
const TRANSACTION_TIMEOUT_MS: &str = "8000";

/// The source topic and its archive, made once for every case of the binary.
struct Source {
    topic: String,
    archive: String,
    records: Vec<Vec<Record>>,
    _dir: tempfile::TempDir,
}

fn source() -> &'static Source {
    static SOURCE: OnceLock<Source> = OnceLock::new();
    SOURCE.get_or_init(|| tokio::runtime::Runtime::new().unwrap().block_on(archived()))
}

/// Records of varied shape (keys absent or not, headers, values of 0 to 300 bytes), archived in
/// files of 250 records.
async fn archived() -> Source {
    let topic = common::unique("restore-model");
    kafka::create_topic(&topic, PARTITIONS, &[]).await;
    let t0 = common::now_ms() - 3_600_000;
    for p in 0..PARTITIONS {
        let records: Vec<Record> = (0..PER_PARTITION)
            .map(|i| {
                let key = format!("k{p}-{i}");
                let value = vec![b'a' + ((i + p as i64) % 26) as u8; ((i * 37) % 301) as usize];
                let headers = if i % 7 == 0 {
                    vec![kafka::header("h", Some(format!("{i}").as_bytes()))]
                } else {
                    vec![]
                };
                record(
                    (i % 5 != 0).then_some(key.as_bytes()),
                    Some(&value),
                    headers,
                    t0 + i,
                )
            })
            .collect();
        kafka::produce(&topic, p, &records).await;
    }
    let (archive, dir, records) = common::archive_once(&topic, PARTITIONS, 250);
    assert!(records.iter().all(|r| r.len() as i64 == PER_PARTITION));
    Source {
        topic,
        archive,
        records,
        _dir: dir,
    }
}

// ---------------------------------------------------------------------------------------------
// Cases.

/// A named step at which a worker stops, after passing it `after` times.
#[derive(Debug, Clone)]
enum Fault {
    None,
    /// Hangs for good with its records and progress in an open transaction (`restore-before-commit`).
    HangBeforeCommit {
        after: u32,
    },
    /// Waits `ms` with its records delivered and no progress written
    /// (`restore-stall-before-progress`), then goes on.
    StallBeforeProgress {
        after: u32,
        ms: u64,
    },
    /// Waits `ms` in its set-up after asking the target cluster and before fencing earlier runs
    /// (`restore-stall-before-fence`), so that another run can set up meanwhile.
    StallBeforeFence {
        ms: u64,
    },
}

/// A step. Kill, freeze and thaw pick the `n`th (modulo their number) of the workers they apply
/// to, so that they rarely find nothing to do.
#[derive(Debug, Clone)]
enum Op {
    /// Start worker `worker` (its name, `w0`…, is its worker id) unless it is running, with
    /// `restore.producers` of 1 or 2 (a plain run's producers take turns committing; a shared
    /// worker has one whatever it says).
    Start {
        worker: usize,
        fault: Fault,
        producers: usize,
    },
    /// SIGKILL a running worker.
    Kill(usize),
    /// SIGSTOP a running worker that is not frozen.
    Freeze(usize),
    /// SIGCONT a frozen worker.
    Thaw(usize),
    Sleep(u64),
}

#[derive(Debug, Clone)]
struct Case {
    /// The largest transaction, in KiB.
    transaction_kib: u64,
    concurrency: u32,
    ops: Vec<Op>,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        3 => Just(Fault::None),
        1 => (0u32..12).prop_map(|after| Fault::HangBeforeCommit { after }),
        1 => (0u32..12, 500u64..4_000)
            .prop_map(|(after, ms)| Fault::StallBeforeProgress { after, ms }),
        1 => (200u64..4_000).prop_map(|ms| Fault::StallBeforeFence { ms }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..WORKERS, fault(), prop_oneof![1 => Just(1usize), 3 => Just(2)])
            .prop_map(|(worker, fault, producers)| Op::Start { worker, fault, producers }),
        1 => (0..WORKERS).prop_map(Op::Kill),
        1 => (0..WORKERS).prop_map(Op::Freeze),
        2 => (0..WORKERS).prop_map(Op::Thaw),
        4 => prop_oneof![
            3 => 0u64..300,
            2 => 300u64..3_000,
            1 => 3_000u64..12_000,
        ]
        .prop_map(Op::Sleep),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(4u64), Just(16), Just(64)],
        1u32..=3,
        prop::collection::vec(op(), 4..12),
    )
        .prop_map(|(transaction_kib, concurrency, ops)| Case {
            transaction_kib,
            concurrency,
            ops,
        })
}

// ---------------------------------------------------------------------------------------------
// Running a case.

struct Worker {
    process: Watched,
    frozen: bool,
    hangs: bool,
}

/// One case's restore: its id, target, progress topic, and workers by name.
struct Run<'a> {
    source: &'a Source,
    shared: bool,
    case: &'a Case,
    id: String,
    target: String,
    progress_topic: String,
    workers: BTreeMap<usize, Worker>,
    /// Records each target partition showed at the last check.
    shown: Vec<usize>,
    /// Exit statuses and logs of the workers that ended.
    ended: Vec<(String, std::process::ExitStatus, String)>,
    steps: usize,
    checked_progress: usize,
}

impl<'a> Run<'a> {
    fn new(source: &'a Source, shared: bool, case: &'a Case) -> Self {
        let id = common::unique(if shared { "model-shared" } else { "model" });
        Run {
            source,
            shared,
            case,
            target: format!("{id}-target"),
            progress_topic: format!("{id}-progress"),
            id,
            workers: BTreeMap::new(),
            shown: vec![0; PARTITIONS as usize],
            ended: Vec::new(),
            steps: 0,
            checked_progress: 0,
        }
    }

    fn command(&self, name: &str, fault: &Fault, producers: usize) -> std::process::Command {
        let mut cmd = common::restore_command(&self.source.archive);
        let topic = &self.source.topic;
        cmd.args([
            "--topics",
            topic,
            "--rename",
            &format!("{topic}={}", self.target),
        ])
        .args(["--restore-id", &self.id, "--json"])
        .args([
            "-X",
            &format!("transaction.timeout.ms={TRANSACTION_TIMEOUT_MS}"),
        ])
        .env("REWIND__RESTORE__PROGRESS_TOPIC", &self.progress_topic)
        .env("REWIND__RESTORE__PRODUCERS", producers.to_string())
        .env(
            "REWIND__RESTORE__TRANSACTION_MAX_BYTES",
            format!("{}KiB", self.case.transaction_kib),
        )
        .env(
            "REWIND__RESTORE__CONCURRENCY",
            self.case.concurrency.to_string(),
        )
        .env("RUST_LOG", "rewind=info,librdkafka=error");
        if self.shared {
            cmd.args(["--shared", "--worker-id", name]);
        }
        match fault {
            Fault::None => {}
            Fault::HangBeforeCommit { after } => {
                cmd.env("REWIND_FAILPOINT", "restore-before-commit")
                    .env("REWIND_FAILPOINT_AFTER", after.to_string());
            }
            Fault::StallBeforeFence { ms } => {
                cmd.env("REWIND_FAILPOINT", "restore-stall-before-fence")
                    .env("REWIND_FAILPOINT_STALL_MS", ms.to_string());
            }
            Fault::StallBeforeProgress { after, ms } => {
                cmd.env("REWIND_FAILPOINT", "restore-stall-before-progress")
                    .env("REWIND_FAILPOINT_AFTER", after.to_string())
                    .env("REWIND_FAILPOINT_STALL_MS", ms.to_string());
            }
        }
        cmd
    }

    /// Forget workers that exited, keeping what they said.
    fn reap(&mut self) {
        let exited: Vec<usize> = self
            .workers
            .iter_mut()
            .filter_map(|(w, worker)| worker.process.exited().map(|_| *w))
            .collect();
        for w in exited {
            let worker = self.workers.remove(&w).unwrap();
            let out = worker.process.finish();
            self.ended.push((
                format!("w{w}"),
                out.status,
                format!("{}{}", common::text(&out.stdout), common::text(&out.stderr)),
            ));
        }
    }

    /// The `n`th (modulo their number) of the running workers `which` selects.
    fn nth(&self, n: usize, which: impl Fn(&Worker) -> bool) -> Option<usize> {
        let ids: Vec<usize> = self
            .workers
            .iter()
            .filter(|(_, w)| which(w))
            .map(|(id, _)| *id)
            .collect();
        (!ids.is_empty()).then(|| ids[n % ids.len()])
    }

    fn step(&mut self, op: &Op) {
        self.reap();
        match op {
            Op::Start {
                worker,
                fault,
                producers,
            } => {
                if !self.workers.contains_key(worker) {
                    let process =
                        Watched::start(&mut self.command(&format!("w{worker}"), fault, *producers));
                    self.workers.insert(
                        *worker,
                        Worker {
                            process,
                            frozen: false,
                            hangs: matches!(fault, Fault::HangBeforeCommit { .. }),
                        },
                    );
                }
            }
            Op::Kill(n) => {
                if let Some(w) = self.nth(*n, |_| true) {
                    self.workers.remove(&w).unwrap().process.kill();
                }
            }
            Op::Freeze(n) => {
                if let Some(w) = self.nth(*n, |w| !w.frozen) {
                    let worker = self.workers.get_mut(&w).unwrap();
                    worker.process.signal("-STOP");
                    worker.frozen = true;
                }
            }
            Op::Thaw(n) => {
                if let Some(w) = self.nth(*n, |w| w.frozen) {
                    let worker = self.workers.get_mut(&w).unwrap();
                    worker.process.signal("-CONT");
                    worker.frozen = false;
                }
            }
            Op::Sleep(ms) => std::thread::sleep(Duration::from_millis(*ms)),
        }
        self.steps += 1;
        self.check();
    }

    /// Check the invariants with every running worker frozen, so that no transaction begins or
    /// commits meanwhile (one that is ending completes on the broker: the progress check waits
    /// for a quiet log).
    fn check(&mut self) -> bool {
        self.reap();
        let thaw: Vec<usize> = self
            .workers
            .iter_mut()
            .filter(|(_, w)| !w.frozen)
            .map(|(id, w)| {
                w.process.signal("-STOP");
                *id
            })
            .collect();
        let before = self.watermarks();
        let shown: Vec<Vec<Record>> = (0..PARTITIONS).map(|p| visible(&self.target, p)).collect();
        let progress = self.progress();
        let after = self.watermarks();
        for id in thaw {
            self.workers[&id].process.signal("-CONT");
        }

        for (p, records) in shown.iter().enumerate() {
            let source = &self.source.records[p];
            assert!(
                records.len() <= source.len(),
                "step {}: {}/{p} shows {} records, the source has {}",
                self.steps,
                self.target,
                records.len(),
                source.len()
            );
            for (i, (got, want)) in records.iter().zip(source).enumerate() {
                assert!(
                    same(got, want),
                    "step {}: {}/{p} record {i} is not the source's record {i} (a duplicate, a gap or a reorder): {got:?} vs {want:?}",
                    self.steps,
                    self.target
                );
            }
            assert!(
                records.len() >= self.shown[p],
                "step {}: {}/{p} showed {} records, now {}",
                self.steps,
                self.target,
                self.shown[p],
                records.len()
            );
            self.shown[p] = records.len();
        }
        let quiet = before == after && before.values().all(|(stable, high)| stable == high);
        if quiet {
            self.checked_progress += 1;
            for (p, records) in shown.iter().enumerate() {
                let next = progress.get(&(p as i32)).map_or(0, |pr| pr.next);
                assert_eq!(
                    next,
                    records.len() as i64,
                    "step {}: the committed progress of {}/{p} says {next} records, the target shows {}",
                    self.steps,
                    self.target,
                    records.len()
                );
            }
        }
        quiet
    }

    /// Last stable offset and high watermark of every target and progress partition.
    fn watermarks(&self) -> BTreeMap<(String, i32), (i64, i64)> {
        thread_local! {
            static PROBES: (BaseConsumer, BaseConsumer) = (
                kafka::config().set("isolation.level", "read_committed").create().unwrap(),
                kafka::config().set("isolation.level", "read_uncommitted").create().unwrap(),
            );
        }
        PROBES.with(|(committed, uncommitted)| {
            let mut out = BTreeMap::new();
            for topic in [&self.target, &self.progress_topic] {
                for p in 0..partitions(uncommitted, topic) {
                    let (_, stable) = committed
                        .fetch_watermarks(topic, p, Duration::from_secs(5))
                        .unwrap_or((0, -1));
                    let (_, high) = uncommitted
                        .fetch_watermarks(topic, p, Duration::from_secs(5))
                        .unwrap_or((0, -2));
                    out.insert((topic.clone(), p), (stable, high));
                }
            }
            out
        })
    }

    /// The committed progress of this restore, by source partition (empty before the topic exists).
    fn progress(&self) -> BTreeMap<i32, Progress> {
        let probe: BaseConsumer = kafka::config().create().unwrap();
        let mut out = BTreeMap::new();
        for p in 0..partitions(&probe, &self.progress_topic) {
            for value in visible(&self.progress_topic, p) {
                let progress: Progress = serde_json::from_slice(&value.value.unwrap()).unwrap();
                if progress.restore_id == self.id {
                    out.insert(progress.partition, progress);
                }
            }
        }
        out
    }

    /// Let the case end: thaw every worker, kill those hung at their failpoint (for good), wait
    /// for the others, run one more worker to the end, and check the target is the source.
    fn finish(mut self) {
        for worker in self.workers.values_mut() {
            if worker.frozen {
                worker.process.signal("-CONT");
                worker.frozen = false;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            self.reap();
            let hung: Vec<usize> = self
                .workers
                .iter_mut()
                .filter_map(|(id, w)| {
                    (w.hangs && w.process.said("failpoint restore-before-commit reached"))
                        .then_some(*id)
                })
                .collect();
            for w in hung {
                self.workers.remove(&w).unwrap().process.kill();
            }
            if self.workers.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .workers
                    .values_mut()
                    .map(|w| w.process.stderr())
                    .collect();
                panic!("workers did not finish within 240 s: {logs:#?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for (name, status, log) in &self.ended {
            assert!(
                matches!(status.code(), Some(0 | 1)),
                "{name} ended with {status}: {log}"
            );
            assert!(!log.contains("panicked"), "{name} panicked: {log}");
        }
        let last = Watched::start(&mut self.command("last", &Fault::None, 2))
            .finish_within(Duration::from_secs(240))
            .unwrap_or_else(|log| panic!("the last worker did not finish: {log}"));
        assert!(
            last.status.success(),
            "the last worker failed ({}): {}",
            last.status,
            common::text(&last.stderr)
        );
        // Transactions the killed workers left open end at their timeout.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.check() {
            assert!(
                Instant::now() < deadline,
                "{}: transactions still open a minute after the last worker",
                self.target
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        for (p, want) in self.source.records.iter().enumerate() {
            let got = visible(&self.target, p as i32);
            assert_eq!(
                got.len(),
                want.len(),
                "{}/{p}: {} records restored, {} in the source",
                self.target,
                got.len(),
                want.len()
            );
        }
        let progress = self.progress();
        for p in 0..PARTITIONS {
            let pr = &progress[&p];
            assert_eq!(
                (pr.start, pr.end, pr.next),
                (0, Some(PER_PARTITION), PER_PARTITION),
                "{}/{p}: progress not complete",
                self.target
            );
        }
    }
}

impl Drop for Run<'_> {
    /// A failed case shows what every worker said.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (name, status, log) in &self.ended {
            eprintln!("--- {name} ({status}):\n{log}");
        }
        for (w, worker) in &mut self.workers {
            eprintln!("--- w{w} (running):\n{}", worker.process.stderr());
        }
    }
}

fn same(got: &Record, want: &Record) -> bool {
    (&got.key, &got.value, &got.headers, got.timestamp)
        == (&want.key, &want.value, &want.headers, want.timestamp)
}

fn partitions(probe: &BaseConsumer, topic: &str) -> i32 {
    probe
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()
        .and_then(|m| {
            m.topics()
                .first()
                .filter(|t| t.error().is_none())
                .map(|t| t.partitions().len() as i32)
        })
        .unwrap_or(0)
}

/// What a `read_committed` consumer sees of one partition now, up to its last stable offset
/// (nothing before the topic exists).
fn visible(topic: &str, partition: i32) -> Vec<Record> {
    let probe: BaseConsumer = kafka::config().create().unwrap();
    if partitions(&probe, topic) <= partition {
        return Vec::new();
    }
    kafka::read_to_end(topic, partition)
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

fn run(shared: bool, case: &Case) {
    let source = source();
    let mut run = Run::new(source, shared, case);
    eprintln!(
        "restore model: {} ({}): {case:?}",
        run.id,
        if shared { "shared" } else { "plain" }
    );
    for op in &case.ops {
        run.step(op);
    }
    let (id, steps, quiet) = (run.id.clone(), run.steps, run.checked_progress);
    run.finish();
    eprintln!("restore model: {id}: {steps} steps checked, {quiet} of them against the progress");
}

fn cases() -> u32 {
    std::env::var("REWIND_RESTORE_MODEL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

/// The seed of a mode's cases (`REWIND_MODEL_SEED`, 13 by default, and one more for the shared
/// restore, so that the two modes meet different interleavings).
fn seed(mode: u64) -> u64 {
    std::env::var("REWIND_MODEL_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(13)
        + mode
}

fn config(mode: u64) -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed(mode)),
        // Each case runs real processes for up to a minute: report the failing case as generated.
        max_shrink_iters: 0,
        ..ProptestConfig::default()
    }
}

/// Found by the model (seed 1): a plain run that saw no progress topic when it asked the cluster,
/// and fenced the other run of the same restore only after that one had committed its plan and
/// records, committed a fresh plan over them and restored those records a second time. Here the
/// first run waits 15 s between asking and fencing, long enough for the second to restore
/// everything (about 3 s) on a loaded machine.
#[test]
fn a_plain_run_that_fences_another_mid_restore_resumes_its_progress() {
    let case = Case {
        transaction_kib: 4,
        concurrency: 1,
        ops: vec![
            Op::Start {
                worker: 0,
                fault: Fault::StallBeforeFence { ms: 15_000 },
                producers: 2,
            },
            Op::Sleep(300),
            Op::Start {
                worker: 1,
                fault: Fault::None,
                producers: 2,
            },
            Op::Sleep(8_000),
        ],
    };
    run(false, &case);
}

/// A plain run's two producers each write only their own partitions' progress: if the first
/// producer's commit also wrote a partition of the second's, it could claim records still in the
/// second's open transaction, and a run killed while that one hangs in its commit would lose them.
/// Three runs hang at the 1st, 2nd and 3rd commit with records (so that some hang in the second
/// producer's commit while both producers have partitions under way), each killed after a while.
#[test]
fn a_run_killed_while_one_producer_commits_loses_nothing_of_the_other() {
    let mut ops = Vec::new();
    for (worker, after) in [(0, 1), (1, 2), (2, 3)] {
        ops.push(Op::Start {
            worker,
            fault: Fault::HangBeforeCommit { after },
            producers: 2,
        });
        ops.push(Op::Sleep(2_500));
        ops.push(Op::Kill(0));
    }
    let case = Case {
        transaction_kib: 4,
        concurrency: 4,
        ops,
    };
    run(false, &case);
}

proptest! {
    #![proptest_config(config(0))]
    #[test]
    fn plain_restores_fencing_each_other_stay_exact(case in case()) {
        run(false, &case);
    }
}

proptest! {
    #![proptest_config(config(1))]
    #[test]
    fn shared_restore_workers_stay_exact(case in case()) {
        run(true, &case);
    }
}
