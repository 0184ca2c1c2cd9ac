//! The one place idmint reads the time of day. Everything that schedules or checks a validity
//! takes a [`Clock`], so that tests can run schedules on tokio's paused time instead of
//! waiting for them.

use std::time::Duration;

use time::OffsetDateTime;

/// Where the current time comes from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock(Source);

#[derive(Clone, Copy, Debug, Default)]
enum Source {
    /// The system's clock.
    #[default]
    System,
    /// `start`, plus the time tokio's clock has moved since `anchor`.
    Tokio {
        start: OffsetDateTime,
        anchor: tokio::time::Instant,
    },
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
        match self.0 {
            #[allow(clippy::disallowed_methods)] // the one owner of the system's clock
            Source::System => OffsetDateTime::now_utc(),
            Source::Tokio { start, anchor } => start + anchor.elapsed(),
        }
    }

    /// How long from now until `at`; zero when it has passed.
    pub fn until(&self, at: OffsetDateTime) -> Duration {
        Duration::try_from(at - self.now()).unwrap_or(Duration::ZERO)
    }

    /// Waits until `at` by this clock.
    pub async fn sleep_until(&self, at: OffsetDateTime) {
        tokio::time::sleep(self.until(at)).await
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
    fn the_system_clock_is_the_time_of_day() {
        let now = Clock::system().now();
        assert!(now.year() >= 2025, "{now}");
    }
}
