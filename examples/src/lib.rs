//! Runnable applications built on durable, one per use case in the seed articles.
//! Each class lives in its own module; [`register_all`] serves them all from the
//! `host` binary, and each has a client binary of its own.
#![warn(missing_docs, rust_2018_idioms)]

pub mod cli;
pub mod counter;

/// Register every example class on a host.
pub fn register_all(host: durable::Host) -> durable::Host {
    host.register::<counter::Counter>()
}
