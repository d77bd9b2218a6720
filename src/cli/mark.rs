//! `rewind mark NAME`: record a named restore point, the cluster's offsets at this moment, in the
//! archive; `--wait` until the archive has reached it. `rewind restore --to-mark NAME` restores
//! exactly up to it, and `rewind ls` shows whether each mark is archived.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::{load_config, CommonArgs, Failure};
use crate::config::units::duration;
use crate::kafka::{self, topics::TopicSelector};
use crate::marks::{self, MarkError, MarkRequest};
use crate::storage;

#[derive(Debug, Args)]
pub struct MarkArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Name of the restore point (letters, digits, '.', '_', '-'); taken once, never replaced.
    #[arg(value_name = "NAME")]
    name: String,
    /// Regular expression of the cluster's topics to mark (whole name; default every topic of the
    /// cluster that the archive holds).
    #[arg(long, value_name = "REGEX")]
    topics: Option<String>,
    /// Regular expression of topics to leave out.
    #[arg(long, value_name = "REGEX")]
    exclude: Option<String>,
    /// Wait until the archive has reached the mark, at most this long (e.g. 5m); exit 1 if it has not.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    wait: Option<Duration>,
    /// Mark a cluster whose id differs from the one the archive was made from.
    #[arg(long)]
    allow_cluster_change: bool,
    /// Delete the mark NAME instead (retention then no longer keeps what it needed); the cluster
    /// is not asked.
    #[arg(long, conflicts_with_all = ["topics", "exclude", "wait", "allow_cluster_change"])]
    delete: bool,
    /// Print the mark and its status as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: MarkArgs) -> Result<(), Failure> {
    let config = load_config(&args.common)?;
    if args.delete {
        return delete(&config, &args.name).await;
    }
    let bad = |flag: &str, pattern: &str, e: regex::Error| {
        Failure::usage(format!(
            "--{flag} {pattern:?} is not a valid regular expression: {}",
            kafka::topics::regex_problem(&e)
        ))
    };
    let topics = match (&args.topics, &args.exclude) {
        (None, None) => None,
        (pattern, exclude) => {
            let pattern = pattern.as_deref().unwrap_or(".*");
            let selector = TopicSelector::new(pattern).map_err(|e| bad("topics", pattern, e))?;
            Some(
                selector
                    .excluding(exclude.as_deref())
                    .map_err(|e| bad("exclude", exclude.as_deref().unwrap_or(""), e))?,
            )
        }
    };
    let url = config.archive_url().map_err(Failure::usage)?;
    crate::ops::check_exists(&url).map_err(Failure::usage)?;
    let store = storage::open_writer(&url, &config.s3_options())
        .await
        .map_err(Failure::found)?;
    let client = kafka::client_config(&config.kafka, &[]);
    let request = MarkRequest {
        name: args.name.clone(),
        topics,
        taken_by: "rewind mark".into(),
        allow_cluster_change: args.allow_cluster_change,
    };
    let mark = marks::take(&client, &*store, &request)
        .await
        .map_err(failure)?;
    let partitions = mark.partitions.len();
    let topics: std::collections::BTreeSet<&str> =
        mark.partitions.iter().map(|p| p.topic.as_str()).collect();
    if !args.json {
        let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
        outln!(
            "mark {} taken at {}: {} of {}",
            mark.name,
            mark.taken_at,
            plural(partitions, "partition"),
            plural(topics.len(), "topic")
        );
    }
    let started = Instant::now();
    let mut status = marks::status(&*store, &mark).await.map_err(failure)?;
    if let Some(wait) = args.wait {
        let mut said = false;
        while !status.complete() && started.elapsed() < wait {
            if !said && !args.json {
                eprintln!(
                    "waiting for the archive to reach the mark: {}",
                    status.describe()
                );
                said = true;
            }
            tokio::time::sleep(Duration::from_secs(2).min(wait)).await;
            status = marks::status(&*store, &mark).await.map_err(failure)?;
        }
    }
    if args.json {
        let doc = json!({
            "mark": mark,
            "status": status.word(),
            "detail": status.describe(),
        });
        outln!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(Failure::found)?
        );
    } else {
        outln!(
            "mark {}: {}: {}",
            mark.name,
            status.word(),
            status.describe()
        );
    }
    match (args.wait, status.complete()) {
        (Some(wait), false) => Err(Failure::found(format!(
            "the archive has not reached mark {} within {}s: {}; the mark is kept and completes when the sink catches up (`rewind ls` shows it)",
            mark.name,
            wait.as_secs(),
            status.describe()
        ))),
        _ => Ok(()),
    }
}

/// `rewind mark --delete NAME`.
async fn delete(config: &crate::config::Config, name: &str) -> Result<(), Failure> {
    let url = config.archive_url().map_err(Failure::usage)?;
    crate::ops::check_exists(&url).map_err(Failure::usage)?;
    let store = storage::open_writer(&url, &config.s3_options())
        .await
        .map_err(Failure::found)?;
    let key = crate::archive::marks::mark_key(name);
    if crate::archive::marks::read(&*store, name)
        .await
        .map_err(Failure::found)?
        .is_none()
    {
        return Err(Failure::found(format!(
            "the archive holds no mark named {name:?}; `rewind ls` lists its marks"
        )));
    }
    store.delete_many(&[key]).await.map_err(Failure::found)?;
    outln!("mark {name} deleted: retention no longer keeps what it needed");
    Ok(())
}

fn failure(e: MarkError) -> Failure {
    match e {
        MarkError::Usage(_) | MarkError::NoArchive(_) => Failure::usage(e),
        other => Failure::found(other),
    }
}
