//! The alarm helpers: for every `#[alarm]` handler, associated functions on the class
//! that schedule it once (`schedule_{alarm}`), periodically
//! (`schedule_{alarm}_every`) or cancel it (`cancel_{alarm}`), with the handler's
//! visibility and argument types. They serialize the arguments into
//! `Context::schedule_alarm`; the host later decodes them in `dispatch_alarm`.

use crate::check::Checked;
use crate::model::Method;
use crate::names::{self, AlarmHelpers};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

/// The inherent impl block with every alarm's helpers (nothing without alarms).
pub(crate) fn generate(c: &Checked<'_>) -> TokenStream {
    if c.class.alarms.is_empty() {
        return TokenStream::new();
    }
    let self_ty = &c.class.item.self_ty;
    let helpers = c.class.alarms.iter().map(|a| helpers(c, &a.method));
    // A class rarely uses all three helpers of a private alarm, and the helpers
    // have three parameters more than the handler.
    quote! {
        #[allow(dead_code, clippy::too_many_arguments)]
        impl #self_ty {
            #(#helpers)*
        }
    }
}

/// `schedule_{alarm}`, `schedule_{alarm}_every` and `cancel_{alarm}`.
fn helpers(c: &Checked<'_>, handler: &Method) -> TokenStream {
    let AlarmHelpers {
        schedule,
        schedule_every,
        cancel,
    } = AlarmHelpers::of(handler.ident());
    let vis = &handler.vis;
    let wire_name = handler.wire_name();
    let arg_idents: Vec<_> = handler.args.iter().map(|a| a.ident()).collect();
    let args = names::alarm_helper_args(&arg_idents);
    let types: Vec<_> = handler.args.iter().map(|a| &a.ty).collect();
    let handler_path = format!("{}::{}", c.name, wire_name);

    let schedule_docs = docs(&[
        &format!(
            "Schedules the `{wire_name}` alarm under `key`, once: at `when` if it is an instant \
             (a `SystemTime`), or after `when` if it is a delay (a `Duration`). Replaces a \
             pending `{wire_name}` alarm with the same key."
        ),
        "",
        &format!(
            "When the alarm fires, the runtime calls `{handler_path}` with the arguments given \
             here. Scheduling is part of the current turn: if the turn fails, nothing is \
             scheduled."
        ),
    ]);
    let every_docs = docs(&[
        &format!(
            "Schedules the `{wire_name}` alarm under `key` to fire every `period`, the first \
             time one `period` from now. Replaces a pending `{wire_name}` alarm with the same \
             key."
        ),
        "",
        &format!(
            "Each time the alarm fires, the runtime calls `{handler_path}` with the arguments \
             given here, until `{cancel}` stops it. Scheduling is part of the current turn: if \
             the turn fails, nothing is scheduled."
        ),
    ]);
    let cancel_docs = docs(&[&format!(
        "Cancels the pending `{wire_name}` alarm under `key`, one-shot or periodic; returns \
         whether one was pending."
    )]);

    // Spanned on the handler's name, so that a clash with a function of another impl
    // block (which `check` cannot see) is reported there.
    let span = handler.ident().span();
    quote_spanned! {span=>
        #schedule_docs
        #vis fn #schedule(
            ctx: &mut ::durable::__private::Context,
            when: impl ::core::convert::Into<::durable::__private::When>,
            key: &::core::primitive::str,
            #(#args: #types),*
        ) -> ::core::result::Result<(), ::durable::__private::Error> {
            ctx.schedule_alarm(
                #wire_name,
                key,
                ::core::convert::Into::into(when),
                ::core::option::Option::None,
                &(#(#args,)*),
            )
        }

        #every_docs
        #vis fn #schedule_every(
            ctx: &mut ::durable::__private::Context,
            period: ::core::time::Duration,
            key: &::core::primitive::str,
            #(#args: #types),*
        ) -> ::core::result::Result<(), ::durable::__private::Error> {
            ctx.schedule_alarm(
                #wire_name,
                key,
                ::durable::__private::When::After(period),
                ::core::option::Option::Some(period),
                &(#(#args,)*),
            )
        }

        #cancel_docs
        #vis fn #cancel(
            ctx: &mut ::durable::__private::Context,
            key: &::core::primitive::str,
        ) -> ::core::result::Result<::core::primitive::bool, ::durable::__private::Error> {
            ctx.cancel_alarm(#wire_name, key)
        }
    }
}

/// `#[doc = ...]` attributes, one per line.
fn docs(lines: &[&str]) -> TokenStream {
    let lines = lines.iter().map(|l| {
        let line = if l.is_empty() {
            String::new()
        } else {
            format!(" {l}")
        };
        quote!(#[doc = #line])
    });
    quote!(#(#lines)*)
}
