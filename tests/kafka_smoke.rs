//! Smoke tests against the test bed's real Apache Kafka broker: every byte of keys, values and
//! headers, and every timestamp, survives a produce and a consume through rdkafka. The sink and the
//! restore stand on exactly this.

mod common;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, Timestamp, TopicPartitionList};

/// One record as Kafka carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: i64,
}

fn config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", common::kafka_bootstrap());
    config
}

async fn create_topic(name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = config().create().unwrap();
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .unwrap_or_else(|e| panic!("create topic {name}: {e}; {}", common::testbed_hint()));
    for result in results {
        result.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

async fn produce(topic: &str, partition: i32, records: &[Rec]) -> Vec<i64> {
    let producer: FutureProducer = config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut offsets = Vec::new();
    for r in records {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .partition(partition)
            .timestamp(r.timestamp)
            .headers(headers);
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            record = record.payload(v.as_slice());
        }
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}; {}", common::testbed_hint()));
        assert_eq!(delivery.partition, partition);
        offsets.push(delivery.offset);
    }
    offsets
}

fn consume(topic: &str, partition: i32, count: usize) -> Vec<(i64, Rec, Timestamp)> {
    let consumer: BaseConsumer = config()
        .set("group.id", common::unique("smoke"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while out.len() < count && std::time::Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.unwrap_or_else(|e| panic!("consume {topic}: {e}"));
        let headers = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let rec = Rec {
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            headers,
            timestamp: msg.timestamp().to_millis().unwrap_or(-1),
        };
        out.push((msg.offset(), rec, msg.timestamp()));
    }
    assert_eq!(
        out.len(),
        count,
        "consumed {} of {count} records from {topic}",
        out.len()
    );
    out
}

fn sample() -> Vec<Rec> {
    let h = |k: &str, v: Option<&[u8]>| (k.to_string(), v.map(<[u8]>::to_vec));
    vec![
        Rec {
            key: Some(b"order-1".to_vec()),
            value: Some(b"{\"amount\": 42}".to_vec()),
            headers: vec![
                h("trace", Some(b"a")),
                h("trace", Some(b"b")),
                h("nullable", None),
                h("trace", Some(b"")),
            ],
            timestamp: 1_700_000_000_000,
        },
        // Null key.
        Rec {
            key: None,
            value: Some(vec![0, 159, 146, 150, 255]),
            headers: vec![],
            timestamp: 1_700_000_000_500,
        },
        // Tombstone: null value, binary key.
        Rec {
            key: Some(vec![0xff, 0x00, 0xfe]),
            value: None,
            headers: vec![h("deleted-by", Some(b"gc"))],
            timestamp: 1_700_000_001_000,
        },
        // Empty (not null) key and value; an earlier timestamp than the record before (out of order).
        Rec {
            key: Some(vec![]),
            value: Some(vec![]),
            headers: vec![h("", Some(b"empty key"))],
            timestamp: 1_600_000_000_000,
        },
        // A large value.
        Rec {
            key: Some(b"big".to_vec()),
            value: Some((0..900_000u32).map(|i| (i % 251) as u8).collect()),
            headers: vec![],
            timestamp: 1_700_000_002_000,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_time_records_round_trip_byte_exact() {
    let topic = common::unique("smoke.create-time");
    create_topic(&topic, 3, &[]).await;
    let records = sample();
    let offsets = produce(&topic, 2, &records).await;
    assert_eq!(
        offsets,
        (0..records.len() as i64).collect::<Vec<_>>(),
        "offsets are contiguous from 0"
    );

    let topic2 = topic.clone();
    let consumed = tokio::task::spawn_blocking(move || consume(&topic2, 2, 5))
        .await
        .unwrap();
    for ((offset, got, ts), (want_offset, want)) in
        consumed.iter().zip(offsets.iter().zip(&records))
    {
        assert_eq!(offset, want_offset);
        assert_eq!(got, want, "record at offset {offset}");
        assert_eq!(
            *ts,
            Timestamp::CreateTime(want.timestamp),
            "CreateTime is kept exactly"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_append_time_topics_get_broker_timestamps() {
    let topic = common::unique("smoke-log-append");
    create_topic(&topic, 1, &[("message.timestamp.type", "LogAppendTime")]).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let records = sample();
    produce(&topic, 0, &records[..3]).await;
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;

    let topic2 = topic.clone();
    let consumed = tokio::task::spawn_blocking(move || consume(&topic2, 0, 3))
        .await
        .unwrap();
    for ((_, got, ts), want) in consumed.iter().zip(&records) {
        let Timestamp::LogAppendTime(t) = ts else {
            panic!("expected LogAppendTime, got {ts:?}")
        };
        assert!(
            (before - 1_000..=after + 1_000).contains(t),
            "broker time {t} outside [{before}, {after}]"
        );
        assert_eq!(
            (&got.key, &got.value, &got.headers),
            (&want.key, &want.value, &want.headers)
        );
    }
}
