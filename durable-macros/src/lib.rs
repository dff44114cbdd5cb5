//! The attribute macros of `durable`: [`macro@durable_object`] turns an inherent `impl`
//! block into a class the host can run and callers can reach through a typed client
//! stub; [`macro@alarm`] marks alarm handlers inside such a block.
//!
//! This file only declares the entry points. The work happens in four steps, one
//! module each: `model` reads the impl block into plain structs, `check` validates
//! them and reports every problem at once, and `dispatch` and `client` generate
//! the host side and the caller side. `expand` runs the steps in order.
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]

use proc_macro::TokenStream;

mod check;
mod client;
mod dispatch;
mod expand;
mod fingerprint;
mod model;
mod names;

/// Makes the inherent `impl` block of a type a durable object class.
///
/// The block needs one activation constructor, `fn activate(ctx: &mut Context) ->
/// Result<Self, E>` (or `-> Self`), and every `pub async fn` taking `&self` or
/// `&mut self` followed by `ctx: &mut Context` becomes a remote method. The macro
/// implements the class traits for the type and generates `{Type}Client`, a typed
/// stub with one `async` method per remote method.
///
/// ```ignore
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
/// `#[durable_object]` reads and removes this attribute; on its own it only reports
/// that it is in the wrong place.
#[proc_macro_attribute]
pub fn alarm(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::alarm_outside_object(attr.into(), item.into()).into()
}
