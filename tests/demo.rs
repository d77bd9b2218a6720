//! `rewind demo` runs with nothing but itself (its Kafka is embedded) and checks its own restore;
//! here it runs as a user would, and its archive is read back with the archive tools.

mod common;

#[test]
fn the_demo_backs_up_restores_and_verifies_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(["demo", "--dir"])
        .arg(&archive)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        common::text(&out.stderr)
    );
    for line in [
        "3. The sink, running continuously, made all 15000 records durable",
        "5. Compared all 5000 restored records with the ones produced",
        "6. Verified the archive byte by byte",
        "15000 records backed up, 5000 restored",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // The commands the demo suggests work on what it left behind.
    let url = format!("file://{}", archive.display());
    assert!(stdout.contains(&format!("rewind ls --archive {url}")));
    let ls = std::process::Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(["ls", "--json", "--archive", &url])
        .output()
        .unwrap();
    assert!(ls.status.success(), "{}", common::text(&ls.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let records: u64 = doc["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["records"].as_u64().unwrap())
        .sum();
    assert_eq!(records, 15000);

    // The DuckDB query it suggests runs, from the repository, with the DuckDB the README installs
    // (scripts/duckdb.sh), and counts every topic's records.
    let query = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("$(scripts/duckdb.sh)"))
        .unwrap_or_else(|| panic!("no DuckDB query in:\n{stdout}"));
    let counted = std::process::Command::new("bash")
        .args(["-c", query.trim()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let table = common::text(&counted.stdout);
    assert!(
        counted.status.success(),
        "{query}\n{table}\n{}",
        common::text(&counted.stderr)
    );
    for topic in doc["topics"].as_array().unwrap() {
        let row = vec![
            topic["topic"].as_str().unwrap().to_string(),
            topic["records"].as_u64().unwrap().to_string(),
        ];
        let cells = |line: &str| -> Vec<String> {
            line.split('│')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        };
        assert!(
            table.lines().any(|l| cells(l) == row),
            "missing {row:?} in:\n{table}"
        );
    }

    // A directory that already holds something is refused, not overwritten.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(["demo", "--dir"])
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(common::error_line(&again).contains("is not empty"));
}
