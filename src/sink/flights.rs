//! Background uploads: a full file is sealed and encoded and uploaded while its partition reads on
//! into the next one, so that consumption waits for the store only when the buffer budget is
//! really used up.
//!
//! The chain protocol is unchanged: [`PartitionChain::seal`] hands the file's records to the
//! upload, and the upload's task then lands it ([`PartitionChain::lander`]: the claim of its start
//! and the checkpoint, which need only the chain's end and checkpoint), in chain order (a partition
//! has at most one file sealed, and its next file is sealed only after that one landed); the main
//! loop brings the outcome back to the chain ([`PartitionChain::landed`]) and never waits on the
//! store for it. Records buffered meanwhile continue from the sealed file's end; if
//! the landing repositions the chain (an adopted file, a gap, another worker further on), they are
//! dropped and read again, as after any flush.
//!
//! Bounds: one sealed file per partition, [`SinkOptions::uploads_in_flight`] across the sink. The
//! sealed records stay counted in the buffer budget until they land, and each upload's encoder
//! holds a reserve of the budget too ([`encoder_reserve`]).
//!
//! [`SinkOptions::uploads_in_flight`]: super::SinkOptions::uploads_in_flight

use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::consumer::Consumer;
use tokio::task::JoinHandle;

use super::partition::{now_millis, FlushError, Flushed, Lander, PartitionChain};
use super::{Sink, SinkError};
use crate::archive::rotation::{Event, RollReason};

/// The uploads on their way, each a task of its own, so that it moves on while the main loop is
/// busy elsewhere (an inline flush, a landing, a broker call).
#[derive(Default)]
pub(super) struct Flights(FuturesUnordered<JoinHandle<Landing>>);

/// A sink that stops with an error leaves no upload running behind it: each is aborted where it
/// is, which the chain protocol treats as a crash at that step.
impl Drop for Flights {
    fn drop(&mut self) {
        for task in self.0.iter() {
            task.abort();
        }
    }
}

impl Flights {
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next upload to finish; `None` when none is on its way.
    pub(super) async fn next(&mut self) -> Option<Landing> {
        match self.0.next().await? {
            Ok(landing) => Some(landing),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down, and the sink with it.
            Err(_) => None,
        }
    }
}

/// A background upload that finished, to be landed by the main loop.
pub(super) struct Landing {
    id: (String, i32),
    /// The file's claim and checkpoint, done in the upload's task.
    lander: Lander,
    result: Result<Option<Flushed>, FlushError>,
    took: Duration,
    event: Event,
    reason: Option<RollReason>,
    /// What it added to the buffered bytes besides the chain's own count: the encoder's reserve.
    reserve: u64,
    /// The sealed records' bytes, counted by the chain until it lands.
    sealed: u64,
}

/// What an upload's encoder may hold while it runs, beyond the records: the file's encoded parts
/// on their way (about four at once: one being filled, one queued, one held back, one uploading;
/// see `upload`) and the row group being built, never much more than the records' own size.
fn encoder_reserve(sealed: u64, part_size: usize) -> u64 {
    sealed.min(4 * part_size as u64) + (1 << 20)
}

impl Sink<'_> {
    /// Roll `id`'s open file on `event`: in the background when it can fly, else in place. A file
    /// of the partition still on its way lands first.
    pub(super) async fn roll(&mut self, id: &(String, i32), event: Event) -> Result<(), SinkError> {
        if self.chains.get(id).is_some_and(PartitionChain::in_flight) {
            self.land_flight(id).await?;
        }
        if self.fly(id, event) {
            return Ok(());
        }
        self.flush(id, event).await
    }

    /// Seal `id`'s open file and upload it in the background. False when it cannot: uploads are
    /// off or all taken, the store is being waited for, a file of the partition is sealed already,
    /// or the records jump over offsets the broker may have deleted (the caller flushes in place,
    /// which records the gap).
    pub(super) fn fly(&mut self, id: &(String, i32), event: Event) -> bool {
        if self.flights.len() >= self.opts.uploads_in_flight
            || self.retry_at.is_some_and(|at| Instant::now() < at)
        {
            return false;
        }
        let Some(chain) = self.chains.get(id) else {
            return false;
        };
        if chain.sealed_waiting() || chain.in_flight() || chain.open_file().is_none() {
            return false;
        }
        let low = match chain.first_jump() {
            None => None,
            Some(_) => {
                self.report.log_start_queries += 1;
                match self.watermarks(std::slice::from_ref(id)).pop() {
                    Some(Ok((low, _))) => Some(low),
                    // Asked again by the flush in place, which keeps the records if it fails.
                    _ => return false,
                }
            }
        };
        let record_budget = self.record_budget();
        let Some(chain) = self.chains.get_mut(id) else {
            return false;
        };
        let part_size = self.opts.part_size;
        let sealed = chain.buffered_bytes();
        let reserve = encoder_reserve(sealed, part_size);
        if self.buffered + reserve > record_budget {
            // No room for the encoder: the caller flushes in place, or waits for uploads to land.
            return false;
        }
        let reason = chain.should_roll(&self.opts.policy, event);
        let Some(upload) = chain.seal(low, &self.cluster_id, now_millis()) else {
            return false;
        };
        let mut lander = chain.lander().expect("a file was just sealed");
        self.buffered += reserve;
        self.flying += sealed + reserve;
        self.report.background_uploads += 1;
        let store = self.shared_store.clone();
        let id = id.clone();
        self.flights.0.push(tokio::spawn(async move {
            let started = Instant::now();
            let sent = upload.send(&*store, part_size).await;
            let result = lander.land(&*store, sent).await;
            Landing {
                id,
                lander,
                result,
                took: started.elapsed(),
                event,
                reason,
                reserve,
                sealed,
            }
        }));
        true
    }

    /// Past half the budget in records not on their way yet: seal the largest open files for the
    /// background (while uploads are free) until those are back under a quarter of it. Files with
    /// offset jumps are left to the flush in place, which asks the broker for their log starts
    /// together; and after a pass that sealed nothing, the next waits until another sixteenth of
    /// the budget was read, so that the hot path never sorts the partitions for each record.
    pub(super) fn fly_largest(&mut self) {
        let budget = self.record_budget();
        let waiting = self.buffered.saturating_sub(self.flying);
        if waiting <= budget / 2
            || self.buffered < self.fly_floor
            || self.flights.len() >= self.opts.uploads_in_flight
            || self.retry_at.is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        let mut by_size: Vec<((String, i32), u64)> = self
            .chains
            .iter()
            .filter(|(_, c)| {
                c.open_file().is_some()
                    && !c.in_flight()
                    && !c.sealed_waiting()
                    && c.first_jump().is_none()
            })
            .map(|(id, c)| (id.clone(), c.buffered_bytes()))
            .collect();
        by_size.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        let mut sealed = false;
        for (id, _) in by_size {
            if self.buffered.saturating_sub(self.flying) <= budget / 4
                || self.flights.len() >= self.opts.uploads_in_flight
            {
                break;
            }
            sealed |= self.fly(&id, Event::MemoryPressure);
        }
        self.fly_floor = if sealed {
            0
        } else {
            self.buffered + budget / 16
        };
    }

    /// A background upload finished: land its file (claim, checkpoint) and account for it like
    /// any flush.
    pub(super) async fn land(&mut self, landing: Landing) -> Result<(), SinkError> {
        let Landing {
            id,
            lander,
            result,
            took,
            event,
            reason,
            reserve,
            sealed,
        } = landing;
        // A partition the group took away meanwhile lands as a revocation's flush: its position
        // is the new owner's to commit, and its consumer is not moved.
        let event = if self
            .consumer
            .context()
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
        {
            Event::Revoked
        } else {
            event
        };
        self.buffered -= reserve;
        self.flying -= sealed + reserve;
        // Forgotten meanwhile (no longer assigned), and perhaps opened again since: the upload
        // claimed and checkpointed like any worker that lost the partition (safe by the chain
        // protocol, as for a zombie), and its outcome is not this chain's to report.
        let Some(chain) = self.chains.get_mut(&id) else {
            return Ok(());
        };
        let before = chain.buffered_bytes();
        if !chain.landed(lander) {
            return Ok(());
        }
        self.buffered = self.buffered - before + chain.buffered_bytes();
        self.settle(
            &id,
            event,
            reason,
            took,
            result.map(|f| f.into_iter().collect()),
        )
        .await
    }

    /// Land every upload on its way (before anything that flushes in place or gives partitions
    /// up).
    pub(super) async fn land_all(&mut self) -> Result<(), SinkError> {
        while let Some(landing) = self.flights.next().await {
            self.land(landing).await?;
        }
        Ok(())
    }

    /// Wait until `id`'s upload landed, landing the others that finish first.
    async fn land_flight(&mut self, id: &(String, i32)) -> Result<(), SinkError> {
        while self.chains.get(id).is_some_and(PartitionChain::in_flight) {
            let Some(landing) = self.flights.next().await else {
                break;
            };
            self.land(landing).await?;
        }
        Ok(())
    }
}
