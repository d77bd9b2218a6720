//! Rewind: continuous backup and point-in-time recovery for Apache Kafka.
//!
//! Data flows downward through the modules: `cli` parses and reports, `config` decides what to run
//! with, `kafka` talks to clusters, and `storage` moves bytes to and from the archive. Lower layers
//! never import higher ones.

pub mod archive;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod demo;
pub mod drill;
pub mod failpoint;
pub mod kafka;
pub mod live;
pub mod marks;
pub mod metrics;
pub mod ops;
pub mod progress;
pub mod restore;
pub mod service;
pub mod sink;
pub mod storage;
pub mod tables;
