//! The model: what `#[durable_object]` reads from an impl block, as plain structs.
//!
//! Reading never fails. It sorts the block's functions into the activation
//! constructor(s), remote methods, alarm handlers and plain Rust, and records the
//! facts (with their tokens, for spans) that `check` later judges. Only `check`
//! decides what is an error. Remote methods and alarm handlers are both [`Method`]s:
//! the runtime calls them the same way, with decoded arguments.

use crate::{fingerprint, names};
use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse_quote;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ImplItem, ImplItemFn, ItemImpl, Pat, PathArguments,
    Receiver, ReturnType, Signature, Type, TypePath, TypeReference, Visibility,
};

/// One `#[durable_object]` impl block.
pub(crate) struct Class {
    /// The attribute's own arguments, `#[durable_object(...)]`: nothing, or
    /// `name = "..."`.
    pub(crate) attr: TokenStream,
    /// The impl block as the user wrote it, except that each handler's `#[alarm]`
    /// is marked as consumed (see [`mark_alarm_attr`]). It is emitted unchanged.
    pub(crate) item: ItemImpl,
    /// The class name: the last segment of the self type, if that is a plain named
    /// type (`impl Counter`, `impl crate::Counter`).
    pub(crate) name: Option<Ident>,
    /// Every function that looks like an activation constructor (there must be one).
    pub(crate) constructors: Vec<Constructor>,
    /// The remote methods, in declaration order (their index is their dispatch
    /// number).
    pub(crate) methods: Vec<Method>,
    /// The alarm handlers (`#[alarm]` methods), in declaration order (their index is
    /// their alarm dispatch number).
    pub(crate) alarms: Vec<AlarmHandler>,
    /// The WebSocket handlers (`#[on_connect]`, `#[on_message]`, `#[on_close]`), in
    /// declaration order.
    pub(crate) sockets: Vec<SocketHandler>,
}

/// Which WebSocket event a handler takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketKind {
    /// `#[on_connect]`: `(socket: Socket)`.
    Connect,
    /// `#[on_message]`: `(socket: Socket, message: M)`.
    Message,
    /// `#[on_close]`: `(socket: Socket, code: u16, reason: String)`.
    Close,
}

impl SocketKind {
    /// The attribute's name.
    pub(crate) fn attr(self) -> &'static str {
        match self {
            SocketKind::Connect => "on_connect",
            SocketKind::Message => "on_message",
            SocketKind::Close => "on_close",
        }
    }

    /// How many arguments the handler takes after the context.
    pub(crate) fn arity(self) -> usize {
        match self {
            SocketKind::Connect => 1,
            SocketKind::Message => 2,
            SocketKind::Close => 3,
        }
    }
}

/// A method marked with a WebSocket attribute: the runtime calls it when a socket
/// of the object connects, sends a message or closes. Never a remote method.
pub(crate) struct SocketHandler {
    /// The attribute as written.
    pub(crate) attr: Attribute,
    /// Which event.
    pub(crate) kind: SocketKind,
    /// The handler.
    pub(crate) method: Method,
}

/// An associated function without receiver whose single argument is `&mut Context`
/// and which returns `Self` or `Result<Self, E>`.
pub(crate) struct Constructor {
    /// The function's signature.
    pub(crate) sig: Signature,
    /// Whether it returns `Result<Self, E>` rather than `Self`.
    pub(crate) fallible: bool,
}

/// A function the runtime calls with decoded arguments: a remote method (a `pub fn`
/// with a receiver, callable over the network through the client stub) or an alarm
/// handler (see [`AlarmHandler`]).
pub(crate) struct Method {
    /// The method's signature, for its modifiers and generics.
    pub(crate) sig: Signature,
    /// The method's visibility (alarm helpers copy it).
    pub(crate) vis: Visibility,
    /// The method's doc attributes, copied onto the stub method.
    pub(crate) docs: Vec<Attribute>,
    /// The receiver (`&self`, `&mut self`, `self`, `self: Box<Self>`, ...). Always
    /// there for remote methods; an alarm handler may lack one (an error).
    pub(crate) receiver: Option<Receiver>,
    /// Where the `&mut Context` argument is.
    pub(crate) ctx: ContextArg,
    /// The arguments that travel over the network (or wait in storage until an
    /// alarm fires): all but the receiver and the context.
    pub(crate) args: Vec<Arg>,
    /// What the method returns.
    pub(crate) output: Output,
}

/// Where a method takes its context.
pub(crate) enum ContextArg {
    /// First after `self`, as `&mut Context` (the type, for its span): as a `&mut self`
    /// method must.
    First(Type),
    /// At another position (the argument, for its span).
    Misplaced(FnArg),
    /// First after `self`, but as `&Context` (the type, for its span).
    Shared(Type),
    /// First after `self`, as `&ReadContext`: as a `&self` (read-only) method must.
    Read(Type),
    /// First after `self`, as `&mut ReadContext` (the type, for its span).
    ReadMut(Type),
    /// Not at all.
    Missing,
}

/// One argument of a method.
pub(crate) struct Arg {
    /// The pattern as written.
    pub(crate) pat: Pat,
    /// The type as written.
    pub(crate) ty: Type,
}

/// What a method returns.
pub(crate) enum Output {
    /// A plain value (`None`: no `->`, that is `()`); the call cannot fail.
    Value(Option<Type>),
    /// `Result<T, E>`: `Err` rolls the turn back and reaches the caller as `E`.
    Fallible {
        /// `T`.
        ok: Box<Type>,
        /// `E`.
        err: Box<Type>,
    },
    /// `Result<T>`: an alias that hides the error type (the whole return type).
    UnnamedError(Type),
}

/// A method marked `#[alarm]`: the runtime calls it when an alarm scheduled with its
/// generated `schedule_*` helpers fires. It is never a remote method, even if `pub`.
pub(crate) struct AlarmHandler {
    /// The `#[alarm]` attribute as written (in the emitted impl block it is marked
    /// as consumed).
    pub(crate) attr: Attribute,
    /// The handler.
    pub(crate) method: Method,
}

impl Class {
    /// Reads an impl block and the attribute's arguments.
    pub(crate) fn read(attr: TokenStream, mut item: ItemImpl) -> Class {
        let name = plain_type_name(&item.self_ty);
        let mut class = Class {
            attr,
            item: item.clone(),
            name,
            constructors: Vec::new(),
            methods: Vec::new(),
            alarms: Vec::new(),
            sockets: Vec::new(),
        };
        for impl_item in &mut item.items {
            let ImplItem::Fn(f) = impl_item else { continue };
            if let Some((kind, attr)) = mark_socket_attr(f) {
                class.sockets.push(SocketHandler {
                    attr,
                    kind,
                    method: Method::read(f),
                });
            } else if let Some(attr) = mark_alarm_attr(f) {
                class.alarms.push(AlarmHandler {
                    attr,
                    method: Method::read(f),
                });
            } else if f.sig.receiver().is_some() {
                if matches!(f.vis, Visibility::Public(_)) {
                    class.methods.push(Method::read(f));
                }
            } else if let Some(fallible) = constructor_output(&f.sig, class.name.as_ref()) {
                class.constructors.push(Constructor {
                    sig: f.sig.clone(),
                    fallible,
                });
            }
        }
        class.item = item;
        class
    }
}

impl Method {
    fn read(f: &ImplItemFn) -> Method {
        let mut args: Vec<FnArg> = f
            .sig
            .inputs
            .iter()
            .filter(|a| matches!(a, FnArg::Typed(_)))
            .cloned()
            .collect();
        let ctx_at = args
            .iter()
            .position(|a| context_ref(a).is_some() || read_context_ref(a).is_some());
        let ctx = match ctx_at {
            None => ContextArg::Missing,
            Some(at) => {
                let arg = args.remove(at);
                let mutable = context_ref(&arg)
                    .or_else(|| read_context_ref(&arg))
                    .is_some_and(|r| r.mutability.is_some());
                let read = read_context_ref(&arg).is_some();
                match (at, arg) {
                    (0, FnArg::Typed(t)) => match (read, mutable) {
                        (false, true) => ContextArg::First(*t.ty),
                        (false, false) => ContextArg::Shared(*t.ty),
                        (true, false) => ContextArg::Read(*t.ty),
                        (true, true) => ContextArg::ReadMut(*t.ty),
                    },
                    (0, FnArg::Receiver(_)) => ContextArg::Missing,
                    (_, arg) => ContextArg::Misplaced(arg),
                }
            }
        };
        let args = args
            .into_iter()
            .filter_map(|a| match a {
                FnArg::Typed(t) => Some(Arg {
                    pat: *t.pat,
                    ty: *t.ty,
                }),
                FnArg::Receiver(_) => None,
            })
            .collect();
        Method {
            sig: f.sig.clone(),
            vis: f.vis.clone(),
            docs: f
                .attrs
                .iter()
                .filter(|a| a.path().is_ident("doc"))
                .cloned()
                .collect(),
            receiver: f.sig.receiver().cloned(),
            ctx,
            args,
            output: Output::read(&f.sig.output),
        }
    }

    /// Whether the receiver is `&self` (or `self: &Self`): a remote method that
    /// takes it is read-only.
    pub(crate) fn read_only(&self) -> bool {
        self.receiver
            .as_ref()
            .is_some_and(|r| matches!(&*r.ty, Type::Reference(t) if t.mutability.is_none()))
    }

    /// The method's name.
    pub(crate) fn ident(&self) -> &Ident {
        &self.sig.ident
    }

    /// The declared return type (`None` for no `->`).
    pub(crate) fn return_type(&self) -> Option<&Type> {
        match &self.sig.output {
            ReturnType::Default => None,
            ReturnType::Type(_, ty) => Some(ty),
        }
    }

    /// The name on the wire (an alarm's name in storage): the identifier without
    /// `r#`.
    pub(crate) fn wire_name(&self) -> String {
        self.ident().unraw().to_string()
    }

    /// The schema fingerprint shared by the stub and the host.
    pub(crate) fn fingerprint(&self) -> u64 {
        let args: Vec<&Type> = self.args.iter().map(|a| &a.ty).collect();
        fingerprint::of(self.ident(), &args, self.return_type())
    }

    /// The canonical signature the fingerprint is computed over.
    pub(crate) fn signature(&self) -> String {
        let args: Vec<&Type> = self.args.iter().map(|a| &a.ty).collect();
        fingerprint::signature(self.ident(), &args, self.return_type())
    }
}

impl Arg {
    /// The argument's name, if its pattern is a plain name (`by`, `mut by`).
    pub(crate) fn ident(&self) -> Option<&Ident> {
        match &self.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => Some(&p.ident),
            _ => None,
        }
    }
}

impl Output {
    fn read(output: &ReturnType) -> Output {
        let ty = match output {
            ReturnType::Default => return Output::Value(None),
            ReturnType::Type(_, ty) => &**ty,
        };
        match result_args(ty).as_deref() {
            Some([ok, err]) => Output::Fallible {
                ok: Box::new((*ok).clone()),
                err: Box::new((*err).clone()),
            },
            Some([_]) => Output::UnnamedError(ty.clone()),
            _ => Output::Value(Some(ty.clone())),
        }
    }
}

/// The last segment of a plain named type without generic arguments.
fn plain_type_name(ty: &Type) -> Option<Ident> {
    match ty {
        Type::Path(TypePath { qself: None, path }) => {
            let last = path.segments.last()?;
            last.arguments.is_none().then(|| last.ident.clone())
        }
        Type::Group(g) => plain_type_name(&g.elem),
        Type::Paren(p) => plain_type_name(&p.elem),
        _ => None,
    }
}

/// Whether `attr` is `#[alarm]`, `#[durable::alarm]` or `#[durable_macros::alarm]`
/// (with or without a leading `::`), with or without arguments (`check` rejects
/// those).
fn is_alarm_attr(attr: &Attribute) -> bool {
    let path = attr.path();
    let names: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    match names.as_slice() {
        [last] => path.leading_colon.is_none() && last == "alarm",
        [krate, last] => matches!(krate.as_str(), "durable" | "durable_macros") && last == "alarm",
        _ => false,
    }
}

/// Returns a function's `#[alarm]` attribute as written, and in the function marks
/// it as consumed: `#[alarm]` becomes `#[alarm(__durable_handler)]`, on which the
/// `alarm` macro returns the method unchanged. Removing the attribute instead would
/// leave the user's `use durable::alarm` unused (a warning); keeping the path makes
/// the compiler resolve it. Repeated `#[alarm]`s are removed.
fn mark_socket_attr(f: &mut ImplItemFn) -> Option<(SocketKind, Attribute)> {
    let kinds = [SocketKind::Connect, SocketKind::Message, SocketKind::Close];
    let (at, kind) = f.attrs.iter().enumerate().find_map(|(at, a)| {
        kinds
            .iter()
            .find(|k| is_attr(a, k.attr()))
            .map(|k| (at, *k))
    })?;
    let attr = f.attrs[at].clone();
    let path = attr.path();
    let marker = Ident::new(names::ALARM_CONSUMED, Span::call_site());
    let mut marked = attr.clone();
    marked.meta = parse_quote!(#path(#marker));
    f.attrs[at] = marked;
    Some((kind, attr))
}

/// Whether `attr` is `#[name]` or `#[durable::name]`.
fn is_attr(attr: &Attribute, name: &str) -> bool {
    let path = attr.path();
    let names: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    match names.as_slice() {
        [last] => path.leading_colon.is_none() && last == name,
        [krate, last] => matches!(krate.as_str(), "durable" | "durable_macros") && last == name,
        _ => false,
    }
}

fn mark_alarm_attr(f: &mut ImplItemFn) -> Option<Attribute> {
    let at = f.attrs.iter().position(is_alarm_attr)?;
    let attr = f.attrs[at].clone();
    let path = attr.path();
    let marker = Ident::new(names::ALARM_CONSUMED, Span::call_site());
    let mut marked = attr.clone();
    marked.meta = parse_quote!(#path(#marker));
    f.attrs.retain(|a| !is_alarm_attr(a));
    f.attrs.insert(at, marked);
    Some(attr)
}

/// The reference, if `arg` is typed `&mut Context` or `&Context` (any path ending in
/// `Context`).
fn context_ref(arg: &FnArg) -> Option<&TypeReference> {
    let FnArg::Typed(t) = arg else { return None };
    let Type::Reference(r) = &*t.ty else {
        return None;
    };
    is_named(&r.elem, "Context").then_some(r)
}

/// The reference, if `arg` is typed `&ReadContext` or `&mut ReadContext` (any path
/// ending in `ReadContext`).
fn read_context_ref(arg: &FnArg) -> Option<&TypeReference> {
    let FnArg::Typed(t) = arg else { return None };
    let Type::Reference(r) = &*t.ty else {
        return None;
    };
    is_named(&r.elem, "ReadContext").then_some(r)
}

/// Whether `ty` is a path type whose last segment is `name`.
fn is_named(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(TypePath { qself: None, path }) => {
            path.segments.last().is_some_and(|s| s.ident == name)
        }
        Type::Group(g) => is_named(&g.elem, name),
        Type::Paren(p) => is_named(&p.elem, name),
        _ => false,
    }
}

/// The type arguments of `ty` if it is a `Result<..>` (any path ending in `Result`).
fn result_args(ty: &Type) -> Option<Vec<&Type>> {
    let Type::Path(TypePath { qself: None, path }) = ty else {
        return None;
    };
    let last = path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args
        .iter()
        .map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        })
        .collect()
}

/// Whether `ty` names the class: `Self` or the class name.
fn is_self(ty: &Type, class: Option<&Ident>) -> bool {
    is_named(ty, "Self") || class.is_some_and(|c| plain_type_name(ty).as_ref() == Some(c))
}

/// If `sig` is an activation constructor, whether it is fallible: no receiver, one
/// `&mut Context` argument, returning `Self` or `Result<Self, ..>`.
fn constructor_output(sig: &Signature, class: Option<&Ident>) -> Option<bool> {
    if sig.inputs.len() != 1 {
        return None;
    }
    let arg = sig.inputs.first()?;
    context_ref(arg)?.mutability?;
    let ReturnType::Type(_, ty) = &sig.output else {
        return None;
    };
    if is_self(ty, class) {
        return Some(false);
    }
    match result_args(ty)?.first() {
        Some(ok) if is_self(ok, class) => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::{quote, ToTokens};
    use syn::parse_quote;

    fn read(item: ItemImpl) -> Class {
        Class::read(TokenStream::new(), item)
    }

    #[test]
    fn sorts_functions() {
        let class = read(parse_quote! {
            impl Counter {
                fn activate(ctx: &mut Context) -> Result<Self, Error> { panic!("fixture") }
                /// Adds.
                pub async fn increment(&mut self, ctx: &mut Context, by: i64) -> Result<i64, Error> { panic!("fixture") }
                pub async fn get(&self, _ctx: &durable::ReadContext) -> i64 { 0 }
                fn helper(&self) {}
                pub(crate) async fn internal(&self, ctx: &mut Context) {}
                pub fn new_plain() -> Self { panic!("fixture") }
                #[alarm]
                pub async fn tick(&mut self, ctx: &mut Context) {}
            }
        });
        assert_eq!(class.name.as_ref().unwrap(), "Counter");
        assert_eq!(class.constructors.len(), 1);
        assert!(class.constructors[0].fallible);
        let names: Vec<String> = class
            .methods
            .iter()
            .map(|m| m.ident().to_string())
            .collect();
        assert_eq!(names, ["increment", "get"]);
        assert_eq!(class.methods[0].docs.len(), 1);
        assert!(matches!(class.methods[0].ctx, ContextArg::First(_)));
        assert!(matches!(class.methods[0].output, Output::Fallible { .. }));
        assert!(matches!(class.methods[1].output, Output::Value(Some(_))));
        assert!(matches!(class.methods[1].ctx, ContextArg::Read(_)));
        assert!(class.methods[1].read_only() && !class.methods[0].read_only());
        assert_eq!(class.methods[0].args.len(), 1);
        assert_eq!(class.methods[0].args[0].ident().unwrap(), "by");
        assert_eq!(class.alarms.len(), 1);
        assert_eq!(class.alarms[0].method.sig.ident, "tick");
        // The emitted block carries `#[alarm]` marked as consumed.
        assert!(class
            .item
            .to_token_stream()
            .to_string()
            .contains("# [alarm (__durable_handler)] pub async fn tick"));
    }

    #[test]
    fn constructor_shapes() {
        let class = read(parse_quote! {
            impl Counter {
                fn a(ctx: &mut Context) -> Self { panic!("fixture") }
                fn b(ctx: &mut Context) -> Counter { panic!("fixture") }
                fn c(ctx: &mut Context) -> std::result::Result<Counter, String> { panic!("fixture") }
                fn not_shared(ctx: &Context) -> Self { panic!("fixture") }
                fn not_two(ctx: &mut Context, x: u8) -> Self { panic!("fixture") }
                fn not_other(ctx: &mut Context) -> Result<u8, String> { panic!("fixture") }
            }
        });
        let found: Vec<(String, bool)> = class
            .constructors
            .iter()
            .map(|c| (c.sig.ident.to_string(), c.fallible))
            .collect();
        assert_eq!(
            found,
            [("a".into(), false), ("b".into(), false), ("c".into(), true)]
        );
    }

    #[test]
    fn context_positions() {
        let class = read(parse_quote! {
            impl C {
                pub async fn none(&self, x: u8) {}
                pub async fn later(&self, x: u8, ctx: &mut Context) {}
                pub async fn shared(&self, ctx: &Context, x: u8) {}
            }
        });
        assert!(matches!(class.methods[0].ctx, ContextArg::Missing));
        assert_eq!(class.methods[0].args.len(), 1);
        assert!(matches!(class.methods[1].ctx, ContextArg::Misplaced(_)));
        assert_eq!(class.methods[1].args.len(), 1);
        assert!(matches!(class.methods[2].ctx, ContextArg::Shared(_)));
        assert_eq!(class.methods[2].args.len(), 1);
    }

    #[test]
    fn outputs() {
        let class = read(parse_quote! {
            impl C {
                pub async fn a(&self, ctx: &mut Context) {}
                pub async fn b(&self, ctx: &mut Context) -> Result<u8> { panic!("fixture") }
                pub async fn c(&self, ctx: &mut Context) -> core::result::Result<u8, E> { panic!("fixture") }
            }
        });
        assert!(matches!(class.methods[0].output, Output::Value(None)));
        assert!(matches!(class.methods[1].output, Output::UnnamedError(_)));
        let Output::Fallible { ok, err } = &class.methods[2].output else {
            panic!()
        };
        assert_eq!(quote!(#ok #err).to_string(), "u8 E");
    }

    #[test]
    fn alarm_handlers() {
        let class = read(parse_quote! {
            impl C {
                /// Releases.
                #[alarm]
                pub async fn release(&mut self, ctx: &mut Context, mut seat: u32, user: String) -> Result<(), E> {
                    panic!("fixture")
                }
                #[durable::alarm]
                async fn a(&self, ctx: &mut Context) {}
                #[::durable::alarm]
                async fn b(&self, ctx: &mut Context) {}
                #[durable_macros::alarm]
                pub(crate) async fn c(&self, ctx: &mut Context) {}
                #[alarm(x)]
                async fn d(&self, ctx: &mut Context) {}
                #[alarm]
                fn no_receiver(ctx: &mut Context) -> Self { panic!("fixture") }
                #[other::alarm]
                pub async fn not_an_alarm(&self, ctx: &mut Context) {}
            }
        });
        let names: Vec<String> = class
            .alarms
            .iter()
            .map(|a| a.method.ident().to_string())
            .collect();
        assert_eq!(names, ["release", "a", "b", "c", "d", "no_receiver"]);
        // Alarm handlers are neither remote methods nor constructors.
        let methods: Vec<String> = class
            .methods
            .iter()
            .map(|m| m.ident().to_string())
            .collect();
        assert_eq!(methods, ["not_an_alarm"]);
        assert!(class.constructors.is_empty());
        let release = &class.alarms[0].method;
        assert!(matches!(release.vis, Visibility::Public(_)));
        assert!(matches!(release.ctx, ContextArg::First(_)));
        assert!(release.receiver.is_some());
        assert_eq!(release.args.len(), 2);
        assert_eq!(release.args[0].ident().unwrap(), "seat");
        assert!(matches!(release.output, Output::Fallible { .. }));
        assert!(class.alarms[5].method.receiver.is_none());
        // Every alarm attribute is marked as consumed, keeping its path; others
        // stay.
        let text = class.item.to_token_stream().to_string();
        let marked = [
            "# [alarm (__durable_handler)] pub async fn release",
            "# [durable :: alarm (__durable_handler)] async fn a",
            "# [:: durable :: alarm (__durable_handler)] async fn b",
            "# [durable_macros :: alarm (__durable_handler)] pub (crate) async fn c",
            "# [alarm (__durable_handler)] async fn d",
        ];
        for m in marked {
            assert!(text.contains(m), "{m}: {text}");
        }
        assert!(!text.contains("# [alarm (x)]"), "{text}");
        assert!(text.contains("# [other :: alarm]"), "{text}");
        assert!(text.contains("Releases."), "{text}");
    }

    #[test]
    fn generic_self_type_has_no_name() {
        let class = read(parse_quote!(impl Counter<u8> {}));
        assert!(class.name.is_none());
    }
}
