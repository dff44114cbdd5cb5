//! Time as the runtime sees it. Alarms, `Context::now`, backoff, call deadlines,
//! idle eviction and the log's record times read a [`Clock`]: the system clock in a
//! real host, a [`VirtualClock`] in tests, moved by hand. Nothing else in the runtime
//! reads the system's clocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Calls `wake` when a deadline passes, to within tens of microseconds, from a thread
/// of its own. tokio's timer ticks once a millisecond and rounds a deadline up to the
/// next tick, so an alarm due at a given millisecond ran up to two late; this one
/// waits on a condition variable (the kernel's high-resolution timer). Setting a
/// later deadline than the one waited for wakes nobody: the thread finds the new one
/// when the old one passes.
pub(crate) struct PreciseTimer {
    shared: Arc<TimerShared>,
}

struct TimerShared {
    /// The deadline, and whether the timer was dropped.
    state: Mutex<(Option<Instant>, bool)>,
    changed: Condvar,
}

impl PreciseTimer {
    /// Start the timer's thread, with no deadline.
    pub(crate) fn start(wake: impl Fn() + Send + 'static) -> std::io::Result<PreciseTimer> {
        let shared = Arc::new(TimerShared {
            state: Mutex::new((None, false)),
            changed: Condvar::new(),
        });
        let t = shared.clone();
        std::thread::Builder::new()
            .name("durable-timer".into())
            .spawn(move || {
                let mut state = t.state.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    match *state {
                        (_, true) => return,
                        (None, _) => {
                            state = t.changed.wait(state).unwrap_or_else(|e| e.into_inner())
                        }
                        (Some(at), _) => {
                            let now = Instant::now();
                            if now >= at {
                                state.0 = None;
                                wake();
                                continue;
                            }
                            state = t
                                .changed
                                .wait_timeout(state, at - now)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                    }
                }
            })?;
        Ok(PreciseTimer { shared })
    }

    /// Call `wake` once `after` has passed (replacing the deadline set before).
    pub(crate) fn wake_after(&self, after: Duration) {
        let at = Instant::now() + after;
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let sooner = state.0.is_none_or(|current| at < current);
        state.0 = Some(at);
        if sooner {
            self.shared.changed.notify_one();
        }
    }
}

impl Drop for PreciseTimer {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 = true;
        self.shared.changed.notify_one();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_precise_timer_wakes_at_its_latest_deadline_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let timer = PreciseTimer::start(move || {
            let _ = tx.send(Instant::now());
        })
        .unwrap();
        let set = Instant::now();
        timer.wake_after(Duration::from_millis(5));
        // A later deadline replaces the earlier one without waking anybody at 5 ms.
        timer.wake_after(Duration::from_millis(30));
        let woke = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(woke - set >= Duration::from_millis(30), "{:?}", woke - set);
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "one wake per deadline"
        );
        // A sooner deadline takes over at once.
        let set = Instant::now();
        timer.wake_after(Duration::from_secs(60));
        timer.wake_after(Duration::from_millis(2));
        let woke = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(woke - set >= Duration::from_millis(2));
        assert!(woke - set < Duration::from_secs(5));
        drop(timer);
    }
}
