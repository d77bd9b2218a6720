//! A crash at each named step of the commit protocol, on the S3 backend: the worker is stopped at
//! the step (`REWIND_FAILPOINT`), killed with SIGKILL there, and restarted while more records arrive.
//! The state the kill leaves must be the one the step names, and the restarted worker must turn it
//! into one contiguous chain holding every produced record exactly once.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::kafka::{create_topic, produce, record};
use rand::RngCore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use rewind::archive::documents::read_checkpoint;
use rewind::archive::paths::DataFileKey;
use rewind::archive::time::HourBucket;
use rewind::archive::Record;
use rewind::storage::ObjectStore;

struct Bed {
    bucket: String,
    topic: String,
    group: String,
    store: Arc<dyn ObjectStore>,
}

impl Bed {
    async fn new(name: &str, partitions: i32) -> Bed {
        let bucket = common::new_bucket().await;
        let topic = common::unique(name);
        create_topic(&topic, partitions, &[]).await;
        let url = rewind::storage::StorageUrl::parse(&format!("s3://{bucket}/archive")).unwrap();
        let store = rewind::storage::open_writer(&url, &common::s3_options())
            .await
            .unwrap();
        Bed {
            bucket,
            group: common::unique(&format!("{name}-group")),
            topic,
            store,
        }
    }

    /// `rewind sink --once` for the bed's topic, small files, and the failpoint armed if given.
    fn sink(&self, failpoint: Option<&str>) -> Command {
        let archive = format!("s3://{}/archive", self.bucket);
        let mut cmd = common::sink_command(&archive, &self.topic, &self.group);
        cmd.arg("--once")
            .env("REWIND__SINK__MAX_FILE_RECORDS", "10")
            .env("REWIND__STORAGE__S3__PART_SIZE", "5MiB")
            .env_remove("REWIND_FAILPOINT");
        if let Some(point) = failpoint {
            cmd.env("REWIND_FAILPOINT", point);
        }
        cmd
    }

    /// Run the sink (with `env` on top) until it reports reaching `failpoint`, then SIGKILL it there.
    fn crash_at(&self, failpoint: &str, env: &[(&str, &str)]) {
        let mut child: Child = self
            .sink(Some(failpoint))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("failpoint") && line.contains("reached") {
                    let _ = tx.send(Ok(()));
                    return;
                }
                seen.push(line);
            }
            let _ = tx.send(Err(seen.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(Ok(())) => {}
            Ok(Err(stderr)) => panic!("the sink ended before failpoint {failpoint}:\n{stderr}"),
            Err(_) => panic!("the sink did not reach failpoint {failpoint} in 90 s"),
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Restart without a failpoint: the worker must recover and archive everything.
    fn recover(&self) {
        let out = self.sink(None).output().unwrap();
        assert!(
            out.status.success(),
            "the restarted sink recovers: {}",
            common::text(&out.stderr)
        );
    }

    async fn data_files(&self, partition: i32) -> Vec<String> {
        self.store
            .list(&DataFileKey::partition_prefix(&self.topic, partition))
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect()
    }

    /// The data files the partition's claims name.
    async fn claims(&self, partition: i32) -> Vec<String> {
        let mut named = Vec::new();
        let prefix = format!("_claims/{}/{partition}/", self.topic);
        for object in self.store.list(&prefix).await.unwrap() {
            let body = self.store.get(&object.key).await.unwrap().body;
            let claim: rewind::archive::documents::Claim = serde_json::from_slice(&body).unwrap();
            named.push(claim.key);
        }
        named
    }

    async fn checkpoint_end(&self, partition: i32) -> Option<i64> {
        read_checkpoint(&*self.store, &self.topic, partition)
            .await
            .unwrap()
            .map(|c| c.doc.end)
    }

    /// The group's committed Kafka offset for a partition (`None` when nothing was committed).
    fn committed(&self, partition: i32) -> Option<i64> {
        let consumer: BaseConsumer = common::kafka::config()
            .set("group.id", &self.group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        let got = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        match got.find_partition(&self.topic, partition).unwrap().offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    async fn assert_exactly_once(&self, partition: i32, produced: &[Record]) {
        let got = common::archive::chain(&self.store, &self.topic, partition).await;
        assert_eq!(
            got.len(),
            produced.len(),
            "partition {partition}: every record exactly once"
        );
        assert!(
            got == produced,
            "partition {partition}: byte-exact and in order"
        );
        assert_eq!(
            self.checkpoint_end(partition).await,
            produced.last().map(|r| r.offset + 1),
            "partition {partition}: the checkpoint is at the chain's end"
        );
    }
}

fn small_records(n: usize, tag: &str) -> Vec<Record> {
    (0..n)
        .map(|i| {
            record(
                Some(format!("{tag}-{i}").as_bytes()),
                Some(format!("value {tag} {i}").as_bytes()),
                vec![],
                common::now_ms(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_upload_before_checkpoint() {
    let bed = Bed::new("fp-upload", 1).await;
    let mut produced = produce(&bed.topic, 0, &small_records(25, "a")).await;
    bed.crash_at("after-upload", &[]);

    // The first file is durable and not claimed, and the checkpoint does not know it: it still
    // only says where the chain begins.
    assert_eq!(bed.data_files(0).await.len(), 1, "one file uploaded");
    assert_eq!(
        bed.checkpoint_end(0).await,
        Some(0),
        "the chain's beginning only"
    );
    assert!(bed.claims(0).await.is_empty(), "nothing claimed yet");

    produced.extend(produce(&bed.topic, 0, &small_records(12, "b")).await);
    bed.recover();
    bed.assert_exactly_once(0, &produced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_claim_before_checkpoint() {
    let bed = Bed::new("fp-claim", 1).await;
    let mut produced = produce(&bed.topic, 0, &small_records(25, "a")).await;
    bed.crash_at("after-claim", &[]);

    // The first file is durable and claimed; the checkpoint does not know it.
    let files = bed.data_files(0).await;
    assert_eq!(files.len(), 1, "one file uploaded");
    assert_eq!(bed.claims(0).await, vec![files[0].clone()], "and claimed");
    assert_eq!(
        bed.checkpoint_end(0).await,
        Some(0),
        "the chain's beginning only"
    );
    // The state `sink_crash.rs` meets when its last kill lands here: a valid chain whose file is
    // past the checkpoint.
    assert_eq!(
        common::archive::chain_as_killed(&bed.store, &bed.topic, 0).await,
        produced[..10]
    );

    produced.extend(produce(&bed.topic, 0, &small_records(12, "b")).await);
    bed.recover();
    bed.assert_exactly_once(0, &produced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_checkpoint_before_kafka_commit() {
    let bed = Bed::new("fp-checkpoint", 1).await;
    let mut produced = produce(&bed.topic, 0, &small_records(25, "a")).await;
    bed.crash_at("after-checkpoint", &[]);

    // The archive has moved on; Kafka has not heard of it.
    let end = bed.checkpoint_end(0).await.expect("checkpoint written");
    assert!(end > 0);
    assert_eq!(bed.committed(0), None, "nothing committed to Kafka yet");

    produced.extend(produce(&bed.topic, 0, &small_records(12, "b")).await);
    bed.recover();
    bed.assert_exactly_once(0, &produced).await;
    assert_eq!(
        bed.committed(0),
        produced.last().map(|r| r.offset + 1),
        "Kafka follows the archive once the worker recovers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_the_middle_of_a_multipart_upload() {
    let bed = Bed::new("fp-multipart", 1).await;
    // 30 incompressible values of 300 KiB: a ~9 MiB file, two parts of 5 MiB.
    let big: Vec<Record> = (0..30)
        .map(|i| {
            let mut value = vec![0u8; 300 * 1024];
            rand::rng().fill_bytes(&mut value);
            record(
                Some(format!("big-{i}").as_bytes()),
                Some(&value),
                vec![],
                common::now_ms(),
            )
        })
        .collect();
    let mut produced = produce(&bed.topic, 0, &big).await;
    // One file for all 30 records, large enough to need parts.
    bed.crash_at(
        "mid-multipart",
        &[("REWIND__SINK__MAX_FILE_RECORDS", "1000")],
    );

    // A part is in the store, no file is visible, and the checkpoint has not moved.
    // (MinIO lists incomplete uploads by exact key only, so ask for the file's key.)
    let key = DataFileKey {
        topic: bed.topic.clone(),
        partition: 0,
        bucket: HourBucket::of_millis(produced[0].timestamp.unwrap()),
        start: 0,
        end: None,
    }
    .to_string();
    assert_eq!(
        bed.store.incomplete_uploads(&key).await.unwrap().len(),
        1,
        "the interrupted upload has parts"
    );
    assert!(
        bed.data_files(0).await.is_empty(),
        "no partial file visible"
    );
    assert_eq!(bed.checkpoint_end(0).await, Some(0));

    produced.extend(produce(&bed.topic, 0, &small_records(5, "after")).await);
    bed.recover();
    bed.assert_exactly_once(0, &produced).await;
}

/// Issue 13, defect 6: a seek that fails is never a skip. The group's committed offset (another
/// tool's, 12) is past the archive's end (0), so the sink must read again from 0; when it cannot
/// seek there it stops, naming the partition, and archives nothing it did not read in order
/// (logging the failure and reading on from 12 archived `[12, 25)` as the chain from 0). The next
/// run archives every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_seek_stops_the_partition_instead_of_skipping() {
    let bed = Bed::new("fp-seek", 1).await;
    let produced = produce(&bed.topic, 0, &small_records(25, "a")).await;
    common::kafka::commit_group(&bed.group, &bed.topic, 0, 12);

    // Continuous mode: the group's committed offset positions the consumer.
    let archive = format!("s3://{}/archive", bed.bucket);
    let mut cmd = common::sink_command(&archive, &bed.topic, &bed.group);
    let mut child = cmd
        .env("REWIND__SINK__MAX_FILE_RECORDS", "5")
        .env("REWIND_FAILPOINT", rewind::failpoint::SEEK_FAILS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A sink that read on would archive within seconds (files of 5 records); one that stops does
    // so within the seek's retries.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let archived: Vec<i64> = common::archive::chain(&bed.store, &bed.topic, 0)
        .await
        .iter()
        .map(|r| r.offset)
        .collect();
    assert!(
        archived.is_empty(),
        "nothing is archived from where the consumer stood instead of the chain's end: {archived:?}"
    );
    assert!(bed.checkpoint_end(0).await.is_none_or(|end| end == 0));
    let status = status.expect("a failed seek stops the sink");
    assert!(!status.success(), "a failed seek stops the sink: {stderr}");
    assert!(
        stderr.contains(&format!(
            "could not seek {}/0 to offset 0: Seek error: injected by failpoint seek-fails; the sink stops rather than read past records it has not archived",
            bed.topic
        )),
        "{stderr}"
    );

    bed.recover();
    bed.assert_exactly_once(0, &produced).await;
}
