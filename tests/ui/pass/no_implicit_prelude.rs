// The generated code names everything by absolute path, so it compiles in a crate
// without the prelude.
#![no_implicit_prelude]

use ::durable::{alarm, durable_object, Context};

/// A counter.
pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(_ctx: &mut Context) -> ::std::result::Result<Self, ::durable::Error> {
        ::std::result::Result::Ok(Counter { value: 0 })
    }

    /// Add `by` and return the new value.
    pub async fn increment(
        &mut self,
        ctx: &mut Context,
        by: i64,
    ) -> ::std::result::Result<i64, ::durable::Error> {
        self.value += by;
        Self::schedule_release(
            ctx,
            ::core::time::Duration::from_secs(5),
            "k",
            1u32,
            ::std::string::String::new(),
        )?;
        Self::schedule_release_every(
            ctx,
            ::core::time::Duration::from_secs(5),
            "k",
            1u32,
            ::std::string::String::new(),
        )?;
        let _pending: bool = Self::cancel_release(ctx, "k")?;
        ::std::result::Result::Ok(self.value)
    }

    /// The current value.
    pub async fn get(&self, _ctx: &::durable::ReadContext) -> i64 {
        self.current()
    }

    /// Back to zero.
    pub async fn reset(&mut self, _ctx: &mut Context) {
        self.value = 0;
    }

    fn current(&self) -> i64 {
        self.value
    }

    /// An alarm handler.
    #[alarm]
    async fn release(
        &mut self,
        _ctx: &mut Context,
        seat: u32,
        user: ::std::string::String,
    ) -> ::std::result::Result<(), ::durable::Error> {
        let _ = (seat, user);
        ::std::result::Result::Ok(())
    }
}

fn main() {
    let _stub: ::std::option::Option<CounterClient> = ::std::option::Option::None;
    let methods = <Counter as ::durable::ObjectClass>::METHODS;
    ::std::assert_eq!(<Counter as ::durable::ObjectClass>::CLASS, "Counter");
    ::std::assert_eq!(methods.len(), 3);
    ::std::assert_eq!(methods[0].name, "increment");
    ::std::assert_eq!(methods[1].name, "get");
    ::std::assert_eq!(methods[2].name, "reset");
    ::std::assert_eq!(<Counter as ::durable::Hosted>::ALARMS, ["release"]);
}
