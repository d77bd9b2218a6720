//! Named crash points and injected faults for the crash and fault tests.
//!
//! When the environment variable `REWIND_FAILPOINT` names a crash point, the worker announces on
//! stderr that it reached it (`failpoint <name> reached`) and stops there for good, so that a test
//! can `kill -9` it at exactly that step of the commit protocol and check what a restart makes of
//! the archive. When it names a fault, the operation it names fails every time. Without the
//! variable every point is a no-op. `REWIND_FAILPOINT_AFTER=N` lets an armed crash or stall point
//! pass N times before it fires, so that a test can stop a worker later in its work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The data file is durable; its start is not claimed and the checkpoint has not moved yet.
pub const AFTER_UPLOAD: &str = "after-upload";
/// The data file is durable and claimed; the checkpoint has not moved yet.
pub const AFTER_CLAIM: &str = "after-claim";
/// The checkpoint has moved; the position is not committed to Kafka yet.
pub const AFTER_CHECKPOINT: &str = "after-checkpoint";
/// A multipart upload has parts in the store and is not completed.
pub const MID_MULTIPART: &str = "mid-multipart";
/// A restore transaction holds delivered records and progress; it is not committed yet.
pub const RESTORE_BEFORE_COMMIT: &str = "restore-before-commit";
/// A restore transaction holds delivered records; its progress is not written yet. A stall point:
/// the worker waits `REWIND_FAILPOINT_STALL_MS` (5000) there and goes on, so that a test can
/// freeze it (SIGSTOP) in that state and let it go on later.
pub const RESTORE_STALL_BEFORE_PROGRESS: &str = "restore-stall-before-progress";

/// A restore has asked the target cluster (and seen whether its progress topic exists) and has
/// not fenced earlier runs yet. A stall point, like the one above: another run of the same restore
/// can set up meanwhile.
pub const RESTORE_STALL_BEFORE_FENCE: &str = "restore-stall-before-fence";

/// A restore has fenced earlier runs and has not read their progress or committed its plan yet. A
/// stall point: another run of the same restore that sets up meanwhile fences this one.
pub const RESTORE_STALL_AFTER_FENCE: &str = "restore-stall-after-fence";

/// `rewind retention` has planned what to delete and has written nothing yet. A stall point: a
/// compaction can run meanwhile.
pub const RETENTION_STALL_AFTER_PLAN: &str = "retention-stall-after-plan";

/// Fault: every seek of the sink's consumer fails, as it does when librdkafka has not finished
/// assigning the partition or the broker does not answer in time.
pub const SEEK_FAILS: &str = "seek-fails";

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("REWIND_FAILPOINT").ok())
        .as_deref()
}

/// Whether the armed point `name` fires this time: it is passed `REWIND_FAILPOINT_AFTER` times
/// first.
fn fires(name: &str) -> bool {
    static AFTER: OnceLock<u64> = OnceLock::new();
    static PASSED: AtomicU64 = AtomicU64::new(0);
    if armed() != Some(name) {
        return false;
    }
    let after = *AFTER.get_or_init(|| {
        std::env::var("REWIND_FAILPOINT_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    PASSED.fetch_add(1, Ordering::Relaxed) >= after
}

/// Stop here forever if `name` is the armed point.
pub async fn hit(name: &str) {
    if !fires(name) {
        return;
    }
    eprintln!("failpoint {name} reached");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Wait a while here if `name` is the armed point (a stall point), then go on.
pub async fn stall(name: &str) {
    if !fires(name) {
        return;
    }
    let ms = std::env::var("REWIND_FAILPOINT_STALL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    eprintln!("failpoint {name} reached");
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Whether the fault `name` is armed: the caller then fails the operation it guards.
pub fn fails(name: &str) -> bool {
    armed() == Some(name)
}
