//! The archive's on-storage format (version 1), independent of how it is read or written: object
//! keys, time buckets and the rotation policy that keeps the bucket rule.
//!
//! Invariant: everything here is pure; the archive module touches storage only through the
//! `storage` trait and never imports the layers above it (sink, source, service, cli).

pub mod paths;
pub mod rotation;
pub mod time;

/// The archive format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
