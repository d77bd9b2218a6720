//! `rewind sink`: back up every selected topic into the archive, continuously or, with `--once`, up
//! to the high watermarks seen at start. The first SIGTERM/SIGINT drains (flush, checkpoint, commit)
//! within the drain deadline and exits 0; a second exits at once — the archive stays a valid chain
//! either way.

use clap::Args;
use serde_json::json;

use super::{load_config, wait_for_signal, CommonArgs, Failure};
use crate::kafka;
use crate::sink::{self, SinkOptions};
use crate::storage;

#[derive(Debug, Args)]
pub struct SinkArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Regular expression of topics to back up (whole name; default every topic but Kafka's internal `__…` ones).
    #[arg(long, value_name = "REGEX")]
    topics: Option<String>,
    /// Regular expression of topics to leave out.
    #[arg(long, value_name = "REGEX")]
    exclude: Option<String>,
    /// Consumer group shared by the workers of this archive (default: rewind-sink-<archive id>).
    #[arg(long, value_name = "ID")]
    group: Option<String>,
    /// Snapshot: archive everything up to the high watermarks seen at start, then exit.
    #[arg(long)]
    once: bool,
    /// Write into an archive that was made from another Kafka cluster.
    #[arg(long)]
    allow_cluster_change: bool,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464 (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

pub async fn run(mut args: SinkArgs) -> Result<(), Failure> {
    for (flag, key) in [
        (&args.topics, "sink.topics"),
        (&args.exclude, "sink.exclude"),
        (&args.group, "sink.group"),
    ] {
        if let Some(value) = flag {
            args.common.base.extra.push((key.to_string(), json!(value)));
        }
    }
    let config = load_config(&args.common)?;
    let url = config.archive_url().map_err(Failure::usage)?;
    let store = storage::open_writer(&url, &config.s3_options())
        .await
        .map_err(Failure::found)?;
    let s = &config.sink;
    let opts = SinkOptions {
        once: args.once,
        allow_cluster_change: args.allow_cluster_change,
        admin_api: !config.kafka.aws_msk_iam,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ..SinkOptions::from_config(
            s,
            config.storage.s3.part_size.bytes(),
            &config.restore.progress_topic,
        )
        .map_err(Failure::usage)?
    };
    if let Some(addr) = args.metrics_addr {
        crate::metrics::serve(addr).map_err(Failure::found)?;
    }
    let client = kafka::client_config(&config.kafka, &[]);
    let drain = s.drain_timeout;
    let stop = async move {
        wait_for_signal().await;
        tracing::info!(
            deadline_s = drain.as_secs(),
            "stop requested; draining (a second signal exits at once)"
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = wait_for_signal() => {
                    eprintln!("error: second signal: exiting without draining; the archive stays consistent and the next start resumes");
                    std::process::exit(130);
                }
                _ = tokio::time::sleep(drain) => {
                    eprintln!("error: draining took longer than {}s; exiting; the next start resumes from the archive", drain.as_secs());
                    std::process::exit(1);
                }
            }
        });
    };
    // A snapshot takes no scheduled marks: it ends at the watermarks it saw.
    let every = if args.once {
        Vec::new()
    } else {
        s.marks.clone()
    };
    let marks = crate::marks::schedules(client.clone(), store.clone(), opts.topics.clone(), every);
    let report = tokio::select! {
        report = sink::run(client, store, opts, stop) => report,
        () = marks => unreachable!("the mark schedule runs until dropped"),
    }
    .map_err(|e| match e {
        // A store that cannot hold an archive is a configuration to fix, like a bad URL.
        sink::SinkError::Store(crate::storage::ProbeError::IgnoresConditions { .. }) => {
            Failure::usage(e)
        }
        // A configuration the sink must not run with: fixed by --group, not by retrying.
        sink::SinkError::GroupOfOtherArchive { .. } => Failure::usage(e),
        e => Failure::found(e),
    })?;
    outln!(
        "archived {} records in {} files ({} bytes) from {} partitions to {url}{}{}",
        report.records,
        report.files,
        report.bytes,
        report.partitions,
        if report.adopted_files > 0 {
            format!("; adopted {} existing files", report.adopted_files)
        } else {
            String::new()
        },
        if report.gaps > 0 {
            format!("; recorded {} gaps (see the log)", report.gaps)
        } else {
            String::new()
        },
    );
    Ok(())
}
