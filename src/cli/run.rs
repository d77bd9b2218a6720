//! `rewind run`: the service. Loads the configuration and every pipeline (all problems reported
//! before anything starts), serves the HTTP API and `/metrics`, keeps each pipeline running, and on
//! the first SIGTERM/SIGINT stops every pipeline gracefully (sinks flush and checkpoint, restores
//! commit) before exiting 0; a second signal exits at once, and the archive and the restores'
//! committed progress stay consistent either way.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::{init_logging, wait_for_signal, Failure};
use crate::config::{load_service, PipelineKind, Sources};
use crate::service::guard::Guard;
use crate::service::{api, Registry};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Service configuration file; pipelines are read from its `service.pipelines` directory.
    #[arg(long, value_name = "FILE", env = "REWIND_CONFIG")]
    config: PathBuf,
    /// Address of the HTTP API and /metrics, e.g. 0.0.0.0:8080 (default: service.http_addr).
    #[arg(long, value_name = "ADDR")]
    http_addr: Option<String>,
    /// Log filter, e.g. info or rewind=debug (RUST_LOG wins).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Check the configuration and every pipeline, print what would run, and exit.
    #[arg(long)]
    check: bool,
}

pub async fn run(args: RunArgs) -> Result<(), Failure> {
    let mut overrides = Vec::new();
    if let Some(addr) = &args.http_addr {
        overrides.push(("service.http_addr".to_string(), json!(addr)));
    }
    if let Some(level) = &args.log_level {
        overrides.push(("log.level".to_string(), json!(level)));
    }
    let service = load_service(&Sources {
        file: Some(args.config.clone()),
        env: None,
        overrides,
    })?;
    init_logging(&service.config);
    if args.check {
        outln!(
            "configuration and {} pipelines are valid ({})",
            service.pipelines.len(),
            service.pipelines_dir.display()
        );
        let rows: Vec<[String; 5]> = service
            .pipelines
            .iter()
            .map(|p| {
                [
                    p.name.clone(),
                    format!("{:?}", p.kind).to_lowercase(),
                    p.cluster.clone(),
                    p.archive.clone(),
                    match (p.enabled, p.kind) {
                        (false, _) => "disabled".into(),
                        (true, PipelineKind::Sink) => format!("topics {}", p.sink.topics),
                        (true, PipelineKind::Restore) => format!(
                            "topics {}{}",
                            p.job.topics,
                            if p.job.follow { ", follow" } else { "" }
                        ),
                    },
                ]
            })
            .collect();
        super::print_table(
            &["PIPELINE", "KIND", "CLUSTER", "ARCHIVE", "WHAT"],
            &rows,
            5,
        );
        return Ok(());
    }

    let addr: std::net::SocketAddr = service
        .config
        .service
        .http_addr
        .parse()
        .map_err(|_| Failure::usage("service.http_addr is not an address"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::found(format!("cannot listen on {addr}: {e}")))?;
    let metrics = crate::metrics::install().map_err(Failure::found)?;
    let drain = service
        .pipelines
        .iter()
        .map(|p| p.sink.drain_timeout)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(15);
    let names: Vec<String> = service.pipelines.iter().map(|p| p.name.clone()).collect();

    let guard = Guard::new(&service.config.service);
    let (shutdown, shutting_down) = tokio::sync::watch::channel(false);
    let registry = Registry::start(service, shutting_down, Some(metrics));
    let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, registry.clone(), guard, async move {
        let _ = api_stopped.await;
    }));
    tracing::info!(api = %format!("http://{addr}"), pipelines = ?names, "rewind service started");

    tokio::select! {
        _ = wait_for_signal() => {}
        result = server => {
            return Err(Failure::found(format!("the HTTP API stopped: {}", match result {
                Ok(Ok(())) => "without an error".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            })));
        }
    }
    tracing::info!(
        deadline_s = drain.as_secs(),
        "stop requested; stopping every pipeline gracefully (a second signal exits at once)"
    );
    shutdown.send_replace(true);
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("error: second signal: exiting at once; the archive stays consistent and restores resume exactly");
        std::process::exit(130);
    });
    let drained = registry.drained(drain).await;
    let _ = api_stop.send(());
    if !drained {
        return Err(Failure::found(format!(
            "pipelines did not stop within {}s; exiting; the next start resumes from the archive and the restores' committed progress",
            drain.as_secs()
        )));
    }
    tracing::info!("every pipeline stopped");
    Ok(())
}
