//! Time as the runtime sees it. Alarms, `Context::now`, backoff, call deadlines,
//! idle eviction and the log's record times read a [`Clock`]: the system clock in a
//! real host, a [`VirtualClock`] in tests, moved by hand. Nothing else in the runtime
//! reads the system's clocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Now, in microseconds since the Unix epoch (what waits until a given millisecond
    /// use, so as not to wake up to a millisecond late). Defaults to `now_ms() * 1000`.
    fn now_us(&self) -> u64 {
        self.now_ms().saturating_mul(1000)
    }
    /// Whether time moves on its own (a real clock) or only when told (a virtual one).
    fn is_virtual(&self) -> bool {
        false
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        ms_of(SystemTime::now())
    }
    fn now_us(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros().min(u64::MAX as u128) as u64)
    }
}

/// A clock that moves only when [`VirtualClock::advance`] is called.
#[derive(Debug)]
pub struct VirtualClock(AtomicU64);

impl VirtualClock {
    /// A virtual clock starting at `start`.
    pub fn new(start: SystemTime) -> Self {
        VirtualClock(AtomicU64::new(ms_of(start)))
    }

    /// A virtual clock starting at the system clock's current time.
    pub fn starting_now() -> Self {
        VirtualClock(AtomicU64::new(SystemClock.now_ms()))
    }

    /// Move time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::AcqRel);
    }

    /// Move time forward to `ms` since the epoch (never backwards).
    pub fn advance_to_ms(&self, ms: u64) {
        self.0.fetch_max(ms, Ordering::AcqRel);
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    fn is_virtual(&self) -> bool {
        true
    }
}

/// Time since this process first asked, from the monotonic clock: for housekeeping
/// rate limits only (never for anything a turn or a test can observe).
pub(crate) fn monotonic() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// Milliseconds since the Unix epoch of `t` (0 before the epoch).
pub(crate) fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The instant `ms` milliseconds after the Unix epoch.
pub(crate) fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
