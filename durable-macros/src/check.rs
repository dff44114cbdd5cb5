//! The rules of a `#[durable_object]` block and every message the macro reports.
//!
//! `class` walks the model, collects one spanned error per broken rule (so the user
//! sees all of them at once, each on the offending token), and on success hands the
//! generators a [`Checked`] view in which the class name and the constructor are
//! known to exist.

use crate::model::{AlarmHandler, Class, Constructor, ContextArg, Method, Output};
use crate::names::{self, Reserved};
use proc_macro2::Span;
use quote::ToTokens;
use std::fmt::Display;
use syn::ext::IdentExt;
use syn::visit::Visit;
use syn::{Ident, ImplItem, Lifetime, Meta, Signature, Type, TypeImplTrait, TypeReference};

/// A class that passed every check: what the generators work from.
pub(crate) struct Checked<'a> {
    /// The model.
    pub(crate) class: &'a Class,
    /// The type's name (the stub is named after it).
    pub(crate) name: &'a Ident,
    /// The class name on the wire, on disk and in HTTP paths: `name = "..."` from the
    /// attribute, or the type's name.
    pub(crate) wire_name: String,
    /// The one activation constructor.
    pub(crate) constructor: &'a Constructor,
}

/// Errors collected while checking, reported together.
#[derive(Default)]
pub(crate) struct Errors {
    errors: Vec<syn::Error>,
}

impl Errors {
    /// An error covering `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.errors.push(syn::Error::new_spanned(tokens, message));
    }

    /// All errors as one, or `Ok` if there were none.
    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        let mut errors = self.errors.into_iter();
        let Some(mut first) = errors.next() else {
            return Ok(());
        };
        first.extend(errors);
        Err(first)
    }
}

/// The message for `#[alarm]` used on its own.
pub(crate) const ALARM_OUTSIDE: &str =
    "`#[alarm]` only works on a method inside a `#[durable_object]` impl block";

/// The message for `#[durable_object]` on something other than an impl block.
pub(crate) const NOT_AN_IMPL: &str =
    "`#[durable_object]` goes on the `impl` block of the class: `#[durable_object] impl Counter { ... }`";

/// Checks a class; on success returns the view the generators need.
pub(crate) fn class(class: &Class) -> Result<Checked<'_>, syn::Error> {
    let mut errors = Errors::default();
    let renamed = attribute(class, &mut errors);
    header(class, &mut errors);
    // The items of a trait impl are trait items: judging them as a class would only
    // add noise to the one error that matters.
    let inherent = class.item.trait_.is_none();
    let constructor = if inherent {
        constructor(class, &mut errors)
    } else {
        None
    };
    if inherent {
        for method in &class.methods {
            remote_method(method, &mut errors);
        }
        for handler in &class.alarms {
            alarm(handler, &mut errors);
        }
        alarm_helper_names(class, &mut errors);
        socket_handlers(class, &mut errors);
    }
    errors.finish()?;
    match (&class.name, constructor) {
        (Some(name), Some(constructor)) => Ok(Checked {
            class,
            name,
            wire_name: renamed.unwrap_or_else(|| name.to_string()),
            constructor,
        }),
        // `header` and `constructor` reported these cases already.
        _ => Err(syn::Error::new(
            Span::call_site(),
            "invalid `#[durable_object]` block",
        )),
    }
}

/// The message for an attribute argument other than `name = "..."`.
pub(crate) const ATTRIBUTE_ARGS: &str =
    "`#[durable_object]` takes one optional argument, the class name: `#[durable_object(name = \"Counter\")]`";

/// The longest class name `name = "..."` may give.
const MAX_CLASS_NAME: usize = 64;

/// The attribute's arguments: nothing, or `name = "..."`, which renames the class on
/// the wire; returns the new name.
fn attribute(class: &Class, errors: &mut Errors) -> Option<String> {
    use syn::parse::Parser;
    if class.attr.is_empty() {
        return None;
    }
    let parser =
        syn::punctuated::Punctuated::<syn::MetaNameValue, syn::Token![,]>::parse_terminated;
    let args = match parser.parse2(class.attr.clone()) {
        Ok(args) => args,
        Err(_) => {
            errors.spanned(&class.attr, ATTRIBUTE_ARGS);
            return None;
        }
    };
    let mut renamed = None;
    for arg in &args {
        let literal = match &arg.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) if arg.path.is_ident("name") => s,
            _ => {
                errors.spanned(arg, ATTRIBUTE_ARGS);
                continue;
            }
        };
        let value = literal.value();
        let valid = !value.is_empty()
            && value.len() <= MAX_CLASS_NAME
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && !value.starts_with('.');
        if !valid {
            errors.spanned(
                literal,
                format_args!(
                    "a class name is 1 to {MAX_CLASS_NAME} ASCII letters, digits, `_`, `-` and `.`, \
                     not starting with `.`: it appears in URLs and file names"
                ),
            );
        } else if renamed.is_some() {
            errors.spanned(arg, "the class name is given twice");
        } else {
            renamed = Some(value);
        }
    }
    renamed
}

/// The impl header: inherent, not generic, a plain named type.
fn header(class: &Class, errors: &mut Errors) {
    let item = &class.item;
    let ty = &item.self_ty;
    let ty_text = match &class.name {
        Some(name) => name.to_string(),
        None => "Counter".to_owned(),
    };
    if let Some((_, path, for_token)) = &item.trait_ {
        errors.spanned(
            quote::quote!(#path #for_token),
            format_args!(
                "`#[durable_object]` goes on an inherent impl block, not a trait impl: \
                 write `impl {ty_text} {{ ... }}`"
            ),
        );
    }
    if !item.generics.params.is_empty() {
        errors.spanned(
            &item.generics,
            "a durable object class cannot be generic: remove the generic parameters",
        );
    } else if let Some(where_clause) = &item.generics.where_clause {
        errors.spanned(
            where_clause,
            "a durable object class cannot be generic: remove the `where` clause",
        );
    } else if class.name.is_none() {
        errors.spanned(
            ty,
            "a durable object class must be a plain named type without generic arguments, like \
             `impl Counter`: its name is the class name on the wire",
        );
    }
}

/// Exactly one activation constructor, synchronous and not generic.
fn constructor<'a>(class: &'a Class, errors: &mut Errors) -> Option<&'a Constructor> {
    let Some(first) = class.constructors.first() else {
        match near_constructor(class) {
            Some(sig) => errors.spanned(
                sig,
                format_args!(
                    "`{}` is not an activation constructor: it must take only `ctx: &mut Context` and return \
                     `Self` or `Result<Self, E>`",
                    sig.ident
                ),
            ),
            None => errors.spanned(
                &class.item.self_ty,
                "add an activation constructor: `fn activate(ctx: &mut Context) -> Result<Self, E>`",
            ),
        }
        return None;
    };
    for ctor in &class.constructors {
        let sig = &ctor.sig;
        if let Some(asyncness) = &sig.asyncness {
            errors.spanned(asyncness, "the activation constructor must not be async");
        }
        if let Some(unsafety) = &sig.unsafety {
            errors.spanned(unsafety, "the activation constructor cannot be `unsafe`");
        }
        if !sig.generics.params.is_empty() {
            errors.spanned(
                &sig.generics,
                "the activation constructor cannot be generic",
            );
        } else if let Some(where_clause) = &sig.generics.where_clause {
            errors.spanned(where_clause, "the activation constructor cannot be generic");
        }
    }
    for extra in &class.constructors[1..] {
        errors.spanned(
            &extra.sig.ident,
            format_args!(
                "a class has one activation constructor; `{}` is a second one: remove it or make it a plain \
                 function without the `&mut Context` argument",
                extra.sig.ident
            ),
        );
    }
    Some(first)
}

/// A function without receiver called `activate` that was meant as the constructor.
fn near_constructor(class: &Class) -> Option<&Signature> {
    class.item.items.iter().find_map(|item| match item {
        ImplItem::Fn(f) if f.sig.ident == "activate" && f.sig.receiver().is_none() => Some(&f.sig),
        _ => None,
    })
}

/// What a [`Method`] is for: the rules are the same, the wording differs.
#[derive(Clone, Copy)]
enum Role {
    Remote,
    Alarm,
    Socket,
}

impl Role {
    /// "remote method" / "alarm handler".
    fn noun(self) -> &'static str {
        match self {
            Role::Remote => "remote method",
            Role::Alarm => "alarm handler",
            Role::Socket => "WebSocket handler",
        }
    }

    /// "remote methods" / "alarm handlers".
    fn plural(self) -> &'static str {
        match self {
            Role::Remote => "remote methods",
            Role::Alarm => "alarm handlers",
            Role::Socket => "WebSocket handlers",
        }
    }

    fn generic(self) -> &'static str {
        match self {
            Role::Remote => GENERIC_METHOD,
            Role::Alarm => GENERIC_ALARM,
            Role::Socket => "WebSocket handlers cannot be generic",
        }
    }

    fn pattern(self) -> &'static str {
        match self {
            Role::Remote => {
                "arguments of remote methods must be plain names, like `by: i64`: the client stub reuses them"
            }
            Role::Alarm => {
                "arguments of alarm handlers must be plain names, like `seat: u32`: the generated \
                 `schedule_` helpers reuse them"
            }
            Role::Socket => "arguments of WebSocket handlers must be plain names, like `socket: Socket`",
        }
    }

    fn unsafe_reason(self) -> &'static str {
        match self {
            Role::Remote => "a caller over the network cannot uphold its contract",
            Role::Alarm | Role::Socket => "the runtime calls it and cannot uphold its contract",
        }
    }
}

/// The rules for one remote method.
fn remote_method(method: &Method, errors: &mut Errors) {
    signature(method, Role::Remote, errors);
    let name = method.ident();
    match &method.output {
        Output::Value(None) => {}
        Output::Value(Some(ty)) => Owned::check(ty, Travels::Result, errors),
        Output::Fallible { ok, err } => {
            Owned::check(ok, Travels::Result, errors);
            Owned::check(err, Travels::Result, errors);
        }
        Output::UnnamedError(ty) => errors.spanned(
            ty,
            "write the error type explicitly: `Result<T, E>` (the caller needs to decode it)",
        ),
    }
    match names::reserved(&name.to_string()) {
        None => {}
        Some(Reserved::Stub) => errors.spanned(
            name,
            format_args!("`{name}` is reserved by the generated client stub: rename the method"),
        ),
        Some(Reserved::AlarmHelper) => errors.spanned(
            name,
            format_args!(
                "`{name}`: names starting with `schedule_` and `cancel_` are reserved for alarm helpers: \
                 rename the method"
            ),
        ),
    }
}

/// The rules for one alarm handler. Its return value is not checked: it never
/// leaves the host, and `Result<T>` aliases count as fallible.
fn alarm(alarm: &AlarmHandler, errors: &mut Errors) {
    if !matches!(alarm.attr.meta, Meta::Path(_)) {
        errors.spanned(
            &alarm.attr,
            "`#[alarm]` takes no arguments: write `#[alarm]`",
        );
    }
    signature(&alarm.method, Role::Alarm, errors);
}

/// The rules for WebSocket handlers: at most one of each kind, the shape of a
/// remote method, and the arguments of their event.
fn socket_handlers(class: &Class, errors: &mut Errors) {
    for (i, h) in class.sockets.iter().enumerate() {
        let attr = h.kind.attr();
        if !matches!(h.attr.meta, Meta::Path(_)) {
            errors.spanned(
                &h.attr,
                format_args!("`#[{attr}]` takes no arguments: write `#[{attr}]`"),
            );
        }
        if class.sockets[..i].iter().any(|o| o.kind == h.kind) {
            errors.spanned(
                &h.attr,
                format_args!("a class has at most one `#[{attr}]` handler"),
            );
        }
        signature(&h.method, Role::Socket, errors);
        let expected = match h.kind {
            crate::model::SocketKind::Connect => "(socket: Socket)",
            crate::model::SocketKind::Message => "(socket: Socket, message: String)",
            crate::model::SocketKind::Close => "(socket: Socket, code: u16, reason: String)",
        };
        if h.method.args.len() != h.kind.arity() {
            errors.spanned(
                &h.method.sig.ident,
                format_args!("a `#[{attr}]` handler takes `ctx: &mut Context` then {expected}"),
            );
        }
    }
}

/// The rules remote methods and alarm handlers share: an `async fn` taking `&self`
/// or `&mut self`, then `ctx: &mut Context`, then owned arguments with plain names.
fn signature(method: &Method, role: Role, errors: &mut Errors) {
    let sig = &method.sig;
    let name = &sig.ident;
    let noun = role.noun();
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            format_args!("{noun} `{name}` must be `async fn`"),
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        let reason = role.unsafe_reason();
        errors.spanned(
            unsafety,
            format_args!("{noun} `{name}` cannot be `unsafe`: {reason}"),
        );
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(
            abi,
            format_args!("{noun} `{name}` cannot have an `extern` ABI"),
        );
    }
    receiver(method, role, errors);
    if !sig.generics.params.is_empty() {
        errors.spanned(&sig.generics, role.generic());
    } else if let Some(where_clause) = &sig.generics.where_clause {
        errors.spanned(where_clause, role.generic());
    }
    // A remote method taking `&self` is read-only: it takes `ctx: &ReadContext`.
    let reads = matches!(role, Role::Remote) && method.read_only();
    match (&method.ctx, reads) {
        (ContextArg::First(_), false) | (ContextArg::Read(_), true) => {}
        // Without a receiver, `receiver` reported the missing `self`: one error is
        // enough.
        (ContextArg::Missing, _) => {
            if let Some(receiver) = &method.receiver {
                errors.spanned(
                    receiver,
                    if reads {
                        "add `ctx: &ReadContext` as the first argument after `&self`"
                    } else {
                        "add `ctx: &mut Context` as the first argument after `self`"
                    },
                );
            }
        }
        (ContextArg::Misplaced(arg), _) => errors.spanned(
            arg,
            if reads {
                "move `ctx: &ReadContext` to be the first argument after `&self`"
            } else {
                "move `ctx: &mut Context` to be the first argument after `self`"
            },
        ),
        (ContextArg::First(ty) | ContextArg::Shared(ty), true) => errors.spanned(
            ty,
            "a `&self` method is read-only: take `ctx: &ReadContext` (or take `&mut self` to write)",
        ),
        (ContextArg::ReadMut(ty), true) => errors.spanned(
            ty,
            "the read-only context is shared: write `ctx: &ReadContext`",
        ),
        (ContextArg::Shared(ty), false) => {
            errors.spanned(ty, "the context is mutable: write `ctx: &mut Context`")
        }
        (ContextArg::Read(ty) | ContextArg::ReadMut(ty), false) => errors.spanned(
            ty,
            match role {
                Role::Remote => {
                    "a `&mut self` method takes `ctx: &mut Context` (read-only methods take `&self` and `ctx: &ReadContext`)"
                }
                Role::Alarm => "alarm handlers take `ctx: &mut Context`",
                Role::Socket => "WebSocket handlers take `ctx: &mut Context`",
            },
        ),
    }
    let travels = match role {
        Role::Remote => Travels::Argument,
        Role::Alarm => Travels::AlarmArgument,
        // The runtime supplies the arguments; their types are checked by the
        // generated call.
        Role::Socket => return,
    };
    for arg in &method.args {
        if arg.ident().is_none() {
            errors.spanned(&arg.pat, role.pattern());
        }
        Owned::check(&arg.ty, travels, errors);
    }
}

const GENERIC_METHOD: &str =
    "remote methods cannot be generic: the client stub needs concrete argument types";

const GENERIC_ALARM: &str =
    "alarm handlers cannot be generic: the scheduled arguments are stored and decoded as concrete types";

/// `&self` or `&mut self` (also written `self: &Self` / `self: &mut Self`).
fn receiver(method: &Method, role: Role, errors: &mut Errors) {
    let plural = role.plural();
    let Some(receiver) = &method.receiver else {
        errors.spanned(
            &method.sig.ident,
            format_args!(
                "{plural} take `&self` or `&mut self`: add one before `ctx: &mut Context`"
            ),
        );
        return;
    };
    match &*receiver.ty {
        Type::Reference(r) if is_self_path(&r.elem) => {}
        ty if is_self_path(ty) => errors.spanned(
            receiver,
            format_args!(
                "{plural} take `&self` or `&mut self`; `self` by value would consume the object"
            ),
        ),
        _ => errors.spanned(
            receiver,
            format_args!("{plural} take `&self` or `&mut self`"),
        ),
    }
}

/// The helpers generated for the alarms must not clash with another function of the
/// block or with each other's (`tick` and `tick_every` both make
/// `schedule_tick_every`).
fn alarm_helper_names(class: &Class, errors: &mut Errors) {
    let others: Vec<&Ident> = class
        .item
        .items
        .iter()
        .filter_map(|item| match item {
            ImplItem::Fn(f) => Some(&f.sig.ident),
            ImplItem::Const(c) => Some(&c.ident),
            _ => None,
        })
        .collect();
    // (helper, the alarm that generates it)
    let mut generated: Vec<(String, String)> = Vec::new();
    let mut seen_alarms: Vec<String> = Vec::new();
    for alarm in &class.alarms {
        let name = alarm.method.ident();
        let alarm_name = name.unraw().to_string();
        if seen_alarms.contains(&alarm_name) {
            // Two handlers with one name: the compiler reports the duplicate.
            continue;
        }
        seen_alarms.push(alarm_name.clone());
        for helper in names::AlarmHelpers::of(name).all() {
            let helper = helper.to_string();
            if others.iter().any(|o| o.unraw() == helper) {
                errors.spanned(
                    name,
                    format_args!(
                        "the alarm `{alarm_name}` generates the helper `{helper}`, but this impl block already \
                         has a `{helper}`: rename one of them"
                    ),
                );
            } else if let Some((_, first)) = generated.iter().find(|(h, _)| *h == helper) {
                errors.spanned(
                    name,
                    format_args!(
                        "the alarms `{first}` and `{alarm_name}` both generate the helper `{helper}`: rename one of them"
                    ),
                );
            }
            generated.push((helper, alarm_name.clone()));
        }
    }
}

fn is_self_path(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self"))
}

/// Which way a type travels, for the wording of its errors.
#[derive(Clone, Copy)]
enum Travels {
    Argument,
    Result,
    AlarmArgument,
}

impl Travels {
    fn owned(self) -> &'static str {
        match self {
            Travels::Argument => "arguments travel over the network and must be owned",
            Travels::Result => "results travel over the network and must be owned",
            Travels::AlarmArgument => {
                "alarm arguments are stored until the alarm fires and must be owned"
            }
        }
    }
}

/// Finds what keeps a type from being sent as an owned value: references,
/// lifetimes (other than `'static`) and `impl Trait`.
struct Owned<'e> {
    travels: Travels,
    errors: &'e mut Errors,
}

impl Owned<'_> {
    fn check(ty: &Type, travels: Travels, errors: &mut Errors) {
        Owned { travels, errors }.visit_type(ty);
    }
}

impl<'ast> Visit<'ast> for Owned<'_> {
    fn visit_type_reference(&mut self, r: &'ast TypeReference) {
        let owned = self.travels.owned();
        let instead = match &*r.elem {
            Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => {
                "use `String` instead of `&str`"
            }
            Type::Slice(_) => "use `Vec<T>` instead of `&[T]`",
            _ => "use an owned type instead of a reference",
        };
        self.errors.spanned(r, format_args!("{owned}: {instead}"));
    }

    fn visit_lifetime(&mut self, lifetime: &'ast Lifetime) {
        if lifetime.ident != "static" {
            let owned = self.travels.owned();
            self.errors.spanned(
                lifetime,
                format_args!(
                    "{owned}: use an owned type instead of one that borrows for `{lifetime}`"
                ),
            );
        }
    }

    fn visit_type_impl_trait(&mut self, t: &'ast TypeImplTrait) {
        match self.travels {
            Travels::Argument => self.errors.spanned(t, GENERIC_METHOD),
            Travels::AlarmArgument => self.errors.spanned(t, GENERIC_ALARM),
            Travels::Result => self.errors.spanned(
                t,
                "remote methods cannot return `impl Trait`: the client stub needs a concrete type",
            ),
        }
    }

    // Function pointers and trait objects are not serializable at all; the compiler
    // says so better than a remark about the references inside them.
    fn visit_type_bare_fn(&mut self, _: &'ast syn::TypeBareFn) {}
    fn visit_type_trait_object(&mut self, _: &'ast syn::TypeTraitObject) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::TokenStream;
    use syn::{parse_quote, ItemImpl};

    /// The messages `check` reports for a block, in order.
    fn messages(attr: TokenStream, item: ItemImpl) -> Vec<String> {
        let model = Class::read(attr, item);
        match class(&model) {
            Ok(_) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn method_messages(method: TokenStream) -> Vec<String> {
        messages(
            TokenStream::new(),
            parse_quote! {
                impl Counter {
                    fn activate(ctx: &mut Context) -> Result<Self, Error> { panic!("fixture") }
                    #method
                }
            },
        )
    }

    #[test]
    fn valid_block_passes() {
        let found = method_messages(quote::quote! {
            pub async fn increment(&mut self, ctx: &mut Context, by: i64) -> Result<i64, Error> { panic!("fixture") }
            pub async fn get(&self, _ctx: &ReadContext) -> i64 { 0 }
            pub async fn unit(&self, ctx: &ReadContext, mut name: String, tags: Vec<String>) {}
            pub async fn cow(&self, ctx: &ReadContext, s: std::borrow::Cow<'static, str>) {}
            fn private(&self, x: &str) {}
            pub(crate) fn crate_only(&self, x: &str) {}
            pub fn associated(x: &str) {}
        });
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn method_errors() {
        let cases: &[(TokenStream, &[&str])] = &[
            (quote::quote!(pub fn m(&mut self, ctx: &mut Context) {}), &["remote method `m` must be `async fn`"]),
            (
                quote::quote!(pub async fn m(self, ctx: &mut Context) {}),
                &["remote methods take `&self` or `&mut self`; `self` by value would consume the object"],
            ),
            (
                quote::quote!(pub async fn m(self: Box<Self>, ctx: &mut Context) {}),
                &["remote methods take `&self` or `&mut self`"],
            ),
            (
                quote::quote!(pub async fn m(&mut self, x: u8) {}),
                &["add `ctx: &mut Context` as the first argument after `self`"],
            ),
            (
                quote::quote!(pub async fn m(&mut self, x: u8, ctx: &mut Context) {}),
                &["move `ctx: &mut Context` to be the first argument after `self`"],
            ),
            (
                quote::quote!(pub async fn m(&mut self, ctx: &Context) {}),
                &["the context is mutable: write `ctx: &mut Context`"],
            ),
            (
                quote::quote!(pub async fn m<T>(&self, ctx: &ReadContext, t: T) {}),
                &["remote methods cannot be generic: the client stub needs concrete argument types"],
            ),
            (
                quote::quote!(pub async fn m(&self, ctx: &ReadContext) where Self: Sized {}),
                &["remote methods cannot be generic: the client stub needs concrete argument types"],
            ),
            (
                quote::quote!(pub async fn m(&self, ctx: &ReadContext, t: impl Into<u8>) {}),
                &["remote methods cannot be generic: the client stub needs concrete argument types"],
            ),
            (
                quote::quote!(pub async fn m(&self, ctx: &ReadContext, s: &str) {}),
                &["arguments travel over the network and must be owned: use `String` instead of `&str`"],
            ),
            (
                quote::quote!(pub async fn m(&self, ctx: &ReadContext, s: &[u8]) {}),
                &["arguments travel over the network and must be owned: use `Vec<T>` instead of `&[T]`"],
            ),
            (
                quote::quote!(pub async fn m(&self, ctx: &ReadContext, s: Vec<&u8>) {}),
                &["arguments travel over the network and must be owned: use an owned type instead of a reference"],
            ),
            (
                quote::quote!(pub async fn m(&self, ctx: &ReadContext, s: Cow<'_, str>) {}),
                &["arguments travel over the network and must be owned: use an owned type instead of one that borrows for `'_`"],
            ),
            (
                quote::quote!(pub async fn m(&self, ctx: &ReadContext) -> &'static str { "" }),
                &["results travel over the network and must be owned: use `String` instead of `&str`"],
            ),
            (
                quote::quote!(pub async fn m(&self, ctx: &ReadContext, (a, b): (u8, u8)) {}),
                &["arguments of remote methods must be plain names, like `by: i64`: the client stub reuses them"],
            ),
            (
                quote::quote!(pub async fn m(&self, ctx: &ReadContext) -> Result<u8> { panic!("fixture") }),
                &["write the error type explicitly: `Result<T, E>` (the caller needs to decode it)"],
            ),
            (
                quote::quote!(pub async fn id(&self, ctx: &ReadContext) {}),
                &["`id` is reserved by the generated client stub: rename the method"],
            ),
            (
                quote::quote!(pub async fn with_deadline(&self, ctx: &ReadContext) {}),
                &["`with_deadline` is reserved by the generated client stub: rename the method"],
            ),
            (
                quote::quote!(pub async fn __durable_x(&self, ctx: &ReadContext) {}),
                &["`__durable_x` is reserved by the generated client stub: rename the method"],
            ),
            (
                quote::quote!(pub async fn schedule_tick(&self, ctx: &ReadContext) {}),
                &["`schedule_tick`: names starting with `schedule_` and `cancel_` are reserved for alarm helpers: rename the method"],
            ),
            (
                quote::quote!(pub async fn m(&self, ctx: &mut Context) {}),
                &["a `&self` method is read-only: take `ctx: &ReadContext` (or take `&mut self` to write)"],
            ),
            (
                quote::quote!(pub async fn m(&self, ctx: &Context) {}),
                &["a `&self` method is read-only: take `ctx: &ReadContext` (or take `&mut self` to write)"],
            ),
            (
                quote::quote!(pub async fn m(&self, ctx: &mut ReadContext) {}),
                &["the read-only context is shared: write `ctx: &ReadContext`"],
            ),
            (
                quote::quote!(pub async fn m(&self, x: u8) {}),
                &["add `ctx: &ReadContext` as the first argument after `&self`"],
            ),
            (
                quote::quote!(pub async fn m(&self, x: u8, ctx: &ReadContext) {}),
                &["move `ctx: &ReadContext` to be the first argument after `&self`"],
            ),
            (
                quote::quote!(pub async fn m(&mut self, ctx: &ReadContext) {}),
                &["a `&mut self` method takes `ctx: &mut Context` (read-only methods take `&self` and `ctx: &ReadContext`)"],
            ),
            (
                quote::quote!(pub async unsafe fn m(&self, ctx: &ReadContext) {}),
                &["remote method `m` cannot be `unsafe`: a caller over the network cannot uphold its contract"],
            ),
        ];
        for (method, expected) in cases {
            assert_eq!(method_messages(method.clone()), *expected, "for {method}");
        }
    }

    #[test]
    fn valid_alarms_pass() {
        let found = method_messages(quote::quote! {
            #[alarm]
            async fn release(&mut self, ctx: &mut Context, seat: u32, user: String) -> Result<(), Error> { panic!("fixture") }
            /// Any visibility; any return type; `Result<T>` aliases are fine.
            #[alarm]
            pub async fn tick(&self, _ctx: &mut Context) -> anyhow::Result<u8> { panic!("fixture") }
            #[alarm]
            pub(crate) async fn plain(&self, ctx: &mut Context, key: String) -> &'static str { "" }
            // Names reserved for remote methods are free for alarms.
            #[alarm]
            pub async fn id(&self, ctx: &mut Context) {}
            #[alarm]
            async fn __durable_x(&self, ctx: &mut Context) {}
        });
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn alarm_errors() {
        let cases: &[(TokenStream, &[&str])] = &[
            (
                quote::quote!(#[alarm] fn m(&self, ctx: &mut Context) {}),
                &["alarm handler `m` must be `async fn`"],
            ),
            (
                quote::quote!(#[alarm] async unsafe fn m(&self, ctx: &mut Context) {}),
                &["alarm handler `m` cannot be `unsafe`: the runtime calls it and cannot uphold its contract"],
            ),
            (
                quote::quote!(#[alarm] async extern "C" fn m(&self, ctx: &mut Context) {}),
                &["alarm handler `m` cannot have an `extern` ABI"],
            ),
            (
                quote::quote!(#[alarm] async fn m(self, ctx: &mut Context) {}),
                &["alarm handlers take `&self` or `&mut self`; `self` by value would consume the object"],
            ),
            (
                quote::quote!(#[alarm] async fn m(self: Box<Self>, ctx: &mut Context) {}),
                &["alarm handlers take `&self` or `&mut self`"],
            ),
            (
                quote::quote!(#[alarm] async fn m(ctx: &mut Context, x: u8) {}),
                &["alarm handlers take `&self` or `&mut self`: add one before `ctx: &mut Context`"],
            ),
            (
                quote::quote!(#[alarm] async fn m(x: u8) {}),
                &["alarm handlers take `&self` or `&mut self`: add one before `ctx: &mut Context`"],
            ),
            (
                quote::quote!(#[alarm] async fn m(&self, x: u8) {}),
                &["add `ctx: &mut Context` as the first argument after `self`"],
            ),
            (
                quote::quote!(#[alarm] async fn m(&self, x: u8, ctx: &mut Context) {}),
                &["move `ctx: &mut Context` to be the first argument after `self`"],
            ),
            (
                quote::quote!(#[alarm] async fn m(&self, ctx: &Context) {}),
                &["the context is mutable: write `ctx: &mut Context`"],
            ),
            (
                quote::quote!(#[alarm] async fn m<T>(&self, ctx: &mut Context, t: T) {}),
                &["alarm handlers cannot be generic: the scheduled arguments are stored and decoded as concrete types"],
            ),
            (
                quote::quote!(#[alarm] async fn m(&self, ctx: &mut Context) where Self: Sized {}),
                &["alarm handlers cannot be generic: the scheduled arguments are stored and decoded as concrete types"],
            ),
            (
                quote::quote!(#[alarm] async fn m(&self, ctx: &mut Context, t: impl Into<u8>) {}),
                &["alarm handlers cannot be generic: the scheduled arguments are stored and decoded as concrete types"],
            ),
            (
                quote::quote!(#[alarm] async fn m(&self, ctx: &mut Context, s: &str) {}),
                &["alarm arguments are stored until the alarm fires and must be owned: use `String` instead of `&str`"],
            ),
            (
                quote::quote!(#[alarm] async fn m(&self, ctx: &mut Context, s: &[u8]) {}),
                &["alarm arguments are stored until the alarm fires and must be owned: use `Vec<T>` instead of `&[T]`"],
            ),
            (
                quote::quote!(#[alarm] async fn m(&self, ctx: &mut Context, s: Cow<'_, str>) {}),
                &["alarm arguments are stored until the alarm fires and must be owned: use an owned type instead of one that borrows for `'_`"],
            ),
            (
                quote::quote!(#[alarm] async fn m(&self, ctx: &mut Context, (a, b): (u8, u8)) {}),
                &["arguments of alarm handlers must be plain names, like `seat: u32`: the generated `schedule_` helpers reuse them"],
            ),
            (
                quote::quote!(#[alarm(every = 5)] async fn m(&self, ctx: &mut Context) {}),
                &["`#[alarm]` takes no arguments: write `#[alarm]`"],
            ),
            (
                quote::quote!(#[alarm] async fn tick(&self, ctx: &mut Context) {} fn schedule_tick() {}),
                &["the alarm `tick` generates the helper `schedule_tick`, but this impl block already has a \
                   `schedule_tick`: rename one of them"],
            ),
            (
                quote::quote!(#[alarm] async fn tick(&self, ctx: &mut Context) {} const cancel_tick: u8 = 0;),
                &["the alarm `tick` generates the helper `cancel_tick`, but this impl block already has a \
                   `cancel_tick`: rename one of them"],
            ),
            (
                quote::quote! {
                    #[alarm] async fn tick(&self, ctx: &mut Context) {}
                    #[alarm] async fn schedule_tick_every(&self, ctx: &mut Context) {}
                },
                &["the alarm `tick` generates the helper `schedule_tick_every`, but this impl block already has a \
                   `schedule_tick_every`: rename one of them"],
            ),
            (
                quote::quote! {
                    #[alarm] async fn tick(&self, ctx: &mut Context) {}
                    #[alarm] async fn tick_every(&self, ctx: &mut Context) {}
                },
                &["the alarms `tick` and `tick_every` both generate the helper `schedule_tick_every`: \
                   rename one of them"],
            ),
        ];
        for (method, expected) in cases {
            assert_eq!(method_messages(method.clone()), *expected, "for {method}");
        }
    }

    #[test]
    fn alarm_collision_with_a_remote_method_reports_both() {
        let found = method_messages(quote::quote! {
            #[alarm] async fn tick(&self, ctx: &mut Context) {}
            pub async fn cancel_tick(&self, ctx: &ReadContext) {}
        });
        assert_eq!(
            found,
            [
                "`cancel_tick`: names starting with `schedule_` and `cancel_` are reserved for alarm helpers: \
                 rename the method",
                "the alarm `tick` generates the helper `cancel_tick`, but this impl block already has a \
                 `cancel_tick`: rename one of them",
            ]
        );
    }

    #[test]
    fn alarms_in_a_trait_impl_are_not_judged() {
        assert_eq!(
            messages(
                TokenStream::new(),
                parse_quote!(impl Clone for Counter { #[alarm] fn clone(&self) -> Self { panic!("fixture") } })
            ),
            ["`#[durable_object]` goes on an inherent impl block, not a trait impl: write `impl Counter { ... }`"]
        );
    }

    #[test]
    fn all_errors_are_reported_together() {
        let found = method_messages(quote::quote! {
            pub fn a(self, s: &str) {}
            pub async fn id(&self, ctx: &ReadContext) -> Result<u8> { panic!("fixture") }
        });
        assert_eq!(
            found,
            [
                "remote method `a` must be `async fn`",
                "remote methods take `&self` or `&mut self`; `self` by value would consume the object",
                "add `ctx: &mut Context` as the first argument after `self`",
                "arguments travel over the network and must be owned: use `String` instead of `&str`",
                "write the error type explicitly: `Result<T, E>` (the caller needs to decode it)",
                "`id` is reserved by the generated client stub: rename the method",
            ]
        );
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            messages(
                quote::quote!(x),
                parse_quote!(impl Counter { fn a(ctx: &mut Context) -> Self { panic!("fixture") } })
            ),
            [ATTRIBUTE_ARGS]
        );
        let ok =
            parse_quote!(impl Counter { fn a(ctx: &mut Context) -> Self { panic!("fixture") } });
        assert!(messages(quote::quote!(name = "counter.v2-x_"), ok).is_empty());
        for bad in [
            quote::quote!(name = ""),
            quote::quote!(name = ".hidden"),
            quote::quote!(name = "a b"),
            quote::quote!(name = 5),
            quote::quote!(title = "x"),
        ] {
            let item = parse_quote!(impl Counter { fn a(ctx: &mut Context) -> Self { panic!("fixture") } });
            assert_eq!(messages(bad.clone(), item).len(), 1, "{bad}");
        }
        assert_eq!(
            messages(
                TokenStream::new(),
                parse_quote!(impl Clone for Counter { fn a(ctx: &mut Context) -> Self { panic!("fixture") } })
            ),
            ["`#[durable_object]` goes on an inherent impl block, not a trait impl: write `impl Counter { ... }`"]
        );
        assert_eq!(
            messages(
                TokenStream::new(),
                parse_quote!(
                    impl<T> Counter {
                        fn a(ctx: &mut Context) -> Self {
                            panic!("fixture")
                        }
                    }
                )
            ),
            ["a durable object class cannot be generic: remove the generic parameters"]
        );
        assert_eq!(
            messages(
                TokenStream::new(),
                parse_quote!(impl Counter<u8> { fn a(ctx: &mut Context) -> Self { panic!("fixture") } })
            ),
            ["a durable object class must be a plain named type without generic arguments, like \
              `impl Counter`: its name is the class name on the wire"]
        );
    }

    #[test]
    fn constructor_errors() {
        assert_eq!(
            messages(TokenStream::new(), parse_quote!(impl Counter {})),
            ["add an activation constructor: `fn activate(ctx: &mut Context) -> Result<Self, E>`"]
        );
        assert_eq!(
            messages(
                TokenStream::new(),
                parse_quote!(impl Counter { fn activate(ctx: &Context) -> Self { panic!("fixture") } })
            ),
            ["`activate` is not an activation constructor: it must take only `ctx: &mut Context` and return \
              `Self` or `Result<Self, E>`"]
        );
        assert_eq!(
            messages(
                TokenStream::new(),
                parse_quote!(impl Counter {
                    fn a(ctx: &mut Context) -> Self { panic!("fixture") }
                    fn b(ctx: &mut Context) -> Result<Counter, E> { panic!("fixture") }
                })
            ),
            ["a class has one activation constructor; `b` is a second one: remove it or make it a plain \
              function without the `&mut Context` argument"]
        );
        assert_eq!(
            messages(
                TokenStream::new(),
                parse_quote!(impl Counter { async fn a(ctx: &mut Context) -> Self { panic!("fixture") } })
            ),
            ["the activation constructor must not be async"]
        );
    }
}
