//! Kafka helpers of the integration tests, against the test bed's real broker.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
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
    let admin: AdminClient<DefaultClientContext> = config().create().unwrap();
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
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
    let mut out = Vec::new();
    for r in records {
        let delivery = producer
            .send(to_kafka(topic, partition, r), Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}; {}", super::testbed_hint()));
        out.push(Record {
            offset: delivery.offset,
            ..r.clone()
        });
    }
    out
}

/// Produce records in one transaction, committed or aborted.
pub async fn produce_transaction(topic: &str, partition: i32, records: &[Record], commit: bool) {
    let producer: FutureProducer = config()
        .set("transactional.id", super::unique("tx"))
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
    if commit {
        producer
            .commit_transaction(Duration::from_secs(30))
            .unwrap();
    } else {
        producer.abort_transaction(Duration::from_secs(30)).unwrap();
    }
}

/// Read `count` records of one partition from the beginning.
pub fn consume(topic: &str, partition: i32, count: usize) -> Vec<(Record, Timestamp)> {
    let consumer: BaseConsumer = config()
        .set("group.id", super::unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < count && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.unwrap_or_else(|e| panic!("consume {topic}: {e}"));
        let (_, _, record) = rewind::sink::to_record(&msg);
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
