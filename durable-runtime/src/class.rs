//! The host side of a class: the [`Hosted`] trait the macro implements (activation
//! and dispatch), the outcome of one turn, and the type-erased registry entry the
//! host keeps per class.

use crate::context::Context;
use durable_client::{MethodInfo, ObjectClass};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

/// The future of one turn, borrowing the object and its context.
pub type BoxTurn<'a> = Pin<Box<dyn Future<Output = TurnOutcome> + 'a>>;

/// What one method call produced.
#[derive(Debug)]
pub enum TurnOutcome {
    /// `Ok(value)`, postcard-encoded: the turn commits.
    Return(Vec<u8>),
    /// `Err(error)`, postcard-encoded: the turn rolls back.
    AppError(Vec<u8>),
    /// The arguments did not decode.
    BadArguments(String),
    /// The result could not be encoded: the turn rolls back.
    EncodeFailed(String),
    /// No method with that index.
    UnknownMethod,
}

/// Why activation failed: the constructor's error, rendered.
#[derive(Debug, Clone)]
pub struct ActivateError(pub String);

impl ActivateError {
    /// From any displayable error.
    pub fn from_display(e: &dyn std::fmt::Display) -> Self {
        ActivateError(e.to_string())
    }
}

/// A class the host can run. Implemented by `#[durable_object]`.
pub trait Hosted: ObjectClass + Sized {
    /// Build the in-memory instance from storage (first call, or after eviction or reset).
    fn activate(ctx: &mut Context) -> Result<Self, ActivateError>;
    /// Run method number `method` with postcard-encoded `args`.
    fn dispatch<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        method: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a>;

    /// The alarm handlers, in declaration order.
    const ALARMS: &'static [&'static str] = &[];

    /// Run alarm handler number `alarm` with postcard-encoded `args`.
    fn dispatch_alarm<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        alarm: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a> {
        let _ = (ctx, alarm, args);
        Box::pin(async { TurnOutcome::UnknownMethod })
    }
}

/// Decode a method's argument tuple.
pub fn decode_args<A: DeserializeOwned>(args: &[u8]) -> Result<A, TurnOutcome> {
    postcard::from_bytes(args).map_err(|e| TurnOutcome::BadArguments(e.to_string()))
}

/// Encode a fallible method's result.
pub fn encode_result<T: Serialize, E: Serialize>(result: Result<T, E>) -> TurnOutcome {
    match result {
        Ok(v) => encode_value(v),
        Err(e) => match postcard::to_stdvec(&e) {
            Ok(bytes) => TurnOutcome::AppError(bytes),
            Err(e) => TurnOutcome::EncodeFailed(e.to_string()),
        },
    }
}

/// Encode an infallible method's value.
pub fn encode_value<T: Serialize>(value: T) -> TurnOutcome {
    match postcard::to_stdvec(&value) {
        Ok(bytes) => TurnOutcome::Return(bytes),
        Err(e) => TurnOutcome::EncodeFailed(e.to_string()),
    }
}

/// A live, type-erased instance.
pub(crate) trait Instance {
    fn dispatch<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        method: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a>;
    fn dispatch_alarm<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        alarm: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a>;
}

impl<T: Hosted> Instance for T {
    fn dispatch<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        method: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a> {
        Hosted::dispatch(self, ctx, method, args)
    }
    fn dispatch_alarm<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        alarm: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a> {
        Hosted::dispatch_alarm(self, ctx, alarm, args)
    }
}

type Activate = fn(&mut Context) -> Result<Box<dyn Instance>, ActivateError>;

/// What the host knows of a registered class.
pub(crate) struct ClassEntry {
    pub(crate) name: &'static str,
    pub(crate) methods: HashMap<&'static str, (usize, MethodInfo)>,
    pub(crate) alarms: HashMap<&'static str, usize>,
    pub(crate) activate: Activate,
}

impl ClassEntry {
    pub(crate) fn of<T: Hosted>() -> Self {
        fn activate<T: Hosted>(ctx: &mut Context) -> Result<Box<dyn Instance>, ActivateError> {
            T::activate(ctx).map(|t| Box::new(t) as Box<dyn Instance>)
        }
        ClassEntry {
            name: T::CLASS,
            methods: T::METHODS
                .iter()
                .enumerate()
                .map(|(i, m)| (m.name, (i, *m)))
                .collect(),
            alarms: T::ALARMS.iter().enumerate().map(|(i, a)| (*a, i)).collect(),
            activate: activate::<T>,
        }
    }
}
