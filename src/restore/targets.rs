//! Target topics: check every topic a restore writes to, then create the missing ones from the
//! archive's `_topics/` metadata (without the configs that belong to the source cluster), grow the
//! ones a followed source grew, and create the progress topic.
//!
//! Invariant: nothing is created or changed before every target passed its checks (enough
//! partitions, CreateTime, empty unless `--allow-non-empty`), so a refused restore leaves the
//! cluster as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::plan::files_in;
use super::RestoreError;
use super::{Restore, REQUEST_TIMEOUT};
use crate::archive::documents::{self, TopicMeta};
use crate::archive::time::rfc3339_millis;
use crate::kafka::{blocking, Ctx};

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
) -> Result<(), String> {
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
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(code.to_string()),
        }
    }
    Ok(())
}

impl Restore<'_> {
    /// Check every target, then create the missing ones from `_topics/` metadata and grow the ones
    /// this restore already writes to (follow mode). A target must have enough partitions, no
    /// LogAppendTime and, for the targets in `new_targets` (not written by this restore before), no
    /// records unless `--allow-non-empty`. Nothing is created before every target passed, so a
    /// refused restore leaves the cluster as it was.
    pub(super) async fn ensure_targets(
        &mut self,
        admin: Option<&AdminClient<Ctx>>,
        brokers: i32,
        new_targets: &BTreeSet<String>,
    ) -> Result<(), RestoreError> {
        let mut needed: BTreeMap<String, (String, i32)> = BTreeMap::new();
        for lane in &self.lanes {
            let slot = needed
                .entry(lane.target_topic.clone())
                .or_insert((lane.topic.clone(), 0));
            slot.1 = slot.1.max(lane.partition + 1);
        }
        let mut grow = Vec::new();
        let mut create = Vec::new();
        for (target, (source, partitions)) in needed {
            let is_new = new_targets.contains(&target);
            match self.target_partitions.get(&target).copied() {
                Some(count) => {
                    if count < partitions && !self.opts.repartition_by_key {
                        if is_new {
                            return Err(RestoreError::Target(format!(
                                "target topic {target} has {count} partitions but the archive of {source} has {partitions}; add partitions to {target}, restore into a new topic with --rename, or pass --repartition-by-key"
                            )));
                        }
                        // The source topic grew while this restore follows it.
                        if admin.is_none() {
                            return Err(RestoreError::Target(format!(
                                "target topic {target} has {count} partitions but the archive of {source} now has {partitions}, and {NO_ADMIN}: add the partitions to {target}"
                            )));
                        }
                        grow.push((target.clone(), partitions));
                    }
                    if is_new {
                        self.check_existing(admin, &target, count).await?;
                    }
                }
                None => {
                    if admin.is_none() {
                        return Err(RestoreError::Target(format!(
                            "target topic {target} does not exist and {NO_ADMIN} (with at least {partitions} partitions)"
                        )));
                    }
                    create.push((source, target, partitions));
                }
            }
        }
        self.ensure_progress_topic(admin, brokers).await?;
        let Some(admin) = admin else { return Ok(()) };
        for (target, partitions) in grow {
            self.grow(admin, &target, partitions).await?;
        }
        for (source, target, partitions) in create {
            self.create_target(admin, brokers, &source, &target, partitions)
                .await?;
        }
        Ok(())
    }

    /// Create the progress topic if it does not exist yet (one partition, compacted).
    pub(super) async fn ensure_progress_topic(
        &mut self,
        admin: Option<&AdminClient<Ctx>>,
        brokers: i32,
    ) -> Result<(), RestoreError> {
        if !self.progress_missing {
            return Ok(());
        }
        let topic = self.opts.progress_topic.clone();
        let Some(admin) = admin else {
            return Err(no_progress_topic(&topic));
        };
        create_topic(
            admin,
            &topic,
            1,
            brokers.clamp(1, 3),
            &BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
        )
        .await
        .map_err(|e| {
            RestoreError::Target(format!("cannot create the progress topic {topic}: {e}"))
        })?;
        self.target_partitions.insert(topic, 1);
        self.progress_missing = false;
        Ok(())
    }

    async fn grow(
        &mut self,
        admin: &AdminClient<Ctx>,
        target: &str,
        partitions: i32,
    ) -> Result<(), RestoreError> {
        let results = admin
            .create_partitions(
                [&rdkafka::admin::NewPartitions::new(
                    target,
                    partitions as usize,
                )],
                &AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)),
            )
            .await
            .map_err(|e| self.kafka_err(e))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(RestoreError::Target(format!(
                    "cannot add partitions to {target} (now {partitions} in the archive): {code}"
                )));
            }
        }
        tracing::info!(
            topic = target,
            partitions,
            "added partitions to the target topic"
        );
        self.target_partitions
            .insert(target.to_string(), partitions);
        Ok(())
    }

    /// An existing target must keep CreateTime and, unless allowed, be empty.
    async fn check_existing(
        &self,
        admin: Option<&AdminClient<Ctx>>,
        target: &str,
        count: i32,
    ) -> Result<(), RestoreError> {
        let configs = match admin {
            Some(admin) => describe_topic(admin, target)
                .await
                .map_err(|e| self.kafka_err(e))?,
            None => Vec::new(),
        };
        for resource in configs.into_iter().flatten() {
            if resource
                .get("message.timestamp.type")
                .and_then(|e| e.value.as_deref())
                == Some("LogAppendTime")
            {
                return Err(RestoreError::Target(format!(
                    "target topic {target} uses message.timestamp.type=LogAppendTime, so the broker would replace the restored timestamps; set it to CreateTime or restore into another topic with --rename"
                )));
            }
            self.warn_retention(target, &resource);
        }
        if self.opts.allow_non_empty {
            return Ok(());
        }
        let consumer: Arc<BaseConsumer<Ctx>> = Arc::new(
            self.client
                .create_with_context(Ctx)
                .map_err(|e| self.kafka_err(e))?,
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
        .map_err(|e| self.kafka_err(e))?;
        if records > 0 {
            return Err(RestoreError::Target(format!(
                "target topic {target} is not empty: it holds {records} offsets (records or transaction markers); restore into another topic with --rename, empty it, or pass --allow-non-empty (to resume an interrupted restore into it, run it again with its --restore-id)"
            )));
        }
        Ok(())
    }

    /// Warn when the target's `retention.ms` is shorter than the age of the oldest record this
    /// restore sends there: Kafka deletes a segment once its newest timestamp is older than that,
    /// minutes after the restore landed it, and nothing would say so.
    fn warn_retention(&self, target: &str, configs: &rdkafka::admin::ConfigResource) {
        let Some(retention) = configs
            .get("retention.ms")
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|ms| *ms > 0)
        else {
            return;
        };
        let oldest = self
            .lanes
            .iter()
            .filter(|l| l.target_topic == target)
            .flat_map(|l| files_in(&l.files, l.next, l.until()))
            .filter_map(|f| f.footer.as_ref()?.min_timestamp)
            .min();
        if let Some(oldest) = oldest.filter(|t| *t < crate::archive::time::now_ms() - retention) {
            tracing::warn!(
                topic = target,
                retention_ms = retention,
                oldest = rfc3339_millis(oldest),
                "the target keeps records for less time than the oldest restored ones are old: the broker will delete them soon after they land; create the target beforehand (or set it now) with a longer retention.ms"
            );
        }
    }

    /// Create a missing target from the source's `_topics/` metadata.
    async fn create_target(
        &mut self,
        admin: &AdminClient<Ctx>,
        brokers: i32,
        source: &str,
        target: &str,
        partitions: i32,
    ) -> Result<(), RestoreError> {
        let meta: Option<TopicMeta> =
            documents::read_doc(&*self.store, &crate::archive::paths::topic_key(source)).await?;
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
        for key in &dropped {
            configs.remove(key);
        }
        if !dropped.is_empty() {
            tracing::warn!(
                topic = target,
                configs = dropped.join(", "),
                "source topic configs that belong to the source cluster were not copied"
            );
        }
        // The archived timestamps are written as CreateTime, whatever the broker's default.
        configs.insert("message.timestamp.type".into(), "CreateTime".into());
        // A smaller target cluster cannot demand more in-sync replicas than it has.
        if let Some(isr) = configs.get_mut("min.insync.replicas") {
            if isr.parse::<i32>().is_ok_and(|n| n > replication) {
                *isr = replication.to_string();
            }
        }
        create_topic(admin, target, count, replication, &configs)
            .await
            .map_err(|e| {
                RestoreError::Target(format!("cannot create target topic {target}: {e}"))
            })?;
        tracing::info!(
            topic = target,
            partitions = count,
            replication,
            "created the target topic"
        );
        self.report.topics_created.push(target.to_string());
        self.target_partitions.insert(target.to_string(), count);
        // The broker's default retention applies where the source set none: look at what it is.
        let described = describe_topic(admin, target).await;
        for resource in described.into_iter().flatten().flatten() {
            self.warn_retention(target, &resource);
        }
        Ok(())
    }
}
