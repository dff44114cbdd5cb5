//! Admission control at the host's door, before a call is queued: a host-wide bound
//! on calls in flight and on the bytes of their arguments, and an optional rate per
//! caller key per object (a token bucket). Past any of them the caller hears
//! `Overloaded` at once (not applied, safe to retry later), instead of waiting in a
//! queue that only grows. The per-object queue bound (`Limits::max_queue`) is the
//! shard's own check behind this one.
//!
//! No I/O and no clock reads: the time comes in with each call. Counters are atomics;
//! the rate buckets, when a rate is set, sit in 16 mutex-guarded maps picked by hash,
//! so no single lock is on every call's path.

use durable_client::ObjectId;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A rate per caller key per object: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallerRate {
    /// Calls per second each caller may sustain on one object.
    pub per_second: f64,
    /// Calls a caller may send at once to one object before the rate applies.
    pub burst: u32,
}

impl std::str::FromStr for CallerRate {
    type Err = String;

    /// `PER_SECOND` or `PER_SECOND:BURST` (burst defaults to one second's worth).
    fn from_str(s: &str) -> Result<Self, String> {
        let (rate, burst) = match s.split_once(':') {
            Some((r, b)) => (r, Some(b)),
            None => (s, None),
        };
        let per_second: f64 = rate
            .parse()
            .ok()
            .filter(|r: &f64| r.is_finite() && *r > 0.0)
            .ok_or_else(|| {
                format!("{s:?}: the rate must be a positive number of calls per second")
            })?;
        let burst = match burst {
            Some(b) => b
                .parse::<u32>()
                .ok()
                .filter(|b| *b > 0)
                .ok_or_else(|| format!("{s:?}: the burst must be a positive whole number"))?,
            None => (per_second.ceil() as u32).max(1),
        };
        Ok(CallerRate { per_second, burst })
    }
}

/// Most buckets kept per map before full (idle) ones are dropped.
const MAX_BUCKETS: usize = 65_536;

/// The retry-after hint when the host-wide bounds refuse a call: calls in flight
/// usually finish within a few milliseconds.
const BOUNDS_RETRY_MS: u64 = 20;

struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// Buckets by (class, object, caller key).
type Buckets = HashMap<(String, ObjectId, String), Bucket>;

/// The host's admission state.
pub(crate) struct Admission {
    max_calls: usize,
    max_bytes: usize,
    rate: Option<CallerRate>,
    calls: AtomicUsize,
    bytes: AtomicUsize,
    buckets: Vec<Mutex<Buckets>>,
}

/// A call let in; dropping it gives its share of the bounds back.
pub(crate) struct Permit<'a> {
    admission: &'a Admission,
    bytes: usize,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.admission.calls.fetch_sub(1, Ordering::AcqRel);
        self.admission.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Admission {
    pub(crate) fn new(max_calls: usize, max_bytes: usize, rate: Option<CallerRate>) -> Self {
        Admission {
            max_calls: max_calls.max(1),
            max_bytes: max_bytes.max(1),
            rate,
            calls: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            buckets: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Let a call of `bytes` argument bytes from `caller` to `class`/`id` in at
    /// `now_ms`, or refuse it (`Err`: answer `Overloaded`, with the milliseconds after
    /// which a retry may get in: exact for the caller's rate, a short pause for the
    /// host's bounds).
    pub(crate) fn admit(
        &self,
        class: &str,
        id: ObjectId,
        caller: &str,
        bytes: usize,
        now_ms: u64,
    ) -> Result<Permit<'_>, u64> {
        let calls = self.calls.fetch_add(1, Ordering::AcqRel) + 1;
        let held = self.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let permit = Permit {
            admission: self,
            bytes,
        };
        // A single call larger than the byte bound still gets in when nothing else
        // is in flight (the frame limit bounds it): the bound must not lock it out.
        if calls > self.max_calls || (held > self.max_bytes && calls > 1) {
            return Err(BOUNDS_RETRY_MS);
        }
        if let Some(rate) = self.rate {
            self.take_token(rate, class, id, caller, now_ms)?;
        }
        Ok(permit)
    }

    fn take_token(
        &self,
        rate: CallerRate,
        class: &str,
        id: ObjectId,
        caller: &str,
        now_ms: u64,
    ) -> Result<(), u64> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (class, id, caller).hash(&mut h);
        let map = &self.buckets[(h.finish() % self.buckets.len() as u64) as usize];
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        let burst = f64::from(rate.burst);
        if map.len() >= MAX_BUCKETS {
            // Drop the buckets that have refilled: they hold nothing a fresh one would not.
            map.retain(|_, b| {
                b.tokens + now_ms.saturating_sub(b.at_ms) as f64 / 1000.0 * rate.per_second < burst
            });
        }
        let b = map
            .entry((class.to_string(), id, caller.to_string()))
            .or_insert(Bucket {
                tokens: burst,
                at_ms: now_ms,
            });
        let refill = now_ms.saturating_sub(b.at_ms) as f64 / 1000.0 * rate.per_second;
        b.tokens = (b.tokens + refill).min(burst);
        b.at_ms = b.at_ms.max(now_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            // When the bucket holds a whole token again.
            Err(((1.0 - b.tokens) / rate.per_second * 1000.0 - 1e-6)
                .ceil()
                .max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_bytes_in_flight_are_bounded_and_given_back() {
        let a = Admission::new(2, 100, None);
        let id = ObjectId::from_name("C", "x");
        let p1 = a.admit("C", id, "k", 10, 0).unwrap();
        let p2 = a.admit("C", id, "k", 10, 0).unwrap();
        assert_eq!(
            a.admit("C", id, "k", 10, 0).err(),
            Some(BOUNDS_RETRY_MS),
            "a third call in flight"
        );
        drop(p1);
        let p3 = a.admit("C", id, "k", 10, 0).unwrap();
        drop((p2, p3));
        assert_eq!(a.calls.load(Ordering::Acquire), 0);
        assert_eq!(a.bytes.load(Ordering::Acquire), 0);
        let big = a.admit("C", id, "k", 90, 0).unwrap();
        assert!(a.admit("C", id, "k", 20, 0).is_err(), "past the byte bound");
        drop(big);
        assert!(
            a.admit("C", id, "k", 500, 0).is_ok(),
            "alone, a big call gets in"
        );
    }

    #[test]
    fn the_rate_is_per_caller_per_object_and_refills_with_time() {
        let a = Admission::new(1000, 1 << 20, Some("2:3".parse().unwrap()));
        let x = ObjectId::from_name("C", "x");
        let y = ObjectId::from_name("C", "y");
        let admitted = (0..10)
            .filter(|_| a.admit("C", x, "k", 1, 0).is_ok())
            .count();
        assert_eq!(admitted, 3, "the burst");
        assert!(a.admit("C", y, "k", 1, 0).is_ok(), "another object");
        assert!(a.admit("C", x, "other", 1, 0).is_ok(), "another caller");
        assert_eq!(
            a.admit("C", x, "k", 1, 499).err(),
            Some(1),
            "not yet one token back: the hint says when"
        );
        assert!(
            a.admit("C", x, "k", 1, 500).is_ok(),
            "one token after 500 ms at 2/s"
        );
        assert_eq!(a.admit("C", x, "k", 1, 500).err(), Some(500), "the hint");
        let after = (0..10)
            .filter(|_| a.admit("C", x, "k", 1, 60_000).is_ok())
            .count();
        assert_eq!(after, 3, "refilled to the burst, no more");
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            "10".parse::<CallerRate>().unwrap(),
            CallerRate {
                per_second: 10.0,
                burst: 10
            }
        );
        assert_eq!(
            "0.5:4".parse::<CallerRate>().unwrap(),
            CallerRate {
                per_second: 0.5,
                burst: 4
            }
        );
        for bad in ["", "0", "-1", "x", "1:0", "1:x", "inf"] {
            assert!(bad.parse::<CallerRate>().is_err(), "{bad:?}");
        }
    }
}
