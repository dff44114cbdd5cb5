//! Arbitrary bytes as a whole stream's contents, through every public decode entry
//! of `durable_client::wire`: request frames (calls and hellos), response frames,
//! and the error conversions a host applies to a bad frame.
//!
//! Checked, beyond "never panics":
//! - a decoded message re-encodes to a frame no longer than the input (postcard's
//!   canonical encoding is its shortest), so no decoded string or byte vector is
//!   longer than the input, and it decodes back to the same message;
//! - the bytes the decoder allocates for one frame, at their peak, are at most the
//!   input's length plus a small constant (a counting global allocator measures it):
//!   a length prefix or a varint inside cannot make it reserve memory the frame does
//!   not carry;
//! - the limit is applied to the length prefix before anything else is read.

#![no_main]

use durable_client::wire::{
    self, FrameError, Request, Response, WireError, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The allocator, counting live bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes a decode may allocate beyond the input's length: an error message, or the
/// strings' and vectors' headers. Measured: at most 89 bytes over the input.
const SLACK: usize = 256;

/// Decode `data` as a `T` frame, measuring the decoder's peak allocation.
fn decode<T: serde::de::DeserializeOwned>(data: &[u8], limit: usize) -> Result<T, FrameError> {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let result = wire::decode_frame::<T>(data, limit);
    let used = PEAK.load(Relaxed) - base;
    assert!(
        used <= data.len() + SLACK,
        "decoding {} bytes allocated {used} bytes at its peak",
        data.len()
    );
    result
}

/// The checks every decoded message passes.
fn check_decoded<T>(data: &[u8], msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let again = wire::encode_frame(msg);
    assert!(
        again.len() <= data.len(),
        "{msg:?} re-encodes to {} bytes from {} bytes",
        again.len(),
        data.len()
    );
    assert_eq!(again[4], PROTOCOL_VERSION);
    let back: T =
        wire::decode_frame(&again, DEFAULT_MAX_FRAME).expect("a re-encoded frame decodes");
    assert_eq!(&back, msg);
}

/// The checks every refusal passes: what a host would answer is a typed error.
fn check_refused(data: &[u8], limit: usize, e: FrameError) {
    // (Fewer than 5 bytes are `Truncated` whatever the prefix says.)
    if data.len() >= 5 {
        let declared = u32::from_le_bytes(data[..4].try_into().unwrap()) as u64;
        // The limit is checked on the length prefix, before the body is looked at.
        if declared > limit as u64 {
            assert!(matches!(e, FrameError::TooLarge { .. }), "{e:?}");
        }
    }
    let _ = e.to_string();
    let answer = WireError::from(e);
    let _ = answer.retry();
    // The answer itself is a frame a client decodes.
    let frame = wire::encode_frame(&Response::Error(answer.clone()));
    assert_eq!(
        wire::decode_frame::<Response>(&frame, DEFAULT_MAX_FRAME),
        Ok(Response::Error(answer))
    );
}

fuzz_target!(|data: &[u8]| {
    // The host's default limit, and a small one that the length prefix often exceeds.
    // (A host reads at most `stream_limit(limit)` bytes; the decoder takes any.)
    for limit in [DEFAULT_MAX_FRAME, 64] {
        // Client to host: a hello (the first stream) or a call.
        match decode::<Request>(data, limit) {
            Ok(msg) => {
                check_decoded(data, &msg);
                if let Request::Call(call) = &msg {
                    let _ = call.object.as_bytes();
                }
            }
            Err(e) => check_refused(data, limit, e),
        }
        // Host to client.
        match decode::<Response>(data, limit) {
            Ok(msg) => {
                check_decoded(data, &msg);
                if let Response::Error(e) = &msg {
                    let _ = e.retry();
                }
            }
            Err(e) => check_refused(data, limit, e),
        }
    }
});
