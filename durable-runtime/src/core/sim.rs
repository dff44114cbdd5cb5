//! Seeded simulation of the core (the FoundationDB habit): many callers, several
//! objects, each driven by its [`ObjectCore`], alarms through a [`DueQueue`], a
//! simulated log that syncs late, fails, refuses a round cleanly (a full disk: the
//! objects undo those batches and carry on), and loses everything unsynced when the
//! host crashes, and a model of each object's storage (values, the request ids it has
//! applied, its alarms). Methods return `Ok`, `Err` or panic at random; commits fail
//! before or after reaching the log; objects are evicted and the host crashes.
//!
//! After every step the driver checks the contract's invariants:
//! - no output leaves before the state it reflects is durable;
//! - replies to one caller come in the order it sent (turn replies);
//! - after a crash, every acknowledged write is still there;
//! - no request id is applied twice, and a call answered "not applied" never shows
//!   up applied (the caller resends those under a new request id and indeterminate
//!   ones under the same id: each logical call is applied exactly once iff it ends `Ok`);
//! - every alarm runs at least once, never before its time.
//!
//! `DURABLE_SIM_SEEDS=N` runs seeds `0..N` (default 10,000), `DURABLE_SIM_SEED=S`
//! replays one seed, `DURABLE_SIM_STEPS` sets the steps per seed (default 300). A
//! failure prints its seed. A soak:
//! `DURABLE_SIM_SEEDS=1000000 cargo test --release -p durable-runtime sim`.

use super::due::DueQueue;
use super::object::{Action, CoreLimits, Input, ObjectCore, Work};
use std::collections::{BTreeMap, HashMap, HashSet};

/// splitmix64: a small, fast, seedable generator; one seed is one whole run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    /// Add `amount` and schedule an alarm keyed by the request id, due `alarm_in` ms on.
    Inc {
        amount: i64,
        alarm_in: u64,
    },
    Read,
}

/// One attempt of a logical call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Send {
    caller: usize,
    op: usize,
    req: u64,
    /// Per caller, increasing with every attempt sent.
    send_idx: u64,
    kind: OpKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SimWork {
    Call(Send),
    Alarm,
}

impl Work for SimWork {
    fn is_call(&self) -> bool {
        matches!(self, SimWork::Call(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Ok(i64),
    /// The method's own error, or a panic: rolled back.
    FailedInMethod,
    NotApplied,
    Indeterminate,
}

#[derive(Debug)]
struct Out {
    send: Send,
    reply: Reply,
    /// The object's batch number whose state this reply reflects.
    observed: u64,
    /// A recorded answer (the request id was applied by an earlier batch).
    recorded: bool,
}

/// The model of one object's database.
#[derive(Debug, Clone, Default)]
struct State {
    seq: u64,
    value: i64,
    /// request id -> the result it returned
    applied: HashMap<u64, i64>,
    /// alarm key -> due
    alarms: BTreeMap<u64, u64>,
    /// (key, due, ran at)
    fired: Vec<(u64, u64, u64)>,
}

impl State {
    fn earliest_due(&self) -> Option<u64> {
        self.alarms.values().copied().min()
    }
}

struct Obj {
    core: ObjectCore<SimWork, Out>,
    /// Committed (possibly not yet durable) state.
    state: State,
    /// The log holds a batch the state lacks (its commit failed): refuse until restart.
    poisoned: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Final {
    Ok,
    FailedInMethod,
}

struct Op {
    caller: usize,
    kind: OpKind,
    reqs: Vec<u64>,
    outcome: Option<Final>,
    /// An attempt was answered indeterminate: every later attempt keeps its request
    /// id, even one answered "not applied" (that is about the attempt, not the call).
    in_doubt: bool,
}

#[derive(Default)]
struct Caller {
    next_send: u64,
    last_turn_reply: Option<u64>,
    /// Attempts sent and not answered.
    in_flight: Vec<Send>,
    /// (op, request id) to send again.
    resend: Vec<(usize, u64)>,
}

const LIMITS: CoreLimits = CoreLimits {
    max_queue: 6,
    max_batch: 4,
};

struct Sim {
    rng: Rng,
    now: u64,
    objs: Vec<Obj>,
    /// (object, its state after the batch)
    log: Vec<(usize, State)>,
    synced: usize,
    log_failed: bool,
    /// Objects whose batches the log refused and that have not rewound yet: the log
    /// drops their later records too.
    refused: Vec<bool>,
    due: DueQueue<usize>,
    callers: Vec<Caller>,
    ops: Vec<Op>,
    next_req: u64,
    /// Request ids acknowledged `Ok` for a write.
    acked: HashSet<(usize, u64)>,
    ops_budget: usize,
    /// Print every answer and batch (`DURABLE_SIM_TRACE=1`).
    trace: bool,
}

type Check = Result<(), String>;

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let n_objs = 1 + rng.below(3) as usize;
        let n_callers = 1 + rng.below(6) as usize;
        Sim {
            now: 1_000,
            objs: (0..n_objs)
                .map(|_| Obj {
                    core: ObjectCore::new(LIMITS, 0, 1_000),
                    state: State::default(),
                    poisoned: false,
                })
                .collect(),
            log: Vec::new(),
            synced: 0,
            log_failed: false,
            refused: vec![false; n_objs],
            due: DueQueue::new(2),
            callers: (0..n_callers).map(|_| Caller::default()).collect(),
            ops: Vec::new(),
            next_req: 1,
            acked: HashSet::new(),
            ops_budget: 40 + rng.below(80) as usize,
            trace: std::env::var_os("DURABLE_SIM_TRACE").is_some(),
            rng,
        }
    }

    fn obj_of(&self, caller: usize) -> usize {
        caller % self.objs.len()
    }

    fn synced_seq(&self, obj: usize) -> u64 {
        self.log[..self.synced]
            .iter()
            .filter(|(o, _)| *o == obj)
            .map(|(_, s)| s.seq)
            .max()
            .unwrap_or(0)
    }

    fn durable_state(&self, obj: usize) -> State {
        self.log[..self.synced]
            .iter()
            .rev()
            .find(|(o, _)| *o == obj)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    /// A caller sends its next attempt: a resend first, else a new call.
    fn send(&mut self, caller: usize) -> Check {
        let (op, req) = if let Some(r) = self.callers[caller].resend.pop() {
            r
        } else if self.ops.len() < self.ops_budget && self.callers[caller].in_flight.len() < 4 {
            let kind = if self.rng.chance(250) {
                OpKind::Read
            } else {
                OpKind::Inc {
                    amount: 1 + self.rng.below(9) as i64,
                    alarm_in: self.rng.below(400),
                }
            };
            let req = self.next_req;
            self.next_req += 1;
            self.ops.push(Op {
                caller,
                kind,
                reqs: vec![req],
                outcome: None,
                in_doubt: false,
            });
            (self.ops.len() - 1, req)
        } else {
            return Ok(());
        };
        let c = &mut self.callers[caller];
        let send = Send {
            caller,
            op,
            req,
            send_idx: c.next_send,
            kind: self.ops[op].kind,
        };
        c.next_send += 1;
        c.in_flight.push(send);
        let obj = self.obj_of(caller);
        if let Err(SimWork::Call(s)) = self.objs[obj].core.arrive(self.now, SimWork::Call(send)) {
            // Refused at the door (Overloaded): not a turn reply, no order to keep.
            self.answer(s, Reply::NotApplied, false)?;
        }
        Ok(())
    }

    /// A caller receives an answer.
    fn answer(&mut self, send: Send, reply: Reply, from_turn: bool) -> Check {
        if self.trace {
            eprintln!(
                "t={} answer {send:?} -> {reply:?} (turn: {from_turn})",
                self.now
            );
        }
        let c = &mut self.callers[send.caller];
        let Some(pos) = c.in_flight.iter().position(|s| *s == send) else {
            return Err(format!("an answer to a call not in flight: {send:?}"));
        };
        c.in_flight.remove(pos);
        if from_turn {
            if let Some(last) = c.last_turn_reply {
                if send.send_idx < last {
                    return Err(format!(
                        "caller {} got the reply to send {} after the reply to send {last}",
                        send.caller, send.send_idx
                    ));
                }
            }
            c.last_turn_reply = Some(send.send_idx);
        }
        let op = &mut self.ops[send.op];
        match reply {
            Reply::Ok(_) => {
                op.outcome = Some(Final::Ok);
                if matches!(op.kind, OpKind::Inc { .. }) {
                    self.acked.insert((self.obj_of(send.caller), send.req));
                }
            }
            Reply::FailedInMethod => op.outcome = Some(Final::FailedInMethod),
            Reply::NotApplied if op.in_doubt => c.resend.push((send.op, send.req)),
            Reply::NotApplied => {
                // Safe to send again under a new request id.
                let req = self.next_req;
                self.next_req += 1;
                op.reqs.push(req);
                c.resend.push((send.op, req));
            }
            Reply::Indeterminate => {
                op.in_doubt = true;
                c.resend.push((send.op, send.req));
            }
        }
        Ok(())
    }

    /// Run one batch of `obj` as the shard would, and feed its end back.
    fn run_batch(&mut self, obj: usize, batch: Vec<SimWork>) -> Check {
        let now = self.now;
        let o = &mut self.objs[obj];
        let mut tx = o.state.clone();
        // Each reply, and whether it is a recorded answer (kept if the batch fails).
        let mut replies: Vec<(Send, Reply, bool)> = Vec::new();
        let mut requeue = Vec::new();
        let mut wrote = false;
        let alarm_wakes = batch.iter().filter(|w| !w.is_call()).count();
        let mut items = batch.into_iter();
        if o.poisoned {
            // The log holds a batch the state lacks: a retry of one of its calls may
            // be answered only as indeterminate.
            replies.extend(items.by_ref().filter_map(|w| match w {
                SimWork::Call(s) => Some((s, Reply::Indeterminate, false)),
                SimWork::Alarm => None,
            }));
        }
        while let Some(w) = items.next() {
            match w {
                SimWork::Alarm => {
                    let due: Vec<(u64, u64)> = tx
                        .alarms
                        .iter()
                        .filter(|(_, d)| **d <= now)
                        .map(|(k, d)| (*k, *d))
                        .collect();
                    for (k, d) in due {
                        tx.alarms.remove(&k);
                        tx.fired.push((k, d, now));
                        wrote = true;
                    }
                }
                SimWork::Call(s) => match s.kind {
                    OpKind::Read => replies.push((s, Reply::Ok(tx.value), false)),
                    OpKind::Inc { amount, alarm_in } => {
                        if let Some(r) = tx.applied.get(&s.req) {
                            replies.push((s, Reply::Ok(*r), true));
                            continue;
                        }
                        let roll = self.rng.below(100);
                        if roll < 8 {
                            replies.push((s, Reply::FailedInMethod, false));
                        } else if roll < 12 {
                            // A panic: rolled back, the instance reset, the rest runs next.
                            replies.push((s, Reply::FailedInMethod, false));
                            requeue.extend(items.by_ref());
                            break;
                        } else {
                            tx.value += amount;
                            tx.applied.insert(s.req, tx.value);
                            tx.alarms.insert(s.req, now + alarm_in);
                            wrote = true;
                            replies.push((s, Reply::Ok(tx.value), false));
                        }
                    }
                },
            }
        }
        let mut committed = None;
        if wrote && !o.poisoned {
            let roll = self.rng.below(1000);
            if roll < 30 {
                // Failed before anything reached the log: every reply becomes the error.
                for r in replies.iter_mut().filter(|r| !r.2) {
                    r.1 = Reply::NotApplied;
                }
                replies.extend(requeue.drain(..).filter_map(|w| match w {
                    SimWork::Call(s) => Some((s, Reply::NotApplied, false)),
                    SimWork::Alarm => None,
                }));
            } else if roll < 50 {
                // Failed after the batch may have reached the log.
                tx.seq += 1;
                if self.rng.chance(500) && !self.log_failed {
                    self.log.push((obj, tx.clone()));
                    committed = Some(tx.seq);
                    o.state.seq = tx.seq; // batch numbers move past it
                    o.poisoned = true;
                }
                for r in replies.iter_mut().filter(|r| !r.2) {
                    r.1 = Reply::Indeterminate;
                }
                replies.extend(requeue.drain(..).filter_map(|w| match w {
                    SimWork::Call(s) => Some((s, Reply::Indeterminate, false)),
                    SimWork::Alarm => None,
                }));
            } else {
                tx.seq += 1;
                self.log.push((obj, tx.clone()));
                committed = Some(tx.seq);
                o.state = tx;
            }
        }
        let observed = o.state.seq;
        if self.trace {
            eprintln!(
                "t={now} object {obj} batch: wrote {wrote}, committed {committed:?}, poisoned {}, replies {replies:?}",
                o.poisoned
            );
        }
        let outputs = replies
            .into_iter()
            .map(|(send, reply, recorded)| Out {
                recorded,
                send,
                reply,
                observed,
            })
            .collect();
        let requeued_alarms = requeue.iter().filter(|w| !w.is_call()).count();
        o.core.handle(
            now,
            Input::BatchEnded {
                committed,
                outputs,
                requeue,
            },
        );
        for _ in 0..alarm_wakes - requeued_alarms {
            self.due.done();
        }
        let due = self.objs[obj].state.earliest_due();
        self.due.set(obj, due);
        Ok(())
    }

    /// Carry out the next action of `obj`, if any; returns whether there was one.
    fn step_object(&mut self, obj: usize) -> Result<bool, String> {
        let Some(action) = self.objs[obj].core.poll() else {
            return Ok(false);
        };
        match action {
            Action::Run(batch) => self.run_batch(obj, batch)?,
            Action::Release(outs) => {
                let synced = self.synced_seq(obj);
                for out in outs {
                    if matches!(out.reply, Reply::Ok(_)) && out.observed > synced {
                        return Err(format!(
                            "output gate: {:?} left reflecting batch {} of object {obj} while only {synced} is durable",
                            out.send, out.observed
                        ));
                    }
                    self.answer(out.send, out.reply, true)?;
                }
            }
            Action::Indeterminate(outs) => {
                for out in outs {
                    self.answer(out.send, Reply::Indeterminate, true)?;
                }
            }
            Action::Refused { outputs, .. } => {
                for out in outputs {
                    // A recorded answer's own batch may be refused too: in doubt.
                    let reply = if out.recorded {
                        Reply::Indeterminate
                    } else {
                        Reply::NotApplied
                    };
                    self.answer(out.send, reply, true)?;
                }
            }
            Action::Rewind(durable) => {
                let synced = self.synced_seq(obj);
                if synced != durable {
                    return Err(format!(
                        "object {obj} rewound to batch {durable} but batch {synced} is the last durable one"
                    ));
                }
                if self.trace {
                    eprintln!("t={} object {obj} rewinds to {durable}", self.now);
                }
                let state = self.durable_state(obj);
                self.due.set(obj, state.earliest_due());
                self.objs[obj].state = state;
                self.refused[obj] = false;
            }
            Action::Dropped(work) => {
                for w in work {
                    if let SimWork::Alarm = w {
                        self.due.done();
                    }
                }
            }
            Action::Stopped => {}
        }
        Ok(true)
    }

    fn sync(&mut self) {
        if self.log_failed {
            return;
        }
        // The log takes nothing more from an object it refused until it rewinds.
        let tail = self.log.split_off(self.synced);
        let refused = &self.refused;
        self.log
            .extend(tail.into_iter().filter(|(o, _)| !refused[*o]));
        self.synced = self.log.len();
        for obj in 0..self.objs.len() {
            let seq = self.synced_seq(obj);
            self.objs[obj].core.handle(self.now, Input::Durable(seq));
        }
    }

    /// The log's next write fails and is cut off cleanly (a full disk): none of the
    /// unsynced records is on disk; their objects are told so.
    fn refuse(&mut self) {
        if self.log_failed {
            return;
        }
        let full = self.rng.chance(500);
        let dropped: Vec<usize> = self.log.drain(self.synced..).map(|(o, _)| o).collect();
        for obj in dropped {
            if !self.refused[obj] {
                self.refused[obj] = true;
                let durable = self.synced_seq(obj);
                if self.trace {
                    eprintln!("t={} log refuses object {obj} past {durable}", self.now);
                }
                self.objs[obj]
                    .core
                    .handle(self.now, Input::Refused { durable, full });
            }
        }
    }

    fn fail_sync(&mut self) {
        self.log_failed = true;
        for o in &mut self.objs {
            o.core.handle(self.now, Input::SyncFailed);
        }
    }

    fn tick(&mut self, by: u64) {
        self.now += by;
        for obj in self.due.take_due(self.now) {
            if self.objs[obj]
                .core
                .arrive(self.now, SimWork::Alarm)
                .is_err()
            {
                self.due.done();
            }
        }
    }

    fn evict(&mut self, obj: usize) -> Check {
        if !self.objs[obj].core.is_idle() {
            return Ok(());
        }
        self.objs[obj].core.handle(self.now, Input::Close);
        while self.step_object(obj)? {}
        // Re-activated later with a fresh core, as the shard glue does.
        self.objs[obj].core = ObjectCore::new(LIMITS, 0, self.now);
        Ok(())
    }

    /// The host dies: unsynced log records are lost, every call in flight is lost to
    /// its caller (who resends it with the same request id), and the host restarts
    /// from the durable log.
    fn crash(&mut self) -> Check {
        if self.trace {
            eprintln!(
                "t={} crash: {} of {} log records synced",
                self.now,
                self.synced,
                self.log.len()
            );
        }
        for obj in 0..self.objs.len() {
            self.objs[obj].core.handle(self.now, Input::Crash);
            while let Some(a) = self.objs[obj].core.poll() {
                if let Action::Dropped(work) = a {
                    for w in work {
                        if let SimWork::Alarm = w {
                            self.due.done();
                        }
                    }
                }
            }
        }
        for c in &mut self.callers {
            for s in c.in_flight.drain(..) {
                self.ops[s.op].in_doubt = true;
                c.resend.push((s.op, s.req));
            }
        }
        self.log.truncate(self.synced);
        self.log_failed = false;
        self.refused.iter_mut().for_each(|r| *r = false);
        self.due = DueQueue::new(2);
        for obj in 0..self.objs.len() {
            let state = self.durable_state(obj);
            self.due.set(obj, state.earliest_due());
            self.objs[obj] = Obj {
                core: ObjectCore::new(LIMITS, 0, self.now),
                state,
                poisoned: false,
            };
        }
        for &(obj, req) in &self.acked {
            if !self.objs[obj].state.applied.contains_key(&req) {
                return Err(format!(
                    "request {req} on object {obj} was acknowledged but is gone after a crash"
                ));
            }
        }
        Ok(())
    }

    fn random_step(&mut self) -> Check {
        let roll = self.rng.below(1000);
        let obj = self.rng.below(self.objs.len() as u64) as usize;
        match roll {
            0..=299 => {
                let caller = self.rng.below(self.callers.len() as u64) as usize;
                self.send(caller)?;
            }
            300..=649 => {
                self.step_object(obj)?;
            }
            650..=799 => self.sync(),
            800..=949 => {
                let by = self.rng.below(150);
                self.tick(by);
            }
            950..=979 => self.evict(obj)?,
            980..=984 => self.crash()?,
            985..=991 => self.refuse(),
            992..=994 => self.fail_sync(),
            _ => {
                // A burst: run every object until it has nothing to do.
                for obj in 0..self.objs.len() {
                    while self.step_object(obj)? {}
                }
            }
        }
        Ok(())
    }

    /// No more faults: let every call end and every alarm run.
    fn settle(&mut self) -> Check {
        if self.log_failed {
            self.crash()?;
        }
        for _ in 0..10_000 {
            for caller in 0..self.callers.len() {
                self.send(caller)?;
            }
            for obj in 0..self.objs.len() {
                while self.step_object(obj)? {}
            }
            self.sync();
            for obj in 0..self.objs.len() {
                while self.step_object(obj)? {}
            }
            self.tick(100);
            let calls_done = self.ops.len() >= self.ops_budget
                && self.ops.iter().all(|o| o.outcome.is_some())
                && self.callers.iter().all(|c| c.in_flight.is_empty());
            let alarms_done = self
                .objs
                .iter()
                .all(|o| o.state.earliest_due().is_none() && o.core.is_idle());
            if calls_done && alarms_done {
                return Ok(());
            }
            if self.objs.iter().any(|o| o.poisoned) {
                self.crash()?;
            }
        }
        Err("the run did not settle".into())
    }

    fn check_final(&mut self) -> Check {
        self.sync();
        self.crash()?; // judge only what is durable
        let mut expected = vec![0i64; self.objs.len()];
        for (i, op) in self.ops.iter().enumerate() {
            let obj = self.obj_of(op.caller);
            let applied = op
                .reqs
                .iter()
                .filter(|r| self.objs[obj].state.applied.contains_key(r))
                .count();
            let OpKind::Inc { amount, .. } = op.kind else {
                continue;
            };
            match op.outcome {
                Some(Final::Ok) if applied == 1 => expected[obj] += amount,
                Some(Final::FailedInMethod) if applied == 0 => {}
                outcome => {
                    return Err(format!(
                    "call {i} ended {outcome:?} but {applied} of its request ids {:?} are applied",
                    op.reqs
                ))
                }
            }
        }
        for (obj, o) in self.objs.iter().enumerate() {
            if o.state.value != expected[obj] {
                return Err(format!(
                    "object {obj} holds {} but its acknowledged increments add up to {}",
                    o.state.value, expected[obj]
                ));
            }
            for &(key, due, at) in &o.state.fired {
                if at < due {
                    return Err(format!("alarm {key} due at {due} ran early at {at}"));
                }
            }
            let fired: HashSet<u64> = o.state.fired.iter().map(|f| f.0).collect();
            for req in o.state.applied.keys() {
                if !fired.contains(req) {
                    return Err(format!("alarm {req} of object {obj} never ran"));
                }
            }
        }
        Ok(())
    }
}

fn run(seed: u64, steps: usize) -> Check {
    let mut sim = Sim::new(seed);
    for step in 0..steps {
        sim.random_step().map_err(|e| format!("step {step}: {e}"))?;
    }
    sim.settle()?;
    sim.check_final()
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeded_simulation_keeps_the_contract() {
    let steps = env("DURABLE_SIM_STEPS").unwrap_or(300) as usize;
    let seeds: Vec<u64> = match env("DURABLE_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env("DURABLE_SIM_SEEDS").unwrap_or(10_000)).collect(),
    };
    for seed in seeds {
        if let Err(e) = run(seed, steps) {
            panic!(
                "simulation seed {seed} failed: {e}\nreplay: DURABLE_SIM_SEED={seed} cargo test -p durable-runtime seeded_simulation"
            );
        }
    }
}

#[test]
fn a_seed_replays_the_same_run() {
    let trace = |seed| {
        let mut sim = Sim::new(seed);
        let mut out = Vec::new();
        for _ in 0..200 {
            let _ = sim.random_step();
            out.push((sim.now, sim.log.len(), sim.synced, sim.ops.len()));
        }
        out
    };
    assert_eq!(trace(42), trace(42));
    assert_ne!(trace(42), trace(43));
}
