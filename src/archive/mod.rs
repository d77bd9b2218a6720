//! The archive's on-storage format (version 1), independent of how it is read or written: object
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

pub use record::{Header, Record, TimestampType};

/// The archive format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
