//! Kafka clients built from configuration: bootstrap servers, passthrough librdkafka properties
//! (security included) and per-command overrides, in that order of precedence.
//!
//! Invariant: secrets given as properties reach librdkafka and nothing else: errors and logs built
//! here name servers and property keys, never values of secret keys.

pub mod logs;
pub mod msk;
pub mod registry;
pub mod topics;

use std::time::Duration;

use rdkafka::client::OAuthToken;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use crate::config::KafkaConfig;

/// The context of Rewind's short-lived clients (admin clients, probes, offset readers): their
/// callers report what fails, so a broker they cannot reach is a debug line here (see
/// [`logs::quiet_log`]); plus OAUTHBEARER tokens for Amazon MSK IAM. Every context Rewind creates
/// clients with answers token refreshes the same way (see [`oauth_token`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Ctx;

/// Inside an `impl ClientContext`: answer librdkafka's OAUTHBEARER token refreshes with
/// [`oauth_token`]. Every context Rewind creates clients with uses it.
macro_rules! answer_oauth_token_refresh {
    () => {
        const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

        fn generate_oauth_token(
            &self,
            oauthbearer_config: Option<&str>,
        ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
            $crate::kafka::oauth_token(oauthbearer_config)
        }
    };
}
pub(crate) use answer_oauth_token_refresh;

impl rdkafka::ClientContext for Ctx {
    answer_oauth_token_refresh!();

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        logs::quiet_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        logs::quiet_error(error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Ctx {}

/// Answer a token refresh: librdkafka asks only when a client uses SASL/OAUTHBEARER without a
/// built-in token source, which for Rewind means Amazon MSK IAM.
pub fn oauth_token(
    oauthbearer_config: Option<&str>,
) -> Result<OAuthToken, Box<dyn std::error::Error>> {
    msk::token(oauthbearer_config).inspect_err(|e| {
        // rust-rdkafka reports a failed refresh at debug level only, and the broker's refusal
        // that follows reads like an unreachable cluster: say why here.
        tracing::error!(error = %e, "cannot provide a SASL/OAUTHBEARER token");
    })
}

/// Serve a new consumer's queue once, before it is assigned or subscribed anything, so that a
/// first OAUTHBEARER token is fetched before its requests need a connection (librdkafka queues
/// that request when the client is created). Call it before `assign`/`subscribe` only: a record
/// polled here would be lost.
pub fn ready<C: rdkafka::consumer::ConsumerContext>(consumer: &BaseConsumer<C>) {
    // Each poll serves one event; a few cover whatever librdkafka queued on creation.
    for _ in 0..8 {
        match consumer.poll(Duration::ZERO) {
            None => return,
            Some(Err(e)) => tracing::debug!(error = %e, "first poll of a new consumer"),
            Some(Ok(_)) => {
                debug_assert!(
                    false,
                    "kafka::ready called on a consumer with records to read"
                );
                tracing::warn!("kafka::ready polled a record; it is called too late");
            }
        }
    }
}

/// Run a blocking librdkafka call (metadata, watermarks, transactions: seconds when a cluster is
/// slow) off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking Kafka call does not panic")
}

/// A group's committed offsets of `tpl`, asked of its coordinator (see [`while_coordinator_starts`]).
pub fn committed_offsets<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    tpl: &rdkafka::TopicPartitionList,
    timeout: Duration,
) -> Result<rdkafka::TopicPartitionList, KafkaError> {
    while_coordinator_starts(timeout, |left| {
        consumer.committed_offsets(tpl.clone(), left)
    })
}

/// Run a group request, `attempt(time left)`, again while the cluster has no coordinator to answer
/// it yet, until `timeout`. A fresh cluster creates `__consumer_offsets` on the first group request
/// and answers "not coordinator" or "loading" until it has, for seconds: that is the cluster
/// starting, not an error to stop a sink or a restore for.
pub fn while_coordinator_starts<T>(
    timeout: Duration,
    mut attempt: impl FnMut(Duration) -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pause =
        crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match attempt(left.max(Duration::from_secs(1))) {
            Err(e)
                if coordinator_starting(&e)
                    && std::time::Instant::now() + pause.peek() < deadline =>
            {
                tracing::debug!(error = %e, "the group coordinator is not ready yet; asking again");
                std::thread::sleep(pause.next_delay());
            }
            other => return other,
        }
    }
}

/// Whether `e` says the group coordinator is moving or loading, which passes by itself.
fn coordinator_starting(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::NotCoordinator | Code::CoordinatorNotAvailable | Code::CoordinatorLoadInProgress
        )
    )
}

/// A librdkafka client configuration: the cluster's settings, then `overrides` (`-X key=value`).
pub fn client_config(kafka: &KafkaConfig, overrides: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    if kafka.aws_msk_iam {
        // MSK's IAM listeners (port 9098) take TLS and OAUTHBEARER; explicit properties win.
        config
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "OAUTHBEARER")
            .set(
                "sasl.oauthbearer.config",
                msk::oauthbearer_config(kafka.aws_region.as_deref()),
            );
    }
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

/// Why a Kafka cluster could not be used: the one Kafka error of the sink, the restore and the
/// tools, naming the cluster and keeping the client's error as its source.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("kafka {servers}: no broker answered within {}s (check --bootstrap-servers or kafka.bootstrap_servers, and that the cluster is up)", .timeout.as_secs())]
    Unreachable { servers: String, timeout: Duration },
    #[error("kafka {servers}: {source}")]
    Client {
        servers: String,
        #[source]
        source: KafkaError,
    },
}

impl ClusterError {
    /// A client error of the cluster at `servers`.
    pub fn client(servers: &str, source: KafkaError) -> ClusterError {
        ClusterError::Client {
            servers: servers.to_string(),
            source,
        }
    }
}

/// The cluster a client configuration names, for messages.
pub fn servers(config: &ClientConfig) -> String {
    config
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_string()
}

/// The broker probe every command starts with: one metadata request, which connects at once (a
/// fresh client otherwise waits for librdkafka's first periodic refresh), answered within
/// `timeout` or the cluster is unreachable.
pub fn probe<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    servers: &str,
    timeout: Duration,
) -> Result<rdkafka::metadata::Metadata, ClusterError> {
    client.fetch_metadata(None, timeout).map_err(|e| match e {
        KafkaError::MetadataFetch(_) => ClusterError::Unreachable {
            servers: servers.to_string(),
            timeout,
        },
        other => ClusterError::client(servers, other),
    })
}

/// Ask the cluster for its id, brokers and topics, waiting at most `timeout`.
pub fn describe_cluster(
    config: &ClientConfig,
    timeout: Duration,
) -> Result<ClusterInfo, ClusterError> {
    let servers = servers(config);
    let consumer: BaseConsumer<Ctx> = config
        .create_with_context(Ctx)
        .map_err(|e| ClusterError::client(&servers, e))?;
    ready(&consumer);
    let metadata = probe(consumer.client(), &servers, timeout)?;
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
    use rdkafka::types::RDKafkaErrorCode as Code;

    #[test]
    fn a_starting_coordinator_is_asked_again_and_other_errors_are_not() {
        let mut calls = 0;
        let got = while_coordinator_starts(Duration::from_secs(10), |_| {
            calls += 1;
            match calls {
                1 => Err(KafkaError::MetadataFetch(Code::NotCoordinator)),
                2 => Err(KafkaError::MetadataFetch(Code::CoordinatorLoadInProgress)),
                _ => Ok(calls),
            }
        });
        assert_eq!(got.unwrap(), 3);

        let mut calls = 0;
        let got: Result<(), _> = while_coordinator_starts(Duration::from_secs(10), |_| {
            calls += 1;
            Err(KafkaError::MetadataFetch(Code::GroupAuthorizationFailed))
        });
        assert!(got.is_err());
        assert_eq!(
            calls, 1,
            "an error that does not pass by itself is returned at once"
        );

        let started = std::time::Instant::now();
        let got: Result<(), _> = while_coordinator_starts(Duration::from_millis(500), |_| {
            Err(KafkaError::MetadataFetch(Code::NotCoordinator))
        });
        assert_eq!(
            got.unwrap_err().rdkafka_error_code(),
            Some(Code::NotCoordinator)
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "gives up at its deadline"
        );
    }

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

    #[test]
    fn msk_iam_turns_on_oauthbearer_with_the_region() {
        let kafka = KafkaConfig {
            bootstrap_servers: "127.0.0.1:9".into(),
            aws_msk_iam: true,
            aws_region: Some("eu-west-1".into()),
            ..KafkaConfig::default()
        };
        let config = client_config(&kafka, &[]);
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.mechanism"), Some("OAUTHBEARER"));
        assert_eq!(
            config.get("sasl.oauthbearer.config"),
            Some("rewind-aws-msk-iam region=eu-west-1")
        );
        // Clients build with the refreshing context (loopback only: nothing answers there, and
        // the token refresh waits for a poll that never comes, so no AWS call is made).
        let _: BaseConsumer<Ctx> = config.create_with_context(Ctx).unwrap();
        let plain = client_config(&KafkaConfig::default(), &[]);
        assert_eq!(plain.get("sasl.mechanism"), None);
        // A token refresh for a configuration that is not Rewind's is refused with a reason.
        let Err(refused) = oauth_token(Some("principal=x")) else {
            panic!("a foreign OAUTHBEARER config got a token");
        };
        let refused = refused.to_string();
        assert!(refused.contains("aws_msk_iam"), "{refused}");
    }
}
