//! The pure core of the runtime: the decisions about turns, batches, the output gate
//! and alarm times, as state machines that do no I/O and read no clock (the split
//! quinn-proto makes). Events go in with `now`; actions come out. The shard glue
//! ([`crate::shard`]), the host log and the QUIC edge carry the actions out; the
//! simulation tests drive these machines through seeded random interleavings,
//! failures and crashes.

pub(crate) mod due;
pub(crate) mod object;
pub(crate) mod outbox;

#[cfg(test)]
mod sim;
