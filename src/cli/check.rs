//! `rewind check`: a preflight an operator runs before starting a pipeline. It proves the
//! configuration is valid, that the archive's store answers with the configured credentials, that
//! a Kafka broker answers, and that the schema registry of `[sink.decode]` answers, if one is set; each failure is one sentence naming what to fix, and every part is
//! checked whatever the others found, so one run names every problem.
//!
//! Invariant: `check` writes nothing (no folder, no lock, no key) unless asked with
//! `--write-probe`: the archive is opened for reading, and the proof that the store honours
//! conditional writes is left to the first writer (a sink probes before it writes anything).

use std::time::Duration;

use clap::Args;

use super::{load_config, CommonArgs, Failure};
use crate::config::units::duration;
use crate::config::Config;
use crate::kafka;
use crate::storage::{self, StorageUrl};

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Check the archive only.
    #[arg(long)]
    no_kafka: bool,
    /// Also prove that the store honours create-only and compare-and-swap puts, by writing and
    /// deleting a throwaway key under `_probe/` (check writes nothing without it).
    #[arg(long)]
    write_probe: bool,
    /// How long to wait for each service to answer.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    timeout: Duration,
}

pub async fn run(args: CheckArgs) -> Result<(), Failure> {
    let config = load_config(&args.common)?;
    let source = args
        .common
        .base
        .config
        .as_ref()
        .map(|p| format!(" ({})", p.display()))
        .unwrap_or_default();
    outln!("config   ok{source}");
    let url = config.archive_url().map_err(Failure::usage)?;

    let mut problems = Problems::default();
    if let Err(problem) = check_archive(&config, &url, &args).await {
        problems.add(problem);
    }
    if !args.no_kafka {
        if let Err(problem) = check_kafka(&config, args.timeout).await {
            problems.add(problem);
        }
    }
    if let Err(problem) = check_registry(&config, args.timeout).await {
        problems.add(problem);
    }
    problems.finish()
}

/// The schema registry typed columns are decoded with, if one is configured.
async fn check_registry(config: &Config, timeout: Duration) -> Result<(), Failure> {
    let Some(url) = &config.sink.decode.registry else {
        return Ok(());
    };
    let registry = crate::kafka::registry::Registry::new(url)
        .map_err(Failure::usage)?
        .with_patience(timeout, 1);
    registry.check().await.map_err(|e| {
        Failure::found(format!(
            "sink.decode.registry: {e}; records that need its schemas would be archived without typed columns"
        ))
    })?;
    outln!("registry {}: answers", registry.url());
    Ok(())
}

/// The problems found so far: each is printed as the next one is found, and the last is the
/// command's failure, so every problem is one `error:` line and the exit code is the worst.
#[derive(Default)]
struct Problems {
    last: Option<Failure>,
}

impl Problems {
    fn add(&mut self, mut problem: Failure) {
        if let Some(earlier) = self.last.take() {
            eprintln!("error: {}", crate::config::secrets::scrub(&earlier.message));
            problem.code = problem.code.max(earlier.code);
        }
        self.last = Some(problem);
    }

    fn finish(self) -> Result<(), Failure> {
        self.last.map_or(Ok(()), Err)
    }
}

async fn check_archive(config: &Config, url: &StorageUrl, args: &CheckArgs) -> Result<(), Failure> {
    crate::ops::check_exists(url)
        .map_err(|e| Failure::found(format!("{e}, or let the first `rewind sink` create it")))?;
    let mut opts = config.s3_options();
    // A preflight should answer quickly: one retry, not the patient policy of a running sink.
    opts.retry.max_attempts = opts.retry.max_attempts.min(2);
    opts.connect_timeout = Some(
        args.timeout
            .min(opts.connect_timeout.unwrap_or(args.timeout)),
    );
    let store = storage::open_reader(url, &opts)
        .await
        .map_err(Failure::found)?;
    let listed = tokio::time::timeout(
        args.timeout,
        store.list_page(crate::archive::paths::ARCHIVE_KEY, None),
    )
    .await;
    let state = match listed {
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
    if !args.write_probe {
        outln!("archive  {url}: conditional writes not probed (check writes nothing; a sink proves them before its first write, or pass --write-probe)");
        return Ok(());
    }
    // The chain rules rest on conditional writes: prove them on a throwaway key (deleted again).
    let writer = storage::open_writer(url, &opts)
        .await
        .map_err(Failure::found)?;
    let probed = tokio::time::timeout(args.timeout * 4, storage::probe(&*writer))
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
    Ok(())
}

async fn check_kafka(config: &Config, timeout: Duration) -> Result<(), Failure> {
    let client = kafka::client_config(&config.kafka, &[]);
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
    Ok(())
}
