//! `rewind restore`: replay the window `[--from, --to)` of the archive into a cluster, exactly once,
//! or with `--plan` show what that would restore and write nothing. The first SIGTERM/SIGINT commits
//! what is in flight and stops (the same command with the same `--restore-id` resumes); a second
//! exits at once (the open transaction is aborted by the broker, and the resume is still exact).

use clap::Args;
use serde_json::json;

use super::{absolute_time, load_config, wait_for_signal, CommonArgs, Failure};
use crate::config::RestoreJob;
use crate::kafka;
use crate::restore::job::parse_renames;
use crate::restore::{self, RestoreError, RestoreOptions};
use crate::storage;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Start of the window: RFC 3339 (2026-11-23T10:00:00Z), epoch milliseconds, `earliest`, or
    /// relative (now-1h, 2h ago, today, yesterday; UTC), resolved once and printed back (a number
    /// below 1000000000000 is refused as likely epoch seconds).
    #[arg(
        long,
        value_name = "T",
        default_value = "earliest",
        allow_negative_numbers = true
    )]
    from: String,
    /// End of the window (exclusive): RFC 3339, epoch milliseconds, `latest`, or relative (now,
    /// now-1h, 2h ago, today, yesterday; UTC), resolved once and printed back (a number below
    /// 1000000000000 is refused as likely epoch seconds).
    #[arg(
        long,
        value_name = "T",
        default_value = "latest",
        allow_negative_numbers = true
    )]
    to: String,
    /// Begin at a named restore point (`rewind mark`): each partition at the offset it recorded.
    #[arg(long, value_name = "NAME")]
    from_mark: Option<String>,
    /// End exactly at a named restore point: every archived record below the offsets it recorded
    /// (the topics it recorded; refused until the archive has reached it).
    #[arg(long, value_name = "NAME")]
    to_mark: Option<String>,
    /// Regular expression of archived topics to restore (whole name; default all).
    #[arg(long, value_name = "REGEX", default_value = ".*")]
    topics: String,
    /// Restore topic SRC into topic DST (repeatable).
    #[arg(long, value_name = "SRC=DST")]
    rename: Vec<String>,
    /// Id of this restore; run again with the same id to resume. Generated and printed if absent.
    #[arg(long, value_name = "ID")]
    restore_id: Option<String>,
    /// Move consumer groups to the target offsets matching their committed offsets as of --to.
    #[arg(long)]
    groups: bool,
    /// Show what would be restored (per partition ranges, records, bytes, files), what happens to
    /// each target and where --groups moves each group, and run every check of the target cluster
    /// (exit 1 if the restore would be refused); write nothing.
    #[arg(long)]
    plan: bool,
    /// Print the plan, or the restore's summary, as JSON.
    #[arg(long)]
    json: bool,
    /// Keep restoring new archive files as they appear (a standby cluster), until stopped.
    #[arg(long, conflicts_with = "plan")]
    follow: bool,
    /// Write into target topics that already hold records.
    #[arg(long)]
    allow_non_empty: bool,
    /// Restore only records whose own timestamp is inside the window.
    #[arg(long)]
    strict: bool,
    /// Choose target partitions by key with the Java client's partitioner (for targets with fewer partitions).
    #[arg(long)]
    repartition_by_key: bool,
    /// Add rewind.source.topic/partition/offset headers to every restored record.
    #[arg(long)]
    provenance_headers: bool,
    /// Rewrite the Schema Registry ids of keys and values in the Confluent wire format: URL of the
    /// registry that assigned them (the source cluster's, or one restored from the archive).
    /// Each id maps by subject and version to --schema-ids-to's id; the rest stays byte for byte.
    #[arg(long, value_name = "URL", requires = "schema_ids_to")]
    schema_ids_from: Option<String>,
    /// URL of the target cluster's schema registry, whose ids the restored records get.
    #[arg(long, value_name = "URL", requires = "schema_ids_from")]
    schema_ids_to: Option<String>,
    /// Rewrite the schema ids of keys too (values only otherwise: plain binary keys, such as a
    /// big-endian long, often begin with a zero byte and would look framed).
    #[arg(long, requires = "schema_ids_from")]
    schema_ids_keys: bool,
    /// Share the restore with every process running it with the same --restore-id (on this or
    /// other machines): they split its partitions through a Kafka consumer group, each writing its
    /// own transactions, and take over the partitions of one that stops or dies.
    #[arg(long, requires = "restore_id")]
    shared: bool,
    /// Name of this worker of a shared restore, unique among them (letters, digits, '.', '_', '-'):
    /// one restarted with the same name aborts what it left open at once. Random if absent.
    #[arg(long, value_name = "NAME", requires = "shared")]
    worker_id: Option<String>,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464 (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

pub async fn run(args: RestoreArgs) -> Result<(), Failure> {
    let config = load_config(&args.common)?;
    // The file's settings were checked as it loaded; -X comes on top.
    if let Some(problem) = crate::config::transaction_timing(
        &config.restore,
        &config.kafka,
        Some("-X transaction.timeout.ms"),
    ) {
        return Err(Failure::usage(problem));
    }
    // Relative times are resolved once, here. A restore id is bound to the absolute window, so
    // resuming a restore asked for relatively means giving these times, not the relative ones.
    let now = crate::archive::time::now_ms();
    let (from, from_relative) = absolute_time("from", &args.from, "earliest", now)?;
    let (to, to_relative) = absolute_time("to", &args.to, "latest", now)?;
    let same_window = if from_relative || to_relative {
        format!(" --from {from} --to {to}")
    } else {
        String::new()
    };
    // Signals are taken from the start: one that comes while the restore is still planning or
    // fencing stops it as soon as it can, instead of killing it without a word.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    if !args.plan {
        let same_window = same_window.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!(
                "stop requested: committing what is in flight (a second signal exits at once)"
            );
            let _ = stop_tx.send(true);
            wait_for_signal().await;
            eprintln!("error: second signal: exiting at once; the open transaction is aborted and the restore resumes exactly with the same --restore-id{same_window}");
            std::process::exit(130);
        });
    }
    let restore_id = args
        .restore_id
        .clone()
        .unwrap_or_else(|| restore::new_restore_id(crate::archive::time::now_ms()));
    let job = RestoreJob {
        from,
        to,
        topics: args.topics.clone(),
        from_mark: args.from_mark.clone(),
        to_mark: args.to_mark.clone(),
        renames: parse_renames(&args.rename)
            .map_err(|e| Failure::usage(format!("--rename {e}")))?,
        restore_id: Some(restore_id.clone()),
        follow: args.follow,
        groups: args.groups,
        allow_non_empty: args.allow_non_empty,
        strict: args.strict,
        repartition_by_key: args.repartition_by_key,
        provenance_headers: args.provenance_headers,
        schema_ids_from: args.schema_ids_from.clone(),
        schema_ids_to: args.schema_ids_to.clone(),
        schema_ids_keys: args.schema_ids_keys,
        shared: args.shared,
    };
    let flag = |field: &str| format!("--{}", field.replace('_', "-"));
    let mut opts = job
        .options(&restore_id, &config.restore, flag)
        .map_err(|problems| {
            let first = &problems[0];
            let field = if first.path == "renames" {
                "rename"
            } else {
                &first.path
            };
            Failure::usage(format!("{} {}", flag(field), first.message))
        })?;
    if let Some(worker) = &args.worker_id {
        if !restore::job::valid_restore_id(worker) || worker.len() > 40 {
            return Err(Failure::usage(format!(
                "--worker-id {worker:?} may only hold letters, digits, '.', '_' and '-' (at most 40)"
            )));
        }
    }
    opts.worker_id = args.worker_id.clone();
    opts.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    opts.admin_api = !config.kafka.aws_msk_iam;
    let window = opts.window.clone();
    let url = config.archive_url().map_err(Failure::usage)?;
    crate::ops::check_exists(&url).map_err(Failure::usage)?;
    // The restore reads the archive and writes only to Kafka.
    let store = storage::open_reader(&url, &config.s3_options())
        .await
        .map_err(Failure::found)?;

    let client = kafka::client_config(&config.kafka, &[]);
    if args.plan {
        let preview = restore::preview(client, &*store, &opts, args.restore_id.is_some())
            .await
            .map_err(failure)?;
        print_plan(&preview, &opts, args.json);
        return plan_verdict(&preview);
    }
    // Said once the plan is committed, when there is something to resume; a relative window is
    // given back as the absolute one it was fixed at.
    opts.resume_hint = match (&args.restore_id, same_window.is_empty()) {
        (None, _) => Some(format!(
            "restore id: {restore_id} (to resume this restore if it stops, run the same command with --restore-id {restore_id}{same_window})"
        )),
        (Some(_), false) => Some(format!(
            "the window is fixed at {}: to resume this restore if it stops, give{same_window}",
            window.describe()
        )),
        (Some(_), true) => None,
    };
    if let Some(addr) = args.metrics_addr {
        crate::metrics::serve(addr).map_err(Failure::found)?;
    }
    let stop = async move {
        // An error means the signal task is gone, which it never is before the process exits.
        let _ = stop_rx.wait_for(|stopped| *stopped).await;
    };
    let report = restore::run(client, store, &opts, stop)
        .await
        .map_err(failure)?;
    let nothing =
        report.planned_records == 0 && report.records == 0 && !report.resumed && !opts.follow;
    if args.json {
        let doc = json!({
            "nothing_to_restore": nothing,
            "restore_id": report.restore_id,
            "records": report.records,
            "bytes": report.bytes,
            "partitions": report.partitions,
            "resumed": report.resumed,
            "shared": opts.shared,
            "stopped": report.stopped,
            "visible": report.visible,
            "topics_created": report.topics_created,
            "groups_committed": report.groups_committed,
            "groups_skipped": report.groups_skipped,
        });
        outln!("{doc}");
    } else if nothing {
        outln!(
            "nothing to restore: no archived record of the selected topics falls in {}; nothing was written",
            window.describe()
        );
        return Ok(());
    } else {
        let mut line = summary(&report, &url);
        if opts.shared && !report.stopped {
            line.push_str("; this worker's part of the shared restore, which is complete");
        }
        outln!("{line}");
    }
    if report.stopped && !opts.follow {
        return Err(Failure::found(format!(
            "stopped before the window was restored; run the same command with --restore-id {}{same_window} to finish",
            report.restore_id
        )));
    }
    Ok(())
}

/// The one line a finished restore prints.
fn summary(report: &restore::RestoreReport, url: &storage::StorageUrl) -> String {
    let mut line = format!(
        "restored {} records ({} bytes) of {} partitions from {url}; restore id {}",
        report.records, report.bytes, report.partitions, report.restore_id
    );
    if report.resumed {
        line.push_str(" (resumed)");
    }
    if report.visible {
        line.push_str("; read_committed consumers see every record");
    }
    for (items, what) in [
        (&report.topics_created, "created topics"),
        (&report.groups_committed, "moved groups"),
        (
            &report.groups_skipped,
            "left groups with active members alone:",
        ),
    ] {
        if !items.is_empty() {
            line.push_str(&format!("; {what} {}", items.join(", ")));
        }
    }
    line
}

/// Exit 2 for what the command line got wrong (no archive there, a format this build does not
/// read, a restore id bound to another window), as the other commands do; 1 for the rest.
fn failure(e: RestoreError) -> Failure {
    use crate::archive::documents::ArchiveError;
    match e {
        RestoreError::OtherWindow { .. }
        | RestoreError::NoArchive(_)
        | RestoreError::Archive(ArchiveError::UnsupportedVersion { .. }) => Failure::usage(e),
        other => Failure::found(other),
    }
}

/// A plan the run would refuse, or could not check against the target, fails (exit 1) after it
/// was printed.
fn plan_verdict(preview: &restore::Preview) -> Result<(), Failure> {
    if let Some(why) = &preview.unchecked {
        return Err(Failure::found(format!(
            "the target cluster was not checked, so the plan says only what the archive holds: {why}"
        )));
    }
    match preview.refusals.len() {
        0 => Ok(()),
        1 => Err(Failure::found(format!(
            "the restore would be refused: {}",
            preview.refusals[0]
        ))),
        n => Err(Failure::found(format!(
            "the restore would be refused for the {n} reasons above"
        ))),
    }
}

/// Where the plan says a group resumes, in words.
fn resumes_at(g: &restore::GroupMove) -> String {
    let place = match (g.active_members, g.after_records) {
        (Some(true), _) => return "left alone: it has active members in the target".into(),
        (_, None) => "the end of the restored partition".to_string(),
        (_, Some(n)) => format!("after {n} restored records"),
    };
    if g.active_members.is_none() {
        format!("{place} (unless members of its consumer protocol are active then)")
    } else {
        place
    }
}

fn print_plan(preview: &restore::Preview, opts: &RestoreOptions, json: bool) {
    let partitions = &preview.partitions;
    let records: u64 = partitions.iter().map(|p| p.records).sum();
    let bytes: u64 = partitions.iter().map(|p| p.bytes).sum();
    let stored: u64 = partitions.iter().map(|p| p.stored_bytes).sum();
    let files: usize = partitions.iter().map(|p| p.files).sum();
    if json {
        let mut doc = json!({
            "window": {
                "from": opts.window.from.map(crate::archive::time::rfc3339_millis),
                "to": opts.window.to.map(crate::archive::time::rfc3339_millis),
            },
            "strict": opts.strict,
            "records": records,
            "bytes": bytes,
            "stored_bytes": stored,
            "files": files,
        });
        let checks = serde_json::to_value(preview).expect("a preview serializes");
        if let (Some(doc), Some(checks)) = (doc.as_object_mut(), checks.as_object()) {
            doc.extend(checks.clone());
        }
        outln!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("plan serializes")
        );
        return;
    }
    outln!(
        "window {}{}",
        opts.window.describe(),
        if opts.strict {
            " (strict: records outside it are skipped, so fewer may be restored)"
        } else {
            ""
        }
    );
    let header = [
        "TOPIC",
        "PARTITION",
        "TARGET",
        "START",
        "END",
        "RECORDS",
        "BYTES",
        "FILES",
    ];
    let rows: Vec<[String; 8]> = partitions
        .iter()
        .map(|p| {
            [
                p.topic.clone(),
                p.partition.to_string(),
                p.target_topic.clone(),
                p.start.to_string(),
                p.end.to_string(),
                p.records.to_string(),
                p.bytes.to_string(),
                p.files.to_string(),
            ]
        })
        .collect();
    super::print_table(&header, &rows, 3);
    outln!(
        "total: {records} records ({bytes} bytes of keys, values and headers, counted as the restore's summary counts them) from {} partitions, in {files} files of {stored} bytes",
        partitions.len()
    );
    if records == 0 && !opts.follow && !preview.resumed {
        outln!(
            "nothing to restore: no archived record of the selected topics falls in {}; the restore would write nothing",
            opts.window.describe()
        );
        return;
    }
    if preview.unchecked.is_some() {
        return;
    }
    if preview.resumed {
        outln!(
            "resumes restore {}: {} records left after what it committed",
            opts.restore_id,
            preview.remaining_records
        );
    }
    if !preview.targets.is_empty() {
        outln!("target cluster {}:", preview.bootstrap_servers);
        let rows: Vec<[String; 3]> = preview
            .targets
            .iter()
            .map(|t| {
                [
                    t.topic.clone(),
                    t.partitions
                        .map_or("does not exist".into(), |n| format!("{n} partitions")),
                    t.action.clone(),
                ]
            })
            .collect();
        super::print_table(&["TARGET", "NOW", "THE RESTORE WILL"], &rows, 3);
    }
    if opts.groups {
        if preview.groups.is_empty() {
            outln!("groups: no archived group snapshot has offsets on the restored partitions");
        } else {
            outln!("groups --groups moves (a group resumes at the restored record after the ones counted):");
            let rows: Vec<[String; 5]> = preview
                .groups
                .iter()
                .map(|g| {
                    [
                        g.group.clone(),
                        format!("{}/{}", g.topic, g.partition),
                        g.committed.to_string(),
                        format!("{}/{}", g.target_topic, g.partition),
                        resumes_at(g),
                    ]
                })
                .collect();
            super::print_table(
                &["GROUP", "SOURCE", "COMMITTED", "TARGET", "RESUMES AT"],
                &rows,
                5,
            );
        }
    }
    for warning in &preview.warnings {
        outln!("warning: {warning}");
    }
    for refusal in &preview.refusals {
        outln!("refused: {refusal}");
    }
}
