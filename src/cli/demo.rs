//! `rewind demo`: see Rewind work end to end with nothing installed (see [`crate::demo`]).

use std::path::PathBuf;

use clap::Args;

use super::Failure;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to write the demo's archive (new or empty); default: a new directory under the
    /// system's temporary directory, kept so you can explore it afterwards.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> Result<(), Failure> {
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "rewind-demo-{}-{:04x}",
            crate::archive::time::now_ms() / 1000,
            rand::random::<u16>()
        ))
    });
    // Warnings and errors only: the demo narrates the rest (RUST_LOG shows more).
    let mut quiet = crate::config::Config::default();
    quiet.log.level = "warn".into();
    super::init_logging(&quiet);
    outln!(
        "Rewind demo: continuous Kafka backup and point-in-time restore, all in this process.\n"
    );
    let mut say = |line: String| outln!("{line}");
    let report = crate::demo::run(&dir, &mut say).await.map_err(|e| {
        Failure::found(format!("demo failed: {e} (its archive: {})", dir.display()))
    })?;
    let archive = format!("file://{}", report.archive.display());
    let from = crate::archive::time::rfc3339_millis(report.window.0);
    let to = crate::archive::time::rfc3339_millis(report.window.1);
    outln!(
        "\nDone in {:.1}s: {} records backed up, {} restored from the window and identical to what was produced.\n",
        report.seconds,
        report.archived,
        report.restored
    );
    outln!(
        "The archive stays in {} for you to explore:",
        report.archive.display()
    );
    outln!("  rewind ls --archive {archive}");
    outln!("  rewind find --archive {archive} --topic orders --key order-42 --limit 3");
    outln!("  rewind verify --archive {archive} --deep");
    outln!("  rewind restore --archive {archive} --from {from} --to {to} --plan");
    // DuckDB as the README installs it: the Python package, which scripts/duckdb.sh puts into a
    // virtual environment, printing its python (run from the repository, like the demo).
    outln!(
        "  $(scripts/duckdb.sh) -c \"import duckdb; duckdb.sql(\\\"SELECT topic, count(*) AS records FROM read_parquet('{}/data/**/*.parquet', hive_partitioning = true) GROUP BY topic ORDER BY topic\\\").show()\"",
        report.archive.display()
    );
    outln!("\nNext, against your own cluster: rewind sink --bootstrap-servers HOST:9092 --archive s3://bucket/prefix --s3-region REGION");
    outln!(
        "(see README.md, Quick start); remove the demo archive with: rm -rf {}",
        report.archive.display()
    );
    Ok(())
}
