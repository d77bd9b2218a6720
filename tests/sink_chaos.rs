//! Chaos on the real broker and a real S3 server: `rewind sink` workers of one group archive a
//! topic of six partitions into S3 reached through a proxy the test controls, while a producer keeps
//! writing plain records and single-record transactions (committed and aborted) stamped around whole
//! hours. Workers are SIGKILLed at random and restarted, one is added and one asked to leave, one is
//! frozen past its session timeout (a zombie that still holds records when it goes on), and S3 goes
//! away for a few seconds (every connection cut, new ones refused). However the seeded schedule
//! interleaves with the workers, once they catch up each partition's chain must hold exactly what a
//! `read_committed` consumer reads from the topic, offset for offset and byte for byte, a fresh group
//! must find nothing left to archive, and `rewind verify --deep` must find nothing wrong.
//!
//! `REWIND_CHAOS_SEED` picks the schedule and the records (the seed is printed), and
//! `REWIND_CHAOS_SECONDS` the length of the chaos (35 s by default; `scripts/bench --only chaos`
//! runs 300 s).

mod chaos;
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos::proxy::Proxy;
use chaos::workers::Workers;
use chaos::{check, producer};
use common::kafka::{create_topic, produce, read_to_end, record};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rewind::archive::Record;
use rewind::storage::{ObjectStore, StorageUrl};

const PARTITIONS: i32 = 6;
const WORKERS: usize = 3;

#[derive(Debug, Clone)]
enum Action {
    /// SIGKILL `count` workers, and start as many again `restart_after` later.
    Kill {
        count: usize,
        restart_after: Duration,
    },
    Start,
    /// One more worker joins the group.
    Add,
    /// One worker leaves on SIGTERM (it must drain and exit 0).
    Remove,
    /// Stop one worker (SIGSTOP) for this long, past its session timeout: the group moves its
    /// partitions, and when it goes on (SIGCONT) it still holds their records, a zombie.
    Freeze(Duration),
    Thaw(usize),
    /// S3 goes away for this long.
    Outage(Duration),
    OutageEnd,
}

/// The seeded schedule of `seconds` of chaos, as (seconds from the start, action). Each minute (or
/// the whole run, if shorter) has one worker added, one S3 outage of 3-5 s, one worker removed
/// after the outage, and one worker frozen for 7-10 s; kills of one worker (sometimes two) come
/// every 2-5 s throughout.
fn schedule(rng: &mut StdRng, seconds: f64) -> Vec<(f64, Action)> {
    let mut plan = Vec::new();
    let mut t = rng.random_range(2.0..4.0);
    while t < seconds - 2.0 {
        let count = if rng.random_ratio(1, 5) { 2 } else { 1 };
        let restart_after = Duration::from_millis(rng.random_range(0..3_000));
        plan.push((
            t,
            Action::Kill {
                count,
                restart_after,
            },
        ));
        t += rng.random_range(2.0..5.0);
    }
    let slices = (seconds / 60.0).round().max(1.0);
    let len = seconds / slices;
    for i in 0..slices as usize {
        let s0 = i as f64 * len;
        plan.push((s0 + len * rng.random_range(0.2..0.4), Action::Add));
        let outage_at = s0 + len * rng.random_range(0.35..0.55);
        let outage = Duration::from_millis(rng.random_range(3_000..=5_000));
        plan.push((outage_at, Action::Outage(outage)));
        let remove_at = (s0 + len * rng.random_range(0.6..0.8))
            .max(outage_at + outage.as_secs_f64() + 3.0)
            .min(s0 + len - 0.5);
        plan.push((remove_at, Action::Remove));
        let freeze = Duration::from_millis(rng.random_range(7_000..=10_000));
        plan.push((
            s0 + (len - freeze.as_secs_f64() - 1.0).max(0.0) * rng.random_range(0.1..0.9),
            Action::Freeze(freeze),
        ));
    }
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    plan
}

/// A live worker to kill or stop, not a frozen one.
fn pick(rng: &mut StdRng, workers: &Workers, frozen: &BTreeSet<usize>) -> Option<usize> {
    let candidates: Vec<usize> = (0..workers.live.len())
        .filter(|i| !frozen.contains(&workers.live[*i].id))
        .collect();
    (!candidates.is_empty()).then(|| candidates[rng.random_range(0..candidates.len())])
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_leaves_an_archive_equal_to_the_topic() {
    let seed: u64 = env_or("REWIND_CHAOS_SEED", 13);
    let seconds: f64 = env_or("REWIND_CHAOS_SECONDS", 35.0);
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = schedule(&mut rng, seconds);
    eprintln!(
        "chaos: seed {seed} (REWIND_CHAOS_SEED), {seconds} s (REWIND_CHAOS_SECONDS); schedule:"
    );
    for (t, action) in &plan {
        eprintln!("chaos:   {t:6.1}s {action:?}");
    }

    let topic = common::unique("chaos");
    create_topic(&topic, PARTITIONS, &[]).await;
    let bucket = common::new_bucket().await;
    let archive = format!("s3://{bucket}/archive");
    let store: Arc<dyn ObjectStore> =
        rewind::storage::open_writer(&StorageUrl::parse(&archive).unwrap(), &common::s3_options())
            .await
            .unwrap();
    let upstream = url::Url::parse(&common::s3_endpoint()).unwrap();
    let upstream = upstream.socket_addrs(|| None).unwrap()[0];
    let proxy = Proxy::start(upstream).await;
    let logs = std::env::temp_dir().join(common::unique("rewind-chaos-logs"));
    eprintln!(
        "chaos: topic {topic}, archive {archive} through {}, worker logs in {}",
        proxy.endpoint(),
        logs.display()
    );
    let group = common::unique("chaos-group");
    let mut workers = Workers::new(&archive, &proxy.endpoint(), &topic, &group, logs.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let producing = tokio::spawn(producer::run(topic.clone(), PARTITIONS, seed, stop.clone()));
    for _ in 0..WORKERS {
        workers.start();
    }

    // The chaos: the schedule's actions as they fall due, and restarts after kills.
    let started = Instant::now();
    let mut pending = plan;
    let mut outages = 0;
    // Frozen workers are left alone until they go on: a zombie must get to write.
    let mut frozen = BTreeSet::new();
    while started.elapsed().as_secs_f64() < seconds {
        let now = started.elapsed().as_secs_f64();
        while pending.first().is_some_and(|(t, _)| *t <= now) {
            let (_, action) = pending.remove(0);
            let mut later = |after: Duration, action: Action| {
                pending.push((now + after.as_secs_f64(), action));
                pending.sort_by(|a, b| a.0.total_cmp(&b.0));
            };
            match action {
                Action::Kill {
                    count,
                    restart_after,
                } => {
                    for _ in 0..count {
                        let Some(victim) = pick(&mut rng, &workers, &frozen) else {
                            break;
                        };
                        let id = workers.kill(victim);
                        eprintln!("chaos: {now:6.1}s SIGKILL worker {id}");
                        later(restart_after, Action::Start);
                    }
                }
                Action::Start | Action::Add => {
                    let id = workers.start();
                    eprintln!("chaos: {now:6.1}s started worker {id} ({action:?})");
                }
                Action::Remove if workers.live.len() - frozen.len() > 1 => {
                    let victim = pick(&mut rng, &workers, &frozen).unwrap();
                    let id = workers.terminate(victim);
                    eprintln!("chaos: {now:6.1}s SIGTERM worker {id}");
                }
                // Not the last worker standing: try again in a second.
                Action::Remove => later(Duration::from_secs(1), Action::Remove),
                Action::Freeze(length) => {
                    // The oldest worker: the one most likely to hold partitions and records.
                    let Some(id) = workers
                        .live
                        .iter()
                        .map(|w| w.id)
                        .find(|id| !frozen.contains(id))
                    else {
                        continue;
                    };
                    if workers.signal(id, "STOP") {
                        frozen.insert(id);
                        eprintln!("chaos: {now:6.1}s SIGSTOP worker {id} for {length:?}");
                        later(length, Action::Thaw(id));
                    }
                }
                Action::Thaw(id) => {
                    frozen.remove(&id);
                    if workers.signal(id, "CONT") {
                        eprintln!("chaos: {now:6.1}s SIGCONT worker {id}");
                    }
                }
                Action::Outage(length) => {
                    proxy.cut();
                    workers.store_down = true;
                    outages += 1;
                    eprintln!("chaos: {now:6.1}s S3 outage for {length:?}");
                    later(length, Action::OutageEnd);
                }
                Action::OutageEnd => {
                    proxy.restore();
                    workers.store_down = false;
                    eprintln!("chaos: {now:6.1}s S3 is back");
                }
            }
        }
        workers.poll(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What is still due: S3 comes back, frozen workers go on and killed workers restart.
    proxy.restore();
    workers.store_down = false;
    for (_, action) in pending {
        match action {
            Action::Start => {
                workers.start();
            }
            Action::Thaw(id) => {
                workers.signal(id, "CONT");
            }
            _ => {}
        }
    }
    assert!(outages > 0, "the schedule had an S3 outage");

    // Stop producing, then one last record per partition: once every chain holds it, the workers
    // have caught up with everything before it.
    stop.store(true, Ordering::Relaxed);
    let mut produced = producing.await.unwrap();
    let mut sentinels = Vec::new();
    for p in 0..PARTITIONS {
        let last = record(
            Some(b"sentinel"),
            Some(b"end"),
            vec![],
            produced.last_boundary + 1,
        );
        sentinels.push(produce(&topic, p, &[last]).await[0].offset);
        produced.visible[p as usize] += 1;
    }
    let (visible, committed, aborted) = produced.total();
    eprintln!(
        "chaos: produced {visible} visible records ({committed} in committed transactions) and {aborted} aborted; sentinels at {sentinels:?}; {} workers live",
        workers.live.len()
    );
    // Bounded by progress, not by time: the archive may lag far behind a long run, but as long as
    // the workers are alive some chain must move; 90 s without any is a stall.
    let catch_up = Instant::now();
    let mut ends: Vec<Option<i64>> = vec![None; PARTITIONS as usize];
    let mut moved = Instant::now();
    loop {
        workers.poll(started.elapsed());
        let mut behind = Vec::new();
        for p in 0..PARTITIONS {
            let end = check::chain_end(&store, &topic, p).await;
            if let Ok(e) = end {
                if e > ends[p as usize] {
                    ends[p as usize] = e;
                    moved = Instant::now();
                }
            }
            if !matches!(end, Ok(Some(e)) if e > sentinels[p as usize]) {
                behind.push(format!(
                    "{p}: chain end {end:?}, sentinel at {}",
                    sentinels[p as usize]
                ));
            }
        }
        if behind.is_empty() {
            break;
        }
        assert!(
            moved.elapsed() < Duration::from_secs(90),
            "seed {seed}: no chain moved for 90 s, {:.0} s after the chaos; behind: {behind:?}; live workers: {:?}; logs in {}",
            catch_up.elapsed().as_secs_f64(),
            workers.live.iter().map(|w| w.id).collect::<Vec<_>>(),
            logs.display()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "chaos: caught up {:.1}s after the chaos",
        catch_up.elapsed().as_secs_f64()
    );
    tokio::task::block_in_place(|| workers.stop_all(Duration::from_secs(60)));
    let failed: Vec<String> = workers
        .drained
        .iter()
        .filter(|(_, status)| !status.success())
        .map(|(id, status)| {
            let log = logs.join(format!("worker-{id}.log"));
            format!(
                "worker {id}: {status}; log ends:\n{}",
                chaos::workers::tail(&log, 15)
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "seed {seed}: a worker asked to leave with SIGTERM drains and exits 0:\n{}",
        failed.join("\n")
    );

    // A fresh group resumes from the archive, not from Kafka: nothing is left to archive.
    let data_keys = |store: Arc<dyn ObjectStore>| async move {
        store
            .list("data/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect::<BTreeSet<String>>()
    };
    let before = data_keys(store.clone()).await;
    let out = common::sink_command(&archive, &topic, &common::unique("chaos-once"))
        .arg("--once")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "seed {seed}: rewind sink --once with a fresh group: {}",
        common::text(&out.stderr)
    );
    let after = data_keys(store.clone()).await;
    let new: Vec<&String> = after.difference(&before).collect();
    let gone: Vec<&String> = before.difference(&after).collect();

    // The archive, read the way restore reads it, against a read_committed consumer.
    let mut failures = Vec::new();
    let mut files = 0;
    let mut orphans = 0;
    for p in 0..PARTITIONS {
        let topic_records: Vec<Record> = tokio::task::block_in_place(|| read_to_end(&topic, p))
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(
            topic_records.len() as u64,
            produced.visible[p as usize],
            "seed {seed}: partition {p}: the read_committed consumer sees every plain and committed record"
        );
        assert!(
            topic_records.iter().all(|r| !r.headers.iter().any(|h| {
                h.key == producer::KIND && h.value.as_deref() == Some(b"abort".as_slice())
            })),
            "seed {seed}: partition {p}: the read_committed consumer never sees aborted records"
        );
        match check::read(&store, &topic, p).await {
            Err(e) => failures.push(format!("partition {p}: {e}")),
            Ok(archived) => {
                files += archived.files.len();
                orphans += archived.orphans.len();
                if let Some(report) = check::compare(p, &archived, &topic_records) {
                    failures.push(report);
                }
            }
        }
    }
    eprintln!(
        "chaos: {files} files in the chains, {orphans} orphans; the proxy forwarded {} connections and cut {}",
        proxy.stats.accepted.load(Ordering::Relaxed),
        proxy.stats.cut.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "seed {seed} (REWIND_CHAOS_SEED={seed} REWIND_CHAOS_SECONDS={seconds}): the archive {archive} is not the topic {topic}; worker logs in {}\n{}",
        logs.display(),
        failures.join("\n")
    );
    assert!(
        new.is_empty() && gone.is_empty(),
        "seed {seed}: a fresh group's --once run found something left to archive: new files {new:?}, files gone {gone:?}"
    );
    assert!(
        proxy.stats.accepted.load(Ordering::Relaxed) > 0,
        "the workers reached S3 through the proxy"
    );

    let out = common::tool_command("verify", &archive)
        .arg("--deep")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "seed {seed}: rewind verify --deep on {archive}: {}\n{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
    assert!(
        workers.unexpected.is_empty(),
        "seed {seed}: workers exited without being told to:\n{}",
        workers.unexpected.join("\n")
    );
    if !workers.refused_to_start.is_empty() {
        eprintln!(
            "chaos: {} workers started during the S3 outage refused to start (exit 1) and were replaced",
            workers.refused_to_start.len()
        );
    }
    let _ = std::fs::remove_dir_all(&logs);
}
