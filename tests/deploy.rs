//! The Kubernetes chart (`deploy/helm/rewind`) and the alerting rules, as far as no cluster allows:
//! `helm lint`, `helm template` with the example values, the rendered objects checked for what
//! matters (probes, non-root, secrets by reference, the configuration passing `rewind run
//! --check`), and the rules checked and unit-tested by `promtool`, naming only metrics and labels
//! Rewind exports. `helm` and `promtool` come from the test bed (`scripts/helm.sh`,
//! `scripts/promtool.sh`; `scripts/test` exports their paths).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value as Yaml;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("deploy/helm/rewind")
}

/// A test-bed tool named by `var`.
fn tool(var: &str, script: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with scripts/test, or export {var}=$(scripts/{script})")
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
    common::text(&out.stdout)
}

fn helm() -> Command {
    let mut cmd = Command::new(tool("REWIND_TEST_HELM", "helm.sh"));
    // No repositories, no cluster, no cache outside the test's reach.
    let home = std::env::temp_dir().join("rewind-test-helm");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// The chart rendered with `values` (`--set` pairs) on top of its defaults, by kind and name.
fn render(set: &[&str]) -> BTreeMap<(String, String), Yaml> {
    let mut cmd = helm();
    cmd.args(["template", "backup"]).arg(chart());
    cmd.args(["--namespace", "kafka-backup"]);
    for pair in set {
        cmd.args(["--set", pair]);
    }
    let text = run(&mut cmd);
    let mut objects = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = Yaml::deserialize(doc).unwrap();
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap().to_string();
        let name = value["metadata"]["name"].as_str().unwrap().to_string();
        objects.insert((kind, name), value);
    }
    objects
}

fn object<'a>(objects: &'a BTreeMap<(String, String), Yaml>, kind: &str) -> &'a Yaml {
    objects
        .iter()
        .find(|((k, _), _)| k == kind)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {kind} rendered: {:?}", objects.keys()))
}

#[test]
fn the_chart_lints_and_renders_a_secure_deployment() {
    run(helm().args(["lint", "--strict"]).arg(chart()).args([
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
    ]));
    let objects = render(&["serviceMonitor.enabled=true", "prometheusRule.enabled=true"]);
    let kinds: Vec<&str> = objects.keys().map(|(k, _)| k.as_str()).collect();
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }

    let deployment = object(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(container["ports"][0]["name"], "http");
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 45);

    // Secrets only by reference: the token comes from a Secret, and no value in the pod spec or
    // the ConfigMap is one.
    let env: BTreeMap<String, Yaml> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    let token = &env["REWIND_API_TOKEN"]["valueFrom"]["secretKeyRef"];
    assert_eq!(token["name"], "rewind-api");
    assert_eq!(token["key"], "token");
    assert_eq!(
        env["REWIND__SERVICE__API_TOKEN"]["value"],
        "${env:REWIND_API_TOKEN}"
    );
    let hosts: Vec<String> = serde_json::from_str(
        env["REWIND__SERVICE__ALLOWED_HOSTS"]["value"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(
        hosts.contains(&"backup-rewind.kafka-backup.svc".to_string()),
        "{hosts:?}"
    );

    let service = object(&objects, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let monitor = object(&objects, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");

    // The PrometheusRule carries the rules file unchanged.
    let rules: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(chart().join("rules/rewind-alerts.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(object(&objects, "PrometheusRule")["spec"], rules);

    // The configuration and pipelines, as the pod sees them, pass `rewind run --check`.
    let config = object(&objects, "ConfigMap");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pipelines")).unwrap();
    for (key, text) in config["data"].as_mapping().unwrap() {
        let key = key.as_str().unwrap();
        let path = if key == "rewind.toml" {
            dir.path().join(key)
        } else {
            dir.path().join("pipelines").join(key)
        };
        std::fs::write(path, text.as_str().unwrap()).unwrap();
    }
    let mut check = Command::new(env!("CARGO_BIN_EXE_rewind"));
    check
        .args(["run", "--check", "--config"])
        .arg(dir.path().join("rewind.toml"))
        .env("REWIND_API_TOKEN", "0123456789abcdef0123456789abcdef");
    for (name, e) in &env {
        if let Some(value) = e["value"].as_str() {
            let value = value.replace(
                "/etc/rewind/pipelines",
                &dir.path().join("pipelines").display().to_string(),
            );
            check.env(name, value);
        }
    }
    let out = run(&mut check);
    assert!(out.contains("backup-all"), "{out}");
}

#[test]
fn the_chart_refuses_to_render_without_an_api_token() {
    let out = helm()
        .args(["template", "backup"])
        .arg(chart())
        .args(["--set", "apiToken.existingSecret="])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        common::text(&out.stderr).contains("apiToken.existingSecret is required"),
        "{}",
        common::text(&out.stderr)
    );
}

fn promtool() -> Command {
    Command::new(tool("REWIND_TEST_PROMTOOL", "promtool.sh"))
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = chart().join("rules");
    run(promtool()
        .arg("check")
        .arg("rules")
        .arg(rules.join("rewind-alerts.yaml")));
    run(promtool()
        .current_dir(&rules)
        .args(["test", "rules", "rewind-alerts.test.yaml"]));
}

/// Every series a rule or its unit test names is one Rewind exports, with labels it sets.
#[test]
fn the_alert_rules_name_only_metrics_rewind_exports() {
    let exported = std::fs::read_to_string(root().join("src/metrics.rs")).unwrap();
    let labels: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("rewind_sink_recovery_point_age_seconds", &["topic"][..]),
        ("rewind_sink_gaps_total", &["topic"][..]),
        ("rewind_sink_partitions_refused_total", &["topic"][..]),
        ("rewind_sink_errors_total", &["kind"][..]),
        ("rewind_sink_lag_records", &["topic"][..]),
        ("rewind_pipeline_up", &["pipeline"][..]),
        ("rewind_pipeline_paused", &["pipeline"][..]),
        ("rewind_pipeline_restarts_total", &["pipeline"][..]),
        ("rewind_restore_errors_total", &[][..]),
        ("rewind_restore_lag_records", &["topic"][..]),
        ("rewind_drill_last_success_timestamp_seconds", &[][..]),
        ("rewind_drills_total", &["result"][..]),
        ("rewind_table_last_sync_timestamp_seconds", &[][..]),
    ]);
    let metric = regex::Regex::new(r"rewind_[a-z_]+").unwrap();
    let rules: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(chart().join("rules/rewind-alerts.yaml")).unwrap(),
    )
    .unwrap();
    let mut named = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            for name in metric.find_iter(expr) {
                let name = name.as_str();
                assert!(
                    exported.contains(&format!("\"{name}\"")),
                    "{}: {name} is not exported (src/metrics.rs)",
                    rule["alert"].as_str().unwrap()
                );
                assert!(labels.contains_key(name), "{name}: list its labels here");
                named += 1;
            }
        }
    }
    assert!(named >= 10, "{named}");
    // The labels the rules group by and the tests feed are those the code sets.
    let text = std::fs::read_to_string(chart().join("rules/rewind-alerts.test.yaml")).unwrap();
    let series = regex::Regex::new(r"series: '(rewind_[a-z_]+)\{([^}]*)\}'").unwrap();
    for found in series.captures_iter(&text) {
        let name = &found[1];
        let allowed = labels[name];
        for pair in found[2].split(',') {
            let label = pair.split('=').next().unwrap().trim();
            assert!(
                label == "instance" || allowed.contains(&label),
                "{name} has no label {label}"
            );
        }
    }
    // Every source file: where a metric is set moves as the code is split.
    fn sources(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut text = String::new();
    sources(&root().join("src"), &mut text);
    let sources = text;
    for label in ["\"topic\" =>", "\"kind\" =>", "\"pipeline\" =>"] {
        assert!(sources.contains(label), "{label}");
    }
}
