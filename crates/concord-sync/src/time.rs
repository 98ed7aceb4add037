//! The engine's time: a point on the driver's monotonic clock. The engine reads no clock;
//! the driver passes the time in and converts the deadlines that come back.

use std::ops::Add;
use std::time::Duration;

/// A point in time, in milliseconds since an origin the driver picks (its start, say) on a
/// monotonic clock. Not wall-clock time: it never jumps, and means nothing across
/// processes.
///
/// Its own type rather than `std::time::Instant`, which cannot be made from a number (so a
/// test or a simulation could not drive the engine's time) and does not work on wasm32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    pub const ZERO: Time = Time(0);

    pub fn from_millis(millis: u64) -> Time {
        Time(millis)
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is; zero if it is not after.
    pub fn saturating_duration_since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    /// Saturates at the end of time; a fraction of a millisecond counts as a whole one, so
    /// that a deadline is never earlier than asked.
    fn add(self, duration: Duration) -> Time {
        let millis = duration.as_nanos().div_ceil(1_000_000);
        Time(self.0.saturating_add(u64::try_from(millis).unwrap_or(u64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_rounds_up_and_saturates() {
        let t = Time::from_millis(10);
        assert_eq!(t + Duration::from_micros(1), Time::from_millis(11));
        assert_eq!(t + Duration::from_millis(5), Time::from_millis(15));
        assert_eq!(
            Time::from_millis(u64::MAX) + Duration::from_secs(1),
            Time::from_millis(u64::MAX)
        );
        assert_eq!(t.saturating_duration_since(Time::from_millis(20)), Duration::ZERO);
    }
}

/// A retry after a backoff that doubles with every failure in a row, up to a cap, and starts
/// over after a success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    /// When to retry, once a failure asked for it.
    pub(crate) at: Option<Time>,
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { at: None, initial, max: max.max(initial), next: initial }
    }

    /// A failure at `now`: a retry after the backoff, unless one is already set; the next
    /// backoff doubles.
    pub(crate) fn failed(&mut self, now: Time) {
        if self.at.is_none() {
            self.at = Some(now + self.next);
            self.next = (self.next * 2).min(self.max);
        }
    }

    /// A success: the next failure waits the initial backoff again.
    pub(crate) fn succeeded(&mut self) {
        self.next = self.initial;
    }

    /// Whether the retry is due at `now`; a due retry is taken.
    pub(crate) fn take_due(&mut self, now: Time) -> bool {
        let due = self.at.is_some_and(|at| at <= now);
        if due {
            self.at = None;
        }
        due
    }
}
