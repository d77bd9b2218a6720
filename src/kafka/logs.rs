//! What librdkafka says, at the level it deserves.
//!
//! Invariant: a broker that cannot be reached is a warning once when a long-running client loses
//! it and a notice once when it answers again; the repetitions in between (librdkafka retries every
//! second) are debug lines. A short-lived client (a probe, an offset or admin question) never
//! reports a connection failure itself: the error its caller returns is the one line the user
//! reads. The end of a partition is information, never an error. Anything else librdkafka reports
//! as an error stays an error.

use std::sync::Mutex;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode as Code;

/// What a message from librdkafka is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Said {
    /// A broker could not be reached or dropped the connection; librdkafka tries again by itself.
    Unreachable,
    /// A partition's end was reached (`enable.partition.eof`).
    PartitionEnd,
    /// Anything else: logged at librdkafka's own level.
    Other,
}

impl Said {
    /// Classify a log line (`fac` is librdkafka's facility). `FAIL` is a broker connection
    /// failing, except when authentication or TLS is what failed: retrying will not fix those.
    pub fn of_log(fac: &str, message: &str) -> Said {
        if fac != "FAIL" {
            return Said::Other;
        }
        // Broker names carry their protocol (`sasl_ssl://b-1:9096/1`, also in `[thrd:…]`): only
        // the rest says what failed.
        let lower: String = message
            .to_ascii_lowercase()
            .split_whitespace()
            .filter(|word| !word.contains("://"))
            .collect::<Vec<_>>()
            .join(" ");
        if ["authentic", "sasl", "ssl", "certificate"]
            .iter()
            .any(|w| lower.contains(w))
        {
            Said::Other
        } else {
            Said::Unreachable
        }
    }

    /// Classify an error from librdkafka's error callback.
    pub fn of_error(error: &KafkaError) -> Said {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(Code::PartitionEOF) => {
                Said::PartitionEnd
            }
            KafkaError::Global(
                Code::AllBrokersDown | Code::BrokerTransportFailure | Code::Resolve,
            ) => Said::Unreachable,
            _ => Said::Other,
        }
    }
}

/// Whether librdkafka tells a transactional producer that it was fenced (a newer producer with its
/// transactional id, or the broker ending a transaction past its timeout, bumped its epoch). The
/// restore says so in its own words (its error carries `Transaction::fence_note`; a shared
/// restore's worker fenced while setting up tries again and says so), so that librdkafka's own
/// lines about it, five at error level, are debug lines in the restore's producers.
pub fn is_fenced(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    ["fenced", "fences the current", "old epoch"]
        .iter()
        .any(|w| lower.contains(w))
}

/// [`is_fenced`] for librdkafka's error callback.
pub fn is_fenced_error(error: &KafkaError, reason: &str) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(Code::Fenced | Code::ProducerFenced | Code::InvalidProducerEpoch)
    ) || is_fenced(reason)
}

/// Log a line at librdkafka's level.
fn at_level(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// librdkafka's log callback for a short-lived client: connection failures are debug lines, the
/// caller's error says it.
pub fn quiet_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match Said::of_log(fac, message) {
        Said::Other => at_level(level, fac, message),
        Said::Unreachable | Said::PartitionEnd => {
            tracing::debug!(target: "librdkafka", fac, "{message}")
        }
    }
}

/// librdkafka's error callback for a short-lived client (see [`quiet_log`]).
pub fn quiet_error(error: KafkaError, reason: &str) {
    match Said::of_error(&error) {
        Said::Other => tracing::error!(target: "librdkafka", error = %error, "{reason}"),
        Said::Unreachable | Said::PartitionEnd => {
            tracing::debug!(target: "librdkafka", error = %error, "{reason}")
        }
    }
}

/// Whether a long-running client's brokers answer, as far as its logs tell: it says "unreachable"
/// once per outage and "answering again" once when the outage ends (see [`Connection::stats`]).
#[derive(Debug, Default)]
pub struct Connection {
    down: Mutex<bool>,
}

/// What [`Connection`] decided to say about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first sign of an outage: a warning.
    Lost,
    /// The outage goes on: a debug line.
    Again,
    /// Not about the connection: logged at its own level.
    Other,
}

impl Connection {
    fn lost(&self) -> Verdict {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::replace(&mut *down, true) {
            Verdict::Again
        } else {
            Verdict::Lost
        }
    }

    /// Decide about a log line (see [`Said::of_log`]).
    pub fn judge_log(&self, fac: &str, message: &str) -> Verdict {
        match Said::of_log(fac, message) {
            Said::Unreachable => self.lost(),
            Said::PartitionEnd | Said::Other => Verdict::Other,
        }
    }

    /// Decide about an error; the end of a partition is [`Verdict::Again`], a debug line.
    pub fn judge_error(&self, error: &KafkaError) -> Verdict {
        match Said::of_error(error) {
            Said::Unreachable => self.lost(),
            Said::PartitionEnd => Verdict::Again,
            Said::Other => Verdict::Other,
        }
    }

    /// librdkafka's log callback.
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match self.judge_log(fac, message) {
            Verdict::Lost => tracing::warn!(
                target: "librdkafka",
                "{message} (retrying every second until the broker answers; check that the cluster is up and that its advertised listeners are reachable from here)"
            ),
            Verdict::Again => tracing::debug!(target: "librdkafka", fac, "{message}"),
            Verdict::Other => at_level(level, fac, message),
        }
    }

    /// librdkafka's error callback.
    pub fn error(&self, error: KafkaError, reason: &str) {
        match self.judge_error(&error) {
            Verdict::Lost => tracing::warn!(
                target: "librdkafka",
                error = %error,
                "{reason} (retrying until a broker answers)"
            ),
            Verdict::Again => tracing::debug!(target: "librdkafka", error = %error, "{reason}"),
            Verdict::Other => tracing::error!(target: "librdkafka", error = %error, "{reason}"),
        }
    }

    /// Note the brokers' states, `(source, state)` from librdkafka's statistics: an outage ends
    /// when a broker is up and none of the cluster's brokers is down or connecting (internal and
    /// logical brokers do not count). Returns whether one just ended.
    pub fn judge_brokers<'a>(&self, brokers: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
        let (mut up, mut trouble) = (false, false);
        for (source, state) in brokers {
            if source != "learned" && source != "configured" {
                continue;
            }
            match state {
                "UP" => up = true,
                "DOWN" | "TRY_CONNECT" | "CONNECT" => trouble = true,
                _ => {}
            }
        }
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if *down && up && !trouble {
            *down = false;
            return true;
        }
        false
    }

    /// librdkafka's statistics callback: logs the end of an outage (see [`Connection::judge_brokers`]).
    pub fn stats(&self, statistics: &rdkafka::Statistics) {
        let brokers = statistics
            .brokers
            .values()
            .map(|b| (b.source.as_str(), b.state.as_str()));
        if self.judge_brokers(brokers) {
            tracing::info!(target: "librdkafka", "the Kafka brokers answer again");
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)";

    #[test]
    fn a_fenced_producer_is_told_apart() {
        // What librdkafka said when one worker's set-up fenced another's (bench, 2026-12-04).
        for line in [
            r#"TxnCoordinator/1: Failed to add partition "__rewind_restores" [0] to transaction: Broker: Producer attempted an operation with an old epoch"#,
            "Fatal transaction error: Failed to add partitions to transaction: Local: This instance has been fenced by a newer instance (_FENCED)",
            "Producer fenced by newer instance",
            "There is a newer producer with the same transactionalId which fences the current one.",
        ] {
            assert!(is_fenced(line), "{line}");
        }
        assert!(is_fenced_error(
            &KafkaError::Global(Code::Fenced),
            "Failed to add partitions to transaction"
        ));
        assert!(!is_fenced_error(
            &KafkaError::Global(Code::AllBrokersDown),
            "1/1 brokers are down"
        ));
        assert!(!is_fenced(
            "Failed to commit transaction: Broker: Transaction coordinator is not available"
        ));
    }

    #[test]
    fn an_outage_is_said_once_and_its_end_once() {
        let connection = Connection::default();
        let up = [("learned", "UP"), ("configured", "UP")];
        assert!(!connection.judge_brokers(up), "no outage to end yet");
        assert_eq!(connection.judge_log("FAIL", REFUSED), Verdict::Lost);
        for _ in 0..200 {
            assert_eq!(connection.judge_log("FAIL", REFUSED), Verdict::Again);
            assert_eq!(
                connection.judge_error(&KafkaError::Global(Code::AllBrokersDown)),
                Verdict::Again
            );
        }
        // One broker up while another still fails is not the end of the outage.
        let partly = [("learned", "UP"), ("learned", "TRY_CONNECT")];
        assert!(!connection.judge_brokers(partly));
        assert_eq!(connection.judge_log("FAIL", REFUSED), Verdict::Again);
        // Internal and logical brokers do not count.
        let back = [("learned", "UP"), ("internal", "INIT"), ("logical", "DOWN")];
        assert!(connection.judge_brokers(back));
        assert!(!connection.judge_brokers(back), "said once");
        // A second outage is said again.
        assert_eq!(
            connection.judge_error(&KafkaError::Global(Code::AllBrokersDown)),
            Verdict::Lost
        );
    }

    #[test]
    fn partition_ends_and_refusals_are_not_errors_but_other_failures_are() {
        let connection = Connection::default();
        for eof in [
            KafkaError::Global(Code::PartitionEOF),
            KafkaError::PartitionEOF(3),
        ] {
            assert_eq!(Said::of_error(&eof), Said::PartitionEnd);
            assert_eq!(connection.judge_error(&eof), Verdict::Again);
        }
        assert_eq!(Said::of_log("FAIL", REFUSED), Said::Unreachable);
        assert_eq!(
            Said::of_log(
                "FAIL",
                "b:9092/1: Failed to resolve 'b:9092': Name or service not known"
            ),
            Said::Unreachable
        );
        // Retrying does not fix credentials or certificates: those stay errors.
        for message in [
            "b:9096/1: SASL authentication error: Authentication failed during authentication",
            "b:9093/1: SSL handshake failed: certificate verify failed",
        ] {
            assert_eq!(Said::of_log("FAIL", message), Said::Other, "{message}");
            assert_eq!(connection.judge_log("FAIL", message), Verdict::Other);
        }
        // On a TLS or SASL cluster the broker's name says so, and a refused connection is still
        // only a refused connection.
        for message in [
            "sasl_ssl://b-1.msk:9096/1: Connect to ipv4#10.0.0.1:9096 failed: Connection refused (after 0ms in state CONNECT)",
            "[thrd:ssl://b:9093/bootstrap]: ssl://b:9093/bootstrap: Connect to ipv4#127.0.0.1:9093 failed: Connection refused",
        ] {
            assert_eq!(Said::of_log("FAIL", message), Said::Unreachable, "{message}");
        }
        assert_eq!(
            Said::of_log(
                "FAIL",
                "sasl_ssl://b-1:9096/1: SASL authentication error: Authentication failed"
            ),
            Said::Other
        );
        assert_eq!(Said::of_log("CONFWARN", REFUSED), Said::Other);
        assert_eq!(
            connection.judge_error(&KafkaError::Global(Code::Authentication)),
            Verdict::Other
        );
        assert_eq!(
            Said::of_error(&KafkaError::Global(Code::BrokerTransportFailure)),
            Said::Unreachable
        );
    }
}
