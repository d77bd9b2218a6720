//! The `rewind` binary as users meet it: exit codes (0 ok, 1 problem found, 2 usage or
//! configuration error), one-sentence errors on stderr, and the preflight against the real test bed.

mod common;

use std::path::Path;
use std::process::{Command, Output};

/// Run the binary with a clean environment: nothing from the developer's AWS setup leaks in.
fn rewind(args: &[&str], env: &[(&str, &str)], home: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rewind"));
    cmd.args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run rewind")
}

fn s3_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", common::s3_access_key()),
        ("AWS_SECRET_ACCESS_KEY", common::s3_secret_key()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

#[test]
fn version_and_help() {
    let home = tempfile::tempdir().unwrap();
    let out = rewind(&["--version"], &[], home.path());
    assert!(out.status.success());
    assert_eq!(
        common::text(&out.stdout).trim(),
        format!("rewind {}", env!("CARGO_PKG_VERSION"))
    );
    let out = rewind(&["--help"], &[], home.path());
    assert!(out.status.success());
    let help = common::text(&out.stdout);
    assert!(
        help.contains("Continuous backup and point-in-time recovery for Apache Kafka"),
        "{help}"
    );
    for command in ["check", "config"] {
        assert!(help.contains(command), "{help}");
    }
}

#[test]
fn unknown_flags_are_usage_errors() {
    let home = tempfile::tempdir().unwrap();
    let out = rewind(&["check", "--no-such-flag"], &[], home.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::text(&out.stderr).contains("unexpected argument '--no-such-flag'"),
        "{}",
        common::text(&out.stderr)
    );
    let out = rewind(&["check", "-X", "no-equals-sign"], &[], home.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::text(&out.stderr).contains("expected KEY=VALUE"),
        "{}",
        common::text(&out.stderr)
    );
}

#[test]
fn config_shows_every_layer_and_hides_secrets() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("rewind.toml");
    std::fs::write(
        &file,
        "archive = \"s3://backups/prod\"\n[storage.s3]\nregion = \"eu-west-1\"\naccess_key_id = \"AKIAEXAMPLE\"\nsecret_access_key = \"file-secret\"\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n",
    )
    .unwrap();
    let out = rewind(
        &[
            "config",
            "--config",
            file.to_str().unwrap(),
            "--json",
            "--bootstrap-servers",
            "flag:9092",
            "-X",
            "client.id=cli",
        ],
        &[("REWIND__STORAGE__S3__REGION", "us-west-2")],
        home.path(),
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["archive"], "s3://backups/prod");
    assert_eq!(
        shown["storage"]["s3"]["region"], "us-west-2",
        "env beats the file"
    );
    assert_eq!(
        shown["kafka"]["bootstrap_servers"], "flag:9092",
        "flags beat everything"
    );
    assert_eq!(shown["kafka"]["properties"]["client.id"], "cli");
    assert_eq!(shown["storage"]["s3"]["secret_access_key"], "<redacted>");
    assert_eq!(shown["kafka"]["properties"]["sasl.password"], "<redacted>");
    let all = format!("{}{}", common::text(&out.stdout), common::text(&out.stderr));
    assert!(
        !all.contains("file-secret") && !all.contains("hunter2"),
        "{all}"
    );

    let toml_out = rewind(
        &["config", "--config", file.to_str().unwrap()],
        &[],
        home.path(),
    );
    assert!(toml_out.status.success());
    assert!(
        common::text(&toml_out.stdout).contains("[storage.s3]"),
        "{}",
        common::text(&toml_out.stdout)
    );
}

#[test]
fn every_configuration_problem_is_reported_and_nothing_runs() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("bad.toml");
    std::fs::write(&file, "archive = \"s3://backups\"\nflush = 1\n[storage.s3]\npart_size = \"big\"\n[kafka]\nbootstrap_servers = \"nohost\"\n").unwrap();
    let out = rewind(
        &["check", "--config", file.to_str().unwrap()],
        &[],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = common::text(&out.stderr);
    for needle in [
        "error: invalid configuration (4 problems):",
        "  flush: unknown key",
        "  kafka.bootstrap_servers: \"nohost\" has no port",
        "  storage.s3.part_size: expected a size such as 128MiB",
        "  storage.s3.region: missing",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(
        common::text(&out.stdout).is_empty(),
        "nothing ran: {}",
        common::text(&out.stdout)
    );

    let out = rewind(
        &["check", "--config", "/nonexistent.toml"],
        &[],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        common::error_line(&out),
        "error: config file /nonexistent.toml: not found (check --config)"
    );

    let out = rewind(&["check", "--archive", "gs://elsewhere"], &[], home.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::error_line(&out).contains("archive: invalid archive URL \"gs://elsewhere\""),
        "{}",
        common::text(&out.stderr)
    );
}

#[test]
fn check_passes_against_the_test_bed() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("archive")).unwrap();
    let archive = format!("file://{}/archive", home.path().display());
    let out = rewind(
        &[
            "check",
            "--archive",
            &archive,
            "--bootstrap-servers",
            &common::kafka_bootstrap(),
        ],
        &[],
        home.path(),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        common::text(&out.stderr),
        common::testbed_hint()
    );
    let stdout = common::text(&out.stdout);
    assert!(
        stdout.contains(&format!("archive  {archive}: reachable, no archive yet")),
        "{stdout}"
    );
    assert!(
        stdout.contains("kafka    127.0.0.1:9092: cluster "),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("archive  {archive}: conditional writes not probed (check writes nothing; a sink proves them before its first write, or pass --write-probe)")),
        "{stdout}"
    );
    assert_eq!(
        tree(&home.path().join("archive")),
        Vec::<String>::new(),
        "check wrote nothing"
    );

    let bucket = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::new_bucket());
    let env = s3_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let archive = format!("s3://{bucket}/prod");
    let out = rewind(
        &[
            "check",
            "--no-kafka",
            "--write-probe",
            "--archive",
            &archive,
            "--s3-endpoint",
            &common::s3_endpoint(),
            "--s3-path-style",
        ],
        &env,
        home.path(),
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let stdout = common::text(&out.stdout);
    assert!(
        stdout.contains(&format!("archive  {archive}: reachable")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "archive  {archive}: create-only and compare-and-swap puts honoured"
        )),
        "asked, check proves the conditional writes: {stdout}"
    );
}

#[test]
fn check_names_what_is_wrong_with_the_archive() {
    let home = tempfile::tempdir().unwrap();
    let env = s3_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let endpoint = common::s3_endpoint();
    let bucket = common::unique("rewind-absent");

    let out = rewind(
        &[
            "check",
            "--no-kafka",
            "--archive",
            &format!("s3://{bucket}"),
            "--s3-endpoint",
            &endpoint,
            "--s3-path-style",
        ],
        &env,
        home.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(common::error_line(&out), format!("error: s3://{bucket}: bucket \"{bucket}\" not found (check --archive or REWIND__ARCHIVE)"));

    let wrong: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| {
            if *k == "AWS_SECRET_ACCESS_KEY" {
                (*k, "wrong")
            } else {
                (*k, *v)
            }
        })
        .collect();
    let out = rewind(
        &[
            "check",
            "--no-kafka",
            "--archive",
            &format!("s3://{bucket}"),
            "--s3-endpoint",
            &endpoint,
            "--s3-path-style",
        ],
        &wrong,
        home.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        common::error_line(&out),
        format!(
            "error: s3://{bucket}: access denied (check the credentials and the bucket policy)"
        )
    );

    let out = rewind(
        &[
            "check",
            "--no-kafka",
            "--archive",
            "s3://any-bucket",
            "--s3-endpoint",
            "http://127.0.0.1:1",
            "--s3-path-style",
        ],
        &env,
        home.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let line = common::error_line(&out);
    assert!(
        line.starts_with("error: s3://any-bucket: endpoint http://127.0.0.1:1 unreachable (connection refused); check storage.s3.endpoint and that the server is up"),
        "{line}"
    );

    let out = rewind(
        &["check", "--no-kafka", "--archive", "file:///proc/rewind"],
        &[],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        common::error_line(&out),
        "error: file:///proc/rewind: no archive at this path (no such folder); check --archive or REWIND__ARCHIVE, or let the first `rewind sink` create it"
    );
}

#[test]
fn check_names_an_unreachable_broker() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("archive")).unwrap();
    let archive = format!("file://{}/archive", home.path().display());
    let out = rewind(
        &[
            "check",
            "--archive",
            &archive,
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--timeout",
            "2s",
        ],
        &[],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        common::error_line(&out),
        "error: kafka 127.0.0.1:1: no broker answered within 2s (check --bootstrap-servers or kafka.bootstrap_servers, and that the cluster is up)"
    );
}

/// Issue 16: a mistyped archive path and a broker that does not answer are both named in one
/// run, and the path is still not there afterwards.
#[test]
fn check_reports_a_missing_archive_and_an_unreachable_broker_together() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("archvie");
    let archive = format!("file://{}", missing.display());
    let out = rewind(
        &[
            "check",
            "--archive",
            &archive,
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--timeout",
            "2s",
        ],
        &[],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = common::text(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(
        errors,
        [
            format!("error: {archive}: no archive at this path (no such folder); check --archive or REWIND__ARCHIVE, or let the first `rewind sink` create it").as_str(),
            "error: kafka 127.0.0.1:1: no broker answered within 2s (check --bootstrap-servers or kafka.bootstrap_servers, and that the cluster is up)",
        ],
        "{stderr}"
    );
    assert!(!missing.exists(), "check created {}", missing.display());
}

/// Every file and folder under `root`, relative to it, sorted (empty when `root` does not exist).
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Issue 16: the commands that only read create nothing in the archive: not its folder when it
/// is missing (a mistyped path must not start to look fine), not a lock or a probe key in an
/// existing one. The restore writes to Kafka only.
#[test]
fn read_only_commands_write_nothing_to_the_archive() {
    let home = tempfile::tempdir().unwrap();
    let commands: [&[&str]; 7] = [
        &[
            "check",
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--timeout",
            "1s",
        ],
        &["check", "--no-kafka"],
        &["ls"],
        &["verify"],
        &["find", "--topic", "orders", "--key", "k"],
        &["restore", "--plan", "--bootstrap-servers", "127.0.0.1:1"],
        &["restore", "--bootstrap-servers", "127.0.0.1:1"],
    ];
    let missing = home.path().join("no").join("such").join("archive");
    let archive = format!("file://{}", missing.display());
    for args in commands {
        let mut all = args.to_vec();
        all.extend(["--archive", &archive]);
        let out = rewind(&all, &[], home.path());
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(
            common::text(&out.stderr).contains(&format!("{archive}: no archive at this path")),
            "{args:?}: {}",
            common::text(&out.stderr)
        );
        assert!(
            !home.path().join("no").exists(),
            "{args:?} created {}",
            missing.display()
        );
    }

    // An existing archive (an identity document only) is left exactly as it was.
    let existing = home.path().join("archive");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(
        existing.join("_archive.json"),
        r#"{"format_version": 1, "created_at": "2030-01-01T00:00:00.000Z", "cluster_id": "x", "writer": "rewind 0.1.0"}"#,
    )
    .unwrap();
    let before = tree(&existing);
    let archive = format!("file://{}", existing.display());
    for args in commands {
        let mut all = args.to_vec();
        all.extend(["--archive", &archive]);
        let out = rewind(&all, &[], home.path());
        assert_eq!(
            tree(&existing),
            before,
            "{args:?}: {}",
            common::text(&out.stderr)
        );
    }
    assert_eq!(
        tree(&existing),
        ["_archive.json"],
        "nothing beside the identity"
    );
}

/// Issue 16: the archive tools take no Kafka flags, so they do not offer them; the commands that
/// talk to Kafka do.
#[test]
fn only_the_commands_that_talk_to_kafka_take_its_flags() {
    let home = tempfile::tempdir().unwrap();
    for command in ["ls", "verify", "find", "retention"] {
        let out = rewind(&[command, "--help"], &[], home.path());
        assert!(out.status.success(), "{command}");
        let help = common::text(&out.stdout);
        assert!(help.contains("--archive"), "{command}: {help}");
        assert!(!help.contains("--bootstrap-servers"), "{command}: {help}");
        assert!(!help.contains("-X "), "{command}: {help}");
        for flags in [
            &["--bootstrap-servers", "127.0.0.1:9092"][..],
            &["-X", "security.protocol=SSL"][..],
        ] {
            let mut args = vec![command];
            args.extend_from_slice(flags);
            let out = rewind(&args, &[], home.path());
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            assert!(
                common::text(&out.stderr).contains(&format!("unexpected argument '{}'", flags[0])),
                "{args:?}: {}",
                common::text(&out.stderr)
            );
        }
    }
    for command in ["check", "sink", "restore", "config"] {
        let out = rewind(&[command, "--help"], &[], home.path());
        let help = common::text(&out.stdout);
        assert!(help.contains("--bootstrap-servers"), "{command}: {help}");
        assert!(help.contains("-X <KEY=VALUE>"), "{command}: {help}");
    }
}

/// Issue 16: a plain path is not taken for an archive URL; the refusal says how to write one.
#[test]
fn a_plain_path_as_archive_is_refused_with_the_fix() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("archive");
    std::fs::create_dir(&path).unwrap();
    for command in ["ls", "check"] {
        let out = rewind(
            &[command, "--archive", path.to_str().unwrap()],
            &[],
            home.path(),
        );
        assert_eq!(out.status.code(), Some(2), "{command}");
        let line = common::error_line(&out);
        assert!(
            line.contains("expected file:///absolute/path or s3://bucket/prefix"),
            "{command}: {line}"
        );
    }
}

/// While no broker answers, librdkafka retries every second and reports each failure: none of that
/// reaches the user as a warning or an error; the command's own error is the one line. Piped
/// stderr carries no colour codes, even with debug logs on.
#[test]
fn an_unreachable_cluster_is_one_line_and_piped_logs_are_plain() {
    let home = tempfile::tempdir().unwrap();
    // An empty folder: `check` finds no archive yet, which is no problem, so the cluster's is the
    // one error.
    std::fs::create_dir(home.path().join("archive")).unwrap();
    let archive = format!("file://{}/archive", home.path().display());
    let runs: [&[&str]; 2] = [
        &[
            "check",
            "--bootstrap-servers",
            "127.0.0.1:1,127.0.0.1:2",
            "--timeout",
            "3s",
        ],
        &[
            "sink",
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--topics",
            "t",
            "--log-level",
            "debug",
        ],
    ];
    for args in runs {
        let mut args = args.to_vec();
        args.extend(["--archive", &archive]);
        let out = rewind(&args, &[], home.path());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let error = common::error_line(&out);
        assert!(error.contains("no broker answered"), "{error}");
        let stderr = common::text(&out.stderr);
        let loud: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
            .collect();
        assert!(loud.is_empty(), "{args:?}: {loud:#?}");
        assert!(!stderr.contains('\x1b'), "{args:?}: {stderr}");
        if args.contains(&"debug") {
            // librdkafka's refusals were logged, as debug lines.
            assert!(
                stderr
                    .lines()
                    .any(|l| l.contains(" DEBUG ") && l.contains("Connection refused")),
                "{stderr}"
            );
        }
    }
}

/// A bare integer that is plausibly epoch seconds is refused wherever a time is taken, instead of
/// being read as milliseconds of January 1970; milliseconds and RFC 3339 pass.
#[test]
fn epoch_seconds_are_refused_where_a_time_is_taken() {
    let home = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", home.path().display());
    for args in [
        vec!["restore", "--archive", &archive, "--from", "1732356000"],
        vec![
            "restore",
            "--archive",
            &archive,
            "--to",
            "1732356000",
            "--plan",
        ],
        vec![
            "find",
            "--archive",
            &archive,
            "--topic",
            "t",
            "--from",
            "1732356000",
        ],
        vec![
            "find",
            "--archive",
            &archive,
            "--topic",
            "t",
            "--to",
            "1732356000",
        ],
    ] {
        let out = rewind(&args, &[], home.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let error = common::error_line(&out);
        assert!(
            error.contains("epoch seconds") && error.contains("1732356000000"),
            "{args:?}: {error}"
        );
    }
}

/// Relative times are taken wherever a time is, resolved once against one "now", and said back on
/// stderr as the absolute RFC 3339 time used.
#[test]
fn a_relative_time_is_taken_and_printed_back_absolute() {
    let home = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", home.path().display());
    let said = |stderr: &str, flag: &str| -> i64 {
        let line = stderr
            .lines()
            .find(|l| l.starts_with(flag))
            .unwrap_or_else(|| panic!("no {flag} line in {stderr}"));
        let (_, time) = line.rsplit_once(" is ").expect("FLAG TEXT is TIME");
        rewind::archive::time::parse_rfc3339_millis(time)
            .unwrap_or_else(|| panic!("{time:?} is not RFC 3339"))
    };
    let before = common::now_ms();
    let out = rewind(
        &[
            "find",
            "--archive",
            &archive,
            "--topic",
            "t",
            "--from",
            "2h ago",
            "--to",
            "NOW",
        ],
        &[],
        home.path(),
    );
    let after = common::now_ms();
    let stderr = common::text(&out.stderr);
    let (from, to) = (
        said(&stderr, "--from 2h ago is "),
        said(&stderr, "--to NOW is "),
    );
    assert_eq!(to - from, 2 * 3_600_000, "one now for both ends: {stderr}");
    assert!(before <= to && to <= after, "{stderr}");
    // The command went on with the times: what stopped it is the missing archive.
    assert!(!common::error_line(&out).contains("time"), "{stderr}");

    let out = rewind(
        &[
            "restore",
            "--archive",
            &archive,
            "--from",
            "yesterday",
            "--to",
            "now-90m",
            "--plan",
        ],
        &[],
        home.path(),
    );
    let stderr = common::text(&out.stderr);
    let (from, to) = (
        said(&stderr, "--from yesterday is "),
        said(&stderr, "--to now-90m is "),
    );
    let day = 86_400_000;
    assert_eq!(from % day, 0, "midnight UTC: {stderr}");
    assert!(
        to - from >= day - 90 * 60_000 && to - from < 2 * day,
        "{stderr}"
    );

    // A broken relative time is a usage error that says how to write one.
    let out = rewind(
        &["restore", "--archive", &archive, "--from", "now-1x"],
        &[],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let error = common::error_line(&out);
    assert!(
        error.starts_with("error: --from \"now-1x\": \"1x\" is not a duration")
            && error.contains("now-90m"),
        "{error}"
    );
}

/// A restore's transactions must commit before the producer's `transaction.timeout.ms` runs out,
/// so `restore.transaction_interval` has to be below it: refused up front, naming both.
#[test]
fn a_transaction_interval_not_below_the_transaction_timeout_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", home.path().display());
    let out = rewind(
        &[
            "restore",
            "--archive",
            &archive,
            "-X",
            "transaction.timeout.ms=4000",
        ],
        &[],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let error = common::error_line(&out);
    assert!(
        error.contains("restore.transaction_interval") && error.contains("transaction.timeout.ms"),
        "{error}"
    );
}
