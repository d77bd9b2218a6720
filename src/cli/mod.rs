//! The command line: parse arguments, load the configuration, run a command, map the outcome to an
//! exit code (0 success, 1 the command found problems, 2 usage or configuration error) and report
//! errors on stderr as one sentence.

/// `println!` for command output: a reader that went away (`rewind ls | head`) ends the process
/// quietly with the status a SIGPIPE would give, instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

mod check;
mod demo;
mod drill;
mod lifecycle;
mod mark;
mod restore;
mod run;
mod sink;
mod tables;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::config::{self, Config, ConfigError, LogFormat, Sources};

/// Rewind: continuous backup and point-in-time recovery for Apache Kafka.
#[derive(Debug, Parser)]
#[command(name = "rewind", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the configuration, and that the archive storage and the Kafka cluster answer.
    Check(check::CheckArgs),
    /// Print the effective configuration after every layer is applied (secrets redacted).
    Config(ConfigArgs),
    /// Back up topics into the archive, continuously or once (--once).
    Sink(sink::SinkArgs),
    /// Replay a point-in-time window of the archive into a cluster, exactly once.
    Restore(restore::RestoreArgs),
    /// Record a named restore point: the cluster's offsets now, for `restore --to-mark`.
    Mark(mark::MarkArgs),
    /// Prove the archive restores: a window into scratch topics, compared record by record, timed.
    Drill(drill::DrillArgs),
    /// Show or set the bucket lifecycle rules that fit an S3 archive; thaw cold data files.
    Lifecycle(lifecycle::LifecycleArgs),
    /// Check that the archive is sound: contiguous chains, footers, checkpoints (--deep: every byte).
    Verify(tools::VerifyArgs),
    /// Look records up in the archive by key, time window and header (JSON lines).
    Find(tools::FindArgs),
    /// The archive's inventory: topics, partitions, offsets, times, files, bytes, gaps.
    Ls(tools::LsArgs),
    /// Delete the oldest files, whose newest record is older than a cutoff.
    Retention(tools::RetentionArgs),
    /// Merge the small files of each partition's closed hours into one file per hour (no record changes).
    Compact(tools::CompactArgs),
    /// Iceberg tables over the archive, one per topic, for query engines (no data copied).
    Tables(tables::TablesArgs),
    /// Run the service: every pipeline of the configuration, the HTTP API and /metrics.
    Run(run::RunArgs),
    /// See it work with nothing installed: embedded Kafka, local archive, backup, point-in-time restore.
    Demo(demo::DemoArgs),
}

/// Flags every command that reads the configuration accepts; each wins over the file and the
/// environment. The archive tools (`ls`, `verify`, `find`, `retention`) take these alone: they
/// never talk to Kafka, so they do not offer its flags.
#[derive(Debug, Clone, Default, Args)]
pub struct ArchiveArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "REWIND_CONFIG")]
    pub config: Option<PathBuf>,
    /// Archive URL: file:///absolute/path or s3://bucket/prefix.
    #[arg(long, value_name = "URL")]
    pub archive: Option<String>,
    /// Endpoint of an S3-compatible server, e.g. http://127.0.0.1:9000.
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// AWS region of the bucket.
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Address buckets path-style (endpoint/bucket), as most S3-compatible servers need.
    #[arg(long)]
    pub s3_path_style: bool,
    /// Log filter, e.g. info or rewind=debug (RUST_LOG wins).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Command-specific flags as configuration overrides (key path, value).
    #[arg(skip)]
    pub extra: Vec<(String, serde_json::Value)>,
}

/// [`ArchiveArgs`] and the Kafka flags, for the commands that talk to a cluster.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub base: ArchiveArgs,
    /// Kafka brokers to bootstrap from (host:port,...).
    #[arg(long, value_name = "HOSTS")]
    pub bootstrap_servers: Option<String>,
    /// A librdkafka property for this run, e.g. -X security.protocol=SSL (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub property: Vec<(String, String)>,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Print JSON instead of TOML.
    #[arg(long)]
    json: bool,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// A failed command: what to print and which exit code to use.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// The command ran and found a problem (exit 1).
    pub fn found(message: impl ToString) -> Failure {
        Failure {
            code: 1,
            message: message.to_string(),
        }
    }

    /// Usage or configuration error (exit 2).
    pub fn usage(message: impl ToString) -> Failure {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(err: ConfigError) -> Failure {
        Failure::usage(err)
    }
}

/// Run the program with the process's arguments.
pub fn main() -> ExitCode {
    crate::archive::typed::limit_avro_allocations();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", crate::config::secrets::scrub(&failure.message));
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Check(args) => check::run(args).await,
        Command::Sink(args) => sink::run(args).await,
        Command::Restore(args) => restore::run(args).await,
        Command::Mark(args) => mark::run(args).await,
        Command::Drill(args) => drill::run(args).await,
        Command::Lifecycle(args) => lifecycle::run(args).await,
        Command::Verify(args) => tools::verify(args).await,
        Command::Find(args) => tools::find(args).await,
        Command::Ls(args) => tools::ls(args).await,
        Command::Retention(args) => tools::retention(args).await,
        Command::Compact(args) => tools::compact(args).await,
        Command::Tables(args) => tables::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Config(args) => {
            let config = load_config(&args.common)?;
            let shown = config.redacted();
            let text = if args.json {
                serde_json::to_string_pretty(&shown).map_err(Failure::found)?
            } else {
                toml::to_string_pretty(&shown).map_err(Failure::found)?
            };
            outln!("{}", text.trim_end());
            Ok(())
        }
    }
}

/// Load the configuration with the flags as the top layer, and start logging as it says.
pub fn load_config(common: &CommonArgs) -> Result<Config, Failure> {
    load(&common.base, Some(common))
}

/// [`load_config`] for the commands without Kafka flags.
pub fn load_archive_config(args: &ArchiveArgs) -> Result<Config, Failure> {
    load(args, None)
}

fn load(base: &ArchiveArgs, kafka: Option<&CommonArgs>) -> Result<Config, Failure> {
    let mut overrides = Vec::new();
    let mut set = |key: &str, value: serde_json::Value| overrides.push((key.to_string(), value));
    if let Some(v) = &base.archive {
        set("archive", json!(v));
    }
    if let Some(v) = kafka.and_then(|k| k.bootstrap_servers.as_ref()) {
        set("kafka.bootstrap_servers", json!(v));
    }
    if let Some(v) = &base.s3_endpoint {
        set("storage.s3.endpoint", json!(v));
    }
    if let Some(v) = &base.s3_region {
        set("storage.s3.region", json!(v));
    }
    if base.s3_path_style {
        set("storage.s3.path_style", json!(true));
    }
    if let Some(v) = &base.log_level {
        set("log.level", json!(v));
    }
    overrides.extend(base.extra.iter().cloned());
    let mut config = config::load(&Sources {
        file: base.config.clone(),
        env: None,
        overrides,
    })?;
    // librdkafka property names contain dots, so they bypass the key-path layering.
    if let Some(kafka) = kafka {
        config
            .kafka
            .properties
            .extend(kafka.property.iter().cloned());
    }
    init_logging(&config);
    Ok(config)
}

pub(crate) fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(|| crate::progress::LogWriter);
    // A second initialisation (tests calling in twice) is harmless; ignore it.
    let _ = match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Whether logs are coloured: only on a terminal, and not when `NO_COLOR` is set to anything but
/// the empty string (https://no-color.org).
fn colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// A time flag made absolute: `earliest`/`latest` (open), epoch milliseconds (epoch seconds are
/// refused), RFC 3339, or a relative time resolved against `now` and said on stderr as the RFC 3339
/// time used (see [`crate::config::when`]).
/// The flag says whether `s` was relative.
pub(crate) fn absolute_time(
    flag: &str,
    s: &str,
    open: &str,
    now: i64,
) -> Result<(String, bool), Failure> {
    let (absolute, relative) = crate::config::when::absolute(s, open, now)
        .map_err(|e| Failure::usage(format!("--{flag} {e}")))?;
    if relative {
        eprintln!("--{flag} {} is {absolute}", s.trim());
    }
    Ok((absolute, relative))
}

/// A time flag's value as epoch milliseconds, `None` for the open end (see [`absolute_time`]).
pub(crate) fn parse_time(
    flag: &str,
    s: &str,
    open: &str,
    now: i64,
) -> Result<Option<i64>, Failure> {
    let (absolute, _) = absolute_time(flag, s, open, now)?;
    crate::config::when::parse_time(&absolute, open)
        .map_err(|e| Failure::usage(format!("--{flag} {e}")))
}

/// Write one line of command output; see [`outln!`].
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Print a table: a header and rows of cells, columns padded to their widest cell, the first
/// `left` columns left-aligned and the rest (numbers) right-aligned.
pub(crate) fn print_table<R: AsRef<[String]>>(header: &[&str], rows: &[R], left: usize) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i < left {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    outln!("{}", line(header.to_vec()));
    for row in rows {
        outln!(
            "{}",
            line(row.as_ref().iter().map(String::as_str).collect())
        );
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(colours(true, None));
        assert!(
            colours(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None));
    }
}
