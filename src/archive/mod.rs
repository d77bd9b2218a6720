//! The archive's on-storage format (versions 1 and 2), independent of how it is read or written: object
//! keys, time buckets, the rotation policy that keeps the bucket rule, and the Parquet encoding of
//! records.
//!
//! Invariant: everything here is pure; the archive module touches storage only through the
//! `storage` trait and never imports the layers above it (sink, source, service, cli).

pub mod chain;
pub mod datafile;
pub mod documents;
pub mod marks;
pub mod paths;
pub mod record;
pub mod rotation;
pub mod time;
pub mod typed;

pub use record::{Header, Record, TimestampType};

/// The version of the documents and data files this build writes (their own format is unchanged
/// since version 1).
pub const FORMAT_VERSION: u32 = 1;
/// The newest archive format (`_archive.json`'s `format_version`) this build reads: version 2 adds
/// compacted data files, whose key carries their end (`docs/archive-format.md`). An archive stays
/// at version 1 until `rewind compact` first writes one.
pub const ARCHIVE_FORMAT_VERSION: u32 = 2;
