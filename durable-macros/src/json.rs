//! The JSON form of a class for the HTTP gateway: `Hosted::JSON`, one
//! `JsonMethod` per remote method (in declaration order) with its argument names and
//! types as text, and three converters next to the postcard dispatch: JSON arguments
//! by name → the postcard argument tuple, and the postcard value or error → JSON.
//! The argument tuple is the one `dispatch` decodes and the client stub encodes, so a
//! call over HTTP reaches the same method through the same entry as one over QUIC.

use crate::check::Checked;
use crate::model::{Method, Output};
use crate::names;
use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::Type;

/// `const JSON: &'static [JsonMethod] = &[...];` inside `impl Hosted`.
pub(crate) fn generate(c: &Checked<'_>) -> TokenStream {
    let methods = c.class.methods.iter().map(method);
    quote! {
        const JSON: &'static [::durable::__private::JsonMethod] = &[#(#methods),*];
    }
}

/// One method's `JsonMethod`.
fn method(m: &Method) -> TokenStream {
    let name = m.ident().to_string();
    let arg_names: Vec<String> = m
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| match a.ident() {
            Some(ident) => ident.unraw().to_string(),
            None => names::positional_arg(i).to_string(),
        })
        .collect();
    let arg_texts = m.args.iter().map(|a| type_text(&a.ty));
    let locals: Vec<_> = (0..m.args.len()).map(names::decoded_arg).collect();
    let types = m.args.iter().map(|a| &a.ty);
    let (ok, err): (TokenStream, Option<&Type>) = match &m.output {
        Output::Value(None) => (quote!(()), None),
        Output::Value(Some(ty)) | Output::UnnamedError(ty) => (ty.to_token_stream(), None),
        Output::Fallible { ok, err } => (ok.to_token_stream(), Some(err)),
    };
    let returns = match &m.output {
        Output::Value(None) => "()".to_owned(),
        Output::Value(Some(ty)) | Output::UnnamedError(ty) => type_text(ty),
        Output::Fallible { ok, .. } => type_text(ok),
    };
    let (error, decode_error) = match err {
        Some(err) => {
            let text = type_text(err);
            (
                quote!(::core::option::Option::Some(#text)),
                quote!(::durable::__private::postcard_to_json::<#err>),
            )
        }
        None => (
            quote!(::core::option::Option::None),
            quote!(::durable::__private::no_json_error),
        ),
    };
    let encode_args = if m.args.is_empty() {
        quote!(|_| ::durable::__private::encode_json_args(&()))
    } else {
        quote! {
            |args| {
                #(let #locals: #types = ::durable::__private::json_arg(args, #arg_names)?;)*
                ::durable::__private::encode_json_args(&(#(#locals,)*))
            }
        }
    };
    quote! {
        ::durable::__private::JsonMethod {
            name: #name,
            args: &[#(::durable::__private::JsonArg { name: #arg_names, ty: #arg_texts }),*],
            returns: #returns,
            error: #error,
            encode_args: #encode_args,
            decode_return: ::durable::__private::postcard_to_json::<#ok>,
            decode_error: #decode_error,
        }
    }
}

/// A type as people write it: `Vec<(String, u32)>`, not `Vec < (String , u32) >`.
pub(crate) fn type_text(ty: &Type) -> String {
    let mut out = String::new();
    write_tokens(ty.to_token_stream(), &mut out);
    out
}

fn write_tokens(tokens: TokenStream, out: &mut String) {
    // Whether the last token was a word (a space separates two words: `dyn Trait`).
    let mut after_word = false;
    for tree in tokens {
        match tree {
            TokenTree::Ident(_) | TokenTree::Literal(_) => {
                if after_word {
                    out.push(' ');
                }
                out.push_str(&tree.to_string());
                after_word = true;
            }
            TokenTree::Punct(p) => {
                out.push(p.as_char());
                if matches!(p.as_char(), ',' | ';') {
                    out.push(' ');
                }
                after_word = false;
            }
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::None => ("", ""),
                };
                if after_word && open.is_empty() {
                    out.push(' ');
                }
                out.push_str(open);
                write_tokens(g.stream(), out);
                while out.ends_with(' ') {
                    out.pop();
                }
                out.push_str(close);
                after_word = open.is_empty();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    #[test]
    fn types_read_as_written() {
        let cases: [(Type, &str); 8] = [
            (parse_quote!(i64), "i64"),
            (
                parse_quote!(Vec<(String, u32, u64)>),
                "Vec<(String, u32, u64)>",
            ),
            (parse_quote!(Option<i64>), "Option<i64>"),
            (
                parse_quote!(std::collections::HashMap<String, Vec<u8>>),
                "std::collections::HashMap<String, Vec<u8>>",
            ),
            (parse_quote!([u8; 16]), "[u8; 16]"),
            (parse_quote!((u8,)), "(u8,)"),
            (parse_quote!(()), "()"),
            (parse_quote!(Box<dyn Fn() + Send>), "Box<dyn Fn()+Send>"),
        ];
        for (ty, text) in cases {
            assert_eq!(type_text(&ty), text);
        }
    }
}
