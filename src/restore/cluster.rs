//! The target cluster as a restore sees it: probed and described once, before anything is written,
//! in the same way by a restore and by its plan.
//!
//! Invariant: asking writes nothing; what the answers refuse is said before the first write.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

use super::limits::TargetLimits;
use super::plan::Planned;
use super::{RestoreError, RestoreOptions, REQUEST_TIMEOUT};
use crate::kafka::{blocking, ClusterError, Ctx};

/// What a restore knows of its target cluster.
pub(super) struct Cluster {
    pub(super) client: ClientConfig,
    /// The bootstrap servers, for messages.
    pub(super) servers: String,
    pub(super) brokers: i32,
    /// `None` without the admin API (see [`RestoreOptions::admin_api`]).
    pub(super) admin: Option<AdminClient<Ctx>>,
    /// What DescribeConfigs said, asked with the admin API.
    pub(super) limits: Option<TargetLimits>,
    /// Partition count of each topic of the cluster (the targets, once created, included).
    pub(super) partitions: HashMap<String, i32>,
    /// The progress topic does not exist yet: created with the targets, once they all passed.
    pub(super) progress_missing: bool,
}

impl Cluster {
    /// Probe the cluster, list its topics and describe its brokers and the planned targets that
    /// exist. Fails when the cluster does not answer; a missing progress topic that cannot be
    /// created is a refusal the caller reads with [`Cluster::refusal`].
    pub(super) async fn ask(
        client: ClientConfig,
        opts: &RestoreOptions,
        planned: &Planned,
    ) -> Result<Cluster, RestoreError> {
        let servers = crate::kafka::servers(&client);
        let kafka_err = |e: KafkaError| RestoreError::Kafka(ClusterError::client(&servers, e));
        let probe: BaseConsumer<Ctx> = client.create_with_context(Ctx).map_err(kafka_err)?;
        crate::kafka::ready(&probe);
        let metadata = blocking({
            let servers = servers.clone();
            move || crate::kafka::probe(probe.client(), &servers, Duration::from_secs(10))
        })
        .await?;
        let partitions: HashMap<String, i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect();
        // Missing only when the broker does not know it: a topic listed with another error (a
        // leader election, say) may hold this restore's progress, which must be read.
        let progress_missing = !metadata.topics().iter().any(|t| {
            t.name() == opts.progress_topic
                && t.error()
                    != Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        });
        // No admin client at all without the admin API: one that cannot authenticate (MSK IAM)
        // would only keep failing to connect.
        let admin: Option<AdminClient<Ctx>> = opts
            .admin_api
            .then(|| client.create_with_context(Ctx))
            .transpose()
            .map_err(kafka_err)?;
        let limits = match &admin {
            Some(admin) => {
                let mut described: BTreeSet<String> = planned
                    .partitions
                    .iter()
                    .map(|p| p.target_topic.clone())
                    .filter(|t| partitions.contains_key(t))
                    .collect();
                if !progress_missing {
                    described.insert(opts.progress_topic.clone());
                }
                let brokers: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
                Some(
                    TargetLimits::describe(admin, &brokers, &described, REQUEST_TIMEOUT)
                        .await
                        .map_err(kafka_err)?,
                )
            }
            None => None,
        };
        Ok(Cluster {
            brokers: metadata.brokers().len() as i32,
            client,
            servers,
            admin,
            limits,
            partitions,
            progress_missing,
        })
    }

    /// Why the restore cannot go on with this cluster before it looks at any target: a missing
    /// progress topic without the admin API to create it.
    pub(super) fn refusal(&self, opts: &RestoreOptions) -> Option<RestoreError> {
        (self.progress_missing && self.admin.is_none())
            .then(|| super::targets::no_progress_topic(&opts.progress_topic))
    }

    pub(super) fn kafka_err(&self, e: KafkaError) -> RestoreError {
        RestoreError::Kafka(ClusterError::client(&self.servers, e))
    }
}
