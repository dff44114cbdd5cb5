//! An auction with a deadline (seed 003: "auction deadlines" among the time-sensitive
//! processes where "the entity that cares about time manages its own temporal
//! boundaries").
//!
//! One [`Auction`] object per lot. [`Auction::open`] sets the end and the reserve
//! (the lowest acceptable bid) and schedules the `close` alarm at the end; bids are
//! taken one at a time, so the high bid is never lost to a race; at the end the alarm
//! closes the auction and fixes the winner. Every bid is kept in a `bids` table.

use crate::sql::{int, uint};
use crate::time::{instant, millis};
use durable::rusqlite::params;
use durable::{alarm, durable_object, Context, ReadContext};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// The longest auction: 30 days.
pub const MAX_DURATION_SECS: u64 = 30 * 24 * 3600;

/// The largest reserve or bid (SQLite stores signed 64-bit integers).
pub const MAX_AMOUNT: u64 = i64::MAX as u64;

/// The key of the `close` alarm (one per auction).
const CLOSE_ALARM_KEY: &str = "close";

/// A bid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    /// The bidder.
    pub user: String,
    /// The amount, in the smallest unit of the currency.
    pub amount: u64,
}

/// Where an auction stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuctionState {
    /// Not opened yet.
    NotOpen,
    /// Taking bids until `ends`.
    Open {
        /// When bidding ends.
        ends: SystemTime,
        /// The highest bid so far.
        high: Option<Bid>,
    },
    /// Over: `winner` is the highest bid, if any met the reserve.
    Closed {
        /// The winning bid.
        winner: Option<Bid>,
    },
}

/// Why an auction call failed; the call changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AuctionError {
    /// The auction was opened before.
    #[error("the auction was opened already")]
    AlreadyOpened,
    /// Bids before the auction opens are refused.
    #[error("the auction is not open yet")]
    NotOpen,
    /// Bids after the end are refused.
    #[error("the auction is closed")]
    Closed,
    /// The bid is below the reserve or not above the high bid.
    #[error("the bid is too low: the minimum is {minimum}")]
    TooLow {
        /// The lowest bid that would be accepted now.
        minimum: u64,
    },
    /// The arguments make no sense.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The object's storage failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

impl From<durable::Error> for AuctionError {
    fn from(e: durable::Error) -> Self {
        AuctionError::Storage(e.to_string())
    }
}

/// An opened auction.
#[derive(Debug, Clone)]
struct Lot {
    ends_ms: u64,
    reserve: u64,
    high: Option<Bid>,
    closed: bool,
}

/// One lot's auction, cached in memory while the object is active.
pub struct Auction {
    lot: Option<Lot>,
}

#[durable_object]
impl Auction {
    fn activate(ctx: &mut Context) -> Result<Self, durable::Error> {
        let sql = ctx.sql();
        sql.migrate(&[
            "CREATE TABLE auction(id INTEGER PRIMARY KEY CHECK (id = 1), ends_ms INTEGER NOT NULL,
             reserve INTEGER NOT NULL, closed INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE bids(seq INTEGER PRIMARY KEY, user TEXT NOT NULL, amount INTEGER NOT NULL,
             at_ms INTEGER NOT NULL);",
        ])?;
        let lot = sql.query_opt(
            "SELECT ends_ms, reserve, closed FROM auction WHERE id = 1",
            [],
            |r| {
                Ok(Lot {
                    ends_ms: uint(r, 0)?,
                    reserve: uint(r, 1)?,
                    closed: r.get(2)?,
                    high: None,
                })
            },
        )?;
        let high = sql.query_opt(
            "SELECT user, amount FROM bids ORDER BY amount DESC, seq LIMIT 1",
            [],
            |r| {
                Ok(Bid {
                    user: r.get(0)?,
                    amount: uint(r, 1)?,
                })
            },
        )?;
        Ok(Auction {
            lot: lot.map(|lot| Lot { high, ..lot }),
        })
    }

    /// Open the auction for `duration_secs` seconds (1 to [`MAX_DURATION_SECS`]) with
    /// `reserve` as the lowest acceptable bid; returns when it ends.
    pub async fn open(
        &mut self,
        ctx: &mut Context,
        duration_secs: u64,
        reserve: u64,
    ) -> Result<SystemTime, AuctionError> {
        if self.lot.is_some() {
            return Err(AuctionError::AlreadyOpened);
        }
        if duration_secs == 0 || duration_secs > MAX_DURATION_SECS {
            return Err(AuctionError::Invalid(format!(
                "an auction lasts from 1 to {MAX_DURATION_SECS} seconds, not {duration_secs}"
            )));
        }
        if reserve > MAX_AMOUNT {
            return Err(AuctionError::Invalid(format!(
                "the reserve exceeds {MAX_AMOUNT}"
            )));
        }
        let ends_ms = millis(ctx.now()) + duration_secs * 1000;
        ctx.sql().execute(
            "INSERT INTO auction(id, ends_ms, reserve) VALUES (1, ?1, ?2)",
            params![int(ends_ms), int(reserve)],
        )?;
        Self::schedule_close(ctx, instant(ends_ms), CLOSE_ALARM_KEY)?;
        self.lot = Some(Lot {
            ends_ms,
            reserve,
            high: None,
            closed: false,
        });
        Ok(instant(ends_ms))
    }

    /// Bid `amount` as `user`: at least the reserve (and 1), more than the high bid,
    /// and at most [`MAX_AMOUNT`]. Returns the new high bid.
    pub async fn bid(
        &mut self,
        ctx: &mut Context,
        user: String,
        amount: u64,
    ) -> Result<u64, AuctionError> {
        if user.is_empty() {
            return Err(AuctionError::Invalid("the user name is empty".into()));
        }
        let now = millis(ctx.now());
        let lot = self.lot.as_ref().ok_or(AuctionError::NotOpen)?;
        if lot.closed || lot.ends_ms <= now {
            return Err(AuctionError::Closed);
        }
        let minimum = match &lot.high {
            Some(high) => high.amount.saturating_add(1),
            None => lot.reserve.max(1),
        };
        if amount < minimum {
            return Err(AuctionError::TooLow { minimum });
        }
        if amount > MAX_AMOUNT {
            return Err(AuctionError::Invalid(format!("a bid exceeds {MAX_AMOUNT}")));
        }
        ctx.sql().execute(
            "INSERT INTO bids(user, amount, at_ms) VALUES (?1, ?2, ?3)",
            params![user, int(amount), int(now)],
        )?;
        if let Some(lot) = self.lot.as_mut() {
            lot.high = Some(Bid { user, amount });
        }
        Ok(amount)
    }

    /// Where the auction stands (past its end it shows as closed even before the
    /// `close` alarm has run).
    pub async fn status(&self, ctx: &ReadContext) -> AuctionState {
        match &self.lot {
            None => AuctionState::NotOpen,
            Some(lot) if lot.closed || lot.ends_ms <= millis(ctx.now()) => AuctionState::Closed {
                winner: lot.high.clone(),
            },
            Some(lot) => AuctionState::Open {
                ends: instant(lot.ends_ms),
                high: lot.high.clone(),
            },
        }
    }

    /// The `close` alarm: closes the auction at its end. Idempotent.
    #[alarm]
    async fn close(&mut self, ctx: &mut Context) -> Result<(), AuctionError> {
        let Some(lot) = self.lot.as_mut() else {
            return Ok(());
        };
        if lot.closed {
            return Ok(());
        }
        if lot.ends_ms > millis(ctx.now()) {
            let ends = instant(lot.ends_ms);
            Self::schedule_close(ctx, ends, CLOSE_ALARM_KEY)?;
            return Ok(());
        }
        ctx.sql()
            .execute("UPDATE auction SET closed = 1 WHERE id = 1", [])?;
        lot.closed = true;
        Ok(())
    }
}
