//! Which archive a consumer group belongs to.
//!
//! Invariant: a group serves one archive. Sinks of two archives in one group would split the
//! partitions between them and leave both archives incomplete, so the default group is named
//! after the archive (`rewind-sink-<archive id>`), every Kafka commit of the sink carries the
//! marker `rewind:<archive id> <archive url>` as its commit metadata, and a sink refuses to start
//! in a group whose commits carry the marker of another archive.

use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;

use crate::archive::documents::Identity;

/// What prefixes the commit metadata of every Rewind sink commit.
pub const MARKER_PREFIX: &str = "rewind:";

/// The group a sink uses when none is configured: one per archive.
pub fn default_group(identity: &Identity) -> String {
    format!(
        "{}{}",
        crate::archive::documents::SINK_GROUP_PREFIX,
        identity.archive_id()
    )
}

/// The commit metadata that marks a commit as this archive's.
pub fn marker(identity: &Identity, url: &str) -> String {
    format!("{MARKER_PREFIX}{} {url}", identity.archive_id())
}

/// What one committed offset's metadata says about its archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A Rewind sink of the archive with this id (and URL, as that sink spelled it).
    Archive { id: String, url: String },
    /// No Rewind marker: an older Rewind, or another tool.
    Unmarked,
}

/// Read the owner out of a commit's metadata.
pub fn owner(metadata: &str) -> Owner {
    match metadata.strip_prefix(MARKER_PREFIX) {
        Some(rest) if !rest.trim().is_empty() => {
            let (id, url) = rest.split_once(' ').unwrap_or((rest, ""));
            Owner::Archive {
                id: id.to_string(),
                url: url.trim().to_string(),
            }
        }
        _ => Owner::Unmarked,
    }
}

/// The group's commits on some partitions belong to another archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    pub group: String,
    pub other_id: String,
    pub other_url: String,
}

/// Judge the group's committed offsets of the selected partitions: the first commit of another
/// archive, if any; commits without a marker are counted and logged as a warning.
pub fn judge(group: &str, own_id: &str, committed: &[(String, i32, String)]) -> Option<Foreign> {
    let mut unmarked = Vec::new();
    for (topic, partition, metadata) in committed {
        match owner(metadata) {
            Owner::Archive { id, url } if id != own_id => {
                return Some(Foreign {
                    group: group.to_string(),
                    other_id: id,
                    other_url: url,
                })
            }
            Owner::Archive { .. } => {}
            Owner::Unmarked => unmarked.push(format!("{topic}/{partition}")),
        }
    }
    if !unmarked.is_empty() {
        tracing::warn!(
            group,
            partitions = unmarked.len(),
            first = unmarked[0],
            "the consumer group has commits not marked with an archive (an older Rewind, or another tool); make sure no sink of another archive uses this group"
        );
    }
    None
}

/// The group's committed offsets, with their metadata, of the given partitions (those with no
/// commit are left out).
pub fn committed<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    partitions: &[(String, i32)],
) -> rdkafka::error::KafkaResult<Vec<(String, i32, String)>> {
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    let got = crate::kafka::committed_offsets(consumer, &tpl, std::time::Duration::from_secs(30))?;
    Ok(got
        .elements()
        .iter()
        .filter(|e| e.offset().to_raw().is_some_and(|o| o >= 0))
        .map(|e| {
            // rust-rdkafka panics on metadata that is not UTF-8 (the Kafka protocol says it is
            // text, but a broker may pass any client's bytes through): such a commit is not ours.
            let metadata =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.metadata().to_string()))
                    .unwrap_or_default();
            (e.topic().to_string(), e.partition(), metadata)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            format_version: 1,
            created_at: "2026-01-02T03:04:05.678Z".into(),
            cluster_id: "cluster-a".into(),
            writer: "rewind test".into(),
            id: None,
        }
    }

    #[test]
    fn markers_name_the_archive_and_read_back() {
        let id = identity().archive_id();
        assert_eq!(id.len(), 12);
        assert_eq!(default_group(&identity()), format!("rewind-sink-{id}"));
        let mark = marker(&identity(), "s3://b/p");
        assert_eq!(mark, format!("rewind:{id} s3://b/p"));
        assert_eq!(
            owner(&mark),
            Owner::Archive {
                id: id.clone(),
                url: "s3://b/p".into()
            }
        );
        assert_eq!(
            owner("rewind:abc"),
            Owner::Archive {
                id: "abc".into(),
                url: String::new()
            }
        );
        for other in ["", "rewind:", "checkpoint 7", "REWIND:abc"] {
            assert_eq!(owner(other), Owner::Unmarked, "{other:?}");
        }
    }

    #[test]
    fn another_archive_is_foreign_and_unmarked_commits_are_not() {
        let own = identity().archive_id();
        let ours = marker(&identity(), "file:///a");
        let theirs = "rewind:0123456789ab s3://elsewhere".to_string();
        let c = |m: &str| vec![("t".to_string(), 0, m.to_string())];
        assert_eq!(judge("g", &own, &c(&ours)), None);
        assert_eq!(judge("g", &own, &c("")), None);
        assert_eq!(
            judge("g", &own, &[c(&ours), c(""), c(&theirs)].concat()),
            Some(Foreign {
                group: "g".into(),
                other_id: "0123456789ab".into(),
                other_url: "s3://elsewhere".into()
            })
        );
    }

    #[test]
    fn the_archive_id_never_changes() {
        // Groups and commit markers in users' clusters depend on this value.
        assert_eq!(identity().archive_id(), "b04325126550");
        let mut other = identity();
        other.created_at = "2026-01-02T03:04:05.679Z".into();
        assert_ne!(other.archive_id(), identity().archive_id());
    }
}
