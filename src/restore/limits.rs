//! What the target cluster lets a restore send, asked once before the producer is made: the
//! brokers' `message.max.bytes` and `transaction.max.timeout.ms`, and each existing target topic's
//! `max.message.bytes`, in one DescribeConfigs request.
//!
//! Invariant: the producer's `batch.size` keeps every batch within the smallest `max.message.bytes`
//! of the topics the restore writes to. The broker applies that limit to whole batches, so a batch
//! of small records larger than it would be refused; a record larger than it goes alone in its own
//! batch, and the broker refuses that one record. The producer's `transaction.timeout.ms` is within
//! the brokers' `transaction.max.timeout.ms`, or the restore stops before it writes anything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, OwnedResourceSpecifier, ResourceSpecifier};
use rdkafka::error::KafkaResult;

use crate::kafka::Ctx;

/// Bytes of a record batch that are not records: its header (61 bytes in format v2). librdkafka
/// also counts the produce request's own header against `batch.size`, so this is a margin on top.
const BATCH_OVERHEAD: u64 = 61;

/// The restore's batch size where the targets allow more (librdkafka's default).
pub(super) const DEFAULT_BATCH_SIZE: u64 = 1_000_000;

/// What DescribeConfigs said; `None` or absent where it could not tell.
#[derive(Debug, Default)]
pub(super) struct TargetLimits {
    /// The smallest `message.max.bytes` of the brokers: the limit of topics that set none.
    pub broker_max_bytes: Option<u64>,
    /// The smallest `transaction.max.timeout.ms` of the brokers.
    pub transaction_max_timeout_ms: Option<u64>,
    /// `max.message.bytes` of each existing topic asked about.
    pub topic_max_bytes: BTreeMap<String, u64>,
    /// The `retention.ms` a topic created without one gets (`log.retention.ms`, or the minutes
    /// or hours setting); negative: kept forever.
    pub broker_retention_ms: Option<i64>,
}

impl TargetLimits {
    /// Ask the `brokers` and the existing `topics` in one DescribeConfigs request. A resource the
    /// cluster does not describe (an ACL, a topic deleted meanwhile) stays unknown.
    pub async fn describe(
        admin: &AdminClient<Ctx>,
        brokers: &[i32],
        topics: &BTreeSet<String>,
        timeout: Duration,
    ) -> KafkaResult<TargetLimits> {
        let resources: Vec<ResourceSpecifier<'_>> = brokers
            .iter()
            .map(|id| ResourceSpecifier::Broker(*id))
            .chain(topics.iter().map(|t| ResourceSpecifier::Topic(t)))
            .collect();
        let answers = admin
            .describe_configs(
                resources.iter(),
                &AdminOptions::new().request_timeout(Some(timeout)),
            )
            .await?;
        let mut limits = TargetLimits::default();
        for resource in answers.into_iter().flatten() {
            let number = |key: &str| {
                resource
                    .get(key)
                    .and_then(|e| e.value.as_deref())
                    .and_then(|v| v.parse::<u64>().ok())
            };
            match &resource.specifier {
                OwnedResourceSpecifier::Broker(_) => {
                    limits.broker_max_bytes =
                        smaller(limits.broker_max_bytes, number("message.max.bytes"));
                    limits.transaction_max_timeout_ms = smaller(
                        limits.transaction_max_timeout_ms,
                        number("transaction.max.timeout.ms"),
                    );
                    let signed = |key: &str, unit: i64| {
                        let value = resource.get(key)?.value.as_deref()?.parse::<i64>().ok()?;
                        Some(if value < 0 {
                            -1
                        } else {
                            value.saturating_mul(unit)
                        })
                    };
                    limits.broker_retention_ms = limits.broker_retention_ms.or_else(|| {
                        signed("log.retention.ms", 1)
                            .or_else(|| signed("log.retention.minutes", 60_000))
                            .or_else(|| signed("log.retention.hours", 3_600_000))
                    });
                }
                OwnedResourceSpecifier::Topic(topic) => {
                    if let Some(max) = number("max.message.bytes") {
                        limits.topic_max_bytes.insert(topic.clone(), max);
                    }
                }
                OwnedResourceSpecifier::Group(_) => {}
            }
        }
        Ok(limits)
    }
}

/// The smaller of two limits, either of which may be unknown.
pub(super) fn smaller(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The producer's `batch.size` for targets whose smallest `max.message.bytes` is `smallest`: no
/// batch exceeds it, nor the default.
pub(super) fn batch_size(smallest: Option<u64>) -> u64 {
    smallest.map_or(DEFAULT_BATCH_SIZE, |max| {
        max.saturating_sub(BATCH_OVERHEAD)
            .clamp(1, DEFAULT_BATCH_SIZE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_below_the_smallest_target_limit() {
        assert_eq!(batch_size(None), DEFAULT_BATCH_SIZE);
        assert_eq!(batch_size(Some(262_144)), 262_144 - BATCH_OVERHEAD);
        assert_eq!(batch_size(Some(1_048_588)), DEFAULT_BATCH_SIZE);
        assert_eq!(batch_size(Some(64 << 20)), DEFAULT_BATCH_SIZE);
        assert_eq!(batch_size(Some(10)), 1);
        assert_eq!(smaller(None, Some(5)), Some(5));
        assert_eq!(smaller(Some(3), Some(5)), Some(3));
        assert_eq!(smaller(None, None), None);
    }
}
