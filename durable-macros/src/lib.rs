//! The attribute macros of `durable`: [`macro@durable_object`] turns an inherent `impl`
//! block into a class the host can run and callers can reach through a typed client
//! stub; [`macro@alarm`] marks alarm handlers inside such a block.
//!
//! This file only declares the entry points. The work happens in four steps:
//! `model` reads the impl block into plain structs, `check` validates them and
//! reports every problem at once, and `dispatch` (with `json`), `alarm` and `client`
//! generate the host side, the alarm helpers and the caller side. `expand` runs the steps in
//! order.
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]

use proc_macro::TokenStream;

mod alarm;
mod check;
mod client;
mod dispatch;
mod expand;
mod fingerprint;
mod json;
mod model;
mod names;

/// Makes the inherent `impl` block of a type a durable object class.
///
/// The block needs one activation constructor, `fn activate(ctx: &mut Context) ->
/// Result<Self, E>` (or `-> Self`), and every `pub async fn` taking `&mut self`
/// followed by `ctx: &mut Context`, or `&self` followed by `ctx: &ReadContext` (a
/// read-only method: it runs beside the writer on a read connection, see
/// `docs/objects.md`), becomes a remote method. The macro
/// implements the class traits for the type and generates `{Type}Client`, a typed
/// stub with one `async` method per remote method, and the JSON form of every remote
/// method, so that the host's HTTP gateway can call it with a JSON object of the
/// arguments by name (`POST /v1/objects/Counter/{name}/increment` with `{"by": 5}`;
/// see `docs/gateway.md`).
///
/// The class name (on the wire, on disk, in HTTP paths, and in every object id) is
/// the type's name, unless the attribute gives another: `#[durable_object(name =
/// "counter")]` (ASCII letters, digits, `_`, `-` and `.`). Renaming a class that has
/// stored objects orphans them: their ids derive from the class name.
///
/// (This example compiles in the `durable` crate's documentation, where the macro is
/// re-exported; a proc-macro crate's doc tests cannot use it.)
///
/// ```text
/// use durable::{durable_object, Context, Error};
///
/// pub struct Counter { value: i64 }
///
/// #[durable_object]
/// impl Counter {
///     fn activate(ctx: &mut Context) -> Result<Self, Error> { Ok(Counter { value: 0 }) }
///
///     /// Add `by` and return the new value.
///     pub async fn increment(&mut self, ctx: &mut Context, by: i64) -> Result<i64, Error> {
///         self.value += by;
///         Ok(self.value)
///     }
/// }
/// ```
#[proc_macro_attribute]
pub fn durable_object(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::durable_object(attr.into(), item.into()).into()
}

/// Marks an alarm handler inside a [`macro@durable_object`] impl block.
///
/// A handler has the shape of a remote method (`async`, `&self` or `&mut self`, then
/// `ctx: &mut Context`, then owned arguments) and any visibility, but callers cannot
/// reach it: the runtime calls it when an alarm scheduled for it fires. For a handler
/// `release(&mut self, ctx: &mut Context, seat: u32, user: String)` the macro
/// generates, with the handler's visibility:
///
/// - `schedule_release(ctx, when, key, seat, user)`: fire once at an instant
///   (`SystemTime`) or after a delay (`Duration`);
/// - `schedule_release_every(ctx, period, key, seat, user)`: fire every `period`;
/// - `cancel_release(ctx, key) -> Result<bool, Error>`: whether one was pending.
///
/// An alarm is identified by its handler and a `key`; scheduling again under the
/// same key replaces it. A handler returning `Err` fails the alarm's turn.
///
/// (Compiled in the `durable` crate's documentation, `durable::alarm`.)
///
/// ```text
/// #[durable_object]
/// impl Reservation {
///     fn activate(ctx: &mut Context) -> Result<Self, Error> { Ok(Reservation) }
///
///     pub async fn hold(&mut self, ctx: &mut Context, seat: u32, user: String) -> Result<(), Error> {
///         Self::schedule_release(ctx, Duration::from_secs(600), &seat.to_string(), seat, user)
///     }
///
///     #[alarm]
///     async fn release(&mut self, ctx: &mut Context, seat: u32, user: String) -> Result<(), Error> {
///         Ok(())
///     }
/// }
/// ```
///
/// `#[durable_object]` reads this attribute and marks it as consumed, so that it
/// then leaves the method alone; anywhere else it reports that it is in the wrong
/// place.
#[proc_macro_attribute]
pub fn alarm(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::alarm_outside_object(attr.into(), item.into()).into()
}

/// Marks the WebSocket connect handler inside a [`macro@durable_object`] impl block:
/// `async fn(&mut self, ctx: &mut Context, socket: Socket) -> Result<(), E>` (or
/// `-> ()`). It runs as a turn when a client opens `GET
/// /v1/objects/{class}/{name}/ws`; it may set the socket's tags and attachment
/// (`ctx.set_tags`, `ctx.set_attachment`) and send to it. Returning `Err` refuses
/// the socket (close code 1008). Without one, sockets are accepted with no tags.
/// See `docs/gateway.md`.
#[proc_macro_attribute]
pub fn on_connect(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::socket_attr_outside_object("on_connect", attr.into(), item.into()).into()
}

/// Marks the WebSocket message handler inside a [`macro@durable_object`] impl block:
/// `async fn(&mut self, ctx: &mut Context, socket: Socket, message: M) -> Result<(),
/// E>` (or `-> ()`), where `M` is `String` (text frames), `Vec<u8>` or `WsMessage`.
/// Each message a client sends runs it as a turn, queued like a call; `Err` rolls
/// the turn back and drops what it sent. A class takes WebSockets only if it has
/// one.
#[proc_macro_attribute]
pub fn on_message(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::socket_attr_outside_object("on_message", attr.into(), item.into()).into()
}

/// Marks the WebSocket close handler inside a [`macro@durable_object`] impl block:
/// `async fn(&mut self, ctx: &mut Context, socket: Socket, code: u16, reason:
/// String) -> Result<(), E>` (or `-> ()`). It runs as a turn once a socket has left
/// (the client closed it, the connection dropped, or the gateway closed a slow
/// client), not for sockets the object closed itself.
#[proc_macro_attribute]
pub fn on_close(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::socket_attr_outside_object("on_close", attr.into(), item.into()).into()
}
