//! The parts of the sink chaos test (`tests/sink_chaos.rs`): the S3 proxy it takes away, the
//! producer, the worker processes, and the check of the archive against the topic.

pub mod check;
pub mod producer;
pub mod proxy;
pub mod workers;
