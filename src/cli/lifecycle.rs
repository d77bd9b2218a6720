//! `rewind lifecycle`: show (and with `--apply` set) the bucket lifecycle rules that fit an S3
//! archive; `rewind lifecycle thaw`: request the restore of the data files a window needs from an
//! archive storage class.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{load_archive_config, parse_time, ArchiveArgs, Failure};
use crate::archive::documents;
use crate::kafka::topics::TopicSelector;
use crate::ops::lifecycle::{self, Tiering};
use crate::storage::{S3Store, StorageUrl};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LifecycleArgs {
    #[command(subcommand)]
    command: Option<LifecycleCommand>,
    #[command(flatten)]
    rules: RulesArgs,
}

#[derive(Debug, Subcommand)]
enum LifecycleCommand {
    /// Request the restore of the data files a window needs from Glacier or Deep Archive.
    Thaw(ThawArgs),
}

#[derive(Debug, Args)]
struct RulesArgs {
    #[command(flatten)]
    common: ArchiveArgs,
    /// Abort multipart uploads left unfinished (a writer killed mid-upload) after this many days;
    /// `none` for no such rule (MinIO implements none).
    #[arg(long, value_name = "DAYS", default_value = "7d")]
    abort_uploads_after: String,
    /// Move data files to CLASS this many days after they were written (repeatable), e.g.
    /// 30d=STANDARD_IA; `none` for no transitions. Default: 30d=STANDARD_IA and 90d=GLACIER_IR,
    /// both read without a thaw.
    #[arg(long, value_name = "AGE=CLASS")]
    transition: Vec<String>,
    /// Allow GLACIER or DEEP_ARCHIVE, whose objects must be thawed before any read (restores,
    /// verify, find, drills, and a sink resuming a partition whose newest file moved there).
    #[arg(long)]
    allow_cold: bool,
    /// Set the rules on the bucket (the bucket's other rules are kept); without it, show them.
    #[arg(long)]
    apply: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ThawArgs {
    #[command(flatten)]
    common: ArchiveArgs,
    /// Regular expression of archived topics (whole name; default all).
    #[arg(long, value_name = "REGEX", default_value = ".*")]
    topics: String,
    /// Start of the window to make readable (RFC 3339, epoch ms, relative; default the beginning).
    #[arg(
        long,
        value_name = "T",
        default_value = "earliest",
        allow_negative_numbers = true
    )]
    from: String,
    /// End of the window (default the end).
    #[arg(
        long,
        value_name = "T",
        default_value = "latest",
        allow_negative_numbers = true
    )]
    to: String,
    /// Keep the thawed copies readable this many days.
    #[arg(long, value_name = "DAYS", default_value = "7d")]
    days: String,
    /// Retrieval tier: Standard (hours), Bulk (cheaper, slower) or Expedited (minutes; not for
    /// Deep Archive).
    #[arg(long, value_name = "TIER", default_value = "Standard",
          value_parser = ["Standard", "Bulk", "Expedited"])]
    tier: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: LifecycleArgs) -> Result<(), Failure> {
    match args.command {
        Some(LifecycleCommand::Thaw(t)) => thaw(t).await,
        None => rules(args.rules).await,
    }
}

/// The archive as an S3 store, and its id.
async fn open(common: &ArchiveArgs) -> Result<(S3Store, String), Failure> {
    let config = load_archive_config(common)?;
    let url = config.archive_url().map_err(Failure::usage)?;
    if !matches!(url, StorageUrl::S3 { .. }) {
        return Err(Failure::usage(format!(
            "{url}: lifecycle rules and storage classes are S3 features; a local archive has neither"
        )));
    }
    let store = S3Store::open(url.clone(), &config.s3_options())
        .await
        .map_err(Failure::found)?;
    let identity = documents::read_identity(&store)
        .await
        .map_err(Failure::found)?
        .ok_or_else(|| {
            Failure::usage(format!(
                "{url}: no Rewind archive there (no _archive.json); check --archive"
            ))
        })?;
    Ok((store, identity.archive_id()))
}

async fn rules(args: RulesArgs) -> Result<(), Failure> {
    let abort = match args.abort_uploads_after.as_str() {
        "none" => None,
        days => Some(
            lifecycle::days(days)
                .map_err(|e| Failure::usage(format!("--abort-uploads-after {e}")))?,
        ),
    };
    let transitions = match args.transition.as_slice() {
        [] => vec![(30, "STANDARD_IA".into()), (90, "GLACIER_IR".into())],
        [none] if none == "none" => Vec::new(),
        given => given
            .iter()
            .map(|t| {
                Tiering::parse_transition(t)
                    .map_err(|e| Failure::usage(format!("--transition {e}")))
            })
            .collect::<Result<_, _>>()?,
    };
    let tiering = Tiering {
        abort_uploads_after_days: abort,
        transitions,
    };
    for (_, class) in &tiering.transitions {
        if !lifecycle::is_aws_class(class) {
            eprintln!("warning: {class} is not an AWS storage class: it is sent as a tier name of the server (MinIO names its tiers so); check the spelling");
        }
    }
    let cold = tiering.cold();
    if !cold.is_empty() && !args.allow_cold {
        return Err(Failure::usage(format!(
            "--transition to {} makes data files unreadable until thawed: restores, verify, find and drills need `rewind lifecycle thaw` first, and a sink cannot resume a partition whose newest file moved there; pass --allow-cold if that is what you want, or use GLACIER_IR (read at once)",
            cold.join(" and ")
        )));
    }
    let (store, archive_id) = open(&args.common).await?;
    let ours = lifecycle::rules(&archive_id, &store.data_prefix(), &tiering);
    let data_prefix = store.data_prefix();
    let current = store.lifecycle().await.map_err(Failure::found)?;
    let existing = current.rules.clone();
    let hazards = lifecycle::hazards(&existing, store.prefix(), &archive_id, &data_prefix);
    let states = lifecycle::compare(&existing, &ours);
    if args.apply {
        let all = lifecycle::merged(&existing, &archive_id, &data_prefix, ours.clone());
        // S3 has no conditional write of a bucket's lifecycle: another writer's change between this
        // read and the write is lost (apply one archive's rules at a time).
        let applied = store
            .set_lifecycle(crate::storage::Lifecycle {
                rules: all,
                minimum_size: current.minimum_size.clone(),
            })
            .await;
        applied.map_err(|e| match e {
            crate::storage::StorageError::Other { .. }
            | crate::storage::StorageError::AccessDenied { .. } => Failure::found(format!(
                "{e}; the bucket's rules are unchanged (some S3-compatible servers implement neither AbortIncompleteMultipartUpload, see --abort-uploads-after none, nor transitions to AWS storage classes: MinIO moves objects only to tiers of its own, named as the class)"
            )),
            e => Failure::found(format!(
                "{e}; whether the rules were applied is unknown: run `rewind lifecycle` to see"
            )),
        })?;
    }
    let ids = lifecycle::rule_ids(&archive_id, &data_prefix);
    let others: Vec<String> = existing
        .iter()
        .filter(|r| !ids.iter().any(|i| Some(i.as_str()) == r.id()))
        .map(lifecycle::describe)
        .collect();
    if args.json {
        let doc = json!({
            "bucket": store.bucket(),
            "data_prefix": store.data_prefix(),
            "applied": args.apply,
            "rules": states,
            "other_rules": others,
            "hazards": hazards,
        });
        outln!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(Failure::found)?
        );
    } else {
        outln!(
            "lifecycle of bucket {} for the archive's data files ({}); documents are never moved and nothing expires (that is `rewind retention`'s)",
            store.bucket(),
            store.data_prefix()
        );
        for s in &states {
            let now = if args.apply { "applied" } else { s.state };
            outln!("  {now}: {}", s.wanted);
            if let (Some(current), false) = (&s.current, args.apply || s.state == "in place") {
                outln!("    the bucket has: {current}");
            }
        }
        for o in &others {
            outln!("  other rule, kept: {o}");
        }
        if !args.apply && states.iter().any(|s| s.state != "in place") {
            outln!("run again with --apply to set them");
        }
    }
    for h in &hazards {
        eprintln!("warning: {h}");
    }
    Ok(())
}

async fn thaw(args: ThawArgs) -> Result<(), Failure> {
    let days = lifecycle::days(&args.days).map_err(|e| Failure::usage(format!("--days {e}")))?;
    let topics = TopicSelector::new(&args.topics).map_err(|e| {
        Failure::usage(format!(
            "--topics {:?} is not a valid regular expression: {}",
            args.topics,
            crate::kafka::topics::regex_problem(&e)
        ))
    })?;
    let now = crate::archive::time::now_ms();
    let from = parse_time("from", &args.from, "earliest", now)?;
    let to = parse_time("to", &args.to, "latest", now)?;
    let (store, _) = open(&args.common).await?;
    let report = lifecycle::thaw(&store, &topics, from, to, days, &args.tier)
        .await
        .map_err(Failure::found)?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(Failure::found)?
        );
        return thaw_verdict(&report);
    }
    outln!(
        "thaw requested for {} files ({} bytes) at tier {} for {days} days; {} already thawing; {} thawed copies kept {days} more days; {} readable now",
        report.requested.len(),
        report.bytes_requested,
        args.tier,
        report.thawing.len(),
        report.extended.len(),
        report.readable
    );
    if !report.requested.is_empty() || !report.thawing.is_empty() {
        outln!("a Standard thaw takes hours (up to 12 from Deep Archive); run this again to see how many are readable, then restore");
    }
    for f in &report.failed {
        eprintln!("warning: not thawed: {f}");
    }
    thaw_verdict(&report)
}

/// Exit 1 when some files could not be thawed (the others were asked for).
fn thaw_verdict(report: &lifecycle::ThawReport) -> Result<(), Failure> {
    match report.failed.first() {
        None => Ok(()),
        Some(first) => Err(Failure::found(format!(
            "{} files could not be thawed (the first: {first}); the others were asked for",
            report.failed.len()
        ))),
    }
}
