//! Progress bars on the terminal, through `indicatif`: one place that decides how long work shows
//! itself (`find`, `verify --deep`, `retention`, the restore, the sink's status line).
//!
//! Invariant: a bar draws only on a terminal (stderr), at most four times a second; piped output
//! and logs never see control characters. Every bar is drawn through one [`MultiProgress`], and log
//! lines are written through [`LogWriter`], which lifts the bars off the screen while a line is
//! written: a log line never lands in the middle of a bar.

use std::io::{IsTerminal, Write};
use std::sync::LazyLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars on stderr, when it is a terminal.
static BARS: LazyLock<Option<MultiProgress>> = LazyLock::new(|| {
    std::io::stderr()
        .is_terminal()
        .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)))
});

/// A bar of `total` steps drawn with `template` (indicatif's syntax), hidden unless stderr is a
/// terminal.
pub fn bar(total: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    match &*BARS {
        Some(bars) => bars.add(bar),
        None => bar,
    }
}

/// Where log lines go: stderr, with the bars lifted off the screen while a line is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match &*BARS {
            Some(bars) => bars.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A line of free text (`{msg}` in `template`) redrawn in place, for work without a known end
/// (the sink); hidden unless stderr is a terminal.
pub fn status_line(template: &str) -> ProgressBar {
    let bar = self::bar(0, template);
    bar.unset_length();
    bar
}
