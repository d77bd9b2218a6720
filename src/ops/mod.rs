//! Tools that work on an archive alone, with no Kafka cluster: `verify` (is the archive a sound
//! chain that restores?), `find` (audit look-ups by key, time and header), `ls` (the inventory) and
//! `retention` (delete the oldest files, keeping each chain a contiguous suffix).
//!
//! Invariant: only `retention` writes, and it only deletes whole files from the start of a chain,
//! after recording the chain's new start, so a reader never sees a chain with a hole in it.

pub mod find;
pub mod retention;
pub mod scan;
pub mod verify;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::archive::documents::{self, ArchiveError, Identity};
use crate::storage::{ObjectStore, StorageError, StorageUrl};

/// Why an archive tool could not run.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    #[error("{0}: no Rewind archive there (no _archive.json); check the URL")]
    NoArchive(String),
    #[error("{0}")]
    Input(String),
}

impl From<StorageError> for OpsError {
    fn from(e: StorageError) -> OpsError {
        OpsError::Archive(e.into())
    }
}

impl From<crate::archive::chain::ChainError> for OpsError {
    fn from(e: crate::archive::chain::ChainError) -> OpsError {
        match e {
            crate::archive::chain::ChainError::Archive(a) => OpsError::Archive(a),
            other => OpsError::Input(other.to_string()),
        }
    }
}

/// A local directory that does not exist is not an archive; checked before the store is opened,
/// because opening a local store creates its directory.
pub fn check_exists(url: &StorageUrl) -> Result<(), OpsError> {
    match url {
        StorageUrl::Local { root } if !root.is_dir() => Err(OpsError::NoArchive(url.to_string())),
        _ => Ok(()),
    }
}

/// The archive's identity; an error when there is no archive or it has a format this build does
/// not read.
pub async fn identity(store: &dyn ObjectStore) -> Result<Identity, OpsError> {
    documents::read_identity(store)
        .await?
        .ok_or_else(|| OpsError::NoArchive(store.url().to_string()))
}

/// A progress line for long runs: redrawn in place on a terminal at most four times a second,
/// silent otherwise.
pub struct Progress {
    what: &'static str,
    unit: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last: Option<Instant>,
    shown: bool,
    enabled: bool,
}

impl Progress {
    /// Progress of `total` items of `unit` (e.g. "files"); shown only when stderr is a terminal.
    pub fn new(what: &'static str, unit: &'static str, total: u64) -> Progress {
        Progress {
            what,
            unit,
            total,
            done: 0,
            started: Instant::now(),
            last: None,
            shown: false,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// `n` more items are done.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        if !self.enabled {
            return;
        }
        // Only runs that take a while get a line at all.
        let now = Instant::now();
        if now.duration_since(self.started) < Duration::from_millis(500)
            || self
                .last
                .is_some_and(|t| now.duration_since(t) < Duration::from_millis(250))
        {
            return;
        }
        self.last = Some(now);
        self.draw();
    }

    fn draw(&mut self) {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / elapsed;
        let left = self.total.saturating_sub(self.done);
        let eta = if self.done > 0 && left > 0 {
            format!(", ETA {:.0}s", left as f64 / rate.max(0.001))
        } else {
            String::new()
        };
        let pct = 100.0 * self.done as f64 / self.total.max(1) as f64;
        eprint!(
            "\r{}: {}/{} {} ({pct:.0}%), {rate:.0} {}/s{eta}\x1b[K",
            self.what, self.done, self.total, self.unit, self.unit
        );
        self.shown = true;
    }

    /// Clear the line, if one was drawn.
    pub fn finish(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
