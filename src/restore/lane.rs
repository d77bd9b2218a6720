//! Lanes: one per partition a restore writes, from the plan (or, for a resumed restore, from its
//! committed progress) and grown as a followed chain grows.
//!
//! Invariant: a lane restores `[next, until)` of its chain and never skips an offset the archive
//! cannot account for: a `next` no longer in the chain (retention moved its start) stops the
//! restore unless a recorded gap says those offsets were never archived.

use std::collections::BTreeMap;

use super::plan::{plan_partition, selection, target_of, Planned};
use super::progress::Progress;
use super::Restore;
use super::{RestoreError, RestoreOptions};
use crate::archive::chain::{self, ChainFile};
use crate::archive::documents::Gap;
use crate::archive::time::rfc3339_millis;

/// One partition being restored.
pub(super) struct Lane {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) target_topic: String,
    pub(super) start: i64,
    /// Planned end; `None` in follow mode (the chain's end, which grows).
    pub(super) end: Option<i64>,
    /// Every source offset before this one is committed in the target.
    pub(super) next: i64,
    /// `next` when this run took the lane up (for the progress line).
    pub(super) run_from: i64,
    /// Where the chain currently ends.
    pub(super) chain_end: i64,
    pub(super) files: Vec<ChainFile>,
    /// Groups still to translate: (committed source offset, group), sorted.
    pub(super) watches: Vec<(i64, String)>,
    pub(super) resolved: BTreeMap<String, i64>,
    /// Watch slots sent in the open transaction.
    pub(super) pending: Vec<(usize, Vec<String>)>,
    /// Progress changed since the last commit.
    pub(super) dirty: bool,
    /// This process writes the lane: always, unless the restore is shared and another worker
    /// owns it (see [`shared`](super::shared)).
    pub(super) owned: bool,
}

impl Lane {
    pub(super) fn until(&self) -> i64 {
        self.end.unwrap_or(self.chain_end).min(self.chain_end)
    }

    pub(super) fn progress(&self, opts: &RestoreOptions, groups_as_of: Option<i64>) -> Progress {
        Progress {
            restore_id: opts.restore_id.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            target_topic: self.target_topic.clone(),
            window: opts.window.describe(),
            selection: selection(opts),
            follow: opts.follow,
            start: self.start,
            end: self.end,
            next: self.next,
            groups: self.resolved.clone(),
            groups_as_of,
            updated_at: rfc3339_millis(crate::archive::time::now_ms()),
        }
    }
}

/// One lane per planned partition; a resumed restore keeps the ranges it was started with (and is
/// refused for another window or selection). Returns the lanes and the records planned.
pub(super) fn build(
    opts: &RestoreOptions,
    planned: Planned,
    stored: &BTreeMap<(String, i32), Progress>,
) -> Result<(Vec<Lane>, u64), RestoreError> {
    let describe = |window: &str, selection: &str, follow: bool| {
        format!(
            "{window} {selection}{}",
            if follow { " --follow" } else { "" }
        )
    };
    let asked = describe(&opts.window.describe(), &selection(opts), opts.follow);
    if let Some(p) = stored.values().next() {
        let started = describe(&p.window, &p.selection, p.follow);
        if started != asked {
            return Err(RestoreError::OtherWindow {
                id: opts.restore_id.clone(),
                stored: started,
                asked,
            });
        }
    }
    let resumed = !stored.is_empty();
    let mut lanes = Vec::new();
    let mut planned_records = 0;
    for (chain, plan) in planned.chains.into_iter().zip(planned.partitions) {
        let key = (chain.topic.clone(), chain.partition);
        let gaps = chain.gaps.clone();
        let (start, end, next, resolved) = match stored.get(&key) {
            Some(p) => (p.start, p.end, p.next, p.groups.clone()),
            // A resumed bounded restore sticks to the partitions it planned.
            None if resumed && !opts.follow => continue,
            None => (
                plan.start,
                (!opts.follow).then_some(plan.end),
                plan.start,
                BTreeMap::new(),
            ),
        };
        planned_records += plan.records;
        lanes.push(Lane {
            topic: chain.topic.clone(),
            partition: chain.partition,
            target_topic: plan.target_topic.clone(),
            start,
            end,
            next,
            run_from: next,
            chain_end: chain.end().unwrap_or(0),
            files: chain.files,
            watches: Vec::new(),
            resolved,
            pending: Vec::new(),
            dirty: false,
            owned: true,
        });
        check_covered(lanes.last().expect("just pushed"), &gaps)?;
    }
    Ok((lanes, planned_records))
}

impl Restore<'_> {
    /// The restore's lanes (see [`build`]).
    pub(super) fn build_lanes(
        &mut self,
        planned: Planned,
        stored: &BTreeMap<(String, i32), Progress>,
    ) -> Result<(), RestoreError> {
        let (lanes, planned_records) = build(self.opts, planned, stored)?;
        self.lanes = lanes;
        self.report.planned_records += planned_records;
        self.report.partitions = self.lanes.len();
        Ok(())
    }

    /// Re-read a partition's chain; returns whether it holds records not restored yet.
    pub(super) async fn extend_lane(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<bool, RestoreError> {
        let listed = chain::list_files(
            &*self.store,
            &crate::archive::paths::DataFileKey::partition_prefix(topic, partition),
        )
        .await
        .map_err(|e| RestoreError::Archive(e.into()))?;
        let Some(files) = listed.get(&(topic.to_string(), partition)) else {
            return Ok(false);
        };
        let Some(index) = self
            .lanes
            .iter()
            .position(|l| l.topic == topic && l.partition == partition)
        else {
            // A partition that appeared while following: planned like the first ones, from the
            // window's start.
            let mut chain =
                chain::load(&*self.store, topic, partition, files, &BTreeMap::new()).await?;
            let target_topic = target_of(self.opts, topic).to_string();
            let plan = plan_partition(
                &*self.store,
                &mut chain,
                &self.opts.window,
                &self.cuts,
                &target_topic,
            )
            .await?;
            self.lanes.push(Lane {
                topic: topic.to_string(),
                partition,
                target_topic,
                start: plan.start,
                end: None,
                next: plan.start,
                run_from: plan.start,
                chain_end: chain.end().unwrap_or(plan.start),
                files: chain.files,
                watches: Vec::new(),
                resolved: BTreeMap::new(),
                pending: Vec::new(),
                dirty: true,
                owned: true,
            });
            let lane = self.lanes.last().expect("just pushed");
            return Ok(lane.next < lane.until());
        };
        let known: BTreeMap<String, ChainFile> = self.lanes[index]
            .files
            .iter()
            .map(|f| (f.key.clone(), f.clone()))
            .collect();
        let chain = chain::load(&*self.store, topic, partition, files, &known).await?;
        let lane = &mut self.lanes[index];
        lane.chain_end = chain.end().unwrap_or(lane.chain_end);
        lane.files = chain.files;
        check_covered(lane, &chain.gaps)?;
        Ok(lane.next < lane.until())
    }
}

/// A lane still to restore must find its next offset in the chain (or in a recorded gap before
/// it): retention may have deleted the files holding it since the restore planned (a resumed or
/// following restore), and skipping to the new start would lose those records silently.
fn check_covered(lane: &Lane, gaps: &[Gap]) -> Result<(), RestoreError> {
    if lane.next >= lane.until() {
        return Ok(());
    }
    let first = lane.files.first().map_or(lane.until(), |f| f.start);
    let never_archived = gaps.iter().any(|g| g.start <= lane.next && g.end >= first);
    if first > lane.next && !never_archived {
        return Err(RestoreError::Pruned {
            topic: lane.topic.clone(),
            partition: lane.partition,
            next: lane.next,
            start: first,
        });
    }
    Ok(())
}
