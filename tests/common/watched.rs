//! A child process watched while it runs: its stderr read line by line as it comes, signals sent
//! to it, and killed if the test fails first.

use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A running worker whose stderr is read line by line as it comes; killed if the test fails first.
pub struct Watched {
    child: Option<Child>,
    lines: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Watched {
    pub fn start(cmd: &mut Command) -> Watched {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Watched {
            child: Some(child),
            lines,
            log: Vec::new(),
        }
    }

    pub fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    /// Whether a line holding `needle` comes within `timeout` (false if the worker exits first).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.log.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Everything it wrote on stderr so far.
    pub fn stderr(&mut self) -> String {
        self.log.extend(self.lines.try_iter());
        self.log.join("\n")
    }

    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Its exit status, stdout and whole stderr, once it exits.
    pub fn finish(mut self) -> Output {
        let child = self.child.take().unwrap();
        let mut out = child.wait_with_output().unwrap();
        self.log.extend(self.lines.iter());
        out.stderr = self.log.join("\n").into_bytes();
        out
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Watched {
    /// Send `signal` (`-STOP`, `-CONT`, `-KILL`) to it.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success(),
            "kill {signal} {pid}"
        );
    }

    /// Its exit status if it has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Whether it wrote a line holding `needle` so far (without waiting).
    pub fn said(&mut self, needle: &str) -> bool {
        self.log.extend(self.lines.try_iter());
        self.log.iter().any(|l| l.contains(needle))
    }

    /// Like [`Watched::finish`], but if it has not exited within `timeout`, kills it and returns
    /// its stderr as the error.
    pub fn finish_within(mut self, timeout: Duration) -> Result<Output, String> {
        let deadline = Instant::now() + timeout;
        while self.exited().is_none() {
            if Instant::now() > deadline {
                let log = self.stderr();
                self.kill();
                return Err(log);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(self.finish())
    }
}
