//! A restore as asked for — by `rewind restore` flags, a restore pipeline or `POST /restores` — checked
//! in full and turned into [`RestoreOptions`]. One set of rules for all three, so a window or a
//! rename the command line refuses is refused by the service too.

use std::collections::{BTreeMap, BTreeSet};

use super::schema_ids::SchemaIds;
use super::{RestoreOptions, Window};
use crate::archive::paths::valid_topic;
use crate::config::{Problem, RestoreConfig, RestoreJob};
use crate::kafka::registry::Registry;
use crate::kafka::topics::TopicSelector;

/// Restore ids appear in transactional ids and progress keys.
pub fn valid_restore_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

pub use crate::config::when::{parse_time, SECONDS_BELOW};

impl RestoreJob {
    /// The restore these settings describe, or every problem with them. `name` renders a field's
    /// name the way the asker wrote it (`--from` on the command line, `from` in a file); problem
    /// paths are field names.
    pub fn options(
        &self,
        restore_id: &str,
        tuning: &RestoreConfig,
        name: impl Fn(&str) -> String,
    ) -> Result<RestoreOptions, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut problem = |path: &str, message: String| {
            problems.push(Problem {
                path: path.into(),
                message,
            })
        };
        let mut time = |field: &str, value: &str, open: &str| {
            parse_time(value, open).unwrap_or_else(|message| {
                problem(field, message);
                None
            })
        };
        let window = Window {
            from: time("from", &self.from, "earliest"),
            to: time("to", &self.to, "latest"),
            from_mark: self.from_mark.clone(),
            to_mark: self.to_mark.clone(),
        };
        for (field, mark, time_field, time, open) in [
            (
                "from_mark",
                &self.from_mark,
                "from",
                window.from,
                "earliest",
            ),
            ("to_mark", &self.to_mark, "to", window.to, "latest"),
        ] {
            let Some(mark) = mark else { continue };
            if !crate::archive::marks::valid_name(mark) {
                problem(
                    field,
                    format!("{mark:?} is not a mark name (letters, digits, '.', '_' and '-')"),
                );
            }
            if time.is_some() {
                problem(
                    field,
                    format!(
                        "cannot be combined with {} {}: give one end of the window, a time or a mark (or {} {open})",
                        name(time_field),
                        if time_field == "from" { &self.from } else { &self.to },
                        name(time_field)
                    ),
                );
            }
        }
        if self.strict && (self.from_mark.is_some() || self.to_mark.is_some()) {
            problem(
                "strict",
                format!(
                    "cuts by the records' own timestamps; a mark cuts by offset: use one or the other ({} or {})",
                    name("strict"),
                    name("to_mark")
                ),
            );
        }
        if let (Some(from), Some(to)) = (window.from, window.to) {
            // [T, T) is an empty window, as valid as any other with nothing in it.
            if from > to {
                problem(
                    "from",
                    format!(
                        "{} is after {} {}: a window runs forwards",
                        self.from,
                        name("to"),
                        self.to
                    ),
                );
            }
        }
        if self.follow && self.to_mark.is_some() {
            problem(
                "follow",
                format!(
                    "keeps restoring new records, so it takes no {}",
                    name("to_mark")
                ),
            );
        }
        if self.follow && window.to.is_some() {
            problem(
                "follow",
                format!("keeps restoring new records, so it takes no {}", name("to")),
            );
        }
        if !valid_restore_id(restore_id) {
            problem(
                "restore_id",
                format!(
                    "{restore_id:?} may only hold letters, digits, '.', '_' and '-' (at most 200)"
                ),
            );
        }
        let topics = TopicSelector::new(&self.topics)
            .map_err(|e| {
                problem(
                    "topics",
                    format!(
                        "{:?} is not a valid regular expression: {}",
                        self.topics,
                        crate::kafka::topics::regex_problem(&e)
                    ),
                )
            })
            .ok();
        let mut targets = BTreeSet::new();
        for (src, dst) in &self.renames {
            for topic in [src, dst] {
                if !valid_topic(topic) {
                    problem(
                        "renames",
                        format!("\"{src}={dst}\": {topic:?} is not a valid topic name"),
                    );
                }
            }
            if !targets.insert(dst) {
                problem(
                    "renames",
                    format!("sends two topics into {dst}; give each its own target"),
                );
            }
        }
        if self.shared {
            for (on, field, why) in [
                (self.follow, "follow", "a followed restore never ends, and its partitions grow"),
                (self.repartition_by_key, "repartition_by_key", "its workers share target partitions, and one target partition must have one writer"),
                (self.groups, "groups", "group translation needs every partition's landing offsets in one process"),
            ] {
                if on {
                    problem(
                        "shared",
                        format!("cannot be combined with {} yet: {why}", name(field)),
                    );
                }
            }
        }
        let schema_ids = match (&self.schema_ids_from, &self.schema_ids_to) {
            (None, None) if self.schema_ids_keys => {
                problem(
                    "schema_ids_keys",
                    format!(
                        "needs {} and {}",
                        name("schema_ids_from"),
                        name("schema_ids_to")
                    ),
                );
                None
            }
            (None, None) => None,
            (Some(from), Some(to)) => {
                let mut registry =
                    |field: &str, url: &str| Registry::new(url).map_err(|e| problem(field, e)).ok();
                match (
                    registry("schema_ids_from", from),
                    registry("schema_ids_to", to),
                ) {
                    (Some(from), Some(to)) => Some(std::sync::Arc::new(SchemaIds::new(
                        from,
                        to,
                        self.schema_ids_keys,
                    ))),
                    _ => None,
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                problem(
                    "schema_ids_from",
                    format!(
                        "and {} go together: ids are mapped from one registry to the other",
                        name("schema_ids_to")
                    ),
                );
                None
            }
        };
        if self.groups && self.repartition_by_key {
            problem(
                "groups",
                format!("cannot be combined with {}: a group's position in one source partition has no single counterpart once its records are spread over other partitions", name("repartition_by_key")),
            );
        }
        match topics {
            Some(topics) if problems.is_empty() => Ok(RestoreOptions {
                window,
                topics,
                renames: self.renames.clone(),
                restore_id: restore_id.to_string(),
                groups: self.groups,
                follow: self.follow,
                poll_interval: tuning.poll_interval,
                allow_non_empty: self.allow_non_empty,
                strict: self.strict,
                repartition_by_key: self.repartition_by_key,
                provenance_headers: self.provenance_headers,
                schema_ids,
                shared: self.shared,
                worker_id: None,
                buffer_budget: tuning.buffer_budget.bytes(),
                concurrency: tuning.concurrency,
                transaction_bytes: tuning.transaction_max_bytes.bytes(),
                producers: tuning.producers,
                transaction_interval: tuning.transaction_interval,
                progress_topic: tuning.progress_topic.clone(),
                progress: false,
                resume_hint: None,
                live: None,
                admin_api: true,
            }),
            _ => Err(problems),
        }
    }
}

/// `SRC=DST` pairs, each source and each target named once.
pub fn parse_renames(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        let Some((src, dst)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not SRC=DST"));
        };
        if out.insert(src.to_string(), dst.to_string()).is_some() {
            return Err(format!("names {src} twice"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> RestoreJob {
        RestoreJob::default()
    }

    #[test]
    fn every_problem_of_a_job_is_reported() {
        let bad = RestoreJob {
            from: "2026-11-24T10:00:00Z".into(),
            to: "2026-11-24T09:00:00Z".into(),
            topics: "(".into(),
            renames: BTreeMap::from([
                ("a".into(), "x".into()),
                ("b".into(), "x".into()),
                ("c".into(), "bad name".into()),
            ]),
            groups: true,
            repartition_by_key: true,
            ..job()
        };
        let problems = bad
            .options("id with space", &RestoreConfig::default(), |f| {
                format!("--{f}")
            })
            .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "from",
                "restore_id",
                "topics",
                "renames",
                "renames",
                "groups"
            ],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("is after --to"));
    }

    #[test]
    fn follow_takes_no_end_and_defaults_restore_everything() {
        let follow = RestoreJob {
            follow: true,
            to: "1700000000000".into(),
            ..job()
        };
        let problems = follow
            .options("dr", &RestoreConfig::default(), str::to_string)
            .unwrap_err();
        assert_eq!(problems[0].path, "follow");
        assert_eq!(
            problems[0].message,
            "keeps restoring new records, so it takes no to"
        );
        let opts = job()
            .options("dr", &RestoreConfig::default(), str::to_string)
            .unwrap();
        assert_eq!((opts.window.from, opts.window.to), (None, None));
        assert!(opts.topics.is_match("anything"));
        assert_eq!(opts.restore_id, "dr");
    }

    #[test]
    fn epoch_seconds_are_refused_and_milliseconds_taken() {
        // Seconds of any date from 1970 to the year 33658 are below 1e12; milliseconds of any date
        // since 2001-09-09 are at or above it.
        for seconds in ["1732356000", "1", "999999999999", " 1732356000 "] {
            let error = parse_time(seconds, "earliest").unwrap_err();
            assert!(
                error.contains("epoch seconds") && error.contains("milliseconds"),
                "{seconds}: {error}"
            );
        }
        let error = parse_time("1732356000", "latest").unwrap_err();
        assert!(
            error.contains("1732356000000") && error.contains("2024-11-23T10:00:00Z"),
            "{error}"
        );
        for (given, ms) in [
            ("1732356000000", 1_732_356_000_000),
            ("1000000000000", 1_000_000_000_000),
            ("0", 0),
            ("-5000", -5_000),
            ("-1732356000", -1_732_356_000),
            ("1970-01-01T00:00:22Z", 22_000),
        ] {
            assert_eq!(parse_time(given, "earliest"), Ok(Some(ms)), "{given}");
        }
        assert_eq!(parse_time("earliest", "earliest"), Ok(None));
        // Every asker goes through the job's checks: a pipeline, the API and the command line.
        let seconds = RestoreJob {
            to: "1732356000".into(),
            ..job()
        };
        let problems = seconds
            .options("dr", &RestoreConfig::default(), str::to_string)
            .unwrap_err();
        assert_eq!(problems[0].path, "to");
    }
}
