//! The host side of a class: `ObjectClass` (name, remote methods with fingerprints,
//! stub type) and `Hosted` (activation through the user's constructor, dispatch of a
//! method number and postcard arguments to the user's method, the JSON form of each
//! method for the HTTP gateway, and alarm dispatch when the class has alarms),
//! wrapped in `const _: () = { ... };` so nothing leaks into the user's namespace.

use crate::check::Checked;
use crate::model::{Method, Output, SocketKind};
use crate::{fingerprint, json, names};
use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::ReturnType;

/// Everything the host needs to run the class.
pub(crate) fn generate(c: &Checked<'_>) -> TokenStream {
    let object_class = object_class(c);
    let hosted = hosted(c);
    quote! {
        const _: () = {
            #object_class
            #hosted
        };
    }
}

/// `impl ObjectClass`: the class name, the remote methods and the stub type.
fn object_class(c: &Checked<'_>) -> TokenStream {
    let self_ty = &c.class.item.self_ty;
    let class = &c.wire_name;
    let client = names::client(c.name);
    let methods = c.class.methods.iter().map(|m| {
        let name = m.ident().to_string();
        let fingerprint = fingerprint::literal(m.fingerprint());
        let signature = m.signature();
        quote!(::durable::__private::MethodInfo { name: #name, fingerprint: #fingerprint, signature: #signature })
    });
    quote! {
        impl ::durable::__private::ObjectClass for #self_ty {
            const CLASS: &'static str = #class;
            const METHODS: &'static [::durable::__private::MethodInfo] = &[#(#methods),*];
            type Client = #client;
        }
    }
}

/// `impl Hosted`: activation, dispatch, the methods' JSON forms (see `json`), and
/// alarm dispatch if there are alarms (the trait's defaults cover a class without).
fn hosted(c: &Checked<'_>) -> TokenStream {
    let self_ty = &c.class.item.self_ty;
    let activate = activate(c);
    let dispatch = dispatch(c);
    let json = json::generate(c);
    let alarms = if c.class.alarms.is_empty() {
        TokenStream::new()
    } else {
        alarms(c)
    };
    let sockets = if c.class.sockets.is_empty() {
        TokenStream::new()
    } else {
        sockets(c)
    };
    quote! {
        impl ::durable::__private::Hosted for #self_ty {
            #activate
            #dispatch
            #json
            #alarms
            #sockets
        }
    }
}

/// `Hosted::activate`: calls the user's constructor, rendering its error.
fn activate(c: &Checked<'_>) -> TokenStream {
    let self_ty = &c.class.item.self_ty;
    let ctor = &c.constructor.sig.ident;
    let body = if c.constructor.fallible {
        // Spanned on the constructor's return type, so that an error type without
        // `Display` is reported there.
        let span = match &c.constructor.sig.output {
            ReturnType::Type(_, ty) => ty.span(),
            ReturnType::Default => ctor.span(),
        };
        let render = quote_spanned!(span=> ::durable::__private::ActivateError::from_display(&e));
        quote! {
            match <#self_ty>::#ctor(ctx) {
                ::core::result::Result::Ok(v) => ::core::result::Result::Ok(v),
                ::core::result::Result::Err(e) => ::core::result::Result::Err(#render),
            }
        }
    } else {
        quote!(::core::result::Result::Ok(<#self_ty>::#ctor(ctx)))
    };
    quote! {
        fn activate(
            ctx: &mut ::durable::__private::Context,
        ) -> ::core::result::Result<Self, ::durable::__private::ActivateError> {
            #body
        }
    }
}

/// `Hosted::dispatch` (one match arm per `&mut self` remote method, by declaration
/// order), and `Hosted::READ_ONLY` with `Hosted::dispatch_read` (one arm per `&self`
/// method: read-only, run on a shared instance with a `&ReadContext`).
fn dispatch(c: &Checked<'_>) -> TokenStream {
    let arms = |read: bool| -> Vec<TokenStream> {
        c.class
            .methods
            .iter()
            .enumerate()
            .filter(|(_, m)| m.read_only() == read)
            .map(|(index, m)| {
                let fallible = matches!(m.output, Output::Fallible { .. });
                dispatch_arm(c, index, m, fallible)
            })
            .collect()
    };
    let body = |arms: Vec<TokenStream>| {
        if arms.is_empty() {
            quote! {
                let _ = (self, ctx, method, args);
                ::durable::__private::TurnOutcome::UnknownMethod
            }
        } else {
            quote! {
                match method {
                    #(#arms)*
                    _ => ::durable::__private::TurnOutcome::UnknownMethod,
                }
            }
        }
    };
    let (writes, reads) = (body(arms(false)), body(arms(true)));
    let read_only = c
        .class
        .methods
        .iter()
        .enumerate()
        .filter(|(_, m)| m.read_only())
        .map(|(index, _)| Literal::usize_suffixed(index));
    quote! {
        fn dispatch<'a>(
            &'a mut self,
            ctx: &'a mut ::durable::__private::Context,
            method: usize,
            args: &'a [u8],
        ) -> ::durable::__private::BoxTurn<'a> {
            ::std::boxed::Box::pin(async move { #writes })
        }
        const READ_ONLY: &'static [usize] = &[#(#read_only),*];
        fn dispatch_read<'a>(
            &'a self,
            ctx: &'a ::durable::__private::ReadContext,
            method: usize,
            args: &'a [u8],
        ) -> ::durable::__private::BoxTurn<'a> {
            ::std::boxed::Box::pin(async move { #reads })
        }
    }
}

/// `Hosted::ALARMS` (the handlers' names, by declaration order) and
/// `Hosted::dispatch_alarm` (one match arm per handler, as for methods).
fn alarms(c: &Checked<'_>) -> TokenStream {
    let names = c.class.alarms.iter().map(|a| a.method.wire_name());
    let arms = c.class.alarms.iter().enumerate().map(|(index, a)| {
        // A `Result<T>` alias is a `Result` too: its `Err` must fail the alarm.
        let fallible = matches!(
            a.method.output,
            Output::Fallible { .. } | Output::UnnamedError(_)
        );
        dispatch_arm(c, index, &a.method, fallible)
    });
    quote! {
        const ALARMS: &'static [&'static str] = &[#(#names),*];
        fn dispatch_alarm<'a>(
            &'a mut self,
            ctx: &'a mut ::durable::__private::Context,
            alarm: usize,
            args: &'a [u8],
        ) -> ::durable::__private::BoxTurn<'a> {
            ::std::boxed::Box::pin(async move {
                match alarm {
                    #(#arms)*
                    _ => ::durable::__private::TurnOutcome::UnknownMethod,
                }
            })
        }
    }
}

/// `Hosted::SOCKETS` and `Hosted::dispatch_socket`: one match arm per WebSocket
/// handler, by event.
fn sockets(c: &Checked<'_>) -> TokenStream {
    let self_ty = &c.class.item.self_ty;
    let has = |k: SocketKind| c.class.sockets.iter().any(|h| h.kind == k);
    let (connect, message, close) = (
        has(SocketKind::Connect),
        has(SocketKind::Message),
        has(SocketKind::Close),
    );
    let arms = c.class.sockets.iter().map(|h| {
        let m = &h.method;
        let method = m.ident();
        let fallible = matches!(m.output, Output::Fallible { .. } | Output::UnnamedError(_));
        let span = m.return_type().map_or_else(|| method.span(), Spanned::span);
        let encode = if fallible {
            quote_spanned!(span=> ::durable::__private::encode_result)
        } else {
            quote_spanned!(span=> ::durable::__private::encode_value)
        };
        match h.kind {
            SocketKind::Connect => quote! {
                ::durable::__private::SocketEvent::Connect(socket) => {
                    #encode(<#self_ty>::#method(self, ctx, socket).await)
                }
            },
            SocketKind::Message => {
                let ty = &m.args[1].ty;
                quote! {
                    ::durable::__private::SocketEvent::Message(socket, message) => {
                        let message = match <#ty as ::durable::__private::FromWsMessage>::from_ws(message) {
                            ::core::result::Result::Ok(m) => m,
                            ::core::result::Result::Err(e) => {
                                return ::durable::__private::TurnOutcome::BadArguments(e)
                            }
                        };
                        #encode(<#self_ty>::#method(self, ctx, socket, message).await)
                    }
                }
            }
            SocketKind::Close => quote! {
                ::durable::__private::SocketEvent::Close(socket, code, reason) => {
                    #encode(<#self_ty>::#method(self, ctx, socket, code, reason).await)
                }
            },
        }
    });
    quote! {
        const SOCKETS: ::durable::__private::SocketHandlers = ::durable::__private::SocketHandlers {
            connect: #connect,
            message: #message,
            close: #close,
        };
        fn dispatch_socket<'a>(
            &'a mut self,
            ctx: &'a mut ::durable::__private::Context,
            event: &'a [u8],
        ) -> ::durable::__private::BoxTurn<'a> {
            ::std::boxed::Box::pin(async move {
                let event: ::durable::__private::SocketEvent = match ::durable::__private::decode_args(event) {
                    ::core::result::Result::Ok(v) => v,
                    ::core::result::Result::Err(e) => return e,
                };
                #[allow(unreachable_patterns)]
                match event {
                    #(#arms)*
                    _ => ::durable::__private::TurnOutcome::Return(::std::vec::Vec::new()),
                }
            })
        }
    }
}

/// One arm: decode the argument tuple, call the method, encode what it returns
/// (`fallible`: as a `Result`, whose `Err` fails the turn).
fn dispatch_arm(c: &Checked<'_>, index: usize, m: &Method, fallible: bool) -> TokenStream {
    let self_ty = &c.class.item.self_ty;
    let method = m.ident();
    let index = Literal::usize_suffixed(index);
    let locals: Vec<_> = (0..m.args.len()).map(names::decoded_arg).collect();
    let types = m.args.iter().map(|a| &a.ty);
    let call = quote!(<#self_ty>::#method(self, ctx, #(#locals),*).await);
    // Spanned on the return type, so that one that cannot be encoded (no
    // `Serialize`) is reported there.
    let span = m.return_type().map_or_else(|| method.span(), Spanned::span);
    let encode = if fallible {
        quote_spanned!(span=> ::durable::__private::encode_result)
    } else {
        quote_spanned!(span=> ::durable::__private::encode_value)
    };
    let encode = quote!(#encode(#call));
    quote! {
        #index => {
            let (#(#locals,)*): (#(#types,)*) = match ::durable::__private::decode_args(args) {
                ::core::result::Result::Ok(v) => v,
                ::core::result::Result::Err(e) => return e,
            };
            #encode
        }
    }
}
