//! The one place idmint reads the time of day. Everything that schedules or checks a validity
//! takes a [`Clock`], so that tests can run schedules on tokio's paused time instead of
//! waiting for them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

/// `t` as milliseconds since the Unix epoch, as the store keeps times.
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Where the current time comes from.
#[derive(Clone, Debug, Default)]
pub struct Clock(Source);

#[derive(Clone, Debug, Default)]
enum Source {
    /// The system's clock.
    #[default]
    System,
    /// `start`, plus the time tokio's clock has moved since `anchor`.
    Tokio {
        start: OffsetDateTime,
        anchor: tokio::time::Instant,
    },
    /// What a [`ManualClock`] was set to.
    Manual(Arc<Mutex<OffsetDateTime>>),
}

impl Clock {
    /// The system's clock: what every running process uses.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that reads `start` now and then moves with tokio's clock. Under paused time
    /// (`#[tokio::test(start_paused = true)]`) it moves only as far as the runtime advances
    /// it, so a test can live through a certificate's lifetime in no time. Must be called
    /// inside a runtime.
    pub fn following_tokio(start: OffsetDateTime) -> Clock {
        Clock(Source::Tokio {
            start,
            anchor: tokio::time::Instant::now(),
        })
    }

    /// The current time.
    pub fn now(&self) -> OffsetDateTime {
        match &self.0 {
            #[allow(clippy::disallowed_methods)] // the one owner of the system's clock
            Source::System => OffsetDateTime::now_utc(),
            Source::Tokio { start, anchor } => *start + anchor.elapsed(),
            Source::Manual(set) => *set.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// How long from now until `at`; zero when it has passed.
    pub fn until(&self, at: OffsetDateTime) -> Duration {
        Duration::try_from(at - self.now()).unwrap_or(Duration::ZERO)
    }

    /// Waits until `at` by this clock. (A [`ManualClock`] moved meanwhile does not shorten
    /// the wait: what waits on one is woken some other way.)
    pub async fn sleep_until(&self, at: OffsetDateTime) {
        tokio::time::sleep(self.until(at)).await
    }
}

/// A clock that stands still until it is moved, for tests of parts that also do real I/O (a
/// database), where tokio's paused time would fire their timeouts early.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: OffsetDateTime) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    /// The [`Clock`] to hand to the parts under test.
    pub fn clock(&self) -> Clock {
        Clock(Source::Manual(self.0.clone()))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_only_with_the_runtime() {
        let start = datetime!(2026-01-01 00:00 UTC);
        let clock = Clock::following_tokio(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(90));
        let at = start + Duration::from_secs(3600);
        assert_eq!(clock.until(at), Duration::from_secs(3510));
        clock.sleep_until(at).await;
        assert_eq!(clock.now(), at);
        assert_eq!(clock.until(start), Duration::ZERO);
    }

    #[test]
    fn a_manual_clock_moves_only_when_moved() {
        let start = datetime!(2026-01-01 00:00 UTC);
        let hand = ManualClock::new(start);
        let clock = hand.clock();
        assert_eq!(clock.now(), start);
        hand.advance(Duration::from_secs(5));
        assert_eq!(clock.now(), start + Duration::from_secs(5));
    }

    #[test]
    fn the_system_clock_is_the_time_of_day() {
        let now = Clock::system().now();
        assert!(now.year() >= 2025, "{now}");
    }
}
