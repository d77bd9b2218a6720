//! One backoff for everything Rewind tries again: the sink's flushes while the store is away, the
//! service's pipeline restarts, and group requests while a cluster's coordinator starts.
//!
//! Invariant: the waits double from the first to the maximum and never exceed it; only `reset`
//! (a success that counts) brings them back to the first. Rewind keeps this dozen lines rather
//! than a crate: the retry loops differ (a deadline, a pause signal, a store that answers again),
//! and what they share is only this arithmetic.

use std::time::Duration;

/// Exponential backoff between `first` and `max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let first = first.min(max);
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next attempt; the one after doubles, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// The wait `next_delay` would return now.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the first wait.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let waits: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.peek(), Duration::from_secs(1));
        assert_eq!(
            Backoff::new(Duration::from_secs(9), Duration::from_secs(3)).next_delay(),
            Duration::from_secs(3)
        );
    }
}
