//! The schema fingerprint of a remote method: FNV-1a 64 over its canonical
//! signature `"{method}({arg types joined by ','})->{return type}"`, each type in
//! canonical form ([`canonical`]): no spaces, and every path cut to its last segment
//! with its generic arguments (`std::result::Result<i64, durable::Error>` is
//! `Result<i64,Error>`), so spacing and how a path is spelled do not change it and
//! a client in another language can compute it from `docs/wire.md`. (A type alias
//! is a different spelling the macro cannot see through: it fingerprints as its
//! own name.) Client and host compute it from the same source, so a caller built
//! against an older signature is told so instead of misdecoding.

use proc_macro2::Span;
use quote::ToTokens;
use syn::{GenericArgument, Ident, LitInt, PathArguments, Type};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// Tokens as text without whitespace.
fn compact(tokens: &impl ToTokens) -> String {
    tokens
        .to_token_stream()
        .to_string()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// A type's canonical form: no whitespace; a path is its last segment and that
/// segment's generic type arguments (lifetimes dropped); references, tuples, arrays
/// and slices keep their shape around canonical element types.
pub(crate) fn canonical(ty: &Type) -> String {
    match ty {
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return compact(ty);
            };
            let mut out = last.ident.to_string();
            match &last.arguments {
                PathArguments::None => {}
                PathArguments::AngleBracketed(a) => {
                    let args: Vec<String> = a
                        .args
                        .iter()
                        .filter_map(|arg| match arg {
                            GenericArgument::Type(t) => Some(canonical(t)),
                            GenericArgument::Lifetime(_) => None,
                            other => Some(compact(other)),
                        })
                        .collect();
                    if !args.is_empty() {
                        out.push('<');
                        out.push_str(&args.join(","));
                        out.push('>');
                    }
                }
                PathArguments::Parenthesized(a) => out.push_str(&compact(a)),
            }
            out
        }
        Type::Reference(r) => format!(
            "&{}{}",
            if r.mutability.is_some() { "mut " } else { "" },
            canonical(&r.elem)
        ),
        Type::Tuple(t) => format!(
            "({}{})",
            t.elems.iter().map(canonical).collect::<Vec<_>>().join(","),
            if t.elems.len() == 1 { "," } else { "" }
        ),
        Type::Array(a) => format!("[{};{}]", canonical(&a.elem), compact(&a.len)),
        Type::Slice(s) => format!("[{}]", canonical(&s.elem)),
        Type::Paren(p) => canonical(&p.elem),
        Type::Group(g) => canonical(&g.elem),
        other => compact(other),
    }
}

/// The canonical signature a method's fingerprint is computed over. `output` is
/// `None` for a method without `->`, which counts as `()`.
pub(crate) fn signature(method: &Ident, args: &[&Type], output: Option<&Type>) -> String {
    let args: Vec<String> = args.iter().map(|ty| canonical(ty)).collect();
    let output = match output {
        Some(ty) => canonical(ty),
        None => "()".to_string(),
    };
    format!("{}({})->{}", method, args.join(","), output)
}

/// The fingerprint of a method with these argument and return types.
pub(crate) fn of(method: &Ident, args: &[&Type], output: Option<&Type>) -> u64 {
    fnv1a64(signature(method, args, output).as_bytes())
}

/// A fingerprint as a `0x…u64` literal.
pub(crate) fn literal(fingerprint: u64) -> LitInt {
    LitInt::new(&format!("0x{fingerprint:016x}u64"), Span::call_site())
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    #[test]
    fn fnv1a64_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn signature_text() {
        let name: Ident = parse_quote!(increment);
        let by: Type = parse_quote!(i64);
        let tag: Type = parse_quote!(Vec<String>);
        let out: Type = parse_quote!(Result<i64, durable::Error>);
        assert_eq!(
            signature(&name, &[&by, &tag], Some(&out)),
            "increment(i64,Vec<String>)->Result<i64,Error>"
        );
        let get: Ident = parse_quote!(get);
        assert_eq!(signature(&get, &[], None), "get()->()");
        let unit: Type = parse_quote!(());
        assert_eq!(signature(&get, &[], Some(&unit)), "get()->()");
    }

    #[test]
    fn spelling_and_spacing_do_not_change_the_fingerprint() {
        let name: Ident = parse_quote!(m);
        let spellings: [Type; 4] = [
            parse_quote!(Result<i64, Error>),
            parse_quote!(std::result::Result<i64, durable::Error>),
            parse_quote!(::core::result::Result< i64 ,durable :: Error >),
            parse_quote!(Result<i64, crate::Error>),
        ];
        for t in &spellings {
            assert_eq!(canonical(t), "Result<i64,Error>");
            assert_eq!(of(&name, &[], Some(t)), of(&name, &[], Some(&spellings[0])));
        }
        let shapes: [(Type, &str); 6] = [
            (parse_quote!(&'a str), "&str"),
            (parse_quote!((i64, Option<String>)), "(i64,Option<String>)"),
            (parse_quote!((u8,)), "(u8,)"),
            (parse_quote!([u8; 16]), "[u8;16]"),
            (
                parse_quote!(Vec<(String, std::collections::HashMap<String, u32>)>),
                "Vec<(String,HashMap<String,u32>)>",
            ),
            (parse_quote!(Box<[u8]>), "Box<[u8]>"),
        ];
        for (t, want) in &shapes {
            assert_eq!(canonical(t), *want);
        }
        // The documented example in docs/wire.md.
        let inc: Ident = parse_quote!(increment);
        let by: Type = parse_quote!(i64);
        let out: Type = parse_quote!(Result<i64, Error>);
        assert_eq!(
            signature(&inc, &[&by], Some(&out)),
            "increment(i64)->Result<i64,Error>"
        );
        assert_eq!(
            of(&inc, &[&by], Some(&out)),
            fnv1a64(b"increment(i64)->Result<i64,Error>")
        );
    }

    #[test]
    fn fingerprint_depends_on_types() {
        let name: Ident = parse_quote!(m);
        let a: Type = parse_quote!(i64);
        let b: Type = parse_quote!(i32);
        assert_ne!(of(&name, &[&a], None), of(&name, &[&b], None));
        assert_ne!(of(&name, &[], Some(&a)), of(&name, &[], Some(&b)));
        assert_eq!(of(&name, &[&a], None), of(&name, &[&a], None));
    }
}
