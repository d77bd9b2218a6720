//! The container stack in docker/ cannot be started here (no engine), so what can be checked
//! without one is: the compose file parses and refers to files that exist, the Rewind service's
//! environment is a valid configuration with the example pipelines, Prometheus scrapes the
//! address the service listens on, the Grafana dashboard is valid JSON whose every query names a
//! metric Rewind exports, and the Dockerfile builds in stages and runs as a non-root user.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::Value as Yaml;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut value: Yaml =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Compose files share settings through `<<: *anchor` merge keys.
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    value
}

fn compose() -> Yaml {
    yaml(&root().join("docker/compose.yaml"))
}

fn service_env(compose: &Yaml, service: &str) -> BTreeMap<String, String> {
    compose["services"][service]["environment"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Yaml::String(s) => s.clone(),
                other => serde_yaml::to_string(other).unwrap().trim().to_string(),
            };
            (k.as_str().unwrap().to_string(), value)
        })
        .collect()
}

#[test]
fn the_compose_stack_has_every_service_and_its_files_exist() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    for name in [
        "kafka",
        "kafka-standby",
        "minio",
        "minio-init",
        "rewind",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name} is missing");
    }
    assert!(compose["services"]["kafka"]["image"]
        .as_str()
        .unwrap()
        .starts_with("apache/kafka:4."));
    assert_eq!(
        compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"].as_str(),
        Some("broker,controller"),
        "KRaft, no ZooKeeper"
    );
    // Every bind mount and the build context point at something in the repository.
    let docker = root().join("docker");
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    docker.join(source).exists(),
                    "{}: mount source {source} does not exist",
                    name.as_str().unwrap()
                );
            }
        }
    }
    let build = &compose["services"]["rewind"]["build"];
    let context = docker.join(build["context"].as_str().unwrap());
    assert!(context
        .join(build["dockerfile"].as_str().unwrap())
        .is_file());
}

#[test]
fn the_rewind_service_environment_is_a_valid_configuration() {
    let compose = compose();
    let env = service_env(&compose, "rewind");
    let command: Vec<&str> = compose["services"]["rewind"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(command, ["run", "--config", "/etc/rewind/rewind.toml"]);
    // What the container sees, with the mounted files at their repository paths.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(["run", "--check", "--config"])
        .arg(root().join("config/rewind.toml"))
        .envs(
            env.iter()
                .filter(|(k, _)| k.as_str() != "REWIND__SERVICE__PIPELINES"),
        )
        .env("REWIND__SERVICE__PIPELINES", root().join("pipelines"))
        .output()
        .unwrap();
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        common::text(&out.stderr)
    );
    assert!(stdout.contains("backup-all  sink"), "{stdout}");
    assert!(stdout.contains("dr-standby  restore  standby"), "{stdout}");
    assert_eq!(
        env["REWIND__SERVICE__PIPELINES"], "/etc/rewind/pipelines",
        "the pipelines are mounted there"
    );
    let mounts: Vec<&str> = compose["services"]["rewind"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"../pipelines:/etc/rewind/pipelines:ro"));

    // Prometheus scrapes the address the service listens on.
    let port = env["REWIND__SERVICE__HTTP_ADDR"]
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let prometheus = yaml(&root().join("docker/prometheus/prometheus.yml"));
    let job = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "rewind")
        .expect("a rewind scrape job");
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    assert_eq!(
        job["static_configs"][0]["targets"][0].as_str(),
        Some(format!("rewind:{port}").as_str())
    );
    // Prometheus names the service `rewind` in its Host header: the API must answer to it.
    let hosts: Vec<String> = serde_json::from_str(&env["REWIND__SERVICE__ALLOWED_HOSTS"]).unwrap();
    assert!(hosts.contains(&"rewind".to_string()), "{hosts:?}");
    // The alerting rules are loaded from the file the compose stack mounts.
    let rules = prometheus["rule_files"][0].as_str().unwrap();
    let mounted = compose["services"]["prometheus"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .any(|v| v.contains("rewind-alerts.yaml") && v.contains(rules));
    assert!(mounted, "{rules} is mounted into the prometheus service");
}

#[test]
fn the_dashboard_queries_only_metrics_rewind_exports() {
    let exported = std::fs::read_to_string(root().join("src/metrics.rs")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docker/grafana/dashboards/rewind.json")).unwrap(),
    )
    .expect("the dashboard is valid JSON");
    let datasource = yaml(&root().join("docker/grafana/provisioning/datasources/prometheus.yaml"));
    let uid = datasource["datasources"][0]["uid"].as_str().unwrap();
    let metric = regex::Regex::new(r"rewind_[a-z_]+").unwrap();
    let mut queries = 0;
    let mut titles = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        titles.push(panel["title"].as_str().unwrap_or_default().to_lowercase());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            queries += 1;
            assert_eq!(panel["datasource"]["uid"].as_str(), Some(uid), "{expr}");
            for name in metric.find_iter(expr) {
                assert!(
                    exported.contains(&format!("\"{}\"", name.as_str())),
                    "{expr}: {} is not a metric Rewind exports",
                    name.as_str()
                );
            }
        }
    }
    assert!(queries >= 10, "{queries} queries");
    for topic in ["throughput", "lag", "recovery point", "error", "restore"] {
        assert!(
            titles
                .iter()
                .any(|t| t.contains(topic) || (topic == "throughput" && t.contains("/s"))),
            "no panel about {topic}: {titles:?}"
        );
    }
}

#[test]
fn the_image_builds_in_stages_and_runs_as_a_non_root_user() {
    let dockerfile = std::fs::read_to_string(root().join("docker/Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    assert!(
        stages.last().unwrap().contains("slim"),
        "a small runtime base"
    );
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    let user = runtime
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets a USER");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(
                root().join(source).exists(),
                "{line}: {source} is not in the repository"
            );
        }
    }
}

/// A version such as `1.94.1` as comparable numbers.
fn version(text: &str) -> (u32, u32, u32) {
    let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Issue 14: the image's pinned toolchain builds the locked dependencies. (It pinned Rust 1.89
/// while the AWS SDK in Cargo.lock needs 1.94.1: `cargo build --locked` in the image failed.)
/// The Rust of the build stage is at least the crate's `rust-version`, which is at least what every
/// crate the binary builds on Linux declares.
#[test]
fn the_image_toolchain_builds_the_locked_dependencies() {
    let dockerfile = std::fs::read_to_string(root().join("docker/Dockerfile")).unwrap();
    let image = regex::Regex::new(r"(?m)^FROM rust:(\d+\.\d+(?:\.\d+)?)-")
        .unwrap()
        .captures(&dockerfile)
        .expect("the build stage is FROM rust:<version>-…")[1]
        .to_string();
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let declared = regex::Regex::new(r#"(?m)^rust-version = "([0-9.]+)""#)
        .unwrap()
        .captures(&manifest)
        .expect("Cargo.toml declares rust-version")[1]
        .to_string();
    assert!(
        version(&image) >= version(&declared),
        "the image's Rust {image} is older than rust-version {declared}"
    );

    // The crates the binary builds on Linux: normal and build dependencies from the root.
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages: BTreeMap<&str, &serde_json::Value> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let nodes: BTreeMap<&str, &serde_json::Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let mut todo = vec![metadata["resolve"]["root"].as_str().unwrap()];
    let mut seen = std::collections::BTreeSet::new();
    let mut newest = ((0, 0, 0), String::new());
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        let package = packages[id];
        if let Some(needs) = package["rust_version"].as_str() {
            if version(needs) > newest.0 {
                newest = (
                    version(needs),
                    format!("{} {} needs {needs}", package["name"], package["version"]),
                );
            }
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let built = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if built {
                todo.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    assert!(seen.len() > 100, "{} crates", seen.len());
    assert!(
        version(&declared) >= newest.0,
        "rust-version {declared} is below what the locked dependencies need: {}",
        newest.1
    );
}
