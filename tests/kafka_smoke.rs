//! Smoke tests against the test bed's real Apache Kafka broker: every byte of keys, values and
//! headers, and every timestamp, survives a produce and a consume through rdkafka. The sink and the
//! restore stand on exactly this.

mod common;

use common::kafka::{consume, create_topic, header, produce, record};
use rdkafka::Timestamp;
use rewind::archive::Record;

fn sample() -> Vec<Record> {
    vec![
        record(
            Some(b"order-1"),
            Some(b"{\"amount\": 42}"),
            vec![
                header("trace", Some(b"a")),
                header("trace", Some(b"b")),
                header("nullable", None),
                header("trace", Some(b"")),
            ],
            1_700_000_000_000,
        ),
        // Null key.
        record(
            None,
            Some(&[0, 159, 146, 150, 255]),
            vec![],
            1_700_000_000_500,
        ),
        // Tombstone: null value, binary key.
        record(
            Some(&[0xff, 0x00, 0xfe]),
            None,
            vec![header("deleted-by", Some(b"gc"))],
            1_700_000_001_000,
        ),
        // Empty (not null) key and value; an earlier timestamp than the record before (out of order).
        record(
            Some(b""),
            Some(b""),
            vec![header("", Some(b"empty key"))],
            1_600_000_000_000,
        ),
        // A large value.
        record(
            Some(b"big"),
            Some(&(0..900_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()),
            vec![],
            1_700_000_002_000,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_time_records_round_trip_byte_exact() {
    let topic = common::unique("smoke.create-time");
    create_topic(&topic, 3, &[]).await;
    let produced = produce(&topic, 2, &sample()).await;
    assert_eq!(
        produced.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4],
        "offsets are contiguous from 0"
    );

    let topic2 = topic.clone();
    let consumed = tokio::task::spawn_blocking(move || consume(&topic2, 2, 5))
        .await
        .unwrap();
    for ((got, ts), want) in consumed.iter().zip(&produced) {
        assert_eq!(got, want, "record at offset {}", want.offset);
        assert_eq!(
            *ts,
            Timestamp::CreateTime(want.timestamp.unwrap()),
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
    let produced = produce(&topic, 0, &sample()[..3]).await;
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;

    let topic2 = topic.clone();
    let consumed = tokio::task::spawn_blocking(move || consume(&topic2, 0, 3))
        .await
        .unwrap();
    for ((got, ts), want) in consumed.iter().zip(&produced) {
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
