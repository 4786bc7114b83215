//! Retry pacing and log-once bookkeeping for the Engine connection: pure, so it is unit-tested.

use std::time::Duration;

/// Exponential backoff: `min`, doubling, capped at `max`; `reset` after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, next: min }
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Whether the connection is healthy, so a log line is written once per change of state, not
/// on every retry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// How many attempts failed so far; `None` while healthy.
    failing: Option<u32>,
}

/// What to log after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing (still healthy, or still failing).
    Quiet,
    /// Healthy (or starting) -> failing.
    Failed,
    /// Failing -> healthy, after this many failed attempts.
    Recovered(u32),
}

impl Health {
    pub fn failed(&mut self) -> Transition {
        match &mut self.failing {
            Some(count) => {
                *count += 1;
                Transition::Quiet
            }
            None => {
                self.failing = Some(1);
                Transition::Failed
            }
        }
    }

    pub fn succeeded(&mut self) -> Transition {
        match self.failing.take() {
            Some(count) => Transition::Recovered(count),
            None => Transition::Quiet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let got: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn health_logs_once_per_change_of_state() {
        let mut h = Health::default();
        assert_eq!(h.succeeded(), Transition::Quiet);
        assert_eq!(h.failed(), Transition::Failed);
        assert_eq!(h.failed(), Transition::Quiet);
        assert_eq!(h.failed(), Transition::Quiet);
        assert_eq!(h.succeeded(), Transition::Recovered(3));
        assert_eq!(h.succeeded(), Transition::Quiet);
        assert_eq!(h.failed(), Transition::Failed);
    }
}
