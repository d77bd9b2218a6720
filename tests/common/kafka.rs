//! Kafka helpers of the integration tests, against the test bed's real broker.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, Timestamp, TopicPartitionList};
use rewind::archive::{Header, Record, TimestampType};

pub fn config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", super::kafka_bootstrap());
    config
}

/// Create a topic; test topics keep their records forever (`retention.ms=-1`) unless `configs`
/// says otherwise, so old test timestamps are never cleaned up by the broker mid-test.
pub async fn create_topic(name: &str, partitions: i32, configs: &[(&str, &str)]) {
    // A KRaft controller refuses an operation of more than 10,000 records (PolicyViolation), and a
    // topic's creation is one record per partition and one more: larger topics grow in steps.
    const STEP: i32 = 5_000;
    let admin: AdminClient<DefaultClientContext> = config().create().unwrap();
    let mut topic = NewTopic::new(name, partitions.min(STEP), TopicReplication::Fixed(1));
    if !configs.iter().any(|(k, _)| *k == "retention.ms") {
        topic = topic.set("retention.ms", "-1");
    }
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .unwrap_or_else(|e| panic!("create topic {name}: {e}; {}", super::testbed_hint()));
    for result in results {
        result.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    let mut created = partitions.min(STEP);
    while created < partitions {
        created = partitions.min(created + STEP);
        let grow = NewPartitions::new(name, created as usize);
        for result in admin.create_partitions([&grow], &opts).await.unwrap() {
            result.unwrap_or_else(|(t, e)| panic!("grow topic {t} to {created} partitions: {e}"));
        }
    }
    wait_for_metadata(name, partitions);
}

/// The controller answers CreateTopics once the topic is committed; a broker's metadata can show
/// it a moment later. Tests that describe the topic right away (a restore's plan) must see it.
fn wait_for_metadata(name: &str, partitions: i32) {
    let probe: BaseConsumer = config().create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = probe
            .fetch_metadata(Some(name), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics().first().map(|t| {
                    t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topic {name} did not appear in the broker's metadata within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn to_kafka<'a>(topic: &'a str, partition: i32, r: &'a Record) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new();
    for h in &r.headers {
        headers = headers.insert(KafkaHeader {
            key: &h.key,
            value: h.value.as_deref(),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
        .partition(partition)
        .headers(headers);
    if let Some(ts) = r.timestamp {
        record = record.timestamp(ts);
    }
    if let Some(k) = &r.key {
        record = record.key(k.as_slice());
    }
    if let Some(v) = &r.value {
        record = record.payload(v.as_slice());
    }
    record
}

/// Produce records in order to one partition; returns them with the offsets the broker assigned.
pub async fn produce(topic: &str, partition: i32, records: &[Record]) -> Vec<Record> {
    let producer: FutureProducer = config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    // Enqueue everything, then wait for the deliveries: the idempotent producer keeps the order,
    // and a test producing thousands of records does not pay a round trip for each.
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let delivery = producer
            .send_result(to_kafka(topic, partition, r))
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
        pending.push(delivery);
    }
    let mut out = Vec::with_capacity(records.len());
    for (r, delivery) in records.iter().zip(pending) {
        let delivered = delivery
            .await
            .expect("delivery future")
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}; {}", super::testbed_hint()));
        out.push(Record {
            offset: delivered.offset,
            ..r.clone()
        });
    }
    out
}

/// Produce records in one transaction, committed or aborted.
pub async fn produce_transaction(topic: &str, partition: i32, records: &[Record], commit: bool) {
    let producer = open_transaction(topic, partition, records).await;
    if commit {
        producer
            .commit_transaction(Duration::from_secs(30))
            .unwrap();
    } else {
        producer.abort_transaction(Duration::from_secs(30)).unwrap();
    }
}

/// Produce records in a transaction left open: it stays open while the returned producer lives
/// (and at most its timeout, a minute).
pub async fn open_transaction(topic: &str, partition: i32, records: &[Record]) -> FutureProducer {
    let producer: FutureProducer = config()
        .set("transactional.id", super::unique("open-tx"))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    for r in records {
        producer
            .send(to_kafka(topic, partition, r), Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
    producer
}

/// A consumer with `settings`, assigned one partition from its beginning (no group membership).
fn reader_from_start(mut settings: ClientConfig, topic: &str, partition: i32) -> BaseConsumer {
    let consumer: BaseConsumer = settings
        .set("group.id", super::unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    consumer
}

/// Read `count` records of one partition from the beginning.
pub fn consume(topic: &str, partition: i32, count: usize) -> Vec<(Record, Timestamp)> {
    let consumer = reader_from_start(config(), topic, partition);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < count && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.unwrap_or_else(|e| panic!("consume {topic}: {e}"));
        let record = rewind::sink::to_record(&msg);
        out.push((record, msg.timestamp()));
    }
    assert_eq!(
        out.len(),
        count,
        "consumed {} of {count} records from {topic}",
        out.len()
    );
    out
}

pub fn header(key: &str, value: Option<&[u8]>) -> Header {
    Header {
        key: key.to_string(),
        value: value.map(<[u8]>::to_vec),
    }
}

/// A record to produce (the offset is the broker's to choose).
pub fn record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Vec<Header>,
    timestamp: i64,
) -> Record {
    Record {
        offset: -1,
        timestamp: Some(timestamp),
        timestamp_type: Some(TimestampType::Create),
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        headers,
    }
}

/// Every record of one partition a `read_committed` consumer sees, from the start to the end.
pub fn read_to_end(topic: &str, partition: i32) -> Vec<(Record, Timestamp)> {
    let mut settings = config();
    settings
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    let consumer = reader_from_start(settings, topic, partition);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "reading {topic}/{partition} to its end timed out"
        );
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            Some(Ok(msg)) => {
                let record = rewind::sink::to_record(&msg);
                out.push((record, msg.timestamp()));
            }
        }
    }
}

/// What the broker answers to `offsetsForTimes(ts)` for one partition (the log end when no record
/// is that late), as a `read_committed` client sees it.
pub fn offset_for_time(topic: &str, partition: i32, ts: i64) -> i64 {
    let consumer: BaseConsumer = config()
        .set("group.id", super::unique("oracle"))
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(ts))
        .unwrap();
    let answer = consumer
        .offsets_for_times(tpl, Duration::from_secs(30))
        .unwrap();
    match answer.elements()[0].offset() {
        Offset::Offset(o) => o,
        Offset::End => {
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(30))
                .unwrap()
                .1
        }
        other => panic!("offsetsForTimes({ts}) answered {other:?}"),
    }
}

/// Commit `offset` for `group` on one partition, as a consumer of that group would.
pub fn commit_group(group: &str, topic: &str, partition: i32, offset: i64) {
    let consumer: BaseConsumer = config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
}
