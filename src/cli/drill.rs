//! `rewind drill`: restore a window of the archive into scratch topics, compare every record with
//! the archive, measure the recovery time, clean up and keep a (signed) report; `rewind drill
//! verify-report` checks a report's signature.

use clap::{Args, Subcommand};

use super::{absolute_time, load_config, ArchiveArgs, CommonArgs, Failure};
use crate::config::units::duration;
use crate::config::RestoreJob;
use crate::drill::{self, DrillError, DrillOptions, DRILLS_PREFIX};
use crate::kafka;
use crate::storage;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DrillArgs {
    #[command(subcommand)]
    command: Option<DrillCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum DrillCommand {
    /// Check a drill report's signature with the signer's public key.
    VerifyReport(VerifyArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Start of the window (as for `rewind restore`; `earliest` for the archive's beginning).
    /// Without a window, a drill samples one hour (--sample 1h).
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    from: Option<String>,
    /// End of the window (exclusive; `latest` for the archive's end).
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    to: Option<String>,
    /// Begin at a named restore point.
    #[arg(long, value_name = "NAME")]
    from_mark: Option<String>,
    /// End at a named restore point.
    #[arg(long, value_name = "NAME")]
    to_mark: Option<String>,
    /// Drill a window of this length sampled at random from the archive (e.g. 1h) instead.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse,
          conflicts_with_all = ["from", "to", "from_mark", "to_mark"])]
    sample: Option<std::time::Duration>,
    /// Regular expression of archived topics to drill (whole name; default all).
    #[arg(long, value_name = "REGEX", default_value = ".*")]
    topics: String,
    /// Scratch topics are named <PREFIX><drill id>.<topic> (a `__` prefix keeps them out of
    /// sinks, which never back up `__` topics).
    #[arg(long, value_name = "PREFIX", default_value = "__rewind-drill-")]
    prefix: String,
    /// Leave the scratch topics in place (to look at them); they are deleted otherwise.
    #[arg(long)]
    keep: bool,
    /// Sign the report with this Ed25519 private key (PKCS#8 PEM, `openssl genpkey -algorithm
    /// ed25519`); default `drill.sign_key` of the configuration.
    #[arg(long, value_name = "FILE")]
    sign_key: Option<std::path::PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The report: a file, or a drill id (or `_drills/<id>.json`) in the archive.
    #[arg(value_name = "REPORT")]
    report: String,
    /// The signer's public key (PEM, `openssl pkey -in key.pem -pubout`).
    #[arg(long, value_name = "FILE")]
    public_key: std::path::PathBuf,
}

pub async fn run(args: DrillArgs) -> Result<(), Failure> {
    match args.command {
        Some(DrillCommand::VerifyReport(v)) => verify(v).await,
        None => drill(args.run).await,
    }
}

async fn drill(args: RunArgs) -> Result<(), Failure> {
    let config = load_config(&args.common)?;
    let now = crate::archive::time::now_ms();
    let windowless = args.from.is_none()
        && args.to.is_none()
        && args.from_mark.is_none()
        && args.to_mark.is_none();
    // No window asked for: an hour sampled at random (the whole archive would be a full restore).
    let sample = match (args.sample, windowless) {
        (None, true) => Some(std::time::Duration::from_secs(3600)),
        (sample, _) => sample,
    };
    let (from, _) = absolute_time(
        "from",
        args.from.as_deref().unwrap_or("earliest"),
        "earliest",
        now,
    )?;
    let (to, _) = absolute_time("to", args.to.as_deref().unwrap_or("latest"), "latest", now)?;
    let pem = match (&args.sign_key, &config.drill.sign_key) {
        (Some(path), _) => Some(std::fs::read_to_string(path).map_err(|e| {
            Failure::usage(format!(
                "--sign-key {}: cannot be read: {e}",
                path.display()
            ))
        })?),
        (None, key) => key.clone(),
    };
    let signing_key = pem
        .map(|pem| {
            drill::signing_key(&pem).map_err(|e| Failure::usage(format!("the signing key is {e}")))
        })
        .transpose()?;
    let opts = DrillOptions {
        job: RestoreJob {
            from,
            to,
            topics: args.topics.clone(),
            from_mark: args.from_mark.clone(),
            to_mark: args.to_mark.clone(),
            ..RestoreJob::default()
        },
        sample,
        prefix: args.prefix.clone(),
        keep: args.keep,
        tuning: config.restore.clone(),
        signing_key,
        run_by: "rewind drill".into(),
    };
    let url = config.archive_url().map_err(Failure::usage)?;
    crate::ops::check_exists(&url).map_err(Failure::usage)?;
    let store = storage::open_writer(&url, &config.s3_options())
        .await
        .map_err(Failure::found)?;
    let client = kafka::client_config(&config.kafka, &[]);
    let report = drill::drill(client, store, &opts)
        .await
        .map_err(|e| match e {
            DrillError::Usage(_) => Failure::usage(e),
            e => Failure::found(e),
        })?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(Failure::found)?
        );
    } else {
        outln!(
            "drill {} of {} into {}: window {}",
            report.id,
            report.archive,
            report.target,
            report.window
        );
        for t in &report.topics {
            outln!(
                "  {} → {}: {} records ({} bytes) in {} partitions compared; full restore of its {} archived records ({} bytes) estimated at {}s",
                t.topic,
                t.scratch_topic,
                t.records,
                t.bytes,
                t.partitions.len(),
                t.archived_records,
                t.archived_bytes,
                t.estimated_full_restore_seconds
            );
        }
        outln!(
            "restored {} records ({} bytes) in {:.2}s: {} records/s, {} bytes/s; scratch topics {}",
            report.records,
            report.bytes,
            report.restore_ms as f64 / 1000.0,
            report.records_per_second,
            report.bytes_per_second,
            if report.scratch_topics_deleted {
                "deleted"
            } else {
                "kept"
            }
        );
        for f in &report.failures {
            outln!("  FAILED: {f}");
        }
        outln!(
            "drill {}: report {DRILLS_PREFIX}{}.json{}",
            if report.passed { "passed" } else { "FAILED" },
            report.id,
            if report.signature.is_some() {
                " (signed)"
            } else {
                ""
            }
        );
    }
    if report.passed {
        Ok(())
    } else {
        Err(Failure::found(format!(
            "drill {} failed: {}",
            report.id,
            report.failures.join("; ")
        )))
    }
}

async fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let pem = std::fs::read_to_string(&args.public_key).map_err(|e| {
        Failure::usage(format!(
            "--public-key {}: cannot be read: {e}",
            args.public_key.display()
        ))
    })?;
    let key = drill::verifying_key(&pem).map_err(|e| {
        Failure::usage(format!("--public-key {} is {e}", args.public_key.display()))
    })?;
    let text = if std::path::Path::new(&args.report).is_file() {
        std::fs::read(&args.report)
            .map_err(|e| Failure::usage(format!("{}: cannot be read: {e}", args.report)))?
    } else {
        let config = super::load_archive_config(&args.archive)?;
        let url = config.archive_url().map_err(Failure::usage)?;
        crate::ops::check_exists(&url).map_err(Failure::usage)?;
        let store = storage::open_reader(&url, &config.s3_options())
            .await
            .map_err(Failure::found)?;
        let key = if args.report.starts_with(DRILLS_PREFIX) {
            args.report.clone()
        } else {
            format!("{DRILLS_PREFIX}{}.json", args.report)
        };
        store
            .get(&key)
            .await
            .map_err(|e| {
                Failure::usage(format!(
                    "no report {:?} as a file or in the archive: {e}",
                    args.report
                ))
            })?
            .body
            .to_vec()
    };
    let report = drill::verify_report(&text, &key).map_err(Failure::found)?;
    outln!(
        "report of drill {} is signed by the given key and unaltered: {} on {} at {} ({} records compared)",
        report.id,
        if report.passed { "passed" } else { "FAILED" },
        report.target,
        report.finished_at,
        report.records
    );
    Ok(())
}
