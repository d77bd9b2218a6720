//! Kafka clients built from configuration: bootstrap servers, passthrough librdkafka properties
//! (security included) and per-command overrides, in that order of precedence.
//!
//! Invariant: secrets given as properties reach librdkafka and nothing else: errors and logs built
//! here name servers and property keys, never values of secret keys.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use crate::config::KafkaConfig;

/// A librdkafka client configuration: the cluster's settings, then `overrides` (`-X key=value`).
pub fn client_config(kafka: &KafkaConfig, overrides: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in kafka
        .properties
        .iter()
        .chain(overrides.iter().map(|(k, v)| (k, v)))
    {
        config.set(key, value);
    }
    config
}

/// What a cluster says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub cluster_id: Option<String>,
    pub brokers: usize,
    pub topics: usize,
}

/// Why the cluster could not be described.
#[derive(Debug, thiserror::Error)]
pub enum KafkaCheckError {
    #[error("kafka {servers}: no broker answered within {}s (check --bootstrap-servers or kafka.bootstrap_servers, and that the cluster is up)", .timeout.as_secs())]
    Unreachable { servers: String, timeout: Duration },
    #[error("kafka {servers}: {message}")]
    Client { servers: String, message: String },
}

/// Ask the cluster for its id, brokers and topics, waiting at most `timeout`.
pub fn describe_cluster(
    config: &ClientConfig,
    timeout: Duration,
) -> Result<ClusterInfo, KafkaCheckError> {
    let servers = config
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_string();
    let client_error = |e: KafkaError| KafkaCheckError::Client {
        servers: servers.clone(),
        message: e.to_string(),
    };
    let consumer: BaseConsumer = config.create().map_err(client_error)?;
    let metadata = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| match e {
            KafkaError::MetadataFetch(_) => KafkaCheckError::Unreachable {
                servers: servers.clone(),
                timeout,
            },
            other => client_error(other),
        })?;
    let cluster_id = consumer.client().fetch_cluster_id(timeout);
    Ok(ClusterInfo {
        cluster_id,
        brokers: metadata.brokers().len(),
        topics: metadata.topics().len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_configured_properties() {
        let mut kafka = KafkaConfig {
            bootstrap_servers: "a:9092".into(),
            ..KafkaConfig::default()
        };
        kafka
            .properties
            .insert("client.id".into(), "from-config".into());
        kafka
            .properties
            .insert("security.protocol".into(), "SSL".into());
        let config = client_config(&kafka, &[("client.id".into(), "from-flag".into())]);
        assert_eq!(config.get("bootstrap.servers"), Some("a:9092"));
        assert_eq!(config.get("client.id"), Some("from-flag"));
        assert_eq!(config.get("security.protocol"), Some("SSL"));
    }
}
