//! Running an object's due alarms as turns of a batch.

use super::object::{Object, Pending};
use super::outcomes::CallResult;
use crate::class::{Instance, TurnOutcome};
use crate::context::Context;
use crate::core::outbox::Effects;
use crate::db::Statements;
use crate::shard_config::panic_message;
use durable_client::wire::Response;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;

/// Run the object's due alarms, each in its own savepoint: a handler that returns `Ok`
/// removes its alarm (or moves a recurring one to its next period); one that fails is
/// rolled back and retried later with exponential backoff, or given up on and recorded
/// after the last attempt. A panic resets the object after recording the attempt.
pub(super) async fn run_due_alarms(
    obj: &mut Object,
    instance: &mut dyn Instance,
    ctx: &mut Context,
    bs: &mut Pending,
) -> Result<CallResult, String> {
    let db = |e: rusqlite::Error| e.to_string();
    bs.fresh = false;
    let class = obj.class.clone();
    let config = obj.config.clone();
    let now = config.clock.now_ms();
    let settings = &config.alarms.config;
    // Only the effects of handlers that return `Ok` are kept (left in `ctx.effects`
    // for the batch's outbox).
    let mut kept = Effects::default();
    // Whether a handler of this wake changed the object's alarms: then each alarm read
    // at the start is looked up again before it runs (it may be cancelled or moved).
    let mut changed = false;
    for alarm in crate::alarms::due_alarms(&ctx.conn, now, 256).map_err(db)? {
        if changed && !crate::alarms::still_scheduled(&ctx.conn, &alarm).map_err(db)? {
            continue;
        }
        let attempt = alarm.attempt + 1;
        let (error, panicked) = match class.alarms.get(alarm.name.as_str()) {
            None => (format!("no alarm handler named {:?}", alarm.name), None),
            Some(&index) => {
                ctx.conn.run("SAVEPOINT durable_alarm").map_err(db)?;
                ctx.alarm_attempt = Some(attempt);
                ctx.effects = Effects::default();
                ctx.turn = obj.turn_info(None, None, None, 0);
                let conn = ctx.conn.clone();
                let (tries, flushes) = (bs.flush_tries, bs.flushes);
                let turn = AssertUnwindSafe(instance.dispatch_alarm(ctx, index, &alarm.args))
                    .catch_unwind();
                let outcome = obj.drive(&conn, bs, "durable_alarm", turn).await;
                ctx.turn = None;
                ctx.alarm_attempt = None;
                let effects = std::mem::take(&mut ctx.effects);
                let failed = match outcome {
                    Ok(TurnOutcome::Return(_)) => crate::size_check::over_size(&ctx.conn, config.max_object_bytes, &ctx.size_counted)
                        .map_err(db)?
                        .map(|size| {
                            (
                                format!(
                                    "the handler's writes would take the object to {size} bytes, past its limit of {}",
                                    config.max_object_bytes
                                ),
                                None,
                            )
                        }),
                    Ok(TurnOutcome::AppError(bytes)) => Some((
                        format!("the handler returned an error ({} bytes)", bytes.len()),
                        None,
                    )),
                    Ok(other) => Some((format!("the handler failed: {other:?}"), None)),
                    Err(panic) => {
                        let m = format!(
                            "{}.{} panicked: {}",
                            class.name,
                            alarm.name,
                            panic_message(&panic)
                        );
                        Some((m.clone(), Some(m)))
                    }
                };
                match failed {
                    None => {
                        changed |= effects.alarms_changed || effects.ship_image.get();
                        kept.absorb(effects);
                        ctx.conn.run("RELEASE durable_alarm").map_err(db)?;
                        crate::alarms::finish(&ctx.conn, &alarm, now).map_err(db)?;
                        continue;
                    }
                    Some(f) => {
                        // The handler called another object and the batch so far became
                        // durable (or may have): what it did to streams before that
                        // call may stand, so their followers hear of it (see
                        // `crate::streams::maybe_durable`), in its place among the
                        // wake's effects.
                        if bs.flush_tries != tries
                            && (bs.flushes != flushes
                                || matches!(
                                    bs.broken,
                                    Some(super::outcomes::CommitError::Indeterminate(_))
                                ))
                        {
                            kept.streams
                                .extend(crate::streams::maybe_durable(&effects.streams));
                        }
                        ctx.conn.run("ROLLBACK TO durable_alarm").map_err(db)?;
                        ctx.conn.run("RELEASE durable_alarm").map_err(db)?;
                        f
                    }
                }
            }
        };
        if attempt >= settings.max_attempts {
            tracing::error!(class = class.name, id = %ctx.id, alarm = %alarm.name, key = %alarm.key, attempt, %error, "alarm failed for the last time; recorded in _durable_alarm_failures");
            crate::alarms::give_up(&ctx.conn, &alarm, attempt, &error, now).map_err(db)?;
        } else {
            let delay = settings.backoff.as_millis() as u64 * (1u64 << (attempt - 1).min(20));
            tracing::warn!(class = class.name, id = %ctx.id, alarm = %alarm.name, key = %alarm.key, attempt, %error, retry_in_ms = delay, "alarm failed; will retry");
            // From the failure, not from the wake's start: a handler that failed after a
            // slow call (or behind others of the wake) still waits its backoff.
            let failed_at = config.clock.now_ms();
            crate::alarms::retry(&ctx.conn, &alarm, attempt, failed_at + delay).map_err(db)?;
        }
        if let Some(message) = panicked {
            ctx.effects = kept;
            return Ok(CallResult::Panicked(message));
        }
    }
    ctx.effects = kept;
    Ok(CallResult::Reply(Response::Welcome))
}
