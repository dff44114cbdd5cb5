//! Alarm handlers: private, `pub` and `pub(crate)` ones, the `#[durable::alarm]`
//! path form, fallible, `Result<T>`-alias and plain returns, arguments named like
//! the helpers' own parameters, and the generated helpers called from a remote
//! method and from the constructor. The generated code must not warn, nor leave a
//! public helper undocumented.
#![deny(warnings, missing_docs)]

use durable::{alarm, durable_object, Context, Error};
use std::time::{Duration, SystemTime};

mod alias {
    pub type Result<T> = std::result::Result<T, durable::Error>;
}

/// Seats held for a while, then released unless confirmed.
pub struct Reservation {
    held: Vec<(u32, String)>,
}

#[durable_object]
impl Reservation {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        Self::schedule_sweep_every(ctx, Duration::from_secs(60), "sweep")?;
        Ok(Reservation { held: Vec::new() })
    }

    /// Hold `seat` for `user` for ten minutes.
    pub async fn hold(&mut self, ctx: &mut Context, seat: u32, user: String) -> Result<(), Error> {
        self.held.push((seat, user.clone()));
        Self::schedule_release(ctx, Duration::from_secs(600), &seat.to_string(), seat, user)?;
        Self::schedule_keyed(ctx, SystemTime::now(), "k", "v".to_owned(), 5, vec![1])?;
        Ok(())
    }

    /// Confirm `seat`: its hold no longer expires.
    pub async fn confirm(&mut self, ctx: &mut Context, seat: u32) -> Result<bool, Error> {
        Self::cancel_release(ctx, &seat.to_string())
    }

    /// Give the seat back.
    #[alarm]
    async fn release(&mut self, ctx: &mut Context, seat: u32, user: String) -> Result<(), Error> {
        let _ = ctx.alarm_attempt();
        self.held.retain(|(s, u)| (*s, u.as_str()) != (seat, user.as_str()));
        Ok(())
    }

    /// Runs every minute.
    #[durable::alarm]
    pub async fn sweep(&self, _ctx: &mut Context) -> alias::Result<()> {
        Ok(())
    }

    /// Arguments named `key`, `when` and `period` are renamed in the helpers.
    #[alarm]
    pub(crate) async fn keyed(
        &mut self,
        _ctx: &mut Context,
        key: String,
        when: u64,
        period: Vec<u8>,
    ) -> usize {
        key.len() + when as usize + period.len()
    }
}

fn main() {
    assert_eq!(
        <Reservation as durable::Hosted>::ALARMS,
        ["release", "sweep", "keyed"]
    );
    let methods: Vec<&str> = <Reservation as durable::ObjectClass>::METHODS
        .iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(methods, ["hold", "confirm"]);
    // The helpers of a `pub` alarm are `pub`.
    let _: fn(&mut Context, Duration, &str) -> Result<(), Error> = Reservation::schedule_sweep;
    let _: fn(&mut Context, &str) -> Result<bool, Error> = Reservation::cancel_sweep;
    let _: fn(&mut Context, Duration, &str, String, u64, Vec<u8>) -> Result<(), Error> =
        Reservation::schedule_keyed_every;
}
