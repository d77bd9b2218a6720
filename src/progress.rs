//! Progress bars on the terminal, through `indicatif`: one place that decides how long work shows
//! itself (`find`, `verify --deep`, `retention`, the restore, the sink's status line).
//!
//! Invariant: a bar draws only on a terminal (stderr), at most four times a second; piped output
//! and logs never see control characters.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `total` steps drawn with `template` (indicatif's syntax), hidden unless stderr is a
/// terminal.
pub fn bar(total: u64, template: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr_with_hz(4)
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A line of free text (`{msg}` in `template`) redrawn in place, for work without a known end
/// (the sink); hidden unless stderr is a terminal.
pub fn status_line(template: &str) -> ProgressBar {
    let bar = self::bar(0, template);
    bar.unset_length();
    bar
}
