//! The host process's memory: [`Allocator`] (mimalloc as a host binary's global
//! allocator), and no transparent huge pages. No other module of the runtime is
//! imported here.

use std::alloc::{GlobalAlloc, Layout};
use std::os::raw::c_void;

/// mimalloc (already linked for SQLite's own memory) as the whole process's allocator.
/// A host allocates and frees small blocks on every call (frames, replies, futures)
/// from several threads; glibc's malloc spent ~6% of a host's CPU in `durable-bench
/// increments_hot` (BENCHMARKS.md). Declare it in the host's binary:
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: durable_runtime::Allocator = durable_runtime::Allocator;
/// # fn main() {}
/// ```
///
/// Optional: a host runs correctly on any allocator.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

// SAFETY: every method hands the layout's size and alignment to mimalloc's aligned
// entry points, which return blocks at least that large and that aligned (or null),
// and free/reallocate only blocks they returned.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast() }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast() }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = layout;
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { libmimalloc_sys::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract).
        unsafe {
            libmimalloc_sys::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align())
                .cast()
        }
    }
}

/// mimalloc's `mi_option_allow_thp` (v3's `mi_option_e`; not in `libmimalloc-sys`'s
/// bindings).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// `_mi_option_last` of mimalloc v3, whose option numbers [`MI_OPTION_ALLOW_THP`] is.
const MI_OPTIONS_V3: libmimalloc_sys::mi_option_t = 47;

/// Keep the host's memory in 4 KiB pages: no transparent huge pages (THP) for this
/// process. mimalloc asks the kernel for huge pages on the memory it maps
/// (`MADV_HUGEPAGE`), and the first touch of each one zeroes 2 MiB inside the faulting
/// thread: a shard that allocated its way into a fresh one stalled for up to 4 ms, both
/// shards at once (`perf record -e sched:sched_switch` during `durable-bench
/// alarm_lateness`: `do_huge_pmd_anonymous_page` -> `folio_zero_user` under
/// `mi_page_init`), which was the whole of the alarms' p99 lateness (3-8 ms; 0-1 ms
/// without, BENCHMARKS.md). Redis and most databases turn THP off for the same reason.
/// Process-wide (`PR_SET_THP_DISABLE`), once, before the first object opens; what
/// fails is only logged.
pub(crate) fn no_huge_pages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The option's number is v3's (`libmimalloc-sys` builds v3 unless its `v2`
        // feature is on; v2 numbers its options differently).
        if libmimalloc_sys::_mi_option_last == MI_OPTIONS_V3 {
            // SAFETY: mi_option_set only stores the option's value.
            unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
        }
        #[cfg(target_os = "linux")]
        {
            // SAFETY: PR_SET_THP_DISABLE takes an integer flag and three zero arguments.
            let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
            if rc != 0 {
                tracing::debug!(
                    error = %std::io::Error::last_os_error(),
                    "could not turn transparent huge pages off"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host's process runs without transparent huge pages once it has started.
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off_for_the_process() {
        no_huge_pages();
        // SAFETY: PR_GET_THP_DISABLE takes four zero arguments and returns the flag.
        let off = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        // -1: a sandbox without this prctl (gVisor, some seccomp profiles); the host
        // only logs that, and mimalloc's own option still holds.
        if off != -1 {
            assert_eq!(off, 1, "PR_SET_THP_DISABLE did not take");
        }
        // SAFETY: mi_option_get only reads the option.
        let allowed = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ALLOW_THP) };
        assert_eq!(allowed, 0, "mimalloc still asks for huge pages");
    }
}
