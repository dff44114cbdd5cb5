//! Who is calling: the identity an edge authenticated ([`Caller`]) and, for a call made
//! by another object's turn, the chain of objects waiting on it ([`CallChain`]). Pure
//! data at the ground floor: the edges, the shards and the turn's outgoing calls all
//! use it.

use durable_client::wire::ChainLink;
use durable_client::ObjectId;

/// Who is calling: the identity an edge authenticated (a token's holder, a
/// certificate's subject, an application's own check, or `object:Class/id` for a call
/// made by an object's turn), carried for tracing and per-caller limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Caller(pub String);

/// The objects whose turns wait on a call, first caller first, and the tracing span
/// of the direct caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CallChain {
    pub(crate) links: Vec<ChainLink>,
    pub(crate) caller_span: u64,
}

impl CallChain {
    /// If the object `(class, object)` is already in the chain, the cycle a call to it
    /// would close: the chain from that object on, and the object again, rendered as
    /// `Class(name)`.
    pub(crate) fn cycle(
        &self,
        class: &str,
        object: ObjectId,
        name: Option<&str>,
    ) -> Option<Vec<String>> {
        let at = self
            .links
            .iter()
            .position(|l| l.class == class && l.object == object)?;
        let again = ChainLink {
            class: class.to_owned(),
            object,
            name: name
                .map(str::to_owned)
                .or_else(|| self.links[at].name.clone()),
        };
        let mut cycle: Vec<String> = self.links[at..].iter().map(|l| l.to_string()).collect();
        cycle.push(again.to_string());
        Some(cycle)
    }

    /// The chain a callee of `link`'s turn travels in: this one with `link` appended.
    pub(crate) fn then(&self, link: ChainLink, caller_span: u64) -> CallChain {
        let mut links = Vec::with_capacity(self.links.len() + 1);
        links.extend(self.links.iter().cloned());
        links.push(link);
        CallChain { links, caller_span }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(class: &str, name: &str) -> ChainLink {
        ChainLink {
            class: class.into(),
            object: ObjectId::from_name(class, name),
            name: Some(name.into()),
        }
    }

    #[test]
    fn a_cycle_is_named_from_the_object_called_again() {
        let chain = CallChain::default()
            .then(link("Order", "o1"), 0)
            .then(link("A", "a"), 0)
            .then(link("B", "b"), 0)
            .then(link("C", "c"), 7);
        assert_eq!(chain.caller_span, 7);
        let a = ObjectId::from_name("A", "a");
        assert_eq!(
            chain.cycle("A", a, Some("a")).unwrap(),
            ["A(a)", "B(b)", "C(c)", "A(a)"]
        );
        assert_eq!(chain.cycle("A", ObjectId::from_name("A", "z"), None), None);
        // Same id in another class is another object.
        assert_eq!(chain.cycle("D", a, None), None);
    }
}
