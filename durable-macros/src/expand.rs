//! Runs the steps of each attribute: read the model, check it, generate. When the
//! input has errors the user's item is returned as written next to the errors, so
//! that the rest of their code (and their IDE) keeps working.

use crate::check::{self, ALARM_OUTSIDE, NOT_AN_IMPL};
use crate::model::Class;
use crate::{alarm, client, dispatch, names};
use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};

/// `#[durable_object]`.
pub(crate) fn durable_object(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item_impl = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Impl(item_impl)) => item_impl,
        Ok(_) => return with_error(item, syn::Error::new(Span::call_site(), NOT_AN_IMPL)),
        Err(e) => return with_error(item, e),
    };
    let class = Class::read(attr, item_impl);
    // The emitted item is the user's block with the `#[alarm]` attributes this macro
    // consumes marked as such (unmarked they would report themselves as misplaced).
    let item = class.item.to_token_stream();
    let checked = match check::class(&class) {
        Ok(checked) => checked,
        Err(e) => return with_error(item, e),
    };
    let host = dispatch::generate(&checked);
    let alarm_helpers = alarm::generate(&checked);
    let stub = client::generate(&checked);
    quote! {
        #item
        #host
        #alarm_helpers
        #stub
    }
}

/// `#[alarm]`: an error anywhere but inside a `#[durable_object]` block. Inside one,
/// the outer macro has read it and marked it as consumed, and it returns the method
/// unchanged.
pub(crate) fn alarm_outside_object(attr: TokenStream, item: TokenStream) -> TokenStream {
    let consumed = syn::parse2::<syn::Ident>(attr).is_ok_and(|a| a == names::ALARM_CONSUMED);
    if consumed {
        return item;
    }
    with_error(item, syn::Error::new(Span::call_site(), ALARM_OUTSIDE))
}

/// `#[on_connect]`, `#[on_message]`, `#[on_close]` outside a `#[durable_object]`
/// block: an error; inside, consumed as `#[alarm]` is.
pub(crate) fn socket_attr_outside_object(
    name: &str,
    attr: TokenStream,
    item: TokenStream,
) -> TokenStream {
    let consumed = syn::parse2::<syn::Ident>(attr).is_ok_and(|a| a == names::ALARM_CONSUMED);
    if consumed {
        return item;
    }
    let message =
        format!("`#[{name}]` only works on a method inside a `#[durable_object]` impl block");
    with_error(item, syn::Error::new(Span::call_site(), message))
}

/// The item unchanged, followed by `compile_error!`s.
fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let errors = error.into_compile_error();
    quote! {
        #item
        #errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_is_valid_rust() {
        let out = durable_object(
            TokenStream::new(),
            quote! {
                impl Counter {
                    fn activate(ctx: &mut Context) -> Result<Self, durable::Error> { panic!("fixture") }
                    /// Adds `by`.
                    pub async fn increment(&mut self, ctx: &mut Context, by: i64) -> Result<i64, durable::Error> {
                        panic!("fixture")
                    }
                    pub async fn get(&self, ctx: &ReadContext) -> i64 { 0 }
                    pub async fn reset(&mut self, ctx: &mut Context) {}
                    pub async fn merge(&mut self, ctx: &mut Context, other: Vec<Self>, name: String) -> Self { panic!("fixture") }
                    fn helper(&self) {}
                }
            },
        );
        let file: syn::File = syn::parse2(out.clone()).expect("the expansion parses");
        assert_eq!(
            file.items.len(),
            7,
            "impl, const _, struct, From, Clone, Debug, impl stub: {out}"
        );
        let text = out.to_string();
        assert!(text.contains("pub struct CounterClient"));
        assert!(text.contains("\"increment\""));
        assert!(text.contains("encode_result"));
        assert!(text.contains("encode_value"));
        assert!(text.contains("other : Vec < Counter >"), "{text}");
        assert!(!text.contains("compile_error"));
        // The JSON forms: arguments by name, the value and error types.
        assert!(
            text.contains("const JSON : & 'static [:: durable :: __private :: JsonMethod]"),
            "{text}"
        );
        assert!(
            text.contains(
                "let __durable_arg0 : i64 = :: durable :: __private :: json_arg (args , \"by\") ? ;"
            ),
            "{text}"
        );
        assert!(
            text.contains("JsonArg { name : \"other\" , ty : \"Vec<Self>\" }"),
            "{text}"
        );
        assert!(
            text.contains("decode_return : :: durable :: __private :: postcard_to_json :: < i64 >"),
            "{text}"
        );
        assert!(
            text.contains("decode_error : :: durable :: __private :: postcard_to_json :: < durable :: Error >"),
            "{text}"
        );
        assert!(
            text.contains("encode_args : | _ | :: durable :: __private :: encode_json_args (& ())"),
            "{text}"
        );
        assert!(text.contains("const CLASS : & 'static str = \"Counter\""));
    }

    #[test]
    fn the_attribute_renames_the_class() {
        let out = durable_object(
            quote!(name = "counter"),
            quote! {
                impl Counter {
                    fn activate(ctx: &mut Context) -> Self { panic!("fixture") }
                }
            },
        );
        let text = out.to_string();
        assert!(
            text.contains("const CLASS : & 'static str = \"counter\""),
            "{text}"
        );
        assert!(text.contains("pub struct CounterClient"), "{text}");
    }

    #[test]
    fn errors_keep_the_item() {
        let out = durable_object(
            TokenStream::new(),
            quote!(impl Counter { pub fn m(&self) {} }),
        );
        let text = out.to_string();
        assert!(text.starts_with("impl Counter"));
        assert!(text.contains("compile_error"));
    }

    #[test]
    fn alarm_attributes_are_consumed() {
        let out = durable_object(
            TokenStream::new(),
            quote! {
                impl Counter {
                    fn activate(ctx: &mut Context) -> Self { panic!("fixture") }
                    #[alarm]
                    pub async fn tick(&mut self, ctx: &mut Context) {}
                    #[durable::alarm]
                    async fn tock(&self, ctx: &mut Context) {}
                }
            },
        );
        let file: syn::File = syn::parse2(out.clone()).expect("the expansion parses");
        let syn::Item::Impl(item) = &file.items[0] else {
            panic!("the user's impl block comes first: {out}")
        };
        let attrs: Vec<String> = item
            .items
            .iter()
            .filter_map(|i| match i {
                syn::ImplItem::Fn(f) => {
                    Some(f.attrs.iter().map(|a| a.to_token_stream().to_string()))
                }
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(
            attrs,
            [
                "# [alarm (__durable_handler)]",
                "# [durable :: alarm (__durable_handler)]"
            ],
            "{out}"
        );
        let text = out.to_string();
        assert!(
            text.contains(
                "const METHODS : & 'static [:: durable :: __private :: MethodInfo] = & [] ;"
            ),
            "alarm handlers are not remote methods: {text}"
        );
        assert!(
            !text.contains("pub async fn tick (& self"),
            "no stub method: {text}"
        );
        assert!(!text.contains("compile_error"), "{text}");
    }

    #[test]
    fn alarm_expansion() {
        let out = durable_object(
            TokenStream::new(),
            quote! {
                impl Reservation {
                    fn activate(ctx: &mut Context) -> Self { panic!("fixture") }
                    pub async fn hold(&mut self, ctx: &mut Context, seat: u32) {}
                    #[alarm]
                    pub(crate) async fn release(&mut self, ctx: &mut Context, seat: u32, key: String)
                        -> Result<(), durable::Error> { panic!("fixture") }
                    #[alarm]
                    async fn tick(&self, ctx: &mut Context) -> anyhow::Result<()> { panic!("fixture") }
                    #[alarm]
                    async fn r#type(&self, ctx: &mut Context) -> u8 { 0 }
                }
            },
        );
        let file: syn::File = syn::parse2(out.clone()).expect("the expansion parses");
        assert_eq!(
            file.items.len(),
            8,
            "impl, const _, alarm helpers, struct, From, Clone, Debug, impl stub: {out}"
        );
        let text = out.to_string();
        assert!(!text.contains("compile_error"), "{text}");
        assert!(
            text.contains(
                r#"const ALARMS : & 'static [& 'static str] = & ["release" , "tick" , "type"] ;"#
            ),
            "{text}"
        );
        assert!(text.contains("fn dispatch_alarm < 'a >"), "{text}");
        // `Result<()>` counts as fallible for alarms; a plain value cannot fail.
        assert!(
            text.contains(
                "1usize => { let () : () = match :: durable :: __private :: decode_args (args) \
                 { :: core :: result :: Result :: Ok (v) => v , :: core :: result :: Result :: Err (e) => return e , } ; \
                 :: durable :: __private :: encode_result (< Reservation > :: tick (self , ctx ,) . await) }"
            ),
            "{text}"
        );
        assert!(
            text.contains("encode_value (< Reservation > :: r#type (self , ctx ,) . await)"),
            "{text}"
        );
        // Helpers: the handler's visibility; an argument named like a helper
        // parameter is renamed.
        assert!(
            text.contains(
                "pub (crate) fn schedule_release (ctx : & mut :: durable :: __private :: Context , \
                 when : impl :: core :: convert :: Into < :: durable :: __private :: When > , \
                 key : & :: core :: primitive :: str , seat : u32 , key_arg : String)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ctx . schedule_alarm (\"release\" , key , :: core :: convert :: Into :: into (when) , \
                 :: core :: option :: Option :: None , & (seat , key_arg ,) ,)"
            ),
            "{text}"
        );
        assert!(
            text.contains("pub (crate) fn schedule_release_every (ctx"),
            "{text}"
        );
        assert!(
            text.contains(
                "ctx . schedule_alarm (\"release\" , key , :: durable :: __private :: When :: After (period) , \
                 :: core :: option :: Option :: Some (period) , & (seat , key_arg ,) ,)"
            ),
            "{text}"
        );
        assert!(
            text.contains("pub (crate) fn cancel_release (ctx"),
            "{text}"
        );
        assert!(
            text.contains("ctx . cancel_alarm (\"release\" , key)"),
            "{text}"
        );
        assert!(text.contains("fn schedule_tick (ctx"), "{text}");
        assert!(
            text.contains("& () ,)"),
            "no arguments: an empty tuple: {text}"
        );
        assert!(text.contains("fn schedule_type_every (ctx"), "{text}");
        // Only `hold` is a remote method.
        assert!(text.contains("MethodInfo { name : \"hold\""), "{text}");
        assert!(!text.contains("MethodInfo { name : \"release\""), "{text}");
    }

    #[test]
    fn alarm_attribute_outside_or_consumed() {
        let item = quote!(
            fn tick() {}
        );
        let out = alarm_outside_object(TokenStream::new(), item.clone());
        assert!(out.to_string().contains("compile_error"), "{out}");
        let out = alarm_outside_object(quote!(other), item.clone());
        assert!(out.to_string().contains("compile_error"), "{out}");
        let out = alarm_outside_object(quote!(__durable_handler), item.clone());
        assert_eq!(out.to_string(), item.to_string());
    }

    #[test]
    fn no_alarms_no_alarm_code() {
        let out = durable_object(
            TokenStream::new(),
            quote! {
                impl Counter {
                    fn activate(ctx: &mut Context) -> Self { panic!("fixture") }
                }
            },
        );
        let text = out.to_string();
        assert!(!text.contains("ALARMS"), "{text}");
        assert!(!text.contains("dispatch_alarm"), "{text}");
        assert!(!text.contains("schedule_"), "{text}");
    }
}
