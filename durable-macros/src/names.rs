//! Every name the macro generates, and so every name it reserves, in one place: the
//! client stub's type and fixed methods, the prefixes of alarm helpers, and the
//! local variables of generated code.

use proc_macro2::Ident;
use quote::format_ident;

/// The typed client stub of a class: `Counter` → `CounterClient`.
pub(crate) fn client(class: &Ident) -> Ident {
    format_ident!("{}Client", class)
}

/// The fixed methods of every client stub; remote methods cannot use these names.
pub(crate) const STUB_METHODS: &[&str] = &["id", "with_deadline"];

/// The prefix of names the macro keeps for itself.
pub(crate) const PRIVATE_PREFIX: &str = "__durable";

/// The prefixes of the alarm helpers generated for alarm handlers (`schedule_x`,
/// `cancel_x`).
pub(crate) const ALARM_HELPER_PREFIXES: &[&str] = &["schedule_", "cancel_"];

/// The local variable holding the `index`th decoded argument in generated dispatch.
pub(crate) fn decoded_arg(index: usize) -> Ident {
    format_ident!("__durable_arg{}", index)
}

/// A stand-in argument name for the client stub when the user's pattern is not a
/// plain name (only ever used after `check` has reported that pattern).
pub(crate) fn positional_arg(index: usize) -> Ident {
    format_ident!("arg{}", index)
}

/// Whether a remote method may not be called `name`, and why.
pub(crate) enum Reserved {
    /// Used by the client stub itself.
    Stub,
    /// Kept for alarm helpers.
    AlarmHelper,
}

/// Why `name` cannot be a remote method's name, if it cannot.
pub(crate) fn reserved(name: &str) -> Option<Reserved> {
    if STUB_METHODS.contains(&name) || name.starts_with(PRIVATE_PREFIX) {
        Some(Reserved::Stub)
    } else if ALARM_HELPER_PREFIXES.iter().any(|p| name.starts_with(p)) {
        Some(Reserved::AlarmHelper)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::Span;

    #[test]
    fn client_name_appends_client() {
        let class = Ident::new("Counter", Span::call_site());
        assert_eq!(client(&class).to_string(), "CounterClient");
    }

    #[test]
    fn reserved_names() {
        assert!(matches!(reserved("id"), Some(Reserved::Stub)));
        assert!(matches!(reserved("with_deadline"), Some(Reserved::Stub)));
        assert!(matches!(reserved("__durable_x"), Some(Reserved::Stub)));
        assert!(matches!(
            reserved("schedule_tick"),
            Some(Reserved::AlarmHelper)
        ));
        assert!(matches!(
            reserved("cancel_tick"),
            Some(Reserved::AlarmHelper)
        ));
        assert!(reserved("identity").is_none());
        assert!(reserved("schedule").is_none());
    }
}
