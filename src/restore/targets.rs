//! Target topics: check every topic a restore writes to (read-only, and the same for
//! `restore --plan`), then create the missing ones from the archive's `_topics/` metadata (without
//! the configs that belong to the source cluster), grow the ones a followed source grew, and create
//! the progress topic.
//!
//! Invariant: nothing is created or changed before every target passed its checks (enough
//! partitions, CreateTime, empty unless `--allow-non-empty`), so a refused restore leaves the
//! cluster as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Serialize;

use super::cluster::Cluster;
use super::lane::Lane;
use super::plan::files_in;
use super::{Restore, RestoreError, RestoreOptions, REQUEST_TIMEOUT};
use crate::archive::documents::{self, TopicMeta};
use crate::archive::time::rfc3339_millis;
use crate::kafka::{blocking, Ctx};
use crate::storage::ObjectStore;

/// Why a restore without the admin API cannot make a topic itself.
const NO_ADMIN: &str = "this cluster's admin API is not available to Rewind (Amazon MSK IAM, or the demo's embedded Kafka), so create it first";

/// Whether a source topic config may be set on a target created from it. Not copied: replication
/// throttles (they name the source's broker ids), tiered storage (the target may not have it),
/// and configs Kafka 4 no longer knows or that only vendor brokers do (creation would fail).
fn portable_config(key: &str) -> bool {
    const SOURCE_ONLY: &[&str] = &[
        "leader.replication.throttled.replicas",
        "follower.replication.throttled.replicas",
        "remote.storage.enable",
        "remote.log.copy.disable",
        "remote.log.delete.on.disable",
        "message.format.version",
        "message.downconversion.enable",
        "message.timestamp.difference.max.ms",
        // Archived records are older than the broker would accept with it (INVALID_TIMESTAMP).
        "message.timestamp.before.max.ms",
    ];
    !SOURCE_ONLY.contains(&key) && !key.starts_with("confluent.")
}

/// A topic's configs as the broker answers them.
async fn describe_topic(
    admin: &AdminClient<Ctx>,
    topic: &str,
) -> rdkafka::error::KafkaResult<Vec<rdkafka::admin::ConfigResourceResult>> {
    admin
        .describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)),
        )
        .await
}

pub(super) fn no_progress_topic(topic: &str) -> RestoreError {
    RestoreError::Target(format!(
        "the progress topic {topic} does not exist in the target and {NO_ADMIN} (one partition, cleanup.policy=compact)"
    ))
}

async fn create_topic(
    admin: &AdminClient<Ctx>,
    name: &str,
    partitions: i32,
    replication: i32,
    configs: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut created = true;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => created = false,
            Err((_, code)) => return Err(code.to_string()),
        }
    }
    Ok(created)
}

/// One target topic as the checks found it, and what the restore does with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetCheck {
    pub topic: String,
    /// Partitions it has now (`None`: it does not exist).
    pub partitions: Option<i32>,
    /// What the restore does with it, in words.
    pub action: String,
}

/// The checks of every target: what is created or grown, and what refuses or warns.
#[derive(Debug, Default)]
pub(super) struct Checked {
    pub(super) targets: Vec<TargetCheck>,
    pub(super) refusals: Vec<String>,
    pub(super) warnings: Vec<String>,
    create: Vec<Create>,
    grow: Vec<(String, i32)>,
}

/// A target to create from its source's `_topics/` metadata.
#[derive(Debug)]
struct Create {
    topic: String,
    partitions: i32,
    replication: i32,
    configs: BTreeMap<String, String>,
    /// Source configs left out (they belong to the source cluster).
    dropped: Vec<String>,
}

/// Check every target of `lanes`, writing nothing: a target must have enough partitions (or be
/// grown, for a source that grew while followed), and the ones in `new_targets` (not written by
/// this restore before) must keep CreateTime and, unless `--allow-non-empty`, be empty. A target
/// that would delete restored records at once (its `retention.ms`, or the broker's default for a
/// created one, shorter than their age) is a warning. Fails only when the cluster or the archive
/// does not answer.
pub(super) async fn check(
    store: &dyn ObjectStore,
    opts: &RestoreOptions,
    cluster: &Cluster,
    lanes: &[Lane],
    new_targets: &BTreeSet<String>,
) -> Result<Checked, RestoreError> {
    let mut needed: BTreeMap<String, (String, i32)> = BTreeMap::new();
    for lane in lanes {
        let slot = needed
            .entry(lane.target_topic.clone())
            .or_insert((lane.topic.clone(), 0));
        slot.1 = slot.1.max(lane.partition + 1);
    }
    let mut checked = Checked::default();
    for (target, (source, partitions)) in needed {
        let is_new = new_targets.contains(&target);
        let oldest = oldest_timestamp(lanes, &target);
        let Some(count) = cluster.partitions.get(&target).copied() else {
            if cluster.admin.is_none() {
                checked.refusals.push(format!(
                    "target topic {target} does not exist and {NO_ADMIN} (with at least {partitions} partitions)"
                ));
                continue;
            }
            let create = creation(store, &source, &target, partitions, cluster.brokers).await?;
            let retention = create
                .configs
                .get("retention.ms")
                .and_then(|v| v.parse::<i64>().ok())
                .or(cluster.limits.as_ref().and_then(|l| l.broker_retention_ms));
            checked
                .warnings
                .extend(retention_warning(&target, retention, oldest));
            if !create.dropped.is_empty() {
                checked.warnings.push(format!(
                    "target topic {target} is created without the source configs that belong to the source cluster: {}",
                    create.dropped.join(", ")
                ));
            }
            checked.targets.push(TargetCheck {
                topic: target.clone(),
                partitions: None,
                action: format!(
                    "create with {} partitions, replication {}",
                    create.partitions, create.replication
                ),
            });
            checked.create.push(create);
            continue;
        };
        let mut action = if is_new {
            "write into it".to_string()
        } else {
            "go on writing into it (resumed)".to_string()
        };
        if count < partitions && !opts.repartition_by_key {
            if is_new {
                checked.refusals.push(format!(
                    "target topic {target} has {count} partitions but the archive of {source} has {partitions}; add partitions to {target}, restore into a new topic with --rename, or pass --repartition-by-key"
                ));
            } else if cluster.admin.is_none() {
                // The source topic grew while this restore follows it.
                checked.refusals.push(format!(
                    "target topic {target} has {count} partitions but the archive of {source} now has {partitions}, and {NO_ADMIN}: add the partitions to {target}"
                ));
            } else {
                action = format!("add partitions up to {partitions}, then {action}");
                checked.grow.push((target.clone(), partitions));
            }
        }
        if is_new {
            check_existing(opts, cluster, &target, count, oldest, &mut checked).await?;
        }
        checked.targets.push(TargetCheck {
            topic: target,
            partitions: Some(count),
            action,
        });
    }
    Ok(checked)
}

/// An existing target must keep CreateTime and, unless allowed, be empty.
async fn check_existing(
    opts: &RestoreOptions,
    cluster: &Cluster,
    target: &str,
    count: i32,
    oldest: Option<i64>,
    checked: &mut Checked,
) -> Result<(), RestoreError> {
    let configs = match &cluster.admin {
        Some(admin) => describe_topic(admin, target)
            .await
            .map_err(|e| cluster.kafka_err(e))?,
        None => Vec::new(),
    };
    for resource in configs.into_iter().flatten() {
        let value = |key: &str| resource.get(key).and_then(|e| e.value.clone());
        if value("message.timestamp.type").as_deref() == Some("LogAppendTime") {
            checked.refusals.push(format!(
                "target topic {target} uses message.timestamp.type=LogAppendTime, so the broker would replace the restored timestamps; set it to CreateTime or restore into another topic with --rename"
            ));
        }
        let retention = value("retention.ms").and_then(|v| v.parse::<i64>().ok());
        checked
            .warnings
            .extend(retention_warning(target, retention, oldest));
    }
    if opts.allow_non_empty {
        return Ok(());
    }
    // The high watermark, from a read_uncommitted client: a read_committed one is told the last
    // stable offset, and a target holding only an open transaction (another restore writing
    // into it) would look empty.
    let mut probe = cluster.client.clone();
    probe.set("isolation.level", "read_uncommitted");
    let consumer: Arc<BaseConsumer<Ctx>> = Arc::new(
        probe
            .create_with_context(Ctx)
            .map_err(|e| cluster.kafka_err(e))?,
    );
    crate::kafka::ready(&consumer);
    let records = blocking({
        let target = target.to_string();
        move || -> Result<i64, KafkaError> {
            let mut total = 0;
            for p in 0..count {
                let (low, high) = consumer.fetch_watermarks(&target, p, REQUEST_TIMEOUT)?;
                total += high - low;
            }
            Ok(total)
        }
    })
    .await
    .map_err(|e| cluster.kafka_err(e))?;
    if records > 0 {
        checked.refusals.push(format!(
            "target topic {target} is not empty: it holds {records} offsets (records or transaction markers); restore into another topic with --rename, empty it, or pass --allow-non-empty (to resume an interrupted restore into it, run it again with its --restore-id)"
        ));
    }
    Ok(())
}

/// The oldest timestamp among the records still to restore into `target`.
fn oldest_timestamp(lanes: &[Lane], target: &str) -> Option<i64> {
    lanes
        .iter()
        .filter(|l| l.target_topic == target)
        .flat_map(|l| files_in(&l.files, l.next, l.until()))
        .filter_map(|f| f.footer.as_ref()?.min_timestamp)
        .min()
}

/// A warning when a target keeping records `retention` ms (negative or absent: for ever) would
/// delete the oldest restored one: Kafka deletes a segment once its newest timestamp is older than
/// that, minutes after the restore landed it, and nothing else would say so.
fn retention_warning(target: &str, retention: Option<i64>, oldest: Option<i64>) -> Option<String> {
    let retention = retention.filter(|ms| *ms > 0)?;
    let oldest =
        oldest.filter(|t| *t < crate::archive::time::now_ms().saturating_sub(retention))?;
    Some(format!(
        "target topic {target} keeps records for {} (retention.ms={retention}), less than the oldest restored record's age (it is from {}): the broker deletes them soon after they land; create the target beforehand (or set it now) with a longer retention.ms",
        humantime::format_duration(std::time::Duration::from_millis(retention as u64)),
        rfc3339_millis(oldest)
    ))
}

/// How a missing target is made: its source's partition count (at least `partitions`), replication
/// (at most the cluster's brokers) and portable configs from `_topics/`.
async fn creation(
    store: &dyn ObjectStore,
    source: &str,
    target: &str,
    partitions: i32,
    brokers: i32,
) -> Result<Create, RestoreError> {
    let meta: Option<TopicMeta> =
        documents::read_doc(store, &crate::archive::paths::topic_key(source)).await?;
    let (count, replication, mut configs) = match meta {
        Some(m) => (
            m.partitions.max(partitions),
            m.replication_factor,
            m.configs,
        ),
        None => (partitions, 3, BTreeMap::new()),
    };
    let replication = replication.clamp(1, brokers.max(1));
    let dropped: Vec<String> = configs
        .keys()
        .filter(|k| !portable_config(k))
        .cloned()
        .collect();
    configs.retain(|key, _| portable_config(key));
    // The archived timestamps are written as CreateTime, whatever the broker's default.
    configs.insert("message.timestamp.type".into(), "CreateTime".into());
    // A smaller target cluster cannot demand more in-sync replicas than it has.
    if let Some(isr) = configs.get_mut("min.insync.replicas") {
        if isr.parse::<i32>().is_ok_and(|n| n > replication) {
            *isr = replication.to_string();
        }
    }
    Ok(Create {
        topic: target.to_string(),
        partitions: count,
        replication,
        configs,
        dropped,
    })
}

impl Restore<'_> {
    /// Check every target ([`check`]), then create the missing ones and grow the ones this restore
    /// already writes to (follow mode). Nothing is created before every target passed, so a refused
    /// restore leaves the cluster as it was.
    /// Returns false if a topic it set out to create (a target or the progress topic) was there
    /// already: someone created it after the checks, which did not see it, so the caller must
    /// look again before it writes anything.
    pub(super) async fn ensure_targets(
        &mut self,
        new_targets: &BTreeSet<String>,
    ) -> Result<bool, RestoreError> {
        let checked = check(
            &*self.store,
            self.opts,
            &self.cluster,
            &self.lanes,
            new_targets,
        )
        .await?;
        if !checked.refusals.is_empty() {
            return Err(RestoreError::Target(checked.refusals.join("; ")));
        }
        for warning in &checked.warnings {
            tracing::warn!("{warning}");
        }
        if !self.ensure_progress_topic().await? {
            return Ok(false);
        }
        let Some(admin) = &self.cluster.admin else {
            return Ok(true);
        };
        for (target, partitions) in &checked.grow {
            grow(admin, target, *partitions)
                .await
                .map_err(|e| self.cluster.kafka_err(e))?
                .map_err(|code| {
                    RestoreError::Target(format!(
                        "cannot add partitions to {target} (now {partitions} in the archive): {code}"
                    ))
                })?;
            tracing::info!(
                topic = target,
                partitions,
                "added partitions to the target topic"
            );
            self.cluster.partitions.insert(target.clone(), *partitions);
        }
        for create in checked.create {
            let created = create_topic(
                admin,
                &create.topic,
                create.partitions,
                create.replication,
                &create.configs,
            )
            .await
            .map_err(|e| {
                RestoreError::Target(format!("cannot create target topic {}: {e}", create.topic))
            })?;
            if !created {
                tracing::info!(
                    topic = create.topic,
                    "the target topic was created by someone else meanwhile"
                );
                return Ok(false);
            }
            tracing::info!(
                topic = create.topic,
                partitions = create.partitions,
                replication = create.replication,
                "created the target topic"
            );
            self.report.topics_created.push(create.topic.clone());
            self.cluster
                .partitions
                .insert(create.topic, create.partitions);
        }
        Ok(true)
    }

    /// Create the progress topic if it does not exist yet (one partition, compacted). Returns
    /// false if it was there already, created by someone else since the cluster was asked: its
    /// partitions, and any progress in it, are unknown to this run.
    pub(super) async fn ensure_progress_topic(&mut self) -> Result<bool, RestoreError> {
        if !self.cluster.progress_missing {
            return Ok(true);
        }
        let topic = self.opts.progress_topic.clone();
        let Some(admin) = &self.cluster.admin else {
            return Err(no_progress_topic(&topic));
        };
        let created = create_topic(
            admin,
            &topic,
            1,
            self.cluster.brokers.clamp(1, 3),
            &BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
        )
        .await
        .map_err(|e| {
            RestoreError::Target(format!("cannot create the progress topic {topic}: {e}"))
        })?;
        if created {
            self.cluster.partitions.insert(topic, 1);
            self.cluster.progress_missing = false;
        }
        Ok(created)
    }
}

/// Add partitions to `target` up to `partitions` (a followed source grew); the inner error is the
/// broker's refusal.
async fn grow(
    admin: &AdminClient<Ctx>,
    target: &str,
    partitions: i32,
) -> Result<Result<(), RDKafkaErrorCode>, KafkaError> {
    let results = admin
        .create_partitions(
            [&rdkafka::admin::NewPartitions::new(
                target,
                partitions as usize,
            )],
            &AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)),
        )
        .await?;
    Ok(results
        .into_iter()
        .try_for_each(|r| r.map(|_| ()).map_err(|(_, code)| code)))
}
