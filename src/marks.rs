//! Taking a named restore point (`rewind mark`): the source cluster's offsets at one moment,
//! recorded in the archive (see [`crate::archive::marks`] for the document and what it promises).
//!
//! Invariant: a mark's cut is what a `read_committed` consumer could read at the moment it was
//! taken (each partition's last stable offset), and its `records_end` is the end of the last
//! committed record below that cut, read from the cluster, so the archive's chains (which never
//! hold transaction markers or aborted records) can be compared with it exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::archive::documents;
use crate::archive::marks::{self, Mark, MarkedPartition};
use crate::archive::time::{rfc3339_millis, HourBucket};
use crate::config::MarkEvery;
use crate::kafka::topics::TopicSelector;
use crate::kafka::{ClusterError, Ctx};
use crate::storage::ObjectStore;

/// How long one question to the cluster may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a mark could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}: no Rewind archive there (no _archive.json); a mark is taken for an archive a sink writes")]
    NoArchive(String),
    #[error("{0}")]
    Found(String),
    #[error(transparent)]
    Kafka(#[from] ClusterError),
    #[error(transparent)]
    Archive(#[from] documents::ArchiveError),
    #[error(transparent)]
    Chain(#[from] crate::archive::chain::ChainError),
}

/// What to mark.
#[derive(Debug, Clone)]
pub struct MarkRequest {
    pub name: String,
    /// `None`: every topic of the cluster the archive holds.
    pub topics: Option<TopicSelector>,
    /// Who asks, recorded with the mark (`rewind mark`, a schedule's name).
    pub taken_by: String,
    /// Take the mark even if the archive belongs to another cluster id.
    pub allow_cluster_change: bool,
}

/// Take the cut `request` describes from the cluster `client` reaches and record it in the
/// archive. The mark is written at once; [`status`] says whether the archive has reached it.
pub async fn take(
    client: &ClientConfig,
    store: &dyn ObjectStore,
    request: &MarkRequest,
) -> Result<Mark, MarkError> {
    if !marks::valid_name(&request.name) {
        return Err(MarkError::Usage(format!(
            "mark name {:?} may only hold letters, digits, '.', '_' and '-' (at most 100, not starting with '.')",
            request.name
        )));
    }
    let Some(identity) = documents::read_identity(store).await? else {
        return Err(MarkError::NoArchive(store.url().to_string()));
    };
    if marks::read(store, &request.name).await?.is_some() {
        return Err(taken(&request.name));
    }
    // What the archive holds before the cut is taken: it can only be behind the cluster then.
    let held = marks::held(store, |t, _| {
        request.topics.as_ref().is_none_or(|s| s.is_match(t))
    })
    .await?;
    let archived: BTreeSet<String> = held.keys().map(|(t, _)| t.clone()).collect();
    let (client, selector) = (client.clone(), request.topics.clone());
    let cut = crate::kafka::blocking(move || cut(&client, selector.as_ref(), &archived)).await?;
    // The archive past the cluster's log end: the topic was deleted and created again, and its
    // offsets start over below what the archive holds (the sink refuses such partitions).
    if let Some((p, reached)) = cut.partitions.iter().find_map(|p| {
        let reached = held.get(&(p.topic.clone(), p.partition))?.reached?;
        (reached > p.offset).then_some((p, reached))
    }) {
        return Err(MarkError::Found(format!(
            "{}/{}: the archive holds offsets up to {reached} but the cluster's log ends at {}: the topic was deleted and created again, so a mark would name offsets of the old topic; move the old chain aside (docs/archive-format.md, \"Offsets that go backwards\") or leave the topic out with --exclude",
            p.topic, p.partition, p.offset
        )));
    }
    if let Some(connected) = &cut.cluster_id {
        if *connected != identity.cluster_id && !request.allow_cluster_change {
            return Err(MarkError::Usage(format!(
                "{}: the archive belongs to Kafka cluster {:?}, not {connected:?}: a mark of this cluster would name offsets the archive does not hold; point --bootstrap-servers at the archived cluster, or pass --allow-cluster-change if it was rebuilt on purpose",
                store.url(),
                identity.cluster_id
            )));
        }
    }
    if cut.partitions.is_empty() {
        return Err(MarkError::Usage(match &request.topics {
            Some(s) => format!(
                "no topic of the cluster matches --topics {:?}; nothing to mark",
                s.pattern()
            ),
            None => "no topic the archive holds exists in the cluster; nothing to mark (give --topics to mark topics the sink has not archived yet)".to_string(),
        }));
    }
    let mark = Mark {
        format_version: crate::archive::FORMAT_VERSION,
        name: request.name.clone(),
        taken_at: rfc3339_millis(cut.taken_at_ms),
        taken_at_ms: cut.taken_at_ms,
        cluster_id: cut.cluster_id,
        topics: request
            .topics
            .as_ref()
            .map_or("(the archive's topics)".to_string(), |s| {
                s.pattern().to_string()
            }),
        taken_by: request.taken_by.clone(),
        partitions: cut.partitions,
    };
    if !marks::create(store, &mark).await? {
        return Err(taken(&request.name));
    }
    Ok(mark)
}

fn taken(name: &str) -> MarkError {
    MarkError::Usage(format!(
        "a mark named {name:?} already exists in the archive; marks are never replaced, so choose another name"
    ))
}

/// The name of the scheduled mark of the period holding `now_ms`, and when the next period
/// begins; `None` when `every` is off.
pub fn period(every: MarkEvery, now_ms: i64) -> Option<(String, i64)> {
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    let bucket = HourBucket::of_millis(now_ms);
    match every {
        MarkEvery::Off => None,
        MarkEvery::Hourly => Some((
            format!("hourly-{}T{}", bucket.date(), bucket.hour()),
            bucket.end_millis(),
        )),
        MarkEvery::Daily => {
            let day = now_ms.div_euclid(DAY) * DAY;
            Some((
                format!("daily-{}", HourBucket::of_millis(day).date()),
                day + DAY,
            ))
        }
        MarkEvery::Weekly => {
            // 1970-01-01 was a Thursday: day d is a Monday when (d + 3) % 7 == 0.
            let day = now_ms.div_euclid(DAY);
            let monday = (day - (day + 3).rem_euclid(7)) * DAY;
            Some((
                format!("weekly-{}", HourBucket::of_millis(monday).date()),
                monday + 7 * DAY,
            ))
        }
    }
}

/// [`every`] for each of `schedules` at once (none: never resolves).
pub async fn schedules(
    client: ClientConfig,
    store: Arc<dyn ObjectStore>,
    topics: TopicSelector,
    schedules: Vec<MarkEvery>,
) {
    let all = schedules
        .into_iter()
        .map(|e| every(client.clone(), store.clone(), topics.clone(), e));
    futures::future::join_all(all).await;
    std::future::pending::<()>().await
}

/// Take the scheduled mark of every period, for as long as the future is polled (beside a
/// continuous sink, which archives up to it). A period whose mark exists already (another worker
/// took it) is skipped; one that started while nothing ran gets its mark when this starts. A
/// failure is logged and tried again a minute later.
pub async fn every(
    client: ClientConfig,
    store: Arc<dyn ObjectStore>,
    topics: TopicSelector,
    every: MarkEvery,
) {
    let retry = Duration::from_secs(60);
    loop {
        let now = crate::archive::time::now_ms();
        let Some((name, next)) = period(every, now) else {
            return std::future::pending().await;
        };
        let wait = match marks::read(&*store, &name).await {
            Ok(Some(_)) => Duration::from_millis((next - now).max(0) as u64),
            Ok(None) => {
                let request = MarkRequest {
                    name: name.clone(),
                    topics: Some(topics.clone()),
                    taken_by: format!("sink.marks = {every:?}").to_lowercase(),
                    allow_cluster_change: false,
                };
                match take(&client, &*store, &request).await {
                    Ok(mark) => {
                        tracing::info!(
                            mark = mark.name,
                            partitions = mark.partitions.len(),
                            "took the scheduled restore point"
                        );
                        metrics::counter!(crate::metrics::MARKS_TAKEN).increment(1);
                        metrics::gauge!(crate::metrics::MARK_LAST_TAKEN)
                            .set(mark.taken_at_ms as f64 / 1000.0);
                        Duration::from_millis((next - now).max(0) as u64)
                    }
                    // Another worker of the archive took it first.
                    Err(MarkError::Usage(m)) if m.contains("already exists") => {
                        Duration::from_millis((next - now).max(0) as u64)
                    }
                    // The sink beside this creates the archive as it starts.
                    Err(MarkError::NoArchive(_)) => Duration::from_secs(5),
                    Err(e) => {
                        tracing::warn!(mark = name, error = %e, "could not take the scheduled restore point; trying again in a minute");
                        metrics::counter!(crate::metrics::MARK_ERRORS).increment(1);
                        retry
                    }
                }
            }
            Err(e) => {
                tracing::warn!(mark = name, error = %e, "could not read the scheduled restore point; trying again in a minute");
                retry
            }
        };
        // Never longer than an hour asleep, so a clock that jumps is noticed.
        tokio::time::sleep(wait.min(Duration::from_secs(3600)) + Duration::from_millis(50)).await;
    }
}

/// What the archive holds of `mark`.
pub async fn status(store: &dyn ObjectStore, mark: &Mark) -> Result<marks::MarkStatus, MarkError> {
    let held = marks::held(store, |t, p| mark.offset_of(t, p).is_some()).await?;
    Ok(marks::status(mark, &held))
}

/// The statuses of every mark of the archive, oldest first, with one listing of the archive.
pub async fn statuses(
    store: &dyn ObjectStore,
) -> Result<Vec<(Mark, marks::MarkStatus)>, MarkError> {
    let all = marks::list(store).await?;
    if all.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: BTreeSet<(String, i32)> = all
        .iter()
        .flat_map(|m| m.partitions.iter().map(|p| (p.topic.clone(), p.partition)))
        .collect();
    let held = marks::held(store, |t, p| wanted.contains(&(t.to_string(), p))).await?;
    Ok(all
        .into_iter()
        .map(|m| {
            let s = marks::status(&m, &held);
            (m, s)
        })
        .collect())
}

/// The cut as read from the cluster.
struct Cut {
    taken_at_ms: i64,
    cluster_id: Option<String>,
    partitions: Vec<MarkedPartition>,
}

fn cut(
    config: &ClientConfig,
    selector: Option<&TopicSelector>,
    archived: &BTreeSet<String>,
) -> Result<Cut, ClusterError> {
    let servers = crate::kafka::servers(config);
    let mut config = config.clone();
    config
        .set("isolation.level", "read_committed")
        // librdkafka assigns partitions only to a consumer with a group; this one never joins it
        // (no subscription) and never commits.
        .set(
            "group.id",
            format!("rewind-mark-{:016x}", rand::random::<u64>()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "50");
    let consumer: BaseConsumer<Ctx> = config
        .create_with_context(Ctx)
        .map_err(|e| ClusterError::client(&servers, e))?;
    crate::kafka::ready(&consumer);
    let metadata = crate::kafka::probe(consumer.client(), &servers, REQUEST_TIMEOUT)?;
    let cluster_id = consumer.client().fetch_cluster_id(REQUEST_TIMEOUT);
    let kafka = |e: KafkaError| ClusterError::client(&servers, e);
    let mut tpl = TopicPartitionList::new();
    for topic in metadata.topics() {
        let chosen = match selector {
            Some(s) => s.selects(topic.name()),
            None => archived.contains(topic.name()),
        };
        if !chosen || topic.error().is_some() {
            continue;
        }
        for p in topic.partitions() {
            tpl.add_partition(topic.name(), p.id());
        }
    }
    if tpl.count() == 0 {
        return Ok(Cut {
            taken_at_ms: crate::archive::time::now_ms(),
            cluster_id,
            partitions: Vec::new(),
        });
    }
    // One moment: the latest offsets of every partition in one request per leader (a
    // read_committed client is told each partition's last stable offset), then their starts.
    let taken_at_ms = crate::archive::time::now_ms();
    let offsets_at = |at: Offset| -> Result<HashMap<(String, i32), i64>, ClusterError> {
        let mut asked = tpl.clone();
        asked.set_all_offsets(at).map_err(kafka)?;
        let answered = consumer
            .offsets_for_times(asked, REQUEST_TIMEOUT)
            .map_err(kafka)?;
        let mut out = HashMap::new();
        for e in answered.elements() {
            if let Err(err) = e.error() {
                return Err(kafka(err));
            }
            match e.offset() {
                Offset::Offset(o) => {
                    out.insert((e.topic().to_string(), e.partition()), o);
                }
                // librdkafka answers a partition it could not ask with a logical offset.
                _ => {
                    return Err(kafka(KafkaError::OffsetFetch(
                        rdkafka::types::RDKafkaErrorCode::OffsetNotAvailable,
                    )))
                }
            }
        }
        Ok(out)
    };
    let ends = offsets_at(Offset::End)?;
    let starts = offsets_at(Offset::Beginning)?;
    let mut partitions: Vec<MarkedPartition> = ends
        .into_iter()
        .map(|((topic, partition), offset)| {
            let log_start = starts
                .get(&(topic.clone(), partition))
                .copied()
                .unwrap_or(0)
                .min(offset);
            MarkedPartition {
                topic,
                partition,
                log_start,
                offset,
                records_end: log_start,
            }
        })
        .collect();
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    drop(consumer);
    last_records(&config, &mut partitions).map_err(kafka)?;
    Ok(Cut {
        taken_at_ms,
        cluster_id,
        partitions,
    })
}

/// Find each partition's last committed record below its cut, reading its tail with the
/// `read_committed` consumer: the last 64 offsets first, then further back (×64 each round) for the
/// partitions whose tail held only transaction markers and aborted records, down to the log start.
fn last_records(
    config: &ClientConfig,
    partitions: &mut [MarkedPartition],
) -> Result<(), KafkaError> {
    let mut back: i64 = 64;
    let mut todo: Vec<usize> = (0..partitions.len())
        .filter(|&i| partitions[i].offset > partitions[i].log_start)
        .collect();
    while !todo.is_empty() {
        let mut tpl = TopicPartitionList::new();
        let mut index: HashMap<(String, i32), usize> = HashMap::new();
        for &i in &todo {
            let p = &partitions[i];
            let from = (p.offset - back).max(p.log_start);
            tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(from))?;
            index.insert((p.topic.clone(), p.partition), i);
        }
        // A consumer of its own each round: a position left from the round before would read as
        // past the cut.
        let consumer: BaseConsumer<Ctx> = config.create_with_context(Ctx)?;
        crate::kafka::ready(&consumer);
        consumer.assign(&tpl)?;
        let mut found: BTreeMap<usize, i64> = BTreeMap::new();
        let mut done: BTreeSet<usize> = BTreeSet::new();
        let mut last_progress = Instant::now();
        while done.len() < todo.len() {
            if last_progress.elapsed() > REQUEST_TIMEOUT {
                return Err(KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                ));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None | Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(e),
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    if let Some(&i) = index.get(&(m.topic().to_string(), m.partition())) {
                        if m.offset() < partitions[i].offset {
                            found.insert(i, m.offset() + 1);
                        } else {
                            done.insert(i);
                        }
                    }
                    continue;
                }
            }
            // Idle: the position passes markers and aborted records that deliver nothing.
            for e in consumer.position()?.elements() {
                if let (Some(&i), Offset::Offset(o)) = (
                    index.get(&(e.topic().to_string(), e.partition())),
                    e.offset(),
                ) {
                    if o >= partitions[i].offset {
                        done.insert(i);
                    }
                }
            }
        }
        let mut again = Vec::new();
        for i in todo {
            let p = &mut partitions[i];
            match found.get(&i) {
                Some(&end) => p.records_end = end,
                // Nothing committed in the part read: look further back, unless it began at the
                // log start.
                None if p.offset - back > p.log_start => again.push(i),
                None => p.records_end = p.log_start,
            }
        }
        todo = again;
        back = back.saturating_mul(64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: i64 = 1_796_404_348_000; // 2026-12-04T17:12:28Z, a Friday
    const HOUR: i64 = 3_600_000;

    #[test]
    fn each_period_names_its_mark_and_knows_when_the_next_begins() {
        let t = |s: &str| crate::archive::time::parse_rfc3339_millis(s).unwrap();
        assert_eq!(period(MarkEvery::Off, AT), None);
        assert_eq!(
            period(MarkEvery::Hourly, AT),
            Some(("hourly-2026-12-04T17".into(), t("2026-12-04T18:00:00Z")))
        );
        assert_eq!(
            period(MarkEvery::Daily, AT),
            Some(("daily-2026-12-04".into(), t("2026-12-05T00:00:00Z")))
        );
        assert_eq!(
            period(MarkEvery::Weekly, AT),
            Some(("weekly-2026-11-30".into(), t("2026-12-07T00:00:00Z")))
        );
        // A period's last millisecond still names it; the next one names the next.
        let monday = t("2026-12-07T00:00:00Z");
        assert_eq!(
            period(MarkEvery::Weekly, monday - 1).unwrap().0,
            "weekly-2026-11-30"
        );
        assert_eq!(
            period(MarkEvery::Weekly, monday).unwrap().0,
            "weekly-2026-12-07"
        );
        assert_eq!(
            period(MarkEvery::Hourly, AT + HOUR).unwrap().0,
            "hourly-2026-12-04T18"
        );
        for every in [MarkEvery::Hourly, MarkEvery::Daily, MarkEvery::Weekly] {
            let (name, _) = period(every, AT).unwrap();
            assert!(crate::archive::marks::valid_name(&name), "{name}");
        }
    }
}
