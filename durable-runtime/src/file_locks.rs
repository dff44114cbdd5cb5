//! Object files' database locks in the host's memory: SQLite's five lock levels per
//! file, shared by the connections of this process, with the semantics the `unix` VFS
//! gives connections of one process (its `unixLock`, `posixUnlock` and
//! `unixCheckReservedLock` without the `fcntl` calls).
//!
//! The `wal_index` VFS opens object files through SQLite's `unix-none` VFS, which
//! takes no `fcntl` locks and keeps no entry per open file. The `unix` VFS keeps one
//! per file in a list that every open walks, twice (so an activation cost more the
//! more objects were active), and locks the file with `fcntl` calls that only other
//! processes would see. No other process may use an object file while the host has
//! it: the WAL index's `-shm` lock keeps them out (see the `wal_index` module). Within
//! the host these locks still order what SQLite asks of them: the shared lock every
//! connection holds while its WAL is open, and the exclusive lock a closing connection
//! asks for before it would checkpoint, refused while another connection is open.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// A file's device and inode.
pub(crate) type Key = (u64, u64);

/// SQLite's lock levels (`SQLITE_LOCK_*`).
pub(crate) const NONE: i32 = 0;
pub(crate) const SHARED: i32 = 1;
pub(crate) const RESERVED: i32 = 2;
pub(crate) const PENDING: i32 = 3;
pub(crate) const EXCLUSIVE: i32 = 4;

/// Why a lock was refused: another connection holds one that precludes it
/// (`SQLITE_BUSY`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Busy;

/// One file's locks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Locks {
    /// The highest level any connection holds (only one connection holds more than
    /// shared).
    level: i32,
    /// Connections holding at least a shared lock.
    shared: u32,
    /// Connections open on the file (the entry goes with the last).
    files: u32,
}

impl Locks {
    /// Raise the lock of a connection holding `held` to `want` (shared, reserved or
    /// exclusive; pending is only ever the state an exclusive lock asked for from
    /// reserved leaves while others still read, as in SQLite 3.54's `unixLock`).
    fn lock(&mut self, held: &mut i32, want: i32) -> Result<(), Busy> {
        if *held >= want {
            return Ok(());
        }
        // Another connection holds pending or more, or one above shared while this one
        // wants more than shared.
        if *held != self.level && (self.level >= PENDING || want > SHARED) {
            return Err(Busy);
        }
        if want == SHARED {
            self.shared += 1;
            if self.level == NONE {
                self.level = SHARED;
            }
            *held = SHARED;
            return Ok(());
        }
        if want == EXCLUSIVE && *held == RESERVED {
            // A writer on its way to exclusive: no new reader from here on (pending),
            // even if others still read.
            self.level = PENDING;
            *held = PENDING;
        }
        if want == EXCLUSIVE && self.shared > 1 {
            // Others still read. From shared (a closing connection's try at its
            // checkpoint) that changes nothing; from reserved it stays pending.
            return Err(Busy);
        }
        self.level = want;
        *held = want;
        Ok(())
    }

    /// Lower the lock of a connection holding `held` to `want` (shared or none).
    fn unlock(&mut self, held: &mut i32, want: i32) {
        if *held <= want {
            return;
        }
        if *held > SHARED {
            self.level = SHARED;
        }
        if want == NONE {
            self.shared -= 1;
            if self.shared == 0 {
                self.level = NONE;
            }
        }
        *held = want;
    }

    /// Whether any connection holds reserved or more.
    fn reserved(&self) -> bool {
        self.level >= RESERVED
    }
}

fn table() -> &'static Mutex<HashMap<Key, Locks>> {
    static TABLE: OnceLock<Mutex<HashMap<Key, Locks>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

fn with<T>(key: Key, f: impl FnOnce(&mut Locks) -> T) -> T {
    let mut table = table().lock().unwrap_or_else(|e| e.into_inner());
    f(table.entry(key).or_default())
}

/// A connection opened the file `key`.
pub(crate) fn attach(key: Key) {
    with(key, |l| l.files += 1);
}

/// A connection holding `held` on the file `key` closed: its lock goes, and the file's
/// entry with the last connection.
pub(crate) fn detach(key: Key, mut held: i32) {
    let mut table = table().lock().unwrap_or_else(|e| e.into_inner());
    let Some(locks) = table.get_mut(&key) else {
        return;
    };
    locks.unlock(&mut held, NONE);
    locks.files = locks.files.saturating_sub(1);
    if locks.files == 0 {
        table.remove(&key);
    }
}

/// `xLock`: raise `held` (the connection's level) to `want`.
pub(crate) fn lock(key: Key, held: &mut i32, want: i32) -> Result<(), Busy> {
    with(key, |l| l.lock(held, want))
}

/// `xUnlock`: lower `held` to `want`.
pub(crate) fn unlock(key: Key, held: &mut i32, want: i32) {
    with(key, |l| l.unlock(held, want))
}

/// `xCheckReservedLock`: whether any connection of this process holds reserved or
/// more on the file.
pub(crate) fn reserved(key: Key) -> bool {
    with(key, |l| l.reserved())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_share_and_one_writer_reserves_beside_them() {
        let mut l = Locks::default();
        let (mut a, mut b, mut c) = (NONE, NONE, NONE);
        l.lock(&mut a, SHARED).unwrap();
        l.lock(&mut b, SHARED).unwrap();
        assert_eq!((l.shared, l.level), (2, SHARED));
        l.lock(&mut a, RESERVED).unwrap();
        assert!(l.reserved());
        // A second writer is refused; a new reader is not.
        assert_eq!(l.lock(&mut b, RESERVED), Err(Busy));
        assert_eq!(b, SHARED);
        l.lock(&mut c, SHARED).unwrap();
        assert_eq!(l.shared, 3);
        l.unlock(&mut a, SHARED);
        assert!(!l.reserved());
        l.lock(&mut b, RESERVED).unwrap();
        assert_eq!(b, RESERVED);
    }

    #[test]
    fn an_exclusive_lock_from_shared_is_refused_under_readers_and_changes_nothing() {
        let mut l = Locks::default();
        let (mut a, mut b, mut c) = (NONE, NONE, NONE);
        l.lock(&mut a, SHARED).unwrap();
        l.lock(&mut b, SHARED).unwrap();
        // A closing connection's try at its checkpoint: refused, and readers still come.
        assert_eq!(l.lock(&mut a, EXCLUSIVE), Err(Busy));
        assert_eq!((a, l.level, l.shared), (SHARED, SHARED, 2));
        l.lock(&mut c, SHARED).unwrap();
        assert_eq!(l.shared, 3);
    }

    #[test]
    fn an_exclusive_lock_waits_for_readers_and_its_pending_keeps_new_ones_out() {
        let mut l = Locks::default();
        let (mut a, mut b, mut c) = (NONE, NONE, NONE);
        l.lock(&mut a, SHARED).unwrap();
        l.lock(&mut b, SHARED).unwrap();
        l.lock(&mut a, RESERVED).unwrap();
        assert_eq!(l.lock(&mut a, EXCLUSIVE), Err(Busy));
        assert_eq!((a, l.level), (PENDING, PENDING));
        // Pending: no new reader, and no one else goes above shared.
        assert_eq!(l.lock(&mut c, SHARED), Err(Busy));
        assert_eq!(c, NONE);
        assert_eq!(l.lock(&mut b, RESERVED), Err(Busy));
        // The last other reader leaves: the exclusive lock is granted.
        l.unlock(&mut b, NONE);
        l.lock(&mut a, EXCLUSIVE).unwrap();
        assert_eq!((a, l.level, l.shared), (EXCLUSIVE, EXCLUSIVE, 1));
        assert_eq!(l.lock(&mut c, SHARED), Err(Busy));
        l.unlock(&mut a, NONE);
        assert_eq!(l, Locks::default());
        l.lock(&mut c, SHARED).unwrap();
    }

    #[test]
    fn a_lone_connection_goes_straight_to_exclusive_and_back() {
        let mut l = Locks::default();
        let mut a = NONE;
        l.lock(&mut a, SHARED).unwrap();
        l.lock(&mut a, EXCLUSIVE).unwrap();
        l.lock(&mut a, RESERVED).unwrap();
        assert_eq!(
            a, EXCLUSIVE,
            "a lower level asked for keeps the higher one held"
        );
        l.unlock(&mut a, SHARED);
        assert_eq!((a, l.level, l.shared), (SHARED, SHARED, 1));
        l.unlock(&mut a, NONE);
        assert_eq!((l.level, l.shared), (NONE, 0));
    }

    #[test]
    fn a_closing_connection_lets_go_of_its_lock_and_the_last_takes_the_entry() {
        let key = (u64::MAX, 7);
        attach(key);
        attach(key);
        let (mut a, mut b) = (NONE, NONE);
        lock(key, &mut a, SHARED).unwrap();
        lock(key, &mut b, SHARED).unwrap();
        lock(key, &mut a, RESERVED).unwrap();
        assert_eq!(lock(key, &mut a, EXCLUSIVE), Err(Busy));
        // `b` closes holding shared; `a`'s exclusive is then granted.
        detach(key, b);
        lock(key, &mut a, EXCLUSIVE).unwrap();
        detach(key, a);
        assert!(!table().lock().unwrap().contains_key(&key));
    }
}
