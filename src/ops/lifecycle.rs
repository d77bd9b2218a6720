//! Storage tiers for an S3 archive: the bucket lifecycle rules that fit it (`rewind lifecycle`),
//! and thawing the data files of a window that an archive storage class keeps out of reach
//! (`rewind lifecycle thaw`).
//!
//! Invariant: Rewind's rules only ever match `<prefix>/data/` (documents, checkpoints, claims and
//! marks stay in the class they were written in, so every chain stays readable without a thaw),
//! never expire anything (retention is `rewind retention`'s, which keeps chains whole), and
//! replace only rules Rewind itself named for this archive; the bucket's other rules are kept.

use std::collections::BTreeMap;

use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, ExpirationStatus, LifecycleRule, LifecycleRuleFilter,
    Transition, TransitionStorageClass,
};
use serde::Serialize;

use crate::archive::paths::DataFileKey;
use crate::kafka::topics::TopicSelector;
use crate::storage::{Reach, S3Store, StorageError};

/// Storage classes that need a restore request before an object can be read.
pub const COLD: [&str; 2] = ["GLACIER", "DEEP_ARCHIVE"];

/// Classes a transition may name.
const CLASSES: [&str; 6] = [
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
];

/// What the rules should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiering {
    /// Abort multipart uploads left unfinished this many days after they began (`None`: no rule).
    pub abort_uploads_after_days: Option<i32>,
    /// `(days, class)`: move data files to `class` this many days after they were written.
    pub transitions: Vec<(i32, String)>,
}

impl Tiering {
    /// Parse `30d=STANDARD_IA`: whole days, and a class S3 can transition to.
    pub fn parse_transition(s: &str) -> Result<(i32, String), String> {
        let (age, class) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not AGE=CLASS (e.g. 30d=STANDARD_IA)"))?;
        let class = class.trim().to_ascii_uppercase();
        let tier_name = !class.is_empty()
            && class
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !CLASSES.contains(&class.as_str()) && !tier_name {
            return Err(format!(
                "{class:?} is not a storage class S3 moves objects to ({}) nor a tier name",
                CLASSES.join(", ")
            ));
        }
        Ok((days(age)?, class))
    }

    /// Classes among the transitions that need a thaw before a read.
    pub fn cold(&self) -> Vec<&str> {
        self.transitions
            .iter()
            .map(|(_, c)| c.as_str())
            .filter(|c| COLD.contains(c))
            .collect()
    }
}

/// Whole days from `30d` (or `30`).
pub fn days(age: &str) -> Result<i32, String> {
    let n = age.trim().strip_suffix('d').unwrap_or(age.trim());
    match n.parse::<i32>() {
        Ok(d) if d >= 1 => Ok(d),
        _ => Err(format!(
            "{age:?} is not a number of days (S3 lifecycle rules count whole days, at least 1: 30d)"
        )),
    }
}

/// The ids of Rewind's rules for the archive `archive_id`.
pub fn rule_ids(archive_id: &str) -> [String; 2] {
    [
        format!("rewind-{archive_id}-abort-uploads"),
        format!("rewind-{archive_id}-data-tiering"),
    ]
}

/// The rules `tiering` asks for, for the archive whose data files begin at `data_prefix`.
pub fn rules(archive_id: &str, data_prefix: &str, tiering: &Tiering) -> Vec<LifecycleRule> {
    let [abort_id, tier_id] = rule_ids(archive_id);
    let filter = || LifecycleRuleFilter::builder().prefix(data_prefix).build();
    let mut out = Vec::new();
    if let Some(days) = tiering.abort_uploads_after_days {
        out.push(
            LifecycleRule::builder()
                .id(abort_id)
                .filter(filter())
                .status(ExpirationStatus::Enabled)
                .abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder()
                        .days_after_initiation(days)
                        .build(),
                )
                .build()
                .expect("the rule has a status"),
        );
    }
    if !tiering.transitions.is_empty() {
        let mut rule = LifecycleRule::builder()
            .id(tier_id)
            .filter(filter())
            .status(ExpirationStatus::Enabled);
        for (days, class) in &tiering.transitions {
            rule = rule.transitions(
                Transition::builder()
                    .days(*days)
                    .storage_class(TransitionStorageClass::from(class.as_str()))
                    .build(),
            );
        }
        out.push(rule.build().expect("the rule has a status"));
    }
    out
}

/// The bucket's rules with Rewind's rules for this archive replaced by `ours`.
pub fn merged(
    existing: &[LifecycleRule],
    archive_id: &str,
    ours: Vec<LifecycleRule>,
) -> Vec<LifecycleRule> {
    let ids = rule_ids(archive_id);
    let mut out: Vec<LifecycleRule> = existing
        .iter()
        .filter(|r| !r.id().is_some_and(|id| ids.iter().any(|i| i == id)))
        .cloned()
        .collect();
    out.extend(ours);
    out
}

/// The key prefix a rule applies to: its filter's, or the top-level one of rules written before
/// filters existed.
fn rule_prefix(rule: &LifecycleRule) -> &str {
    #[allow(deprecated)]
    let legacy = rule.prefix();
    rule.filter()
        .and_then(|f| f.prefix())
        .or(legacy)
        .unwrap_or("")
}

/// A rule in words.
pub fn describe(rule: &LifecycleRule) -> String {
    let mut parts = Vec::new();
    let prefix = rule_prefix(rule);
    parts.push(format!(
        "objects under {:?}",
        if prefix.is_empty() {
            "(the whole bucket)"
        } else {
            prefix
        }
    ));
    if let Some(a) = rule.abort_incomplete_multipart_upload() {
        if let Some(d) = a.days_after_initiation() {
            parts.push(format!("abort unfinished uploads after {d} days"));
        }
    }
    for t in rule.transitions() {
        parts.push(format!(
            "move to {} after {} days",
            t.storage_class().map_or("?", |c| c.as_str()),
            t.days().unwrap_or_default()
        ));
    }
    if let Some(e) = rule.expiration() {
        parts.push(match e.days() {
            Some(d) => format!("DELETE after {d} days"),
            None => "DELETE (expiration)".to_string(),
        });
    }
    format!(
        "{} ({}): {}",
        rule.id().unwrap_or("(no id)"),
        rule.status().as_str().to_ascii_lowercase(),
        parts.join(", ")
    )
}

/// What the bucket says about one of Rewind's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleState {
    pub id: String,
    pub wanted: String,
    /// `missing`, `differs` or `in place`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
}

/// Compare the rules `ours` with what `existing` holds.
pub fn compare(existing: &[LifecycleRule], ours: &[LifecycleRule]) -> Vec<RuleState> {
    ours.iter()
        .map(|want| {
            let id = want.id().unwrap_or_default().to_string();
            let current = existing.iter().find(|r| r.id() == Some(id.as_str()));
            RuleState {
                id,
                wanted: describe(want),
                state: match current {
                    None => "missing",
                    Some(c) if describe(c) == describe(want) => "in place",
                    Some(_) => "differs",
                },
                current: current.map(describe),
            }
        })
        .collect()
}

/// Rules of the bucket that would touch the archive in a way Rewind does not expect: one that
/// expires (deletes) objects under the archive's prefix, or moves objects outside `data/`.
pub fn hazards(existing: &[LifecycleRule], archive_prefix: &str, archive_id: &str) -> Vec<String> {
    let ids = rule_ids(archive_id);
    let root = if archive_prefix.is_empty() {
        String::new()
    } else {
        format!("{archive_prefix}/")
    };
    let data = format!("{root}data/");
    let mut out = Vec::new();
    for rule in existing {
        if rule.id().is_some_and(|id| ids.iter().any(|i| i == id))
            || rule.status() != &ExpirationStatus::Enabled
        {
            continue;
        }
        let prefix = rule_prefix(rule);
        // The rule reaches the archive if either prefix contains the other.
        if !(root.starts_with(prefix) || prefix.starts_with(&root)) {
            continue;
        }
        if rule.expiration().is_some() || rule.noncurrent_version_expiration().is_some() {
            out.push(format!(
                "{}: deletes objects of the archive by age, which cuts chains and loses records a mark or a restore needs; delete it and use `rewind retention`",
                describe(rule)
            ));
        } else if !rule.transitions().is_empty() && !prefix.starts_with(&data) {
            out.push(format!(
                "{}: moves the archive's documents (checkpoints, claims, marks), not only data/, to another storage class",
                describe(rule)
            ));
        }
    }
    out
}

/// What a thaw did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ThawReport {
    /// Restore requests made now.
    pub requested: Vec<String>,
    pub bytes_requested: u64,
    /// Already being thawed.
    pub thawing: Vec<String>,
    /// Readable now (thawed, or never cold).
    pub readable: usize,
}

/// Thaw every data file a restore (or `find`, or a drill) of `[from, to)` of `topics` may read: per
/// partition, the files from the first whose hour ends after `from` through the first whose hour
/// begins at or after `to` (late records can sit in either), and the partition's last file (a
/// chain's end is read from it).
pub async fn thaw(
    store: &S3Store,
    topics: &TopicSelector,
    from: Option<i64>,
    to: Option<i64>,
    days: i32,
    tier: &str,
) -> Result<ThawReport, StorageError> {
    let listed = crate::archive::chain::list_all(store).await?;
    let wanted: Vec<(DataFileKey, u64)> = listed
        .into_iter()
        .filter(|((t, _), _)| topics.is_match(t))
        .flat_map(|(_, files)| to_thaw(&files, from, to))
        .collect();
    let mut report = ThawReport::default();
    let mut progress = super::Progress::new("thaw", "files", wanted.len() as u64);
    for (key, size) in wanted {
        let key = key.to_string();
        match store.reach(&key).await? {
            Reach::Readable | Reach::Thawed { .. } => report.readable += 1,
            Reach::Thawing { .. } => report.thawing.push(key),
            Reach::Cold { .. } => {
                store.thaw(&key, days, tier).await?;
                report.bytes_requested += size;
                report.requested.push(key);
            }
        }
        progress.add(1);
    }
    progress.finish();
    Ok(report)
}

/// The files of one partition (in offset order) a read of `[from, to)` may touch: from the first
/// whose hour ends after `from` through the first whose hour begins at or after `to`, and the last.
fn to_thaw(
    files: &[(DataFileKey, u64)],
    from: Option<i64>,
    to: Option<i64>,
) -> Vec<(DataFileKey, u64)> {
    let n = files.len();
    let first = from.map_or(0, |f| {
        files
            .iter()
            .position(|(k, _)| k.bucket.end_millis() > f)
            .unwrap_or(n)
    });
    let mut chosen: BTreeMap<i64, (DataFileKey, u64)> = BTreeMap::new();
    if first < n {
        let last = to.map_or(n - 1, |t| {
            files[first..]
                .iter()
                .position(|(k, _)| k.bucket.start_millis() >= t)
                .map_or(n - 1, |i| first + i)
        });
        for f in &files[first..=last] {
            chosen.insert(f.0.start, f.clone());
        }
    }
    if let Some(f) = files.last() {
        chosen.insert(f.0.start, f.clone());
    }
    chosen.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiering() -> Tiering {
        Tiering {
            abort_uploads_after_days: Some(7),
            transitions: vec![(30, "STANDARD_IA".into()), (90, "GLACIER_IR".into())],
        }
    }

    #[test]
    fn rewinds_rules_match_only_data_and_replace_only_their_own() {
        let ours = rules("abc", "backups/prod/data/", &tiering());
        assert_eq!(ours.len(), 2);
        assert_eq!(
            describe(&ours[1]),
            "rewind-abc-data-tiering (enabled): objects under \"backups/prod/data/\", move to STANDARD_IA after 30 days, move to GLACIER_IR after 90 days"
        );
        let foreign = LifecycleRule::builder()
            .id("logs-expiry")
            .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
            .status(ExpirationStatus::Enabled)
            .expiration(
                aws_sdk_s3::types::LifecycleExpiration::builder()
                    .days(3)
                    .build(),
            )
            .build()
            .unwrap();
        let stale = rules(
            "abc",
            "backups/prod/data/",
            &Tiering {
                abort_uploads_after_days: Some(1),
                transitions: vec![],
            },
        );
        let mut existing = vec![foreign.clone()];
        existing.extend(stale);
        let all = merged(&existing, "abc", ours.clone());
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], foreign);
        let states = compare(&existing, &ours);
        assert_eq!(states[0].state, "differs");
        assert_eq!(states[1].state, "missing");
        assert!(compare(&all, &ours).iter().all(|s| s.state == "in place"));
        // An expiry under the archive is a hazard; one elsewhere is not.
        assert!(hazards(&existing, "backups/prod", "abc").is_empty());
        let reaching = LifecycleRule::builder()
            .id("all-expiry")
            .filter(LifecycleRuleFilter::builder().prefix("backups/").build())
            .status(ExpirationStatus::Enabled)
            .expiration(
                aws_sdk_s3::types::LifecycleExpiration::builder()
                    .days(30)
                    .build(),
            )
            .build()
            .unwrap();
        let found = hazards(&[reaching], "backups/prod", "abc");
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("cuts chains"), "{found:?}");
    }

    #[test]
    fn a_thaw_covers_the_files_a_window_may_read_and_each_chains_last() {
        use crate::archive::time::HourBucket;
        const H: i64 = 3_600_000;
        let base = 1_796_400_000_000 / H * H;
        // Files at hours 0, 1, 1, 2, 0 (late records opened the fifth), 5, by offset.
        let files: Vec<(DataFileKey, u64)> = [0, 1, 1, 2, 0, 5]
            .iter()
            .enumerate()
            .map(|(i, h)| {
                (
                    DataFileKey {
                        topic: "t".into(),
                        partition: 0,
                        bucket: HourBucket::of_millis(base + h * H),
                        start: i as i64 * 10,
                    },
                    100,
                )
            })
            .collect();
        let starts =
            |v: Vec<(DataFileKey, u64)>| v.iter().map(|(k, _)| k.start).collect::<Vec<_>>();
        // [hour 1, hour 2): from the first file of hour 1 through the first of hour 2, and the last.
        assert_eq!(
            starts(to_thaw(&files, Some(base + H), Some(base + 2 * H))),
            vec![10, 20, 30, 50]
        );
        // Everything.
        assert_eq!(
            starts(to_thaw(&files, None, None)),
            vec![0, 10, 20, 30, 40, 50]
        );
        // After every file's hour: only the last file (the chain's end is read from it).
        assert_eq!(starts(to_thaw(&files, Some(base + 9 * H), None)), vec![50]);
    }

    #[test]
    fn transitions_and_ages_are_checked() {
        assert_eq!(
            Tiering::parse_transition("30d=standard_ia").unwrap(),
            (30, "STANDARD_IA".to_string())
        );
        assert!(Tiering::parse_transition("30d=tape drive")
            .unwrap_err()
            .contains("not a storage class"));
        // A server's own tier (MinIO names the tier as the class).
        assert_eq!(Tiering::parse_transition("30d=WARM").unwrap().1, "WARM");
        assert!(Tiering::parse_transition("0d=GLACIER")
            .unwrap_err()
            .contains("at least 1"));
        assert!(Tiering::parse_transition("GLACIER")
            .unwrap_err()
            .contains("AGE=CLASS"));
        let cold = Tiering {
            abort_uploads_after_days: Some(7),
            transitions: vec![(30, "GLACIER_IR".into()), (180, "DEEP_ARCHIVE".into())],
        };
        assert_eq!(cold.cold(), vec!["DEEP_ARCHIVE"]);
    }
}
