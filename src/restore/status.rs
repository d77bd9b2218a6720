//! What a restore shows while it runs: the progress line (on a terminal, or in the log), the
//! service's live status and the lag gauges.
//!
//! Invariant: progress is counted in source offsets, which every lane knows exactly, so a resumed
//! restore shows the same totals as one that was never interrupted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Restore;

/// The terminal's progress bar of one pass over the plan.
pub(super) fn bar_for_a_pass() -> indicatif::ProgressBar {
    crate::progress::bar(0, "{msg}, {percent}% done, ETA {eta}")
}

impl Restore<'_> {
    /// A progress line: on a terminal a bar (indicatif) updated every second; in logs every 10
    /// seconds.
    pub(super) fn status(&mut self, last: bool) {
        let every = if self.bar.is_some() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        if !last && self.last_status.elapsed() < every {
            return;
        }
        self.last_status = Instant::now();
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.report.records as f64 / elapsed;
        // Progress in offsets, which every lane knows exactly, resumed runs included.
        let (done, left) = self.lanes.iter().fold((0, 0), |(done, left), l| {
            (
                done + (l.next - l.run_from).max(0),
                left + (l.until() - l.next).max(0),
            )
        });
        let line = format!(
            "{} partitions, restored {} records ({:.1} MB), {:.0} records/s, committed {} offsets, lag {} offsets",
            self.lanes.len(),
            self.report.records,
            self.report.bytes as f64 / 1e6,
            rate,
            done,
            left,
        );
        if let Some(live) = &self.opts.live {
            // Between commits too: records count as they are produced, the lag as it is committed.
            let (records, bytes) = (self.report.records, self.report.bytes);
            live.update(|status| {
                status.records = records;
                status.bytes = bytes;
                status.records_per_second = Some(rate);
            });
        }
        if let Some(bar) = &self.bar {
            if last {
                // The pass's last line stays, ended, above what follows; a following restore's
                // next pass gets a bar of its own.
                bar.finish_and_clear();
                eprintln!("{line}");
                self.bar = Some(bar_for_a_pass());
                return;
            }
            // Offsets, not records, measure what is left (a resumed run knows them exactly).
            bar.set_message(line);
            bar.set_length((done + left) as u64);
            bar.set_position(done as u64);
        } else if !last {
            let eta = if done > 0 && left > 0 {
                format!(
                    ", {:.0}% done, ETA {:.0}s",
                    100.0 * done as f64 / (done + left) as f64,
                    left as f64 * elapsed / done as f64
                )
            } else {
                String::new()
            };
            tracing::info!("{line}{eta}");
        }
    }

    /// Offsets archived but not restored yet, per target topic.
    pub(super) fn report_lag(&self) {
        let mut lag: BTreeMap<&str, i64> = BTreeMap::new();
        for lane in &self.lanes {
            *lag.entry(&lane.target_topic).or_default() += (lane.until() - lane.next).max(0);
        }
        if let Some(live) = &self.opts.live {
            let partitions: Vec<crate::live::LivePartition> = self
                .lanes
                .iter()
                .map(|lane| crate::live::LivePartition {
                    topic: lane.topic.clone(),
                    partition: lane.partition,
                    target_topic: Some(lane.target_topic.clone()),
                    position: lane.next,
                    end: Some(lane.until()),
                    lag: Some((lane.until() - lane.next).max(0)),
                })
                .collect();
            let (records, bytes) = (self.report.records, self.report.bytes);
            let planned = self.report.planned_records;
            let rate = self.report.records as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            live.update(|status| {
                status.records_per_second = Some(rate);
                status.lag_records = partitions.iter().map(|p| p.lag).sum();
                status.finished =
                    Some(!self.opts.follow && status.lag_records == Some(0) && self.report.visible);
                status.partitions = partitions;
                status.records = records;
                status.bytes = bytes;
                status.planned_records = Some(planned);
            });
        }
        for (topic, behind) in lag {
            metrics::gauge!(crate::metrics::RESTORE_LAG, "topic" => topic.to_string())
                .set(behind as f64);
        }
    }
}
