//! A turn's outbox: everything a turn asks for beyond its SQL writes (a restore, a
//! reset of the instance, a whole-image record, a change to its alarms), collected
//! while it runs and kept only if it returns `Ok`. A batch folds the outboxes of its
//! successful turns together with the replies it decided; the output gate releases
//! them once the batch is durable. A turn that ends in `Err` or a panic leaves only
//! its error reply: its effects are discarded with its writes.
//!
//! Pure: no I/O, no clock. The slots later features fill (outgoing calls) belong
//! here too, next to the socket messages and stream items.

use crate::restore_target::RestoreTarget;
use std::cell::Cell;

/// What one turn asked for, beyond its SQL writes.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Restore the object to this point once the batch is durable (the last wins).
    pub(crate) restore: Option<RestoreTarget>,
    /// Drop the in-memory instance after the batch (`delete_all`).
    pub(crate) reset_instance: bool,
    /// The turn changed the runtime's own bookkeeping (a migration, `delete_all`):
    /// ship the whole database so that replay and restore carry it. A `Cell` because
    /// [`crate::Sql`] sets it through a shared borrow.
    pub(crate) ship_image: Cell<bool>,
    /// The turn scheduled or cancelled alarms: the host's due index must be updated.
    pub(crate) alarms_changed: bool,
    /// What the turn did to its WebSockets (sends, broadcasts, closes, tags), in
    /// order: released with the batch's replies once it is durable.
    pub(crate) sockets: Vec<crate::sockets::SocketOp>,
    /// The items the turn appended to its streams and the streams it ended, in
    /// order: handed to the streams' followers once the batch is durable.
    pub(crate) streams: Vec<crate::streams::StreamOp>,
}

impl Effects {
    /// Whether the turn asked for nothing beyond its reply.
    pub(crate) fn is_empty(&self) -> bool {
        // Every field named: a new one must be decided on here.
        let Effects {
            restore,
            reset_instance,
            ship_image,
            alarms_changed,
            sockets,
            streams,
        } = self;
        restore.is_none()
            && !reset_instance
            && !ship_image.get()
            && !alarms_changed
            && sockets.is_empty()
            && streams.is_empty()
    }

    /// Fold in the effects of a later turn of the same batch.
    pub(crate) fn absorb(&mut self, later: Effects) {
        if later.restore.is_some() {
            self.restore = later.restore;
        }
        self.reset_instance |= later.reset_instance;
        self.ship_image
            .set(self.ship_image.get() | later.ship_image.get());
        self.alarms_changed |= later.alarms_changed;
        self.sockets.extend(later.sockets);
        self.streams.extend(later.streams);
    }
}

/// How a turn ended, as far as its outbox is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnEnd {
    /// The turn returned `Ok`: its writes and effects stand.
    Ok,
    /// The turn returned its own `Err` or a framework error: writes rolled back,
    /// effects discarded, the error reply kept.
    Err,
    /// The turn panicked: as `Err`, and the instance is reset.
    Panicked,
}

/// The outbox of a batch: the effects of its successful turns and every reply, in
/// the order the turns ran. `R` is the reply (a channel end in the host, a plain value
/// in tests).
#[derive(Debug)]
pub(crate) struct Outbox<R> {
    pub(crate) effects: Effects,
    pub(crate) replies: Vec<R>,
}

impl<R> Default for Outbox<R> {
    fn default() -> Self {
        Outbox::with_capacity(0)
    }
}

impl<R> Outbox<R> {
    /// An empty outbox with room for `replies` replies (a batch's calls).
    pub(crate) fn with_capacity(replies: usize) -> Self {
        Outbox {
            effects: Effects::default(),
            replies: Vec::with_capacity(replies),
        }
    }

    /// Record a finished turn: its effects stand only if it ended `Ok`; its reply (if
    /// it has a caller) is kept either way.
    pub(crate) fn finish_turn(&mut self, end: TurnEnd, effects: Effects, reply: Option<R>) {
        if end == TurnEnd::Ok {
            self.effects.absorb(effects);
        }
        self.replies.extend(reply);
    }

    /// The batch failed as a whole: its effects are void; the replies are handed back
    /// so the caller can turn each into the batch's error.
    pub(crate) fn fail(self) -> Vec<R> {
        self.replies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restore(lsn: u64) -> Effects {
        Effects {
            restore: Some(RestoreTarget::Bookmark(lsn)),
            ..Effects::default()
        }
    }

    #[test]
    fn a_failed_turn_keeps_its_reply_and_loses_its_effects() {
        let mut outbox = Outbox::default();
        outbox.finish_turn(TurnEnd::Err, restore(7), Some("err"));
        let reset = Effects {
            reset_instance: true,
            ..Effects::default()
        };
        outbox.finish_turn(TurnEnd::Panicked, reset, Some("panic"));
        assert_eq!(outbox.effects.restore, None);
        assert!(!outbox.effects.reset_instance);
        assert_eq!(outbox.replies, vec!["err", "panic"]);
    }

    #[test]
    fn successful_turns_fold_in_order_and_the_last_restore_wins() {
        let mut outbox = Outbox::default();
        outbox.finish_turn(TurnEnd::Ok, restore(3), Some(1));
        let image = Effects::default();
        image.ship_image.set(true);
        outbox.finish_turn(TurnEnd::Ok, image, None);
        outbox.finish_turn(TurnEnd::Ok, restore(9), Some(2));
        outbox.finish_turn(TurnEnd::Err, restore(11), Some(3));
        assert_eq!(outbox.effects.restore, Some(RestoreTarget::Bookmark(9)));
        assert!(outbox.effects.ship_image.get());
        assert_eq!(outbox.fail(), vec![1, 2, 3]);
    }
}
