//! The `rewind sink` worker processes of one group: started, SIGKILLed, asked to leave (SIGTERM),
//! each logging to its own file so that a failure can show what the workers did.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common;

pub struct Worker {
    pub id: usize,
    child: Child,
    pub log: PathBuf,
    /// Started while S3 was away: it may refuse to start, as a sink does when its store does not
    /// answer.
    started_while_down: bool,
}

pub struct Workers {
    archive: String,
    endpoint: String,
    topic: String,
    group: String,
    pub logs: PathBuf,
    pub live: Vec<Worker>,
    /// Asked to leave with SIGTERM, not exited yet.
    draining: Vec<Worker>,
    next_id: usize,
    /// S3 is away (the test's proxy is cut).
    pub store_down: bool,
    /// Workers that exited without being told to, with what they said last.
    pub unexpected: Vec<String>,
    /// Workers started while S3 was away that gave up, with what they said last.
    pub refused_to_start: Vec<String>,
    /// Workers that left on SIGTERM, and how.
    pub drained: Vec<(usize, ExitStatus)>,
}

/// The last `lines` lines of a worker's log.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Workers {
    /// Workers of `group` archiving `topic` into `archive`, reaching S3 at `endpoint`.
    pub fn new(archive: &str, endpoint: &str, topic: &str, group: &str, logs: PathBuf) -> Workers {
        std::fs::create_dir_all(&logs).unwrap();
        Workers {
            archive: archive.into(),
            endpoint: endpoint.into(),
            topic: topic.into(),
            group: group.into(),
            logs,
            live: Vec::new(),
            draining: Vec::new(),
            next_id: 0,
            store_down: false,
            unexpected: Vec::new(),
            refused_to_start: Vec::new(),
            drained: Vec::new(),
        }
    }

    /// Start one more worker; returns its id.
    pub fn start(&mut self) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        let log = self.logs.join(format!("worker-{id}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rewind"))
            .args([
                "sink",
                "--archive",
                &self.archive,
                "--s3-endpoint",
                &self.endpoint,
                "--s3-path-style",
                "--bootstrap-servers",
                &common::kafka_bootstrap(),
                "--topics",
                &regex::escape(&self.topic),
                "--group",
                &self.group,
                // A killed member's partitions move to the others after the session timeout.
                "-X",
                "session.timeout.ms=6000",
                "-X",
                "heartbeat.interval.ms=1000",
            ])
            .env("AWS_ACCESS_KEY_ID", common::s3_access_key())
            .env("AWS_SECRET_ACCESS_KEY", common::s3_secret_key())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info")
            .env("REWIND__SINK__MAX_FILE_RECORDS", "9")
            .env("REWIND__SINK__MAX_FILE_AGE", "1s")
            .env("REWIND__SINK__DISCOVERY_INTERVAL", "1s")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        self.live.push(Worker {
            id,
            child,
            log,
            started_while_down: self.store_down,
        });
        id
    }

    /// SIGKILL the live worker at `index`; returns its id.
    pub fn kill(&mut self, index: usize) -> usize {
        let mut w = self.live.remove(index);
        w.child.kill().unwrap();
        w.child.wait().unwrap();
        w.id
    }

    /// SIGTERM the live worker at `index`: it must drain and exit 0 (see [`Workers::poll`]).
    pub fn terminate(&mut self, index: usize) -> usize {
        let id = self.live[index].id;
        assert!(self.signal(id, "TERM"), "kill -TERM worker {id}");
        let w = self.live.remove(index);
        self.draining.push(w);
        id
    }

    /// Send `signal` (`STOP`, `CONT`, `TERM`) to the live worker `id`; false if it is not live.
    pub fn signal(&self, id: usize, signal: &str) -> bool {
        let Some(w) = self.live.iter().chain(&self.draining).find(|w| w.id == id) else {
            return false;
        };
        Command::new("kill")
            .args([&format!("-{signal}"), &w.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    }

    /// Reap exited workers: a live worker that exited on its own is noted and replaced. Exiting is
    /// unexpected unless S3 was away when the worker started.
    pub fn poll(&mut self, elapsed: Duration) {
        let mut i = 0;
        while i < self.draining.len() {
            if let Some(status) = self.draining[i].child.try_wait().unwrap() {
                let w = self.draining.remove(i);
                self.drained.push((w.id, status));
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.live.len() {
            if let Some(status) = self.live[i].child.try_wait().unwrap() {
                let w = self.live.remove(i);
                let note = format!(
                    "worker {} exited on its own with {status} at {:.1}s; its log ({}) ends:\n{}",
                    w.id,
                    elapsed.as_secs_f64(),
                    w.log.display(),
                    tail(&w.log, 15)
                );
                eprintln!("chaos: {note}");
                if w.started_while_down {
                    self.refused_to_start.push(note);
                } else {
                    self.unexpected.push(note);
                }
                let id = self.start();
                eprintln!("chaos: started worker {id} to replace it");
            } else {
                i += 1;
            }
        }
    }

    /// SIGTERM every worker and wait (at most `deadline`) for all of them to exit.
    pub fn stop_all(&mut self, deadline: Duration) {
        while !self.live.is_empty() {
            self.terminate(0);
        }
        let until = Instant::now() + deadline;
        while !self.draining.is_empty() && Instant::now() < until {
            self.poll(Duration::ZERO);
            std::thread::sleep(Duration::from_millis(100));
        }
        for w in &mut self.draining {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        let stuck: Vec<String> = self
            .draining
            .drain(..)
            .map(|w| format!("worker {}: {}", w.id, tail(&w.log, 15)))
            .collect();
        assert!(
            stuck.is_empty(),
            "workers did not exit within {deadline:?} of SIGTERM (killed now):\n{}",
            stuck.join("\n")
        );
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in self.live.iter_mut().chain(self.draining.iter_mut()) {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}
