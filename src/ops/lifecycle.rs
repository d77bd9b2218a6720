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

/// Whether `class` is one of the storage classes S3 moves objects to.
pub fn is_aws_class(class: &str) -> bool {
    CLASSES.contains(&class)
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

/// The ids of Rewind's rules for the archive `archive_id` whose data files begin at
/// `data_prefix`: both name the archive and its place (a copy of the archive elsewhere in the
/// bucket has the same id, and rules of its own).
pub fn rule_ids(archive_id: &str, data_prefix: &str) -> [String; 2] {
    let place = data_prefix.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let place = format!("{:08x}", place >> 32);
    [
        format!("rewind-{archive_id}-{place}-abort-uploads"),
        format!("rewind-{archive_id}-{place}-data-tiering"),
    ]
}

/// The rules `tiering` asks for, for the archive whose data files begin at `data_prefix`.
pub fn rules(archive_id: &str, data_prefix: &str, tiering: &Tiering) -> Vec<LifecycleRule> {
    let [abort_id, tier_id] = rule_ids(archive_id, data_prefix);
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
    data_prefix: &str,
    ours: Vec<LifecycleRule>,
) -> Vec<LifecycleRule> {
    let ids = rule_ids(archive_id, data_prefix);
    let mut out: Vec<LifecycleRule> = existing
        .iter()
        .filter(|r| !r.id().is_some_and(|id| ids.iter().any(|i| i == id)))
        .cloned()
        .collect();
    out.extend(ours);
    out
}

/// The key prefix a rule applies to: its filter's (alone or in an `And`), or the top-level one of
/// rules written before filters existed.
fn rule_prefix(rule: &LifecycleRule) -> &str {
    #[allow(deprecated)]
    let legacy = rule.prefix();
    rule.filter()
        .and_then(|f| f.prefix().or_else(|| f.and().and_then(|a| a.prefix())))
        .or(legacy)
        .unwrap_or("")
}

/// Whether a rule applies only to tagged objects (Rewind tags none).
fn tagged_only(rule: &LifecycleRule) -> bool {
    rule.filter()
        .is_some_and(|f| f.tag().is_some() || f.and().is_some_and(|a| !a.tags().is_empty()))
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
/// expires (deletes) its objects, moves its documents, or moves data files to a class that needs a
/// thaw. Rules for tagged objects only, and for noncurrent versions only, touch none of them.
pub fn hazards(
    existing: &[LifecycleRule],
    archive_prefix: &str,
    archive_id: &str,
    data_prefix: &str,
) -> Vec<String> {
    let ids = rule_ids(archive_id, data_prefix);
    let root = if archive_prefix.is_empty() {
        String::new()
    } else {
        format!("{archive_prefix}/")
    };
    // The archive's keys: data files under `data/`, every document under a `_` name.
    let data = format!("{root}data/");
    let documents = format!("{root}_");
    let reaches = |prefix: &str, area: &str| area.starts_with(prefix) || prefix.starts_with(area);
    let mut out = Vec::new();
    for rule in existing {
        if rule.id().is_some_and(|id| ids.iter().any(|i| i == id))
            || rule.status() != &ExpirationStatus::Enabled
            || tagged_only(rule)
        {
            continue;
        }
        let prefix = rule_prefix(rule);
        let (on_data, on_documents) = (reaches(prefix, &data), reaches(prefix, &documents));
        if !(on_data || on_documents) {
            continue;
        }
        if rule
            .expiration()
            .is_some_and(|e| e.days().is_some() || e.date().is_some())
        {
            out.push(format!(
                "{}: deletes objects of the archive by age, which cuts chains and loses records a mark or a restore needs; delete it and use `rewind retention`",
                describe(rule)
            ));
        }
        let moves: Vec<&str> = rule
            .transitions()
            .iter()
            .filter_map(|t| t.storage_class().map(|c| c.as_str()))
            .collect();
        if on_documents && !moves.is_empty() {
            out.push(format!(
                "{}: moves the archive's documents (checkpoints, claims, marks), not only data/, to another storage class",
                describe(rule)
            ));
        } else if let Some(cold) = moves.iter().find(|c| COLD.contains(c)) {
            out.push(format!(
                "{}: moves data files to {cold}, which must be thawed before any read (`rewind lifecycle thaw`), and a sink cannot resume a partition whose newest file moved there",
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
    /// Thawed already; asked again, to stay readable `days` more.
    pub extended: Vec<String>,
    /// Readable now (never cold).
    pub readable: usize,
    /// Files S3 refused to thaw, with why.
    pub failed: Vec<String>,
}

/// Thaw every data file a restore (or a drill) of `[from, to)` of `topics` may read (see
/// [`to_thaw`]); keep thawed ones readable `days` more. A file S3 refuses is reported and the
/// others are still asked for.
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
        let asked = match store.reach(&key).await? {
            Reach::Readable => {
                report.readable += 1;
                None
            }
            Reach::Thawing { .. } => {
                report.thawing.push(key.clone());
                None
            }
            Reach::Thawed { class } => Some((class, true)),
            Reach::Cold { class } => Some((class, false)),
        };
        if let Some((class, thawed)) = asked {
            match store.thaw(&key, &class, days, tier).await {
                Ok(()) if thawed => report.extended.push(key),
                Ok(()) => {
                    report.bytes_requested += size;
                    report.requested.push(key);
                }
                Err(e) => report.failed.push(format!("{key}: {e}")),
            }
        }
        progress.add(1);
    }
    progress.finish();
    Ok(report)
}

/// The files of one partition (in offset order) a restore of `[from, to)` may read: from the first
/// whose hour ends after `from` through the first whose hour begins at or after `to`; every file
/// of the hours holding `from` and `to` (a cut reads the footers of its hour's files, late ones
/// too); and the files at the last start (the chain's end is read from its last file). Files that
/// share a start (an orphan of a race beside the claimed one) are all taken.
fn to_thaw(
    files: &[(DataFileKey, u64)],
    from: Option<i64>,
    to: Option<i64>,
) -> Vec<(DataFileKey, u64)> {
    use crate::archive::time::HourBucket;
    let n = files.len();
    let first = from.map_or(0, |f| {
        files
            .iter()
            .position(|(k, _)| k.bucket.end_millis() > f)
            .unwrap_or(n)
    });
    let mut chosen: BTreeMap<String, (DataFileKey, u64)> = BTreeMap::new();
    let mut take = |f: &(DataFileKey, u64)| {
        chosen.insert(f.0.to_string(), f.clone());
    };
    if first < n {
        let last = to.map_or(n - 1, |t| {
            files[first..]
                .iter()
                .position(|(k, _)| k.bucket.start_millis() >= t)
                .map_or(n - 1, |i| first + i)
        });
        // Files sharing the last one's start come with it.
        let end = files[last..]
            .iter()
            .take_while(|(k, _)| k.start == files[last].0.start)
            .count();
        files[first..last + end].iter().for_each(&mut take);
    }
    let cut_hours: Vec<HourBucket> = [from, to]
        .into_iter()
        .flatten()
        .map(HourBucket::of_millis)
        .collect();
    files
        .iter()
        .filter(|(k, _)| cut_hours.contains(&k.bucket))
        .for_each(&mut take);
    if let Some(last) = files.last() {
        files
            .iter()
            .filter(|(k, _)| k.start == last.0.start)
            .for_each(&mut take);
    }
    let mut out: Vec<_> = chosen.into_values().collect();
    out.sort_by_key(|(k, _)| k.start);
    out
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
            "rewind-abc-f106c9c7-data-tiering (enabled): objects under \"backups/prod/data/\", move to STANDARD_IA after 30 days, move to GLACIER_IR after 90 days"
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
        let all = merged(&existing, "abc", "backups/prod/data/", ours.clone());
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], foreign);
        let states = compare(&existing, &ours);
        assert_eq!(states[0].state, "differs");
        assert_eq!(states[1].state, "missing");
        assert!(compare(&all, &ours).iter().all(|s| s.state == "in place"));
        // An expiry under the archive is a hazard; one elsewhere is not.
        assert!(hazards(&existing, "backups/prod", "abc", "backups/prod/data/").is_empty());
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
        let found = hazards(&[reaching], "backups/prod", "abc", "backups/prod/data/");
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("cuts chains"), "{found:?}");
        // An archive at the bucket's root is not reached by a rule on logs/; a rule for tagged
        // objects or noncurrent versions touches none of its objects; another tool moving data/ to
        // Glacier is named.
        let rule = |id: &str, filter: LifecycleRuleFilter| {
            LifecycleRule::builder()
                .id(id)
                .filter(filter)
                .status(ExpirationStatus::Enabled)
        };
        let logs = rule(
            "logs",
            LifecycleRuleFilter::builder().prefix("logs/").build(),
        )
        .expiration(
            aws_sdk_s3::types::LifecycleExpiration::builder()
                .days(3)
                .build(),
        )
        .build()
        .unwrap();
        let tagged = rule(
            "tagged",
            LifecycleRuleFilter::builder()
                .tag(
                    aws_sdk_s3::types::Tag::builder()
                        .key("k")
                        .value("v")
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .expiration(
            aws_sdk_s3::types::LifecycleExpiration::builder()
                .days(3)
                .build(),
        )
        .build()
        .unwrap();
        let noncurrent = rule(
            "old-versions",
            LifecycleRuleFilter::builder().prefix("").build(),
        )
        .noncurrent_version_expiration(
            aws_sdk_s3::types::NoncurrentVersionExpiration::builder()
                .noncurrent_days(3)
                .build(),
        )
        .build()
        .unwrap();
        let glacier = rule(
            "deep",
            LifecycleRuleFilter::builder().prefix("data/").build(),
        )
        .transitions(
            Transition::builder()
                .days(60)
                .storage_class(TransitionStorageClass::Glacier)
                .build(),
        )
        .build()
        .unwrap();
        let found = hazards(&[logs, tagged, noncurrent, glacier], "", "abc", "data/");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("deep") && found[0].contains("GLACIER"),
            "{found:?}"
        );
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
                        end: None,
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
        // A cut at 01:30 reads every footer of hour 1, the late file after hour 2's included; and
        // an orphan sharing a start with the claimed file comes too.
        let mut late = files.clone();
        late[4].0.bucket = HourBucket::of_millis(base + H);
        let mut orphan = late[2].clone();
        orphan.0.bucket = HourBucket::of_millis(base + 2 * H);
        late.insert(3, orphan);
        let keys: Vec<String> = to_thaw(&late, None, Some(base + H + H / 2))
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
        assert!(
            keys.iter()
                .any(|k| k.contains("/00000000000000000040.parquet")),
            "{keys:?}"
        );
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
