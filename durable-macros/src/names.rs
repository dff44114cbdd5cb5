//! Every name the macro generates, and so every name it reserves, in one place: the
//! client stub's type and fixed methods, the alarm helpers and their parameters, and
//! the local variables of generated code.

use proc_macro2::Ident;
use quote::format_ident;
use std::collections::HashSet;

/// The typed client stub of a class: `Counter` → `CounterClient`.
pub(crate) fn client(class: &Ident) -> Ident {
    format_ident!("{}Client", class)
}

/// The fixed methods of every client stub, and the trait methods callers reach on it
/// (`Clone`, `Debug`, `From`/`Into`), which a remote method of the same name would
/// shadow; remote methods cannot use these names.
pub(crate) const STUB_METHODS: &[&str] = &[
    "id",
    "with_deadline",
    "clone",
    "clone_from",
    "fmt",
    "from",
    "into",
];

/// The prefix of names the macro keeps for itself.
pub(crate) const PRIVATE_PREFIX: &str = "__durable";

/// The prefixes of the alarm helpers generated for alarm handlers (`schedule_x`,
/// `cancel_x`).
pub(crate) const ALARM_HELPER_PREFIXES: &[&str] = &["schedule_", "cancel_"];

/// The three helpers generated for an alarm handler.
pub(crate) struct AlarmHelpers {
    /// `schedule_{alarm}`: once, at an instant or after a delay.
    pub(crate) schedule: Ident,
    /// `schedule_{alarm}_every`: periodically.
    pub(crate) schedule_every: Ident,
    /// `cancel_{alarm}`.
    pub(crate) cancel: Ident,
}

impl AlarmHelpers {
    /// The helpers of the alarm handler `alarm`, spanned on its name so that clashes
    /// only the compiler sees (another impl block) are reported there too.
    pub(crate) fn of(alarm: &Ident) -> AlarmHelpers {
        let span = alarm.span();
        AlarmHelpers {
            schedule: format_ident!("schedule_{}", alarm, span = span),
            schedule_every: format_ident!("schedule_{}_every", alarm, span = span),
            cancel: format_ident!("cancel_{}", alarm, span = span),
        }
    }

    /// All three, in the order they are generated.
    pub(crate) fn all(&self) -> [&Ident; 3] {
        [&self.schedule, &self.schedule_every, &self.cancel]
    }
}

/// The argument `#[durable_object]` gives the `#[alarm]` attributes it has read
/// (`#[alarm(__durable_handler)]`), on which the `alarm` macro does nothing.
pub(crate) const ALARM_CONSUMED: &str = "__durable_handler";

/// The parameters alarm helpers have besides the handler's arguments.
pub(crate) const ALARM_HELPER_PARAMS: &[&str] = &["ctx", "when", "period", "key"];

/// The parameter names of the handler's arguments in its alarm helpers: the
/// handler's own names, except that one equal to a helper parameter (`key`, ...)
/// becomes `key_arg` (plus `_` until it is free). `None` (a pattern `check` has
/// rejected) becomes a positional name.
pub(crate) fn alarm_helper_args(args: &[Option<&Ident>]) -> Vec<Ident> {
    let mut taken: HashSet<String> = ALARM_HELPER_PARAMS.iter().map(|&p| p.to_owned()).collect();
    taken.extend(args.iter().flatten().map(|a| a.to_string()));
    args.iter()
        .enumerate()
        .map(|(i, arg)| match arg {
            None => positional_arg(i),
            Some(ident) if ALARM_HELPER_PARAMS.iter().any(|p| ident == p) => {
                let mut name = format!("{ident}_arg");
                while taken.contains(&name) {
                    name.push('_');
                }
                taken.insert(name.clone());
                Ident::new(&name, ident.span())
            }
            Some(ident) => (*ident).clone(),
        })
        .collect()
}

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

    #[test]
    fn alarm_helper_names() {
        let alarm = Ident::new("release", Span::call_site());
        let helpers = AlarmHelpers::of(&alarm);
        let names: Vec<String> = helpers.all().iter().map(|i| i.to_string()).collect();
        assert_eq!(
            names,
            [
                "schedule_release",
                "schedule_release_every",
                "cancel_release"
            ]
        );
        let raw = Ident::new_raw("type", Span::call_site());
        assert_eq!(AlarmHelpers::of(&raw).schedule.to_string(), "schedule_type");
    }

    #[test]
    fn alarm_helper_args_avoid_the_fixed_parameters() {
        let idents: Vec<Ident> = ["seat", "key", "key_arg", "when", "ctx"]
            .iter()
            .map(|n| Ident::new(n, Span::call_site()))
            .collect();
        let mut args: Vec<Option<&Ident>> = idents.iter().map(Some).collect();
        args.push(None);
        let names: Vec<String> = alarm_helper_args(&args)
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            names,
            ["seat", "key_arg_", "key_arg", "when_arg", "ctx_arg", "arg5"]
        );
    }
}
