//! `rewind check`: a preflight an operator runs before starting a pipeline. It proves the
//! configuration is valid, that the archive's store answers with the configured credentials, and
//! that a Kafka broker answers; each failure is one sentence naming what to fix.

use std::time::Duration;

use clap::Args;

use super::{load_config, CommonArgs, Failure};
use crate::config::units::duration;
use crate::kafka;
use crate::storage;

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Check the archive only.
    #[arg(long)]
    no_kafka: bool,
    /// How long to wait for each service to answer.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    timeout: Duration,
}

pub async fn run(args: CheckArgs) -> Result<(), Failure> {
    let config = load_config(&args.common)?;
    let source = args
        .common
        .config
        .as_ref()
        .map(|p| format!(" ({})", p.display()))
        .unwrap_or_default();
    outln!("config   ok{source}");

    let url = config.archive_url().map_err(Failure::usage)?;
    let mut opts = config.s3_options();
    // A preflight should answer quickly: one retry, not the patient policy of a running sink.
    opts.retry.max_attempts = opts.retry.max_attempts.min(2);
    opts.connect_timeout = Some(
        args.timeout
            .min(opts.connect_timeout.unwrap_or(args.timeout)),
    );
    let store = storage::open(&url, &opts).await.map_err(Failure::found)?;
    let probe = tokio::time::timeout(
        args.timeout,
        store.list_page(crate::archive::paths::ARCHIVE_KEY, None),
    )
    .await;
    let state = match probe {
        Err(_) => {
            return Err(Failure::found(format!(
                "{url}: no answer within {}s (check storage.s3.endpoint and the network)",
                args.timeout.as_secs()
            )))
        }
        Ok(Err(err)) => return Err(Failure::found(err)),
        Ok(Ok(page))
            if page
                .objects
                .iter()
                .any(|o| o.key == crate::archive::paths::ARCHIVE_KEY) =>
        {
            "an archive is present"
        }
        Ok(Ok(_)) => "no archive yet",
    };
    outln!("archive  {url}: reachable, {state}");
    // The chain rules rest on conditional writes: prove them on a throwaway key (deleted again).
    let probed = tokio::time::timeout(args.timeout * 4, storage::probe(&*store))
        .await
        .map_err(|_| {
            Failure::found(format!(
                "{url}: the conditional-write probe got no answer within {}s",
                (args.timeout * 4).as_secs()
            ))
        })?
        .map_err(Failure::found)?;
    outln!(
        "archive  {url}: create-only and compare-and-swap puts honoured{}",
        if probed.keeps_checksums {
            ", object checksums kept"
        } else {
            "; the store does not keep object checksums (the checksums inside each data file still guard integrity)"
        }
    );

    if !args.no_kafka {
        let client = kafka::client_config(&config.kafka, &[]);
        let timeout = args.timeout;
        let info = tokio::task::spawn_blocking(move || kafka::describe_cluster(&client, timeout))
            .await
            .map_err(|e| Failure::found(format!("kafka check stopped: {e}")))?
            .map_err(Failure::found)?;
        outln!(
            "kafka    {}: cluster {}, {} broker(s), {} topic(s)",
            config.kafka.bootstrap_servers,
            info.cluster_id.as_deref().unwrap_or("(id unknown)"),
            info.brokers,
            info.topics
        );
    }
    Ok(())
}
