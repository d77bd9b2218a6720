//! Iceberg tables over the archive: one table per topic whose snapshots list the archive's own
//! data files, so engines that speak Iceberg (Athena, Spark, Trino, Snowflake, DuckDB, pyiceberg)
//! open a topic by name with no data copied.
//!
//! A table lives at `_tables/<topic>/` (docs/archive-format.md, `_tables/`). [`sync`] brings each
//! table to the archive: files the chain holds and a checkpoint vouches for are added with an
//! append snapshot; files that left the chain (retention, a lost race's orphan) are removed with a
//! delete snapshot. The commit is the create-only put of the next `v<N>.metadata.json`: of two
//! writers building on version N, exactly one creates N+1, and the other reads it and builds again,
//! so no writer's files are lost. `version-hint.text` then points readers at the newest version.
//!
//! Invariant: every file a table's current snapshot lists is a file of its partition's chain, and
//! after a sync every chain file below the partition's checkpoint is listed, once.

pub mod catalog;
pub mod manifest;
pub mod metadata;
pub mod spec;
mod sync;
pub mod typed;

pub use sync::{sync, sync_existing, sync_topic, table_prefix, Policy, SyncReport, TableOptions};

use crate::archive::chain::ChainError;
use crate::archive::documents::ArchiveError;
use crate::storage::StorageError;

/// Why a table could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("{0} is not a Rewind archive (no _archive.json); check the archive URL")]
    NoArchive(String),
    #[error("the table metadata is not what Rewind writes: {0}")]
    Metadata(String),
    #[error("{0} is outside the archive")]
    Outside(String),
    #[error("{topic}/{partition}: the chain does not read ({why}), so the table may still list files of it")]
    Unreadable {
        topic: String,
        partition: i32,
        why: String,
    },
    #[error("{topic}: another writer committed to the table {attempts} times while this one tried; try again")]
    Contended { topic: String, attempts: u32 },
}

impl From<apache_avro::Error> for TableError {
    fn from(e: apache_avro::Error) -> TableError {
        TableError::Metadata(format!("Avro: {e}"))
    }
}

impl From<serde_json::Error> for TableError {
    fn from(e: serde_json::Error) -> TableError {
        TableError::Metadata(format!("JSON: {e}"))
    }
}
