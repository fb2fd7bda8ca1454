//! The time both drivers read, passed in rather than called: the pure crates take `now` as
//! an argument, and the drivers take it from a [`Clock`]. [`Clock::system`] follows tokio's
//! clock, so a test under `tokio::time::pause` moves the monotonic and the wall-clock
//! readings together, and a driver's timers, deadlines and timestamps agree with each other.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic time for timeouts and wall-clock time for deadlines and records.
#[derive(Clone, Debug)]
pub struct Clock {
    /// Wall-clock milliseconds at `base`.
    base_unix_ms: i64,
    base: tokio::time::Instant,
}

impl Clock {
    /// The system's clock, read through tokio (so that paused time pauses it too).
    pub fn system() -> Arc<Clock> {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Arc::new(Clock {
            base_unix_ms: unix_ms,
            base: tokio::time::Instant::now(),
        })
    }

    /// Monotonic now, for the pure state machines' timeouts.
    pub fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// Milliseconds since the Unix epoch, for deadlines on the wire and for log records.
    pub fn unix_ms(&self) -> i64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.base);
        self.base_unix_ms
            .saturating_add(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
    }

    /// Wall-clock time, for certificate validity.
    pub fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(self.unix_ms()).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_both_readings_together() {
        let clock = Clock::system();
        let (mono, wall) = (clock.now(), clock.unix_ms());
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(clock.now() - mono, Duration::from_secs(3600));
        assert_eq!(clock.unix_ms() - wall, 3_600_000);
    }
}
