//! Alarms and the object lifecycle (issue 5): delivery, retries with backoff, rollback
//! with the turn, eviction, crash and downtime — with the harness's virtual clock —
//! and, against a real host process, `kill -9` before the due time and 10,000 alarms
//! due in the same second.

mod common;

use common::HostProcess;
use durable::testing::TestHost;
use durable_tests::Probe;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn harness() -> TestHost {
    TestHost::start(durable_tests::register_all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_fires_at_its_due_time_and_not_before() {
    let t = harness().await;
    let p = t.get::<Probe>("a");
    let start = ms(t.now());
    p.ring_after("k".into(), 5_000).await.unwrap();
    t.advance(Duration::from_millis(4_999)).await;
    assert!(p.rings().await.unwrap().is_empty());
    assert_eq!(p.pending().await.unwrap(), vec!["k".to_string()]);
    t.advance(Duration::from_millis(1)).await;
    assert_eq!(
        p.rings().await.unwrap(),
        vec![("k".to_string(), 1, start + 5_000)]
    );
    assert!(p.pending().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_fails_twice_runs_three_times_with_backoff() {
    let t = harness().await;
    let p = t.get::<Probe>("flaky");
    let due = ms(t.now()) + 1_000;
    p.ring_at("k".into(), due, 2).await.unwrap();
    t.advance(Duration::from_secs(60)).await;
    let attempts = p.attempts().await.unwrap();
    let numbers: Vec<u32> = attempts.iter().map(|a| a.1).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    // Default backoff: 1 s after the first failure, 2 s after the second.
    assert_eq!(attempts[0].2, due);
    assert_eq!(attempts[1].2 - attempts[0].2, 1_000);
    assert_eq!(attempts[2].2 - attempts[1].2, 2_000);
    assert_eq!(
        p.rings().await.unwrap(),
        vec![("k".to_string(), 3, due + 3_000)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_always_fails_is_given_up_after_six_attempts_and_recorded() {
    let t = harness().await;
    let p = t.get::<Probe>("doomed");
    p.ring_at("k".into(), ms(t.now()) + 10, 100).await.unwrap();
    t.advance(Duration::from_secs(3600)).await;
    assert_eq!(p.attempts().await.unwrap().len(), 6);
    assert!(p.pending().await.unwrap().is_empty());
    let failures: i64 = t
        .storage::<Probe>("doomed")
        .query_row(
            "SELECT count(*) FROM _durable_alarm_failures WHERE key = 'k' AND attempts = 6",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_is_part_of_the_turn_and_rescheduling_a_key_replaces_it() {
    let t = harness().await;
    let p = t.get::<Probe>("tx");
    assert!(p.ring_then_fail("rolled-back".into()).await.is_err());
    assert!(p.pending().await.unwrap().is_empty());
    p.ring_after("k".into(), 1_000).await.unwrap();
    p.ring_after("k".into(), 5_000).await.unwrap();
    assert_eq!(p.pending().await.unwrap().len(), 1);
    t.advance(Duration::from_secs(2)).await;
    assert!(
        p.rings().await.unwrap().is_empty(),
        "the first schedule was replaced"
    );
    t.advance(Duration::from_secs(3)).await;
    assert_eq!(p.rings().await.unwrap().len(), 1);
    p.ring_after("gone".into(), 1_000).await.unwrap();
    assert!(p.unring("gone".into()).await.unwrap());
    t.advance(Duration::from_secs(5)).await;
    assert_eq!(p.rings().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_wake_evicted_objects_and_survive_a_crash() {
    let mut t = harness().await;
    let p = t.get::<Probe>("sleepy");
    p.ring_after("k".into(), 10_000).await.unwrap();
    assert!(t.evict::<Probe>("sleepy").await);
    t.advance(Duration::from_secs(10)).await;
    assert_eq!(p.rings().await.unwrap().len(), 1);

    p.ring_after("after-crash".into(), 10_000).await.unwrap();
    t.crash().await;
    let p = t.get::<Probe>("sleepy");
    t.advance(Duration::from_secs(10)).await;
    let keys: Vec<String> = p.rings().await.unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(keys, vec!["k".to_string(), "after-crash".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_downtime_a_recurring_alarm_fires_once_not_once_per_missed_period() {
    let mut t = harness().await;
    let p = t.get::<Probe>("beat");
    let start = ms(t.now());
    p.ring_every("tick".into(), 10_000).await.unwrap();
    t.advance(Duration::from_secs(10)).await;
    assert_eq!(p.rings().await.unwrap().len(), 1);
    // Down for 35 s: the periods due at +20 s, +30 s and +40 s are missed.
    t.crash_for(Duration::from_secs(35)).await;
    t.settle().await;
    let p = t.get::<Probe>("beat");
    let rings = p.rings().await.unwrap();
    assert_eq!(rings.len(), 2, "{rings:?}");
    assert_eq!(rings[1].2, start + 45_000, "fired once, on start");
    // The beat resumes at the next period boundary.
    t.advance(Duration::from_secs(5)).await;
    assert_eq!(p.rings().await.unwrap().len(), 3);
    assert_eq!(p.rings().await.unwrap()[2].2, start + 50_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_all_erases_storage_and_alarms() {
    let t = harness().await;
    let p = t.get::<Probe>("wiped");
    p.put("x".into(), 1).await.unwrap();
    p.ring_after("k".into(), 1_000).await.unwrap();
    p.wipe().await.unwrap();
    assert!(p.pending().await.unwrap().is_empty());
    assert_eq!(p.get("x".into()).await.unwrap(), None);
    t.advance(Duration::from_secs(5)).await;
    assert!(p.rings().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdue_alarms_are_delivered_oldest_first() {
    let mut t = TestHost::start(|h| {
        durable_tests::register_all(h).alarm_config(durable::AlarmConfig {
            max_in_flight: 1,
            ..Default::default()
        })
    })
    .await;
    let base = ms(t.now()) + 1_000;
    // Scheduled in a shuffled order, due one second apart.
    let order = [7u64, 2, 9, 0, 5, 3, 8, 1, 6, 4];
    for i in order {
        t.get::<Probe>(&format!("o{i}"))
            .ring_at("k".into(), base + i * 1_000, 0)
            .await
            .unwrap();
    }
    t.crash_for(Duration::from_secs(3600)).await;
    t.settle().await;
    let mut delivery = Vec::new();
    for i in 0..10u64 {
        let seqs = t.get::<Probe>(&format!("o{i}")).ring_seqs().await.unwrap();
        assert_eq!(seqs.len(), 1, "o{i} fired once");
        delivery.push((seqs[0], i));
    }
    delivery.sort();
    let by_delivery: Vec<u64> = delivery.into_iter().map(|(_, i)| i).collect();
    assert_eq!(
        by_delivery,
        (0..10).collect::<Vec<_>>(),
        "delivered in due order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_before_the_due_time_then_restart_after_it_fires_promptly_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let p = client.get::<Probe>("hold");
    let due = ms(SystemTime::now()) + 2_000;
    p.ring_at("release".into(), due, 0).await.unwrap();
    host.kill9();
    // Stay down past the due time.
    let wait = due.saturating_sub(ms(SystemTime::now())) + 200;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let started = std::time::Instant::now();
    let host = HostProcess::start(dir.path(), &[]);
    let p = host.client().await.get::<Probe>("hold");
    loop {
        let rings = p.rings().await.unwrap();
        if !rings.is_empty() {
            assert_eq!(rings.len(), 1);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the overdue alarm did not fire within a second of start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And it does not fire again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.rings().await.unwrap().len(), 1);
}

/// Whether the host's alarm index (`alarms.db`, read beside the running host) holds a
/// row for any object.
fn index_rows(data_dir: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("alarms.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row("SELECT count(*) FROM due", [], |r| r.get(0))
        .unwrap()
}

/// An alarm's handler ran, but the host was killed (`kill -9`) while its batch waited
/// for the log: the alarm was never consumed, and runs after the restart. The host's
/// index of due times is what start-up loads; the batch's record never reached the
/// log, so replay does not correct it. Raising (or removing) an object's due time in
/// the index before the batch that consumed the alarm was durable lost the alarm for
/// good. The log writer is frozen (a cgroup freezer holds that one thread) so that the
/// batch cannot become durable before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_whose_run_was_not_durable_at_kill_dash_nine_runs_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let due = ms(SystemTime::now()) + 3_000;
    host.client()
        .await
        .get::<Probe>("unlogged")
        .ring_at("k".into(), due, 0)
        .await
        .unwrap();
    // A clean stop checkpoints: the scheduling leaves the log, so that replay after the
    // crash below has nothing of this object to republish.
    assert!(host.terminate().success());
    assert_eq!(index_rows(dir.path()), 1);

    let mut host = HostProcess::start(dir.path(), &["--http", "127.0.0.1:0"]);
    let pid = host.child.id();
    let writer = common::FrozenThread::freeze(pid, "durable-log-wri");
    let token = common::token(&host);
    let http = host.http.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The alarm's turn started (its lateness was recorded)...
    loop {
        let metrics = common::metrics_at(http, &token).await;
        let started = metrics.lines().any(|l| {
            l.starts_with("durable_alarm_lateness_seconds_count")
                && l.split_whitespace().last() != Some("0")
        });
        if started {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the alarm's turn never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and its batch, committed to the object's transaction, went to the frozen log
    // writer within a millisecond or so; the shard updates the index as it commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows_at_kill = index_rows(dir.path());
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // The frozen thread dies as it thaws, without writing.
    writer.thaw();
    host.child.wait().unwrap();
    drop(writer);

    let started = std::time::Instant::now();
    let host = HostProcess::start(dir.path(), &[]);
    let p = host.client().await.get::<Probe>("unlogged");
    loop {
        let rings = p.rings().await.unwrap();
        if !rings.is_empty() {
            assert_eq!(rings.len(), 1, "{rings:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the alarm whose run was lost never ran again (index rows at the kill: \
             {rows_at_kill}; pending in the object: {:?})",
            p.pending().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A restore brings back an alarm the same batch cancelled (the object holds both
/// calls: they queue behind a busy turn and run as one batch). The index must end with
/// the restored alarm, not with the cancel's "none" held back until its batch was
/// durable: after `kill -9` and a restart the alarm fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_brought_back_by_a_restore_fires_after_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let p = client.get::<Probe>("restored");
    let due = ms(SystemTime::now()) + 2_500;
    p.ring_at("k".into(), due, 0).await.unwrap();
    let bookmark = p.bookmark().await.unwrap().unwrap();
    let busy = {
        let p = p.clone();
        tokio::spawn(async move { p.sleep(300).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cancel = {
        let p = p.clone();
        tokio::spawn(async move { p.unring("k".into()).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let restore = {
        let p = p.clone();
        tokio::spawn(async move { p.restore(bookmark).await })
    };
    busy.await.unwrap().unwrap();
    assert!(cancel.await.unwrap().unwrap(), "the alarm was pending");
    restore.await.unwrap().unwrap();
    assert_eq!(p.pending().await.unwrap(), vec!["k".to_string()]);
    host.kill9();

    let host = HostProcess::start(dir.path(), &[]);
    let p = host.client().await.get::<Probe>("restored");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.rings().await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the restored alarm never fired (pending: {:?})",
            p.pending().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_alarms_across_a_thousand_objects_due_in_one_second_all_fire() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    // Activate the objects first, so that scheduling is quick and the lead time short.
    let activating = std::time::Instant::now();
    let mut tasks = Vec::new();
    for chunk in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let p = client.get::<Probe>(&format!("m{}", chunk * 20 + i));
                p.pending().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Scheduling takes about as long as activating did: leave it three times that (a
    // busy machine runs both slowly), and at least 5 s.
    let lead = (activating.elapsed().as_millis() as u64 * 3).max(5_000);
    let due = ms(SystemTime::now()) + lead;
    let mut tasks = Vec::new();
    for chunk in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let p = client.get::<Probe>(&format!("m{}", chunk * 20 + i));
                p.ring_many_at(10, due + (i as u64 * 37) % 1000)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        ms(SystemTime::now()) < due,
        "scheduling took too long for the test to mean anything"
    );
    // Wait until the due second has passed, then collect.
    tokio::time::sleep(Duration::from_millis(due + 1_000 - ms(SystemTime::now()))).await;
    let mut lateness = Vec::with_capacity(10_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for o in 0..1000u64 {
        let p = client.get::<Probe>(&format!("m{o}"));
        let own_due = due + ((o % 20) * 37) % 1000;
        loop {
            let rings = p.rings().await.unwrap();
            if rings.len() == 10 {
                lateness.extend(rings.iter().map(|r| r.2 as i64 - own_due as i64));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "m{o} fired {} of 10",
                rings.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(lateness.len(), 10_000);
    assert!(lateness.iter().all(|l| *l >= 0), "an alarm fired early");
    lateness.sort_unstable();
    println!(
        "alarm lateness over 10,000 alarms: median {} ms, p99 {} ms, max {} ms",
        lateness[5_000], lateness[9_900], lateness[9_999]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seat_hold_made_for_two_seconds_is_released_once_after_kill_dash_nine_and_a_late_restart()
{
    use durable_examples::reservation::{Flight, SeatStatus};
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let flight = host.client().await.get::<Flight>("LH400");
    flight.hold(14, "ada".into(), 2).await.unwrap();
    assert!(matches!(
        flight.status(14).await.unwrap(),
        SeatStatus::Held { .. }
    ));
    let due = std::time::Instant::now() + Duration::from_secs(2);
    host.kill9();
    // Restart only after the hold has ended.
    tokio::time::sleep_until((due + Duration::from_millis(300)).into()).await;
    let started = std::time::Instant::now();
    let host = HostProcess::start(dir.path(), &[]);
    let flight = host.client().await.get::<Flight>("LH400");
    while flight.releases(14).await.unwrap() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not released within a second of start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(flight.status(14).await.unwrap(), SeatStatus::Free);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        flight.releases(14).await.unwrap(),
        1,
        "the release ran exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_scheduled_by_the_constructor_fires_after_eviction() {
    use durable_tests::Starter;
    let t = harness().await;
    let s = t.get::<Starter>("s");
    assert_eq!(s.boots().await.unwrap(), 0);
    assert_eq!(t.pending_alarms::<Starter>("s").len(), 1);
    assert!(t.evict::<Starter>("s").await);
    t.advance(Duration::from_secs(2)).await;
    assert_eq!(s.boots().await.unwrap(), 1);
}

/// Alarms due together run in one wake. A handler that cancels, or moves, an alarm
/// due in that same wake is obeyed: the cancelled one does not run, the moved one
/// runs at its new time, not now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_cancelling_or_moving_an_alarm_due_in_the_same_wake_is_obeyed() {
    let t = harness().await;
    let p = t.get::<Probe>("same-wake");
    let due = ms(t.now()) + 1_000;
    // All due at once (ties run in key order: the cancelling and moving rings first).
    p.ring_at("cancel:victim".into(), due, 0).await.unwrap();
    p.ring_at("move:moved".into(), due, 0).await.unwrap();
    p.ring_at("victim".into(), due, 0).await.unwrap();
    p.ring_at("moved".into(), due, 0).await.unwrap();
    t.advance(Duration::from_millis(1_000)).await;
    let keys: Vec<String> = p.rings().await.unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(
        keys,
        vec!["cancel:victim".to_string(), "move:moved".to_string()]
    );
    assert_eq!(p.pending().await.unwrap(), vec!["moved".to_string()]);
    // The moved one rings an hour on.
    t.advance(Duration::from_secs(3_600)).await;
    let keys: Vec<String> = p.rings().await.unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(keys.last().map(String::as_str), Some("moved"));
    assert_eq!(keys.len(), 3, "{keys:?}");
}

/// A handler that fails after a slow call waits its backoff from the failure, not from
/// the wake's start (from which the backoff would already have passed, and every retry
/// would follow at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backoff_after_a_slow_failing_handler_counts_from_its_failure() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let p = host.client().await.get::<Probe>("slow");
    // Fails its first attempt after 1.5 s, rings on the second (default backoff 1 s).
    p.ring_at("slow:k".into(), ms(SystemTime::now()) + 100, 1)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while p.rings().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "it never rang");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempts = p.attempts().await.unwrap();
    assert_eq!(attempts.iter().map(|a| a.1).collect::<Vec<_>>(), vec![1, 2]);
    let gap = attempts[1].2 - attempts[0].2;
    // 1.5 s of the failing attempt, then 1 s of backoff (a few ms of slack for whole ms).
    assert!(
        gap >= 2_490,
        "the second attempt began {gap} ms after the first"
    );
}
