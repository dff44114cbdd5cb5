//! Seat reservations with holds that lapse (seed 003: "reservation systems where each
//! reservable resource is an object: booking requests are processed sequentially,
//! double-booking is structurally impossible, and holds expire automatically via
//! alarms").
//!
//! One [`Flight`] object per flight, named by its flight number. A user first *holds*
//! a seat for a while ([`Flight::hold`]), then either books it ([`Flight::confirm`])
//! or lets the hold lapse: the `release` alarm, scheduled under the seat number when
//! the hold is taken, frees the seat at the hold's end. The object runs one call at a
//! time, so two users can never hold or book the same seat, and scheduling the alarm
//! commits with the hold itself: a hold that exists always has its release pending,
//! across evictions, crashes and restarts.
//!
//! Every time is `ctx.now()`, the host's clock, so the test harness's virtual clock
//! drives holds and their expiry alike.

use crate::sql::int;
use crate::time::{instant, millis};
use durable::rusqlite::params;
use durable::{alarm, durable_object, Context, ReadContext};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::SystemTime;

/// The longest a seat can be held in one go: a day.
pub const MAX_HOLD_SECS: u64 = 24 * 3600;

/// A hold on a seat, as [`Flight::hold`] granted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The seat number.
    pub seat: u32,
    /// Who holds it.
    pub user: String,
    /// When the hold lapses unless confirmed before.
    pub until: SystemTime,
}

/// What state a seat is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeatStatus {
    /// Nobody holds or booked it.
    Free,
    /// `user` holds it until `until`.
    Held {
        /// The holder.
        user: String,
        /// When the hold lapses.
        until: SystemTime,
    },
    /// `user` booked it.
    Confirmed {
        /// Who booked it.
        user: String,
    },
}

/// Why a booking call failed; the call changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum BookingError {
    /// Someone else holds the seat.
    #[error("seat {seat} is held by someone else")]
    HeldByOther {
        /// The seat.
        seat: u32,
    },
    /// The seat is booked already.
    #[error("seat {seat} is already booked")]
    AlreadyConfirmed {
        /// The seat.
        seat: u32,
    },
    /// `user` holds no hold on the seat to confirm.
    #[error("seat {seat} is not held by {user}")]
    NotHeld {
        /// The seat.
        seat: u32,
        /// Who tried to confirm.
        user: String,
    },
    /// The caller's hold lapsed before the confirmation.
    #[error("the hold on seat {seat} has expired")]
    Expired {
        /// The seat.
        seat: u32,
    },
    /// The arguments make no sense (an empty user name, a zero or too long hold).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The object's storage failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

impl From<durable::Error> for BookingError {
    fn from(e: durable::Error) -> Self {
        BookingError::Storage(e.to_string())
    }
}

/// A seat somebody holds or booked (free seats have no entry).
#[derive(Debug, Clone)]
enum Seat {
    Held { user: String, until_ms: u64 },
    Confirmed { user: String },
}

/// The seats of one flight: holds, bookings, and a log of released holds.
///
/// The seats table is cached in memory while the object is active and changed only
/// after the writes that back it succeeded.
pub struct Flight {
    seats: HashMap<u32, Seat>,
}

#[durable_object]
impl Flight {
    fn activate(ctx: &mut Context) -> Result<Self, durable::Error> {
        let sql = ctx.sql();
        sql.migrate(&[
            // `held_until_ms` is NULL for a booked seat.
            "CREATE TABLE seats(seat INTEGER PRIMARY KEY, user TEXT NOT NULL, held_until_ms INTEGER);
             CREATE TABLE releases(seat INTEGER NOT NULL, user TEXT NOT NULL, at_ms INTEGER NOT NULL);
             CREATE INDEX releases_by_seat ON releases(seat);",
        ])?;
        let rows = sql.query("SELECT seat, user, held_until_ms FROM seats", [], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        let seats = rows
            .into_iter()
            .map(|(seat, user, until)| {
                let state = match until {
                    Some(until_ms) => Seat::Held {
                        user,
                        until_ms: until_ms.max(0) as u64,
                    },
                    None => Seat::Confirmed { user },
                };
                (seat, state)
            })
            .collect();
        Ok(Flight { seats })
    }

    /// Hold `seat` for `user` for `for_secs` seconds (at most [`MAX_HOLD_SECS`]).
    ///
    /// Fails if someone else holds the seat or it is booked. Holding again as the
    /// same user extends the hold to `for_secs` from now (it never shortens it). A
    /// hold that lapsed, even if its release has not run yet, does not block anyone.
    pub async fn hold(
        &mut self,
        ctx: &mut Context,
        seat: u32,
        user: String,
        for_secs: u64,
    ) -> Result<Hold, BookingError> {
        if user.is_empty() {
            return Err(BookingError::Invalid("the user name is empty".into()));
        }
        if for_secs == 0 || for_secs > MAX_HOLD_SECS {
            return Err(BookingError::Invalid(format!(
                "a hold lasts from 1 to {MAX_HOLD_SECS} seconds, not {for_secs}"
            )));
        }
        let now = millis(ctx.now());
        let mut until_ms = now + for_secs * 1000;
        match self.seats.get(&seat) {
            Some(Seat::Confirmed { .. }) => return Err(BookingError::AlreadyConfirmed { seat }),
            Some(Seat::Held {
                user: holder,
                until_ms: current,
            }) if *current > now => {
                if *holder != user {
                    return Err(BookingError::HeldByOther { seat });
                }
                until_ms = until_ms.max(*current);
            }
            // Free, or a lapsed hold whose release has not run yet: rescheduling the
            // release under the same key below replaces the old holder's.
            _ => {}
        }
        ctx.sql().execute(
            "INSERT OR REPLACE INTO seats(seat, user, held_until_ms) VALUES (?1, ?2, ?3)",
            params![seat, user, int(until_ms)],
        )?;
        Self::schedule_release(
            ctx,
            instant(until_ms),
            &seat.to_string(),
            seat,
            user.clone(),
        )?;
        self.seats.insert(
            seat,
            Seat::Held {
                user: user.clone(),
                until_ms,
            },
        );
        Ok(Hold {
            seat,
            user,
            until: instant(until_ms),
        })
    }

    /// The state of `seat` now (a lapsed hold shows as free even before its release
    /// has run).
    pub async fn status(&self, ctx: &ReadContext, seat: u32) -> SeatStatus {
        let now = millis(ctx.now());
        match self.seats.get(&seat) {
            Some(Seat::Held { user, until_ms }) if *until_ms > now => SeatStatus::Held {
                user: user.clone(),
                until: instant(*until_ms),
            },
            Some(Seat::Confirmed { user }) => SeatStatus::Confirmed { user: user.clone() },
            _ => SeatStatus::Free,
        }
    }

    /// Book `seat` for `user`, who must hold it, before the hold lapses; cancels the
    /// hold's release. Confirming a seat `user` already booked succeeds again.
    pub async fn confirm(
        &mut self,
        ctx: &mut Context,
        seat: u32,
        user: String,
    ) -> Result<(), BookingError> {
        let now = millis(ctx.now());
        match self.seats.get(&seat) {
            Some(Seat::Confirmed { user: owner }) if *owner == user => return Ok(()),
            Some(Seat::Confirmed { .. }) => return Err(BookingError::AlreadyConfirmed { seat }),
            Some(Seat::Held {
                user: holder,
                until_ms,
            }) if *holder == user => {
                if *until_ms <= now {
                    return Err(BookingError::Expired { seat });
                }
            }
            Some(Seat::Held { until_ms, .. }) if *until_ms > now => {
                return Err(BookingError::HeldByOther { seat })
            }
            _ => return Err(BookingError::NotHeld { seat, user }),
        }
        ctx.sql().execute(
            "UPDATE seats SET held_until_ms = NULL WHERE seat = ?1",
            [seat],
        )?;
        Self::cancel_release(ctx, &seat.to_string())?;
        self.seats.insert(seat, Seat::Confirmed { user });
        Ok(())
    }

    /// How many times `seat`'s hold was released by its alarm (for tests and audits).
    pub async fn releases(&self, ctx: &ReadContext, seat: u32) -> Result<u32, BookingError> {
        Ok(ctx.sql().query_row(
            "SELECT count(*) FROM releases WHERE seat = ?1",
            [seat],
            |r| r.get(0),
        )?)
    }

    /// The `release` alarm, keyed by the seat number: frees `seat` if `user` still
    /// holds it and the hold has lapsed, and records the release.
    ///
    /// Idempotent: once the seat is free, booked, or held by someone else, it does
    /// nothing, so running it again (a retry, a stale schedule) changes nothing.
    #[alarm]
    async fn release(
        &mut self,
        ctx: &mut Context,
        seat: u32,
        user: String,
    ) -> Result<(), BookingError> {
        let now = millis(ctx.now());
        let until_ms = match self.seats.get(&seat) {
            Some(Seat::Held {
                user: holder,
                until_ms,
            }) if *holder == user => *until_ms,
            _ => return Ok(()),
        };
        if until_ms > now {
            // The hold was extended after this alarm was set (re-holding replaces the
            // alarm, so this is only a safety net): wait for the new end.
            Self::schedule_release(ctx, instant(until_ms), &seat.to_string(), seat, user)?;
            return Ok(());
        }
        ctx.sql()
            .execute("DELETE FROM seats WHERE seat = ?1", [seat])?;
        ctx.sql().execute(
            "INSERT INTO releases(seat, user, at_ms) VALUES (?1, ?2, ?3)",
            params![seat, user, int(now)],
        )?;
        self.seats.remove(&seat);
        Ok(())
    }
}
