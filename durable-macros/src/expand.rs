//! Runs the steps of each attribute: read the model, check it, generate. When the
//! input has errors the user's item is returned as written next to the errors, so
//! that the rest of their code (and their IDE) keeps working.

use crate::check::{self, ALARM_OUTSIDE, NOT_AN_IMPL};
use crate::model::Class;
use crate::{client, dispatch};
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
    // The emitted item is the user's block minus the `#[alarm]` attributes this macro
    // consumes (left in place they would report themselves as misplaced).
    let item = class.item.to_token_stream();
    let checked = match check::class(&class) {
        Ok(checked) => checked,
        Err(e) => return with_error(item, e),
    };
    let host = dispatch::generate(&checked);
    let stub = client::generate(&checked);
    quote! {
        #item
        #host
        #stub
    }
}

/// `#[alarm]` anywhere but inside a `#[durable_object]` block (inside one, the outer
/// macro removes it before it expands).
pub(crate) fn alarm_outside_object(_attr: TokenStream, item: TokenStream) -> TokenStream {
    with_error(item, syn::Error::new(Span::call_site(), ALARM_OUTSIDE))
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
                    fn activate(ctx: &mut Context) -> Result<Self, durable::Error> { todo!() }
                    /// Adds `by`.
                    pub async fn increment(&mut self, ctx: &mut Context, by: i64) -> Result<i64, durable::Error> {
                        todo!()
                    }
                    pub async fn get(&self, ctx: &mut Context) -> i64 { 0 }
                    pub async fn reset(&mut self, ctx: &mut Context) {}
                    pub async fn merge(&mut self, ctx: &mut Context, other: Vec<Self>, name: String) -> Self { todo!() }
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
                    fn activate(ctx: &mut Context) -> Self { todo!() }
                    #[alarm]
                    pub async fn tick(&mut self, ctx: &mut Context) {}
                }
            },
        );
        let text = out.to_string();
        assert!(!text.contains("alarm"), "{text}");
        assert!(
            !text.contains("\"tick\""),
            "alarm handlers are not remote methods: {text}"
        );
    }
}
