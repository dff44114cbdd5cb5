//! The schema fingerprint of a remote method: FNV-1a 64 over
//! `"{method}({arg types joined by ','})->{return type}"`, each type written as
//! `quote!(#ty).to_string()`. Client and host compute it from the same source, so a
//! caller built against an older signature is told so instead of misdecoding.

use proc_macro2::Span;
use quote::ToTokens;
use syn::{Ident, LitInt, Type};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The text a method's fingerprint is computed over. `output` is `None` for a method
/// without `->`, which counts as `()`.
pub(crate) fn signature(method: &Ident, args: &[&Type], output: Option<&Type>) -> String {
    let args: Vec<String> = args
        .iter()
        .map(|ty| ty.to_token_stream().to_string())
        .collect();
    let output = match output {
        Some(ty) => ty.to_token_stream().to_string(),
        None => quote::quote!(()).to_string(),
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
            "increment(i64,Vec < String >)->Result < i64 , durable :: Error >"
        );
        let get: Ident = parse_quote!(get);
        assert_eq!(signature(&get, &[], None), "get()->()");
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
