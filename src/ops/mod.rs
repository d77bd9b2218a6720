//! Tools that work on an archive alone, with no Kafka cluster: `verify` (is the archive a sound
//! chain that restores?), `find` (audit look-ups by key, time and header), `ls` (the inventory) and
//! `retention` (delete the oldest files, keeping each chain a contiguous suffix).
//!
//! Invariant: only `retention` writes, and it only deletes whole files from the start of a chain,
//! after recording the chain's new start, so a reader never sees a chain with a hole in it.

pub mod compact;
pub mod find;
pub mod lifecycle;
pub mod retention;
pub mod scan;
pub mod verify;

use crate::archive::documents::{self, ArchiveError, Identity};
use crate::storage::{ObjectStore, StorageError, StorageUrl};

/// Why an archive tool could not run.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    #[error("{0}: no Rewind archive there (no _archive.json); check the URL")]
    NoArchive(String),
    #[error("{0}: no archive at this path (no such folder); check --archive or REWIND__ARCHIVE")]
    NoFolder(String),
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

/// A local directory that does not exist is not an archive: said at once, naming the path (a
/// mistyped path is the likely cause), rather than as an archive without `_archive.json`.
pub fn check_exists(url: &StorageUrl) -> Result<(), OpsError> {
    match url {
        StorageUrl::Local { root } if !root.is_dir() => Err(OpsError::NoFolder(url.to_string())),
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

/// A progress bar for long runs (indicatif): on a terminal it appears once the run has taken half
/// a second, then is redrawn in place at most four times a second with a rate and an ETA; hidden
/// otherwise.
pub struct Progress {
    bar: indicatif::ProgressBar,
    started: std::time::Instant,
    /// Not drawn yet: waiting for the run to take half a second, on a terminal.
    pending: bool,
}

impl Progress {
    /// Progress of `total` items of `unit` (e.g. "files"); shown only when stderr is a terminal.
    pub fn new(what: &'static str, unit: &'static str, total: u64) -> Progress {
        let bar = crate::progress::bar(
            total,
            &format!("{{prefix}}: {{pos}}/{{len}} {unit} ({{percent}}%), {{per_sec}}, ETA {{eta}}"),
        );
        bar.set_prefix(what);
        let pending = !bar.is_hidden();
        // Short runs get no line at all.
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        Progress {
            bar,
            started: std::time::Instant::now(),
            pending,
        }
    }

    /// `n` more items are done.
    pub fn add(&mut self, n: u64) {
        if self.pending && self.started.elapsed() >= std::time::Duration::from_millis(500) {
            self.pending = false;
            self.bar
                .set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
        }
        self.bar.inc(n);
    }

    /// Clear the line, if one was drawn.
    pub fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
