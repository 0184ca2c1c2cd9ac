//! When a certificate is renewed, and how soon a failed renewal is retried. Pure functions of
//! the certificate's validity and the current time, so that the schedule can be tested without
//! waiting for it.

use std::time::Duration;

use time::OffsetDateTime;

/// Why a renewal setting was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    #[error("{0:?} is not a fraction: write 0.5 or 50%")]
    NotAFraction(String),
    #[error("renewal point {0}% must be between 1% and 99% of the lifetime")]
    PointOutOfRange(u32),
    #[error("jitter ±{jitter}% would move renewal outside the lifetime (renewal at {point}%)")]
    JitterTooWide { point: u32, jitter: u32 },
}

/// Parses `0.5` or `50%` into a fraction in [0, 1].
pub fn parse_fraction(s: &str) -> Result<f64, Error> {
    let bad = || Error::NotAFraction(s.to_string());
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
        None => t.parse::<f64>().map_err(|_| bad())?,
    };
    if !(0.0..=1.0).contains(&v) {
        return Err(bad());
    }
    Ok(v)
}

/// When in its lifetime a certificate is renewed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    point: f64,
    jitter: f64,
}

impl Default for Schedule {
    /// Half-way through the lifetime, ±10% of the lifetime, so a fleet issued together does not
    /// renew together.
    fn default() -> Self {
        Schedule {
            point: 0.5,
            jitter: 0.1,
        }
    }
}

impl Schedule {
    /// Renew at `point` of the lifetime, moved at random by up to ±`jitter` of the lifetime.
    /// Both are fractions; the jittered point must stay strictly inside the lifetime.
    pub fn new(point: f64, jitter: f64) -> Result<Schedule, Error> {
        let pct = |f: f64| (f * 100.0).round() as u32;
        if !(0.01..=0.99).contains(&point) {
            return Err(Error::PointOutOfRange(pct(point)));
        }
        if jitter < 0.0 || point - jitter < 0.01 || point + jitter > 0.99 {
            return Err(Error::JitterTooWide {
                point: pct(point),
                jitter: pct(jitter),
            });
        }
        Ok(Schedule { point, jitter })
    }

    /// The renewal point, as a fraction of the lifetime.
    pub fn point(&self) -> f64 {
        self.point
    }

    /// The jitter, as a fraction of the lifetime.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// When a certificate usable from `start` to `not_after` is renewed. `start` is when it
    /// arrived (its not-before is back-dated for clock skew, which would shorten a short
    /// lifetime to nothing). `draw` is uniform in [0, 1): 0 gives the earliest point, values
    /// near 1 the latest.
    pub fn renew_at(
        &self,
        start: OffsetDateTime,
        not_after: OffsetDateTime,
        draw: f64,
    ) -> OffsetDateTime {
        let lifetime = (not_after - start).max(time::Duration::ZERO);
        let offset = self.point + self.jitter * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
        start + lifetime * offset
    }
}

/// The first wait after a failed renewal; it doubles with each further failure.
pub const RETRY_MIN: Duration = Duration::from_millis(200);
/// The longest wait between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// How long to wait after the `failures`-th failure in a row (1 = the first) before trying
/// again. Doubling from [`RETRY_MIN`], never more than [`RETRY_MAX`], and, while the current
/// certificate is still valid, never more than a quarter of what is left of it, so that
/// several attempts still fit before it expires. Once it has expired there is nothing left to
/// save and the doubling alone paces the attempts.
pub fn retry_delay(
    failures: u32,
    now: OffsetDateTime,
    not_after: Option<OffsetDateTime>,
) -> Duration {
    let doubling = RETRY_MIN.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let mut delay = doubling.min(RETRY_MAX);
    if let Some(left) = not_after.and_then(|t| Duration::try_from(t - now).ok()) {
        if !left.is_zero() {
            delay = delay.min(left / 4);
        }
    }
    delay.max(RETRY_MIN)
}

/// A uniform draw in [0, 1) from the system's random source, for [`Schedule::renew_at`].
pub fn random_draw() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // No randomness: fall back to the middle, which is still a valid schedule.
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NB: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);
    const NA: OffsetDateTime = datetime!(2026-01-01 01:00 UTC);

    #[test]
    fn renewal_is_half_way_by_default_and_jitter_stays_within_ten_percent() {
        let s = Schedule::default();
        assert_eq!(s.renew_at(NB, NA, 0.5), datetime!(2026-01-01 00:30 UTC));
        assert_eq!(s.renew_at(NB, NA, 0.0), datetime!(2026-01-01 00:24 UTC));
        let latest = s.renew_at(NB, NA, 0.999_999);
        assert!(latest < datetime!(2026-01-01 00:36 UTC));
        assert!(latest > datetime!(2026-01-01 00:35:59 UTC));
        for i in 0..1000 {
            let t = s.renew_at(NB, NA, i as f64 / 1000.0);
            assert!(t >= datetime!(2026-01-01 00:24 UTC) && t < datetime!(2026-01-01 00:36 UTC));
        }
    }

    #[test]
    fn random_draws_spread_renewals_over_the_jitter_window() {
        let s = Schedule::default();
        let mut buckets = [0u32; 4];
        for _ in 0..4000 {
            let t = s.renew_at(NB, NA, random_draw());
            let minutes = (t - NB).whole_seconds() as f64 / 60.0;
            assert!((24.0..36.0).contains(&minutes), "{minutes}");
            buckets[((minutes - 24.0) / 3.0) as usize] += 1;
        }
        // Each quarter of the window gets roughly a quarter of the renewals.
        for b in buckets {
            assert!((800..1200).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(Schedule::new(0.7, 0.1).is_ok());
        assert_eq!(Schedule::new(1.0, 0.0), Err(Error::PointOutOfRange(100)));
        assert_eq!(Schedule::new(0.0, 0.0), Err(Error::PointOutOfRange(0)));
        assert_eq!(
            Schedule::new(0.95, 0.1),
            Err(Error::JitterTooWide {
                point: 95,
                jitter: 10
            })
        );
        assert!(Schedule::new(0.5, -0.1).is_err());
        assert_eq!(parse_fraction("50%"), Ok(0.5));
        assert_eq!(parse_fraction(" 0.25 "), Ok(0.25));
        assert!(parse_fraction("150%").is_err());
        assert!(parse_fraction("half").is_err());
    }

    #[test]
    fn retries_double_up_to_the_cap() {
        let far = Some(NA + time::Duration::days(1));
        let d: Vec<_> = (1..=10).map(|f| retry_delay(f, NB, far)).collect();
        assert_eq!(d[0], RETRY_MIN);
        assert_eq!(d[1], RETRY_MIN * 2);
        assert_eq!(d[2], RETRY_MIN * 4);
        assert_eq!(d[9], RETRY_MAX);
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(retry_delay(u32::MAX, NB, far), RETRY_MAX);
        assert_eq!(retry_delay(5, NB, None), RETRY_MIN * 16);
    }

    #[test]
    fn retries_fit_several_times_into_what_is_left_of_the_certificate() {
        // 20 s left: never wait more than 5 s, however many failures.
        let not_after = Some(NB + time::Duration::seconds(20));
        assert_eq!(retry_delay(10, NB, not_after), Duration::from_secs(5));
        // About to expire: retry at the floor rather than not at all.
        let almost = NB + time::Duration::milliseconds(19_900);
        assert_eq!(retry_delay(10, almost, not_after), RETRY_MIN);
        // Expired: nothing left to save, so the doubling alone paces the attempts.
        assert_eq!(retry_delay(10, NA, not_after), RETRY_MAX);
        assert_eq!(retry_delay(2, NA, not_after), RETRY_MIN * 2);
    }

    #[test]
    fn a_certificate_with_no_lifetime_is_renewed_at_once() {
        let s = Schedule::default();
        assert_eq!(s.renew_at(NB, NB, 0.3), NB);
        assert_eq!(s.renew_at(NA, NB, 0.3), NA);
    }
}
