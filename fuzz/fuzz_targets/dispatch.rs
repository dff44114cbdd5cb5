//! Decoded requests dispatched into real classes: one in-process host (started once,
//! serving the example classes, on a frozen virtual clock) takes every input through
//! `RunningHost::call`, the entry the QUIC edge uses after decoding a frame. Nothing
//! crosses a socket.
//!
//! The first byte picks the shape of the input:
//! - even: a call of one of the example classes' methods, chosen by the second byte,
//!   on one of four objects, with the right fingerprint (or, by a flag, a wrong one)
//!   and the rest of the input as the postcard argument bytes. This reaches every
//!   generated argument decoder and, when the arguments decode, the method itself;
//! - odd: the rest is a whole request frame, decoded as the host decodes a stream and,
//!   if it is a call, dispatched as sent (but for the object, which is pinned to one
//!   of four per class, so a long run does not create a database per input).
//!
//! Checked: nothing panics (libFuzzer aborts on any panic, including one a host would
//! catch and answer `ObjectReset`), and every answer is one a bad caller may get:
//! a return, the method's own error, or a typed refusal. A storage failure
//! (`Internal`, `Indeterminate`), a reset object, or `Overloaded` from a host that
//! runs one call at a time fails the run.
//!
//! State carries over between inputs (the objects keep what earlier calls stored),
//! so a crash found late may need its predecessors to reproduce. The host's data
//! directory is `$DURABLE_FUZZ_DIR` (else the system temp directory) /
//! `durable-fuzz-dispatch-<pid>`; it is left behind when libFuzzer exits.

#![no_main]

use durable::wire::{self, CallRequest, Request, Response, WireError, DEFAULT_MAX_FRAME};
use durable::{Caller, Clock, Host, MethodInfo, ObjectClass, ObjectId, RunningHost, VirtualClock};
use durable_examples::{auction, counter, ratelimit, reservation, session, subscription};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

/// Objects per class the fuzzer may touch.
const NAMES: [&str; 4] = ["f0", "f1", "f2", "f3"];

struct Fixture {
    runtime: tokio::runtime::Runtime,
    host: RunningHost,
    methods: Vec<(&'static str, MethodInfo)>,
}

fn methods_of<C: ObjectClass>(all: &mut Vec<(&'static str, MethodInfo)>) {
    all.extend(C::METHODS.iter().map(|m| (C::CLASS, *m)));
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base = std::env::var_os("DURABLE_FUZZ_DIR")
            .map(Into::into)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("durable-fuzz-dispatch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        // A fixed instant that never moves: no alarm falls due, no hold expires, and
        // an input means the same thing whenever it runs.
        let clock = Arc::new(VirtualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let host = runtime
            .block_on(
                durable_examples::register_all(Host::builder(&dir))
                    .clock(clock as Arc<dyn Clock>)
                    .with_limits(|l| l.shards = 1)
                    .start(),
            )
            .expect("starting the fuzz host");
        let mut methods = Vec::new();
        methods_of::<counter::Counter>(&mut methods);
        methods_of::<reservation::Flight>(&mut methods);
        methods_of::<subscription::Subscription>(&mut methods);
        methods_of::<session::SessionStore>(&mut methods);
        methods_of::<ratelimit::RateLimiter>(&mut methods);
        methods_of::<auction::Auction>(&mut methods);
        Fixture {
            runtime,
            host,
            methods,
        }
    })
}

/// A call built from the input: a known method, a chosen object, raw argument bytes.
fn structured(f: &Fixture, data: &[u8]) -> Option<(CallRequest, bool)> {
    let (&pick, rest) = data.split_first()?;
    let (&flags, args) = rest.split_first()?;
    let (class, method) = f.methods[pick as usize % f.methods.len()];
    let name = NAMES[flags as usize % NAMES.len()];
    let wrong_fingerprint = flags & 0x4 != 0;
    let request = CallRequest {
        request_id: request_id(data),
        class: class.into(),
        object: ObjectId::from_name(class, name),
        name: (flags & 0x8 == 0).then(|| name.into()),
        method: method.name.into(),
        fingerprint: method.fingerprint ^ u64::from(wrong_fingerprint),
        timeout_ms: 30_000,
        args: args.to_vec(),
    };
    Some((request, !wrong_fingerprint))
}

/// A call decoded from a whole frame, its object pinned to one of [`NAMES`] unless the
/// host would refuse it before touching any object anyway.
fn from_frame(f: &Fixture, data: &[u8]) -> Option<CallRequest> {
    let Ok(Request::Call(mut call)) = wire::decode_frame::<Request>(data, DEFAULT_MAX_FRAME) else {
        return None;
    };
    let known = f.methods.iter().any(|(class, _)| *class == call.class);
    let mismatched = call
        .name
        .as_deref()
        .is_some_and(|n| ObjectId::from_name(&call.class, n) != call.object);
    if known && !mismatched {
        let name = NAMES[call.object.as_bytes()[0] as usize % NAMES.len()];
        call.object = ObjectId::from_name(&call.class, name);
        call.name = call.name.map(|_| name.into());
    }
    Some(call)
}

/// Distinct inputs, distinct request ids (a repeated id is answered from the window).
fn request_id(data: &[u8]) -> [u8; 16] {
    let mut id = [0u8; 16];
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    id[..8].copy_from_slice(&h.to_le_bytes());
    id[8..].copy_from_slice(&(data.len() as u64).to_le_bytes());
    id
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (request, well_formed) = if mode & 1 == 0 {
        match structured(f, rest) {
            Some(r) => r,
            None => return,
        }
    } else {
        match from_frame(f, rest) {
            Some(call) => (call, false),
            None => return,
        }
    };
    let what = format!("{}.{}", request.class, request.method);
    let answer = f
        .runtime
        .block_on(f.host.call(request, &Caller("fuzz".into())));
    match answer {
        Response::Return(_) | Response::AppError(_) => {}
        Response::Error(WireError::BadArguments { .. }) => {}
        // Only a call whose class, method, fingerprint, name or deadline came from the
        // input may be refused for them.
        Response::Error(
            WireError::UnknownClass { .. }
            | WireError::UnknownMethod { .. }
            | WireError::SchemaMismatch { .. }
            | WireError::Malformed { .. }
            | WireError::Timeout,
        ) if !well_formed => {}
        other => panic!("{what} answered {other:?}"),
    }
});
