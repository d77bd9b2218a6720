//! `rewind tables sync`: keep an Iceberg table per topic over the archive's own data files, for
//! engines to open by metadata location (or through a catalog).

use clap::{Args, Subcommand};

use super::tools::{open_store, regex, Access};
use super::{ArchiveArgs, Failure};
use crate::config::units::duration;
use crate::tables::{self, TableError, TableOptions};

#[derive(Debug, Args)]
pub struct TablesArgs {
    #[command(subcommand)]
    command: TablesCommand,
}

#[derive(Debug, Subcommand)]
enum TablesCommand {
    /// Bring each topic's Iceberg table up to the archive: add the files sinks wrote, remove those
    /// retention deleted, expire old snapshots. Safe to run from several places at once.
    Sync(SyncArgs),
}

#[derive(Debug, Args)]
struct SyncArgs {
    #[command(flatten)]
    common: ArchiveArgs,
    /// Regular expression of topics (whole name; default all).
    #[arg(long, value_name = "REGEX", default_value = ".*")]
    topics: String,
    /// Expire snapshots older than this (the newest --min-snapshots stay); default: what the
    /// table's properties say, else 1d. Recorded in the table.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    max_snapshot_age: Option<std::time::Duration>,
    /// Snapshots kept whatever their age; default: what the table's properties say, else 10.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    min_snapshots: Option<u32>,
    /// Register the tables with this Iceberg REST catalog (e.g. http://127.0.0.1:8181), and bring
    /// its entries to each table's newest version.
    #[arg(long, value_name = "URL")]
    catalog_uri: Option<String>,
    /// The catalog namespace the tables go into.
    #[arg(
        long,
        value_name = "NAMESPACE",
        default_value = "rewind",
        requires = "catalog_uri"
    )]
    catalog_namespace: String,
    /// Bearer token for the catalog.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "REWIND_CATALOG_TOKEN",
        hide_env_values = true
    )]
    catalog_token: Option<String>,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: TablesArgs) -> Result<(), Failure> {
    match args.command {
        TablesCommand::Sync(args) => sync(args).await,
    }
}

async fn sync(args: SyncArgs) -> Result<(), Failure> {
    let topics = regex("topics", &args.topics)?;
    let store = open_store(&args.common, Access::Write).await?;
    let catalog = match &args.catalog_uri {
        None => None,
        Some(uri) => match url::Url::parse(uri) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Some(crate::tables::catalog::Catalog {
                    uri: uri.clone(),
                    namespace: args.catalog_namespace.clone(),
                    token: args.catalog_token.clone(),
                })
            }
            _ => {
                return Err(Failure::usage(format!(
                    "--catalog-uri {uri:?} is not an http:// or https:// URL"
                )))
            }
        },
    };
    let opts = TableOptions {
        catalog,
        max_snapshot_age: args.max_snapshot_age,
        min_snapshots: args.min_snapshots.map(|n| n as usize),
        ..TableOptions::default()
    };
    let reports = tables::sync(&*store, &topics, &opts)
        .await
        .map_err(|e| match e {
            TableError::NoArchive(_) => Failure::usage(e),
            other => Failure::found(other),
        })?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&reports).map_err(Failure::found)?
        );
    } else if reports.is_empty() {
        outln!("no topic selected has anything archived");
    }
    for r in &reports {
        if let Some(e) = &r.error {
            eprintln!("error: {}: {e}", r.topic);
            continue;
        }
        if !args.json {
            let change = if r.committed {
                format!(
                    "version {}: +{} files, -{} files, {} snapshots expired",
                    r.version, r.added_files, r.removed_files, r.expired_snapshots
                )
            } else {
                format!("version {}: up to date", r.version)
            };
            outln!(
                "{}: {change}; {} files, {} records\n  {}",
                r.topic,
                r.files,
                r.records,
                r.metadata
            );
        }
        for why in &r.skipped {
            eprintln!("warning: left as it was: {why}");
        }
    }
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        return Err(Failure::found(format!(
            "{failed} of {} tables could not be synced (see above); the others were",
            reports.len()
        )));
    }
    if reports.iter().any(|r| !r.skipped.is_empty()) {
        return Err(Failure::found(
            "some partitions could not be brought up to date; run `rewind verify`",
        ));
    }
    Ok(())
}
