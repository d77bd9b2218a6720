use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::json;

use super::units::Size;
use super::*;

/// The problems of a service whose only pipeline, `dr.toml`, is `pipeline`.
fn pipeline_problems(pipeline: &str) -> Vec<Problem> {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    std::fs::write(dir.path().join("rewind.toml"), "").unwrap();
    std::fs::write(pipelines.join("dr.toml"), pipeline).unwrap();
    match load_service(&Sources {
        file: Some(dir.path().join("rewind.toml")),
        env: env(&[]),
        ..Sources::default()
    }) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

fn env(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn problems(sources: &Sources) -> Vec<String> {
    match load(sources) {
        Err(ConfigError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
        other => panic!("expected invalid configuration, got {other:?}"),
    }
}

#[test]
fn defaults_alone_load_as_the_default_config() {
    let config = load(&Sources {
        env: env(&[]),
        ..Sources::default()
    })
    .unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.storage.s3.part_size, Size::mib(16));
}

#[test]
fn each_layer_overrides_the_one_below() {
    let f = file(
        r#"
        archive = "file:///from/file"
        [storage.s3]
        region = "eu-west-1"
        endpoint = "http://127.0.0.1:9000"
        [storage.retry]
        max_attempts = 3
        max_backoff = "2s"
        [kafka]
        bootstrap_servers = "file-host:9092"
        "#,
    );
    let sources = Sources {
        file: Some(f.path().to_path_buf()),
        env: env(&[
            ("REWIND__STORAGE__S3__REGION", "us-east-2"),
            ("REWIND__STORAGE__RETRY__MAX_ATTEMPTS", "9"),
            ("REWIND__KAFKA__BOOTSTRAP_SERVERS", "env-host:9092"),
            ("UNRELATED", "ignored"),
        ]),
        overrides: vec![
            ("kafka.bootstrap_servers".into(), json!("flag-host:9092")),
            ("storage.s3.path_style".into(), json!(true)),
        ],
    };
    let config = load(&sources).unwrap();
    assert_eq!(config.archive, "file:///from/file", "file beats defaults");
    assert_eq!(
        config.storage.s3.endpoint.as_deref(),
        Some("http://127.0.0.1:9000")
    );
    assert_eq!(config.storage.retry.max_backoff, Duration::from_secs(2));
    assert_eq!(
        config.storage.s3.region.as_deref(),
        Some("us-east-2"),
        "env beats file"
    );
    assert_eq!(
        config.storage.retry.max_attempts, 9,
        "env values are typed by the key"
    );
    assert_eq!(
        config.kafka.bootstrap_servers, "flag-host:9092",
        "flags beat env"
    );
    assert!(config.storage.s3.path_style);
    assert_eq!(
        config.storage.retry.initial_backoff,
        RetryConfig::default().initial_backoff,
        "untouched keys keep defaults"
    );
}

#[test]
fn kafka_properties_keep_their_dotted_names() {
    let f = file(
        r#"
        [kafka.properties]
        "security.protocol" = "SASL_SSL"
        "sasl.mechanism" = "SCRAM-SHA-512"
        "sasl.password" = "hunter2"
        "#,
    );
    let config = load(&Sources {
        file: Some(f.path().to_path_buf()),
        env: env(&[]),
        ..Sources::default()
    })
    .unwrap();
    assert_eq!(
        config
            .kafka
            .properties
            .get("sasl.mechanism")
            .map(String::as_str),
        Some("SCRAM-SHA-512")
    );
    assert_eq!(config.kafka.properties.len(), 3);
    let shown = format!("{:?}", config.redacted());
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!format!("{:?}", config.kafka).contains("hunter2"));
}

#[test]
fn env_strings_stay_strings_where_a_string_is_expected() {
    let sources = Sources {
        env: env(&[
            ("REWIND__STORAGE__S3__ACCESS_KEY_ID", "0042"),
            ("REWIND__STORAGE__S3__SECRET_ACCESS_KEY", "007"),
            ("REWIND__STORAGE__S3__PATH_STYLE", "yes"),
        ]),
        ..Sources::default()
    };
    let config = load(&sources).unwrap();
    assert_eq!(config.storage.s3.secret_access_key.as_deref(), Some("007"));
    assert_eq!(config.storage.s3.access_key_id.as_deref(), Some("0042"));
    assert!(config.storage.s3.path_style);
    assert!(
        !format!("{:?}", config.storage.s3).contains("007"),
        "secrets stay out of Debug output"
    );
}

#[test]
fn every_problem_is_reported_at_once_with_its_key_path() {
    let f = file(
        r#"
        archive = "s3://Bad_Bucket"
        colour = "blue"
        [storage.s3]
        regoin = "eu-west-1"
        path_style = "sometimes"
        part_size = "huge"
        connect_timeout = "soon"
        sse = "rot13"
        [storage.retry]
        max_attempts = 0
        [kafka]
        bootstrap_servers = "localhost"
        [sink]
        topics = "orders("
        [log]
        format = "xml"
        "#,
    );
    let found = problems(&Sources {
        file: Some(f.path().to_path_buf()),
        env: env(&[]),
        ..Sources::default()
    });
    let expect = [
        "archive: invalid archive URL \"s3://Bad_Bucket\"",
        "sink.topics: invalid regular expression \"orders(\"",
        "colour: unknown key",
        "storage.s3.regoin: unknown key (expected one of: access_key_id,",
        "storage.s3.path_style: invalid type: string \"sometimes\", expected a boolean",
        "storage.s3.part_size: expected a size such as 128MiB",
        "storage.s3.connect_timeout: expected a duration such as 60s",
        "storage.s3.sse: unknown variant `rot13`",
        "storage.retry.max_attempts: must be at least 1",
        "kafka.bootstrap_servers: \"localhost\" has no port",
        "log.format: unknown variant `xml`",
    ];
    for needle in expect {
        assert!(
            found.iter().any(|p| p.starts_with(needle)),
            "missing {needle:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}

#[test]
fn env_mistakes_name_the_variable() {
    let found = problems(&Sources {
        env: env(&[
            ("REWIND__STORAGE__S3__PATH_STYLE", "maybe"),
            ("REWIND__STORAGE__S3__REGOIN", "x"),
            ("REWIND__STORAGE", "x"),
        ]),
        ..Sources::default()
    });
    assert!(found.iter().any(|p| p == "storage.s3.path_style (from REWIND__STORAGE__S3__PATH_STYLE): expected true or false, got \"maybe\""), "{found:#?}");
    assert!(
        found
            .iter()
            .any(|p| p == "REWIND__STORAGE__S3__REGOIN: unknown setting \"storage.s3.regoin\""),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("storage (from REWIND__STORAGE): is a section")),
        "{found:#?}"
    );
}

#[test]
fn an_s3_archive_needs_a_region_from_somewhere() {
    let sources = |pairs: &[(&str, &str)]| Sources {
        env: env(pairs),
        overrides: vec![("archive".into(), json!("s3://backups/prod"))],
        ..Sources::default()
    };
    let found = problems(&sources(&[("HOME", "/nonexistent")]));
    assert_eq!(found, vec!["storage.s3.region: missing (set it in the config file, REWIND__STORAGE__S3__REGION, AWS_REGION or an AWS profile)"]);
    assert!(load(&sources(&[("AWS_REGION", "eu-central-1")])).is_ok());
    assert!(load(&sources(&[("REWIND__STORAGE__S3__REGION", "eu-central-1")])).is_ok());
}

#[test]
fn semantic_checks_cover_credentials_encryption_and_retries() {
    let f = file(
        r#"
        [storage.s3]
        access_key_id = "AKIA"
        kms_key_id = "alias/rewind"
        endpoint = "127.0.0.1:9000"
        part_size = "1MiB"
        storage_class = "cold"
        [storage.retry]
        initial_backoff = "1m"
        max_backoff = "1s"
        [log]
        level = "rewind=loud"
        "#,
    );
    let found = problems(&Sources {
        file: Some(f.path().to_path_buf()),
        env: env(&[]),
        ..Sources::default()
    });
    for needle in [
        "storage.s3.secret_access_key: access_key_id and secret_access_key must be set together",
        "storage.s3.kms_key_id: only applies with sse = \"aws:kms\"",
        "storage.s3.endpoint: expected an http:// or https:// URL",
        "storage.s3.part_size: must be between 5MiB and 5GiB, got 1MiB",
        "storage.s3.storage_class: expected an S3 storage class",
        "storage.retry.initial_backoff: must not exceed storage.retry.max_backoff",
        "log.level: not a valid filter",
    ] {
        assert!(
            found.iter().any(|p| p.starts_with(needle)),
            "missing {needle:?} in {found:#?}"
        );
    }
}

#[test]
fn file_errors_name_the_file() {
    let missing = load(&Sources {
        file: Some("/nonexistent/rewind.toml".into()),
        env: env(&[]),
        ..Sources::default()
    })
    .unwrap_err();
    assert_eq!(
        missing.to_string(),
        "config file /nonexistent/rewind.toml: not found (check --config)"
    );
    let f = file("archive = \n");
    let broken = load(&Sources {
        file: Some(f.path().to_path_buf()),
        env: env(&[]),
        ..Sources::default()
    })
    .unwrap_err();
    assert!(matches!(broken, ConfigError::File { .. }), "{broken:?}");
    assert!(
        broken.to_string().contains(&f.path().display().to_string()),
        "{broken}"
    );
}

#[test]
fn s3_options_carry_encryption_and_retry_settings() {
    let f = file(
        r#"
        archive = "s3://backups"
        [storage.s3]
        region = "eu-west-1"
        sse = "aws:kms"
        kms_key_id = "alias/rewind"
        storage_class = "STANDARD_IA"
        [storage.retry]
        max_attempts = 2
        "#,
    );
    let config = load(&Sources {
        file: Some(f.path().to_path_buf()),
        env: env(&[]),
        ..Sources::default()
    })
    .unwrap();
    let opts = config.s3_options();
    assert_eq!(
        opts.sse,
        Some(crate::storage::ServerSideEncryption::Kms {
            key_id: Some("alias/rewind".into())
        })
    );
    assert_eq!(opts.storage_class.as_deref(), Some("STANDARD_IA"));
    assert_eq!(opts.retry.max_attempts, 2);
}

#[test]
fn the_example_config_in_the_repository_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rewind.toml");
    let config = load(&Sources {
        file: Some(path),
        env: env(&[]),
        ..Sources::default()
    })
    .unwrap();
    assert_eq!(config.archive, "s3://kafka-backups/prod");
    assert_eq!(config.storage.s3.sse, SseMode::Aes256);
    assert_eq!(
        config.kafka.properties.get("client.id").map(String::as_str),
        Some("rewind")
    );
}

#[test]
fn the_example_service_and_pipelines_in_the_repository_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let service = load_service(&Sources {
        file: Some(root.join("config/rewind.toml")),
        env: env(&[]),
        ..Sources::default()
    })
    .unwrap();
    assert_eq!(
        service
            .config
            .service
            .http_addr
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .port(),
        8080
    );
    let names: Vec<(&str, PipelineKind, &str)> = service
        .pipelines
        .iter()
        .map(|p| (p.name.as_str(), p.kind, p.cluster.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("backup-all", PipelineKind::Sink, "default"),
            ("dr-standby", PipelineKind::Restore, "standby"),
        ]
    );
    let backup = &service.pipelines[0];
    assert_eq!(backup.sink.group.as_deref(), Some("rewind-backup-all"));
    assert_eq!(backup.sink.max_file_age, Duration::from_secs(60));
    // Keys the pipeline leaves out come from the service's [sink].
    assert_eq!(backup.sink.buffer_budget, service.config.sink.buffer_budget);
    let standby = &service.pipelines[1];
    assert!(standby.job.follow);
    assert_eq!(standby.restore_id(), "dr-standby");
    assert_eq!(standby.restore.poll_interval, Duration::from_secs(10));
    assert!(service.config.cluster("standby").is_some());
}

#[test]
fn named_clusters_are_checked_like_the_default_one_and_set_from_the_environment() {
    let f = file(
        "[clusters.standby]\nbootstrap_servers = \"standby:9092\"\nbogus = 1\n[clusters.standby.properties]\n\"client.id\" = \"x\"\n",
    );
    let found = problems(&Sources {
        file: Some(f.path().into()),
        env: env(&[("REWIND__CLUSTERS__OTHER__BOOTSTRAP_SERVERS", "nohost")]),
        ..Sources::default()
    });
    assert_eq!(
        found,
        [
            "clusters.other.bootstrap_servers: \"nohost\" has no port (expected host:port such as 127.0.0.1:9092)",
            "clusters.standby.bogus: unknown key (expected one of: aws_msk_iam, aws_region, bootstrap_servers, properties)",
        ]
    );
    let f = file("[clusters.standby]\nbootstrap_servers = \"standby:9092\"\n");
    let config = load(&Sources {
        file: Some(f.path().into()),
        env: env(&[(
            "REWIND__CLUSTERS__STANDBY__BOOTSTRAP_SERVERS",
            "dr-1:9092,dr-2:9092",
        )]),
        ..Sources::default()
    })
    .unwrap();
    assert_eq!(
        config.cluster("standby").unwrap().bootstrap_servers,
        "dr-1:9092,dr-2:9092"
    );
    assert_eq!(config.cluster("default"), Some(&config.kafka));
    assert!(config.cluster("nope").is_none());
}

#[test]
fn msk_iam_needs_a_region_and_oauthbearer() {
    let f = file(
        "[kafka]\nbootstrap_servers = \"b-1.msk:9098\"\naws_msk_iam = true\n[kafka.properties]\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n[clusters.dr]\nbootstrap_servers = \"dr:9092\"\naws_region = \"eu-west-1\"\n",
    );
    assert_eq!(
        problems(&Sources {
            file: Some(f.path().into()),
            env: env(&[("HOME", "/nonexistent")]),
            ..Sources::default()
        }),
        [
            "clusters.dr.aws_region: only applies with aws_msk_iam = true",
            "kafka.aws_msk_iam: needs SASL mechanism OAUTHBEARER, but the properties set sasl.mechanism = \"SCRAM-SHA-512\"",
            "kafka.aws_region: missing for aws_msk_iam (set it, AWS_REGION or an AWS profile)",
        ]
    );
    let f = file("[kafka]\nbootstrap_servers = \"b-1.msk:9098\"\naws_msk_iam = true\n");
    let config = load(&Sources {
        file: Some(f.path().into()),
        env: env(&[("AWS_REGION", "eu-west-1")]),
        ..Sources::default()
    })
    .unwrap();
    assert!(config.kafka.aws_msk_iam);
}

/// The configuration reference in README.md names every key the structs have, and no key they
/// do not have.
#[test]
fn the_readme_configuration_reference_matches_the_structs() {
    fn leaves(value: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() && path != "kafka.properties" => {
                for (key, child) in map {
                    let here = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    leaves(child, &here, out);
                }
            }
            _ => out.push(path.to_string()),
        }
    }
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let start = readme
        .find("| key | default | meaning |")
        .expect("the table");
    let table: Vec<&str> = readme[start..]
        .lines()
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .collect();
    let mut keys = Vec::new();
    leaves(
        &serde_json::to_value(Config::default()).unwrap(),
        "",
        &mut keys,
    );
    for key in &keys {
        let (parent, last) = key.rsplit_once('.').unwrap_or(("", key));
        let named = match key.as_str() {
            "clusters" | "archives" => format!("`{key}.<name>`"),
            _ => format!("`{key}`"),
        };
        let documented = table.iter().any(|row| {
            let first = row.split('|').nth(1).unwrap_or_default();
            first.contains(&named)
                || (first.contains(&format!("`{parent}.")) && first.contains(&format!("`{last}`")))
        });
        assert!(
            documented,
            "README's configuration table does not name {key}"
        );
    }
    // ...and every row names a real key.
    let shape = serde_json::to_value(Config::default()).unwrap();
    for row in &table {
        let first = row.split('|').nth(1).unwrap_or_default();
        let named = first.split('`').nth(1).unwrap_or_default();
        let pointer = format!("/{}", named.replace(".<name>", "").replace('.', "/"));
        assert!(
            shape.pointer(&pointer).is_some(),
            "README's configuration table names {named}, which is not a key"
        );
    }
}

#[test]
fn pipelines_must_not_share_a_restore_id_or_a_sink_group_and_sections_are_tables() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    std::fs::write(dir.path().join("rewind.toml"), "").unwrap();
    for (name, text) in [
        (
            "a.toml",
            "kind = \"restore\"\n[restore]\nrestore_id = \"dr\"\n",
        ),
        ("dr.toml", "kind = \"restore\"\n"),
        ("s1.toml", "kind = \"sink\"\n[sink]\ngroup = \"shared\"\n"),
        ("s2.toml", "kind = \"sink\"\n[sink]\ngroup = \"shared\"\n"),
        (
            "s3.toml",
            "kind = \"sink\"\nenabled = false\n[sink]\ngroup = \"shared\"\n",
        ),
        ("t.toml", "kind = \"restore\"\nrestore = 5\n"),
    ] {
        std::fs::write(pipelines.join(name), text).unwrap();
    }
    let found = match load_service(&Sources {
        file: Some(dir.path().join("rewind.toml")),
        env: env(&[]),
        ..Sources::default()
    }) {
        Err(ConfigError::Invalid(problems)) => problems
            .iter()
            .map(|p| {
                let text = p.to_string();
                text[text.find("pipelines/").unwrap() + "pipelines/".len()..].to_string()
            })
            .collect::<Vec<_>>(),
        other => panic!("expected problems, got {other:?}"),
    };
    assert_eq!(
        found,
        [
            "t.toml: restore: expected a table: [restore]",
            "dr.toml: restore.restore_id: pipeline a restores into cluster default under the same id \"dr\"; give each restore pipeline its own restore_id",
            "s2.toml: sink.group: pipeline s1 uses the same consumer group \"shared\" on cluster default; the two would split the partitions between them",
        ]
    );
}

#[test]
fn a_bad_service_setting_is_reported_once_not_again_for_each_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    std::fs::write(
        dir.path().join("rewind.toml"),
        "[sink]\nmax_file_records = 0\n",
    )
    .unwrap();
    std::fs::write(pipelines.join("a.toml"), "kind = \"sink\"\n").unwrap();
    std::fs::write(
        pipelines.join("b.toml"),
        "kind = \"sink\"\n[sink]\nmax_file_records = 0\n",
    )
    .unwrap();
    let found = match load_service(&Sources {
        file: Some(dir.path().join("rewind.toml")),
        env: env(&[]),
        ..Sources::default()
    }) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected problems, got {other:?}"),
    };
    let paths: Vec<String> = found
        .iter()
        .map(|p| p.path.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    // Once for the service, once for the pipeline that sets the bad value itself.
    assert_eq!(
        paths,
        ["sink.max_file_records", "b.toml: sink.max_file_records"],
        "{found:?}"
    );
}

#[test]
fn a_restore_transaction_interval_must_be_below_the_transaction_timeout() {
    // The interval against the default timeout (5 minutes), and against one set as a property.
    let f = file(
        r#"
        [restore]
        transaction_interval = "5m"
        [clusters.standby.properties]
        "transaction.timeout.ms" = "4000"
        "#,
    );
    let found = problems(&Sources {
        file: Some(f.path().to_path_buf()),
        env: env(&[]),
        ..Sources::default()
    });
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found.iter().any(
            |p| p.starts_with("restore.transaction_interval: 5m is not below")
                && p.contains("transaction.timeout.ms of 300000 ms")
        ),
        "{found:#?}"
    );
    assert!(
        found.iter().any(|p| p.starts_with(
            "clusters.standby.properties.\"transaction.timeout.ms\": 4000 ms is not above"
        )),
        "{found:#?}"
    );

    // A restore pipeline's own interval, against its cluster's timeout.
    let found =
        pipeline_problems("kind = \"restore\"\n[restore]\ntransaction_interval = \"10m\"\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0]
            .path
            .ends_with("dr.toml: restore.transaction_interval")
            && found[0].message.contains("transaction.timeout.ms"),
        "{found:?}"
    );
}

#[test]
fn env_lists_are_json_arrays_or_commas_and_the_api_token_is_a_secret() {
    let sources = Sources {
        env: env(&[
            (
                "REWIND__SERVICE__ALLOWED_HOSTS",
                r#"["rewind", "rewind.ops.svc"]"#,
            ),
            (
                "REWIND__SERVICE__ALLOWED_ORIGINS",
                "https://a.example, https://b.example",
            ),
            ("REWIND__SERVICE__API_TOKEN", "${env:TOKEN_FOR_TEST}"),
            ("TOKEN_FOR_TEST", "token-of-at-least-16-chars"),
        ]),
        ..Sources::default()
    };
    let config = load(&sources).unwrap();
    assert_eq!(config.service.allowed_hosts, ["rewind", "rewind.ops.svc"]);
    assert_eq!(
        config.service.allowed_origins,
        ["https://a.example", "https://b.example"]
    );
    assert_eq!(
        config.service.api_token.as_deref(),
        Some("token-of-at-least-16-chars")
    );
    for shown in [format!("{config:?}"), format!("{:?}", config.redacted())] {
        assert!(!shown.contains("token-of-at-least"), "{shown}");
    }
    let bad = Sources {
        env: env(&[
            ("REWIND__SERVICE__ALLOWED_HOSTS", r#"["unclosed""#),
            ("REWIND__SERVICE__ALLOWED_ORIGINS", "https://a.example/path"),
            ("REWIND__SERVICE__API_TOKEN", "tooshort1"),
        ]),
        ..Sources::default()
    };
    let found = problems(&bad).join("\n");
    for expected in [
        "service.allowed_hosts (from REWIND__SERVICE__ALLOWED_HOSTS): expected a list",
        "service.allowed_origins: \"https://a.example/path\" is not an origin",
        "service.api_token: is shorter than 16 characters",
    ] {
        assert!(
            found.contains(expected),
            "missing {expected:?} in:\n{found}"
        );
    }
    assert!(!found.contains("tooshort1"), "{found}");
}

#[test]
fn a_restore_pipeline_takes_no_relative_time() {
    // A pipeline is read again at every start: `now-1h` would move a window its restore id is bound
    // to. Each relative end is one problem, which names the absolute time to write instead; the
    // job's other checks still run.
    let found = pipeline_problems(
        "kind = \"restore\"\n[restore]\nfrom = \"now-1h\"\nto = \"2h agoo\"\ntopics = \"(\"\n",
    );
    let paths: Vec<&str> = found
        .iter()
        .map(|p| p.path.rsplit(": ").next().unwrap_or_default())
        .collect();
    assert_eq!(
        paths,
        ["restore.from", "restore.to", "restore.topics"],
        "{found:#?}"
    );
    assert!(
        found[0].message.contains("now-1h is a relative time")
            && found[0].message.ends_with("Z (now-1h as of now)"),
        "{found:#?}"
    );
    assert!(found[1].message.contains("is not a time"), "{found:#?}");
}

#[test]
fn a_restore_pipeline_holds_no_registry_credentials() {
    // The service shows a pipeline's job on its API: a secret there would be shown too.
    let found = pipeline_problems(
        "kind = \"restore\"\n[restore]\nschema_ids_from = \"https://key:secret@registry:8081\"\nschema_ids_to = \"http://target:8081\"\nschema_ids_keys = true\n",
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].path.ends_with("restore.schema_ids_from")
            && found[0].message.starts_with("holds credentials")
            && !found[0].message.contains("secret"),
        "{found:#?}"
    );
    // The job's keys that are unset by default are known keys (marks were refused as unknown).
    let found = pipeline_problems(
        "kind = \"restore\"\n[restore]\nfrom_mark = \"before\"\nto_mark = \"after\"\ntopics = \"(\"\n",
    );
    assert!(
        found.len() == 1 && found[0].path.ends_with("restore.topics"),
        "{found:#?}"
    );
    // Keys alone mean nothing to map with.
    let found = pipeline_problems("kind = \"restore\"\n[restore]\nschema_ids_keys = true\n");
    assert!(
        found.len() == 1 && found[0].path.ends_with("restore.schema_ids_keys"),
        "{found:#?}"
    );
}

#[test]
fn mark_schedules_are_one_period_or_a_list() {
    let load_marks = |text: &str, vars: &[(&str, &str)]| {
        let f = file(text);
        load(&Sources {
            file: Some(f.path().to_path_buf()),
            env: env(vars),
            ..Sources::default()
        })
        .map(|c| c.sink.marks)
    };
    use super::MarkEvery::{Daily, Hourly, Weekly};
    assert_eq!(load_marks("", &[]).unwrap(), vec![]);
    assert_eq!(load_marks("[sink]\nmarks = \"off\"", &[]).unwrap(), vec![]);
    assert_eq!(
        load_marks("[sink]\nmarks = \"daily\"", &[]).unwrap(),
        vec![Daily]
    );
    assert_eq!(
        load_marks("[sink]\nmarks = [\"daily\", \"weekly\"]", &[]).unwrap(),
        vec![Daily, Weekly]
    );
    assert_eq!(
        load_marks("", &[("REWIND__SINK__MARKS", "hourly")]).unwrap(),
        vec![Hourly]
    );
    let f = file("[sink]\nmarks = \"monthly\"");
    let found = problems(&Sources {
        file: Some(f.path().to_path_buf()),
        env: env(&[]),
        ..Sources::default()
    });
    assert!(
        found
            .iter()
            .any(|p| p.contains("sink.marks") && p.contains("\"weekly\" or a list")),
        "{found:?}"
    );
}

#[test]
fn the_compaction_schedule_is_checked() {
    let f = file(
        r#"
        [compact]
        every = "1h"
        archive = "cold"
        topics = "orders("
        max_file_size = "64KiB"
        "#,
    );
    let found = problems(&Sources {
        file: Some(f.path().to_path_buf()),
        env: env(&[]),
        ..Sources::default()
    });
    let expect = [
        "compact.archive: names no archive: add [archives] cold",
        "compact.topics: invalid regular expression \"orders(\"",
        "compact.max_file_size: must be at least 1MiB, got 64KiB",
    ];
    for needle in expect {
        assert!(
            found.iter().any(|p| p.starts_with(needle)),
            "missing {needle:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    let f = file("[compact]\nevery = \"30m\"\nsettle = \"2h\"\n");
    let config = load(&Sources {
        file: Some(f.path().to_path_buf()),
        env: env(&[]),
        ..Sources::default()
    })
    .unwrap();
    assert_eq!(config.compact.every, Duration::from_secs(1800));
    assert_eq!(config.compact.settle, Duration::from_secs(7200));
    assert_eq!(config.compact.max_file_size, Size::mib(512));
}
