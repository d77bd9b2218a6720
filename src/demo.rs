//! `rewind demo`: Rewind end to end with nothing installed. An embedded Kafka (librdkafka's mock
//! cluster) gets three hours of sample traffic — keys, headers, tombstones — while the sink backs it
//! up continuously into a local archive; then a bad hour is restored point-in-time into new topics,
//! compared byte for byte with what was produced, and the archive is verified.
//!
//! The mock cluster stands in for Kafka here only: it answers the protocol the sink and the
//! restore use, in process. Every comparison is real; a mismatch fails the demo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kafka::topics::TopicSelector;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::archive::rotation::RollingPolicy;
use crate::archive::time::{now_ms, rfc3339_millis};
use crate::archive::Record;
use crate::live::Live;
use crate::restore::{self, RestoreOptions, Window};
use crate::sink::{self, SinkOptions};
use crate::storage::{self, StorageUrl};

const HOUR: i64 = 3_600_000;

/// The sample topics: name, partitions, records per hour.
const TOPICS: &[(&str, i32, usize)] = &[("orders", 3, 3000), ("payments", 2, 2000)];

/// What the demo did, for its summary and for tests.
#[derive(Debug)]
pub struct DemoReport {
    pub archive: PathBuf,
    pub produced: usize,
    pub archived: u64,
    pub restored: usize,
    pub files: usize,
    pub window: (i64, i64),
    pub seconds: f64,
}

/// Run the demo, narrating on stdout through `say`; the archive goes to `dir` (created).
pub async fn run(dir: &Path, say: &mut dyn FnMut(String)) -> Result<DemoReport, String> {
    let started = Instant::now();
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .next()
        .is_some()
    {
        return Err(format!(
            "{} is not empty; give the demo an empty or new directory",
            dir.display()
        ));
    }

    let cluster =
        MockCluster::new(3).map_err(|e| format!("cannot start the embedded Kafka: {e}"))?;
    let servers = cluster.bootstrap_servers();
    // The embedded cluster cannot create topics through the admin API, so the restore's targets
    // and its progress topic are made here, as the restore would make them on a real cluster.
    for (topic, partitions, _) in TOPICS {
        for name in [topic.to_string(), restored_name(topic)] {
            cluster
                .create_topic(&name, *partitions, 1)
                .map_err(|e| format!("cannot create {name}: {e}"))?;
        }
    }
    cluster
        .create_topic(restore::progress::DEFAULT_TOPIC, 1, 1)
        .map_err(|e| format!("cannot create the progress topic: {e}"))?;
    say(format!(
        "1. Started an embedded Kafka cluster (3 brokers, in process) with topics {}.",
        TOPICS
            .iter()
            .map(|(t, p, _)| format!("{t} ({p} partitions)"))
            .collect::<Vec<_>>()
            .join(" and ")
    ));

    let url = StorageUrl::parse(&format!("file://{}", dir.display())).map_err(|e| e.to_string())?;
    let store = storage::open_writer(&url, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &servers);

    // Three hours of traffic, the newest hour ending now: the middle hour is the "bad deploy".
    let now = now_ms();
    let start = now - 3 * HOUR;
    let window = (start + HOUR, start + 2 * HOUR);
    let produced = produce_traffic(&client, start).await?;
    let total: usize = produced.values().map(Vec::len).sum();
    say(format!(
        "2. Produced {total} records stamped from {} to {}: keys, headers (repeated and null), tombstones.",
        rfc3339_millis(start),
        rfc3339_millis(now)
    ));

    // The sink runs continuously while the rest of the demo happens.
    let live = Live::new();
    let opts = SinkOptions {
        topics: TopicSelector::new("orders|payments").expect("a valid pattern"),
        group: Some("rewind-demo".into()),
        once: false,
        policy: RollingPolicy {
            max_records: 2_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(1),
        },
        buffer_budget: 64 << 20,
        part_size: 16 << 20,
        uploads_in_flight: crate::sink::default_uploads_in_flight(),
        discovery_interval: Duration::from_secs(1),
        allow_cluster_change: false,
        drain_timeout: Duration::from_secs(10),
        progress: false,
        group_snapshot_interval: Duration::ZERO,
        live: Some(live.clone()),
        // The embedded cluster does not answer DescribeConfigs.
        admin_api: false,
        decoders: None,
    };
    let (stop_sink, sink_stopped) = tokio::sync::oneshot::channel::<()>();
    // Short sessions: the embedded cluster's group coordinator waits a session out on the first join.
    let mut sink_client = client.clone();
    sink_client
        .set("session.timeout.ms", "3000")
        .set("heartbeat.interval.ms", "1000");
    let sink_run = sink::run(sink_client, store.clone(), opts, async {
        let _ = sink_stopped.await;
    });
    let rest = async {
        let result = demonstrate(&client, &store, &url, &live, &produced, window, say).await;
        let _ = stop_sink.send(());
        result
    };
    tokio::pin!(sink_run);
    tokio::pin!(rest);
    let (restored, files) = tokio::select! {
        ended = &mut sink_run => {
            return Err(match ended {
                Ok(_) => "the sink stopped before the demo was over".to_string(),
                Err(e) => format!("the sink failed: {e}"),
            });
        }
        result = &mut rest => result?,
    };
    let sink_report = sink_run
        .await
        .map_err(|e| format!("the sink failed: {e}"))?;
    drop(cluster);
    Ok(DemoReport {
        archive: dir,
        produced: total,
        archived: sink_report.records,
        restored,
        files,
        window,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Everything after the traffic, while the sink runs: wait for the backup, restore the bad hour,
/// compare, verify. Returns the records restored and the files verified.
async fn demonstrate(
    client: &ClientConfig,
    store: &Arc<dyn storage::ObjectStore>,
    url: &StorageUrl,
    live: &Live,
    produced: &BTreeMap<(String, i32), Vec<Record>>,
    window: (i64, i64),
    say: &mut dyn FnMut(String),
) -> Result<(usize, usize), String> {
    let total: usize = produced.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = live.snapshot();
        let durable: BTreeMap<(String, i32), i64> = status
            .partitions
            .iter()
            .map(|p| ((p.topic.clone(), p.partition), p.position))
            .collect();
        if produced
            .iter()
            .all(|(id, records)| durable.get(id) == Some(&(records.len() as i64)))
        {
            say(format!(
                "3. The sink, running continuously, made all {total} records durable in {} files under {url}.",
                status.files.unwrap_or_default()
            ));
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the sink did not archive every record within 60s (archived so far: {durable:?})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Point-in-time restore of the bad hour into new topics.
    let renames: BTreeMap<String, String> = TOPICS
        .iter()
        .map(|(t, _, _)| (t.to_string(), restored_name(t)))
        .collect();
    let opts = RestoreOptions {
        window: Window {
            from: Some(window.0),
            to: Some(window.1),
            ..Window::default()
        },
        topics: TopicSelector::new("orders|payments").expect("a valid pattern"),
        renames: renames.clone(),
        restore_id: format!("demo-{}", now_ms()),
        groups: false,
        follow: false,
        poll_interval: Duration::from_secs(1),
        allow_non_empty: false,
        strict: false,
        repartition_by_key: false,
        provenance_headers: false,
        schema_ids: None,
        shared: false,
        worker_id: None,
        buffer_budget: 64 << 20,
        concurrency: 4,
        transaction_bytes: 16 << 20,
        producers: 1,
        transaction_interval: Duration::from_secs(1),
        progress_topic: restore::progress::DEFAULT_TOPIC.into(),
        progress: false,
        resume_hint: None,
        live: None,
        // The embedded cluster does not answer DescribeConfigs; its targets were made above.
        admin_api: false,
    };
    let report = restore::run(client.clone(), store.clone(), &opts, std::future::pending())
        .await
        .map_err(|e| format!("the restore failed: {e}"))?;
    say(format!(
        "4. Restored the hour [{}, {}) point-in-time into {}: {} records, exactly once (one transaction per batch, progress committed with it).",
        rfc3339_millis(window.0),
        rfc3339_millis(window.1),
        renames.values().cloned().collect::<Vec<_>>().join(" and "),
        report.records
    ));

    // The oracle: per partition, the records from the first stamped at or after `from` up to the
    // first stamped at or after `to` — what Kafka's offsetsForTimes would cut.
    let mut compared = 0;
    for ((topic, partition), records) in produced {
        let cut = |t: i64| {
            records
                .iter()
                .position(|r| r.timestamp.is_some_and(|ts| ts >= t))
                .unwrap_or(records.len())
        };
        let expected = &records[cut(window.0)..cut(window.1)];
        let target = &renames[topic];
        let got = read_partition(client, target, *partition, expected.len()).await?;
        for (want, have) in expected.iter().zip(&got) {
            if (&want.key, &want.value, &want.headers, want.timestamp)
                != (&have.key, &have.value, &have.headers, have.timestamp)
            {
                return Err(format!(
                    "{target}/{partition}: the record restored from offset {} differs from the one produced",
                    want.offset
                ));
            }
        }
        if got.len() != expected.len() {
            return Err(format!(
                "{target}/{partition}: {} records restored, {} expected",
                got.len(),
                expected.len()
            ));
        }
        compared += got.len();
    }
    if compared as u64 != report.records {
        return Err(format!(
            "the restore reported {} records but {compared} were compared",
            report.records
        ));
    }
    say(format!(
        "5. Compared all {compared} restored records with the ones produced: keys, values, headers and timestamps are identical, in order."
    ));

    let verified = crate::ops::verify::verify(&**store, &TopicSelector::all(), true)
        .await
        .map_err(|e| format!("verify failed: {e}"))?;
    if !verified.clean || verified.files == 0 || verified.records != total as u64 {
        return Err(format!(
            "verify read {} records in {} files (expected {total}) and found problems: {}",
            verified.records,
            verified.files,
            verified
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    say(format!(
        "6. Verified the archive byte by byte: {} files, {} records, every chain contiguous, every checksum right.",
        verified.files, verified.records
    ));
    Ok((compared, verified.files))
}

fn restored_name(topic: &str) -> String {
    format!("{topic}.restored")
}

/// Produce the sample traffic: per topic, `rate` records per hour spread over three hours, keys
/// repeating (`order-<n>`), two headers (one repeated, one null), every 20th record a tombstone.
async fn produce_traffic(
    client: &ClientConfig,
    start: i64,
) -> Result<BTreeMap<(String, i32), Vec<Record>>, String> {
    let producer: FutureProducer = client
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .map_err(|e| format!("cannot create a producer: {e}"))?;
    let mut produced: BTreeMap<(String, i32), Vec<Record>> = BTreeMap::new();
    let mut deliveries = Vec::new();
    for (topic, partitions, rate) in TOPICS {
        let count = rate * 3;
        let step = 3 * HOUR / count as i64;
        let kind = topic.trim_end_matches('s');
        for i in 0..count {
            let partition = (i % *partitions as usize) as i32;
            let key = format!("{kind}-{}", i % 500);
            let value = (i % 20 != 19).then(|| {
                format!(
                    "{{\"{kind}\":{i},\"amount\":{}.{:02},\"currency\":\"EUR\"}}",
                    i * 7 % 1000,
                    i % 100
                )
            });
            let record = Record {
                offset: produced
                    .get(&(topic.to_string(), partition))
                    .map_or(0, |v| v.len() as i64),
                timestamp: Some(start + i as i64 * step),
                timestamp_type: Some(crate::archive::TimestampType::Create),
                key: Some(key.into_bytes()),
                value: value.map(String::into_bytes),
                headers: vec![
                    crate::archive::Header {
                        key: "trace".into(),
                        value: Some(format!("{i:08x}").into_bytes()),
                    },
                    crate::archive::Header {
                        key: "trace".into(),
                        value: Some(b"again".to_vec()),
                    },
                    crate::archive::Header {
                        key: "tenant".into(),
                        value: (i % 3 != 0).then(|| b"acme".to_vec()),
                    },
                ],
            };
            let mut headers = OwnedHeaders::new();
            for h in &record.headers {
                headers = headers.insert(KafkaHeader {
                    key: &h.key,
                    value: h.value.as_deref(),
                });
            }
            let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .partition(partition)
                .timestamp(record.timestamp.unwrap_or_default())
                .headers(headers);
            if let Some(k) = &record.key {
                out = out.key(k.as_slice());
            }
            if let Some(v) = &record.value {
                out = out.payload(v.as_slice());
            }
            loop {
                match producer.send_result(out) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        back,
                    )) => {
                        out = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(format!("producing into {topic} failed: {e}")),
                }
            }
            produced
                .entry((topic.to_string(), partition))
                .or_default()
                .push(record);
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| format!("producing the sample traffic failed: {e}"))?;
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(format!("producing the sample traffic failed: {e}")),
            Err(_) => return Err("producing the sample traffic failed: a delivery was lost".into()),
        }
    }
    Ok(produced)
}

/// Read `count` records of one partition from its start (the mock keeps what it is given).
async fn read_partition(
    client: &ClientConfig,
    topic: &str,
    partition: i32,
    count: usize,
) -> Result<Vec<Record>, String> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", "rewind-demo-check")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let consumer = Arc::new(consumer);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < count && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(msg)) => out.push(sink::to_record(&msg)),
                Some(Err(e)) => return Err(format!("reading {topic}/{partition}: {e}")),
                None => {}
            }
        }
        // Anything past the expected count would be a duplicate: look for it briefly.
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(300)) {
            out.push(sink::to_record(&msg));
        }
        Ok(out)
    })
    .await
    .map_err(|e| e.to_string())?
}
