//! `restore --plan`: every check of a restore, against the target cluster, writing nothing: the
//! window's plan, the progress an earlier run of the same id committed, what happens to each
//! target, what the target refuses or warns about, and where `--groups` would move each group.
//!
//! Invariant: the preview runs the restore's own checks ([`Cluster::ask`], [`targets::check`],
//! the producer's limits, [`lane::build`]) and never fences, creates or commits anything: what it
//! reports as refused is what the run would refuse, before the run wrote anything either.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Serialize;

use super::cluster::Cluster;
use super::plan::{plan, records_between, PartitionPlan};
use super::targets::{self, TargetCheck};
use super::{groups, lane, progress, transaction};
use super::{RestoreError, RestoreOptions, REQUEST_TIMEOUT};
use crate::archive::chain::Chain;
use crate::kafka::blocking;
use crate::storage::ObjectStore;

/// How long the plan waits for a resumed restore's committed progress.
const PROGRESS_WAIT: Duration = Duration::from_secs(30);

/// What a restore would do, and whether it would start.
#[derive(Debug, Serialize)]
pub struct Preview {
    pub partitions: Vec<PartitionPlan>,
    /// The target cluster's bootstrap servers.
    pub bootstrap_servers: String,
    /// Why the target was not checked (it did not answer); nothing below was asked then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unchecked: Option<String>,
    /// An earlier run of this restore id committed progress: the run resumes it.
    pub resumed: bool,
    /// Records still to restore (of a resumed restore: those after its committed progress).
    pub remaining_records: u64,
    pub targets: Vec<TargetCheck>,
    pub groups: Vec<GroupMove>,
    /// Why the run would refuse to start (nothing is written then).
    pub refusals: Vec<String>,
    pub warnings: Vec<String>,
}

/// Where `restore --groups` would move one group on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMove {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// The group's committed source offset in the snapshot the restore uses.
    pub committed: i64,
    pub target_topic: String,
    /// Restored records of the partition before the group's position: the group resumes at the
    /// next one. `None`: the group had read past everything restored, and resumes at the end.
    pub after_records: Option<u64>,
    /// The group has active members in the target, so the restore leaves it alone. `None`: the
    /// group exists there with the consumer protocol of KIP-848, whose members only the restore's
    /// own commit finds out about (it then leaves the group alone).
    pub active_members: Option<bool>,
}

/// Plan the restore and run its checks against the target, writing nothing. `resume`: the restore
/// id was given, so the progress of an earlier run is read.
pub async fn preview(
    client: ClientConfig,
    store: &dyn ObjectStore,
    opts: &RestoreOptions,
    resume: bool,
) -> Result<Preview, RestoreError> {
    let planned = plan(store, opts).await?;
    let mut preview = Preview {
        partitions: planned.partitions.clone(),
        bootstrap_servers: crate::kafka::servers(&client),
        unchecked: None,
        resumed: false,
        remaining_records: planned.partitions.iter().map(|p| p.records).sum(),
        targets: Vec::new(),
        groups: Vec::new(),
        refusals: Vec::new(),
        warnings: Vec::new(),
    };
    if preview.remaining_records == 0 && !opts.follow {
        // The run writes nothing at all then, and asks the target nothing.
        return Ok(preview);
    }
    let cluster = match Cluster::ask(client.clone(), opts, &planned).await {
        Ok(cluster) => cluster,
        Err(RestoreError::Kafka(e)) => {
            preview.unchecked = Some(e.to_string());
            return Ok(preview);
        }
        Err(e) => return Err(e),
    };
    let refused = |result: Result<(), RestoreError>, refusals: &mut Vec<String>| match result {
        Err(RestoreError::Target(message)) => {
            refusals.push(message);
            Ok(())
        }
        other => other,
    };
    if let Some(refusal) = cluster.refusal(opts) {
        preview.refusals.push(refusal.to_string());
    }
    if let Some(ids) = &opts.schema_ids {
        if let Err(unreachable) = ids.check().await {
            preview.refusals.push(unreachable);
        }
    }
    transaction::batch_size(store, opts, &planned, &cluster).await?;
    refused(
        transaction::transaction_timeout(&client, opts, cluster.limits.as_ref()).map(|_| ()),
        &mut preview.refusals,
    )?;

    let stored = if resume && !cluster.progress_missing {
        let read = blocking({
            let (client, topic, id) = (
                client.clone(),
                opts.progress_topic.clone(),
                opts.restore_id.clone(),
            );
            move || progress::read(&client, &topic, &id, PROGRESS_WAIT, false)
        })
        .await;
        match read {
            Ok(stored) => stored,
            // The run fences an earlier run's open transaction and reads on; the plan, which
            // writes nothing, can only wait for it.
            Err(e) => {
                preview.unchecked = Some(format!(
                    "the committed progress of restore {} could not be read within {}s ({e}): an earlier run's transaction may still be open, which the run aborts at once by fencing it; plan again once it has timed out, or run the restore",
                    opts.restore_id,
                    PROGRESS_WAIT.as_secs()
                ));
                return Ok(preview);
            }
        }
    } else {
        BTreeMap::new()
    };
    preview.resumed = !stored.is_empty();
    let mut chains: HashMap<(String, i32), Chain> = planned
        .chains
        .iter()
        .map(|c| ((c.topic.clone(), c.partition), c.clone()))
        .collect();
    let end_mark_time = planned.cuts.to_time();
    let (lanes, _) = lane::build(opts, planned, &stored)?;
    if preview.resumed {
        preview.remaining_records = 0;
        for lane in &lanes {
            if let Some(chain) = chains.get_mut(&(lane.topic.clone(), lane.partition)) {
                preview.remaining_records +=
                    records_between(store, chain, lane.next, lane.until()).await?;
            }
        }
    }
    let remaining = lanes.iter().any(|l| l.next < l.until());
    if remaining || opts.follow {
        let new_targets: BTreeSet<String> = if preview.resumed {
            BTreeSet::new()
        } else {
            lanes.iter().map(|l| l.target_topic.clone()).collect()
        };
        let checked = targets::check(store, opts, &cluster, &lanes, &new_targets).await?;
        preview.targets = checked.targets;
        preview.refusals.extend(checked.refusals);
        preview.warnings.extend(checked.warnings);
    }

    if opts.groups {
        if opts.repartition_by_key {
            preview.refusals.push(groups::NOT_WITH_REPARTITION.into());
            return Ok(preview);
        }
        let as_of = if opts.follow {
            None
        } else {
            stored
                .values()
                .next()
                .and_then(|p| p.groups_as_of)
                .or(opts.window.to)
                .or(end_mark_time)
        };
        let members = blocking({
            let client = client.clone();
            move || groups::members_of_all(&client, REQUEST_TIMEOUT)
        })
        .await
        .map_err(|e| cluster.kafka_err(e))?;
        for snapshot in groups::snapshots_as_of(store, as_of).await? {
            for lane in &lanes {
                let Some(&committed) = snapshot
                    .offsets
                    .get(&lane.topic)
                    .and_then(|p| p.get(&lane.partition))
                else {
                    continue;
                };
                let until = lane.end.unwrap_or(lane.chain_end);
                let after_records = match chains.get_mut(&(lane.topic.clone(), lane.partition)) {
                    Some(chain) if committed < until => Some(
                        records_between(store, chain, lane.start, committed.max(lane.start))
                            .await?,
                    ),
                    _ => None,
                };
                // A group the target does not know has no members.
                let active_members = members.get(&snapshot.group).copied().unwrap_or(Some(false));
                preview.groups.push(GroupMove {
                    group: snapshot.group.clone(),
                    topic: lane.topic.clone(),
                    partition: lane.partition,
                    committed,
                    target_topic: lane.target_topic.clone(),
                    after_records,
                    active_members,
                });
            }
        }
    }
    Ok(preview)
}
