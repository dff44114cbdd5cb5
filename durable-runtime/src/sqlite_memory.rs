//! SQLite's memory: its allocator (mimalloc, counted per thread instead of by SQLite's
//! own statistics, which take a process-wide mutex), how much it holds, and handing
//! what quiet shards freed back to the system. No other module of the runtime is
//! imported here.

/// SQLite's memory from mimalloc instead of the C library's malloc. A host parses and
/// prepares statements for thousands of connections and gives their page caches back
/// when they go quiet; glibc's malloc then spends its time walking a fragmented heap
/// (`_int_malloc` was half the shard time of the first alarm turns after a quiet
/// spell). Only before SQLite initializes (a no-op afterwards, like the page cache
/// setting of `store::configure_sqlite`, which calls this).
pub(crate) fn use_mimalloc() {
    use libmimalloc_sys as mi;
    use std::os::raw::{c_int, c_void};
    unsafe extern "C" fn malloc(n: c_int) -> *mut c_void {
        // SAFETY: mi_malloc accepts any size; SQLite never asks for a negative one.
        let p = unsafe { mi::mi_malloc(n.max(0) as usize) };
        // SAFETY: `p` is null or a live block of mimalloc's.
        heap::add(unsafe { usable(p) });
        p
    }
    unsafe extern "C" fn free(p: *mut c_void) {
        // SAFETY: `p` came from `malloc`/`realloc` above (SQLite's contract).
        unsafe {
            heap::add(-usable(p));
            mi::mi_free(p)
        }
    }
    unsafe extern "C" fn realloc(p: *mut c_void, n: c_int) -> *mut c_void {
        // SAFETY: as for `free`; a failed realloc leaves the old block as it was.
        unsafe {
            let before = usable(p);
            let q = mi::mi_realloc(p, n.max(0) as usize);
            if !q.is_null() {
                heap::add(usable(q) - before);
            }
            q
        }
    }
    unsafe extern "C" fn size(p: *mut c_void) -> c_int {
        // SAFETY: as for `free`; SQLite's allocations are far below 2 GiB.
        unsafe { mi::mi_usable_size(p) as c_int }
    }
    /// The bytes a block of mimalloc's holds (0 for null).
    unsafe fn usable(p: *mut c_void) -> i64 {
        if p.is_null() {
            0
        } else {
            // SAFETY: the caller's: a live block of mimalloc's.
            unsafe { mi::mi_usable_size(p) as i64 }
        }
    }
    unsafe extern "C" fn roundup(n: c_int) -> c_int {
        // SAFETY: a pure function of the size.
        unsafe { mi::mi_good_size(n.max(0) as usize).min(i32::MAX as usize) as c_int }
    }
    unsafe extern "C" fn init(_: *mut c_void) -> c_int {
        rusqlite::ffi::SQLITE_OK
    }
    unsafe extern "C" fn shutdown(_: *mut c_void) {}
    let methods = rusqlite::ffi::sqlite3_mem_methods {
        xMalloc: Some(malloc),
        xFree: Some(free),
        xRealloc: Some(realloc),
        xSize: Some(size),
        xRoundup: Some(roundup),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to a sqlite3_mem_methods that SQLite
    // copies before returning; it is refused (SQLITE_MISUSE) once SQLite is initialized.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_config(
            rusqlite::ffi::SQLITE_CONFIG_MALLOC,
            &methods as *const rusqlite::ffi::sqlite3_mem_methods,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "SQLite was initialized already; its allocator kept");
        return;
    }
    // SQLite's own memory statistics take one process-wide mutex around every
    // allocation and free (`mem0.mutex`): every shard's SQLite work went through it,
    // and a shard preempted inside mimalloc (a page fault) while holding it stalled
    // the others for milliseconds (alarm turns ran late in clusters). The allocator
    // above counts instead, per thread ([`heap`]), and `sqlite_memory_used` reads that.
    // SAFETY: SQLITE_CONFIG_MEMSTATUS takes an int; SQLite is not initialized yet
    // (the allocator was just accepted).
    let rc = unsafe {
        rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int)
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        heap::COUNTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The heap SQLite holds in this process (every connection's page cache, schema and
/// statements): counted by the allocator when it is mimalloc, else SQLite's own
/// statistic.
pub(crate) fn sqlite_memory_used() -> i64 {
    if heap::COUNTING.load(std::sync::atomic::Ordering::Relaxed) {
        heap::used()
    } else {
        // SAFETY: a read of SQLite's global memory counter; callable from any thread.
        unsafe { rusqlite::ffi::sqlite3_memory_used() }
    }
}

/// Bytes SQLite holds, counted by the allocator in a slot per thread (no lock and no
/// cache line shared between shards on the hot path; a block freed by another thread
/// than allocated it moves bytes between slots, the sum stays right).
mod heap {
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

    /// Whether the allocator counts (SQLite's own statistics are off).
    pub(super) static COUNTING: AtomicBool = AtomicBool::new(false);

    const SLOTS: usize = 32;

    #[repr(align(64))]
    struct Slot(AtomicI64);

    static USED: [Slot; SLOTS] = [const { Slot(AtomicI64::new(0)) }; SLOTS];
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }

    /// Count `bytes` (negative when freed) on this thread's slot.
    pub(super) fn add(bytes: i64) {
        if bytes != 0 {
            // A thread being torn down counts on the first slot.
            let slot = MINE.try_with(|s| *s).unwrap_or(0);
            USED[slot].0.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// The sum over every slot.
    pub(super) fn used() -> i64 {
        USED.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// How long after a connection closes its shard's allocator gives freed memory back
/// (closes within it share one collection).
const COLLECT_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// Have this thread's allocators give what closed connections freed back to the
/// system soon. mimalloc (SQLite's) returns freed pages only on the thread's later
/// allocations, and a shard whose objects went quiet makes none: without this, the
/// memory of every connection closed at idle stayed resident (`durable-bench --quick
/// memory_idle`: 38 KB per quiet object with its connection closed, 13 KB with; 75
/// and 73 KB per object whose page cache was released). One collection per
/// [`COLLECT_AFTER`] of closes and releases. Call from a shard's task (it spawns a
/// local one).
pub(crate) fn collect_soon() {
    if STOPPED.with(|s| s.get()) || SCHEDULED.with(|s| s.replace(true)) {
        return;
    }
    let task = tokio::task::spawn_local(async {
        tokio::time::sleep(COLLECT_AFTER).await;
        SCHEDULED.with(|s| s.set(false));
        // Not forced: a forced collection took 0.2-6 ms of the shard (and gave back
        // 8 KB per closed connection instead of 13); this one ~10 µs. glibc's
        // `malloc_trim` is not called any more: up to 8 ms, holding the allocator's
        // lock, for no measurable memory (SQLite's memory is mimalloc's).
        // SAFETY: mi_collect only frees and purges memory no block uses.
        unsafe { libmimalloc_sys::mi_collect(false) };
        // Memory freed in the last ~100 ms before that is only due to be purged
        // (mimalloc delays purges): a second pass, unless another close has scheduled
        // one of its own.
        tokio::time::sleep(COLLECT_AFTER * 5).await;
        if SCHEDULED.with(|s| s.get()) {
            return;
        }
        // SAFETY: mi_collect only frees and purges memory no block uses.
        unsafe { libmimalloc_sys::mi_collect(false) };
    });
    // A collection still in its second pass would skip it now (`SCHEDULED`): it goes.
    if let Some(before) = COLLECTION.with(|c| c.borrow_mut().replace(task)) {
        before.abort();
    }
}

thread_local! {
    /// A collection is scheduled on this thread.
    static SCHEDULED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This thread's shard is stopping: no more collections.
    static STOPPED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The scheduled collection, to cancel when the shard stops.
    static COLLECTION: std::cell::RefCell<Option<tokio::task::JoinHandle<()>>> =
        const { std::cell::RefCell::new(None) };
}

/// This thread's shard stops: cancel a scheduled collection (it would keep the shard's
/// tasks, and so its stop, waiting up to 1.2 s) and schedule no more.
pub(crate) fn stop_collecting() {
    STOPPED.with(|s| s.set(true));
    if let Some(task) = COLLECTION.with(|c| c.borrow_mut().take()) {
        task.abort();
    }
}
