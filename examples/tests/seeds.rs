//! The event log, lock coordinator and device twin examples under the test harness
//! (virtual clock): ranges read back in order, idempotent appends, leases that expire
//! and fence, twins that converge and ignore stale reports; all across a crash.

use durable::testing::TestHost;
use durable::CallError;
use durable_examples::eventlog::EventLog;
use durable_examples::lock::{LockError, LockTable};
use durable_examples::twin::DeviceTwin;
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_appends_once_per_event_id_and_reads_ranges_in_order() {
    let mut t = TestHost::start(|h| h.register::<EventLog>()).await;
    let log = t.get::<EventLog>("orders");
    for i in 1..=30u64 {
        assert_eq!(
            log.append(format!("e{i}"), format!("body {i}"))
                .await
                .unwrap(),
            i
        );
    }
    // A producer's retry of e7 (even under a new request id) appends nothing.
    assert_eq!(log.append("e7".into(), "body 7".into()).await.unwrap(), 7);
    assert_eq!(log.last().await.unwrap(), 30);
    let page = log.read(10, 0, 5).await.unwrap();
    let seqs: Vec<u64> = page.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [10, 11, 12, 13, 14]);
    assert_eq!(page[0].body, "body 10");
    let tail = log.read(28, 0, 100).await.unwrap();
    assert_eq!(tail.len(), 3);
    assert!(log.read(31, 0, 10).await.unwrap().is_empty());
    assert!(matches!(
        log.append(String::new(), "x".into()).await,
        Err(CallError::Application(e)) if e.kind == durable::ErrorKind::Invalid
    ));
    t.crash().await;
    let log = t.get::<EventLog>("orders");
    assert_eq!(log.last().await.unwrap(), 30);
    assert_eq!(log.append("e31".into(), "b".into()).await.unwrap(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_exclusive_renewable_and_free_once_it_runs_out() {
    let t = TestHost::start(|h| h.register::<LockTable>()).await;
    let locks = t.get::<LockTable>("jobs");
    let a = locks
        .acquire("report".into(), "worker-a".into(), 10_000)
        .await
        .unwrap();
    let refused = locks
        .acquire("report".into(), "worker-b".into(), 10_000)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, CallError::Application(LockError::Held { ref owner, .. }) if owner == "worker-a")
    );
    // Renewal keeps the fencing token and moves the expiry.
    t.advance(Duration::from_secs(8)).await;
    let renewed = locks
        .acquire("report".into(), "worker-a".into(), 10_000)
        .await
        .unwrap();
    assert_eq!(renewed.fence, a.fence);
    assert!(renewed.expires_ms > a.expires_ms);
    t.advance(Duration::from_secs(9)).await;
    assert_eq!(
        locks
            .holder_of("report".into())
            .await
            .unwrap()
            .map(|l| l.owner),
        Some("worker-a".into())
    );
    // Past the renewed lease: free, the alarm removed the row, and the next holder
    // gets a larger fencing token.
    t.advance(Duration::from_secs(2)).await;
    assert_eq!(locks.holder_of("report".into()).await.unwrap(), None);
    assert_eq!(locks.stored().await.unwrap(), 0);
    let b = locks
        .acquire("report".into(), "worker-b".into(), 5_000)
        .await
        .unwrap();
    assert!(b.fence > a.fence);
    // Only the holder releases.
    assert_eq!(
        locks.release("report".into(), "worker-a".into()).await,
        Err(CallError::Application(LockError::NotHeld))
    );
    locks
        .release("report".into(), "worker-b".into())
        .await
        .unwrap();
    assert_eq!(locks.holder_of("report".into()).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_twin_converges_and_ignores_stale_reports() {
    let mut t = TestHost::start(|h| h.register::<DeviceTwin>()).await;
    let twin = t.get::<DeviceTwin>("sensor-17");
    let want: BTreeMap<String, String> = [
        ("rate".to_string(), "10s".to_string()),
        ("mode".into(), "eco".into()),
    ]
    .into();
    assert_eq!(twin.desire(want.clone()).await.unwrap(), 1);
    let s = twin.get().await.unwrap();
    assert_eq!(s.pending, want);
    // The device applies one setting and reports.
    let half: BTreeMap<String, String> = [("rate".to_string(), "10s".to_string())].into();
    let s = twin.report(1, half).await.unwrap();
    assert_eq!(s.pending.keys().collect::<Vec<_>>(), ["mode"]);
    let s = twin.report(2, want.clone()).await.unwrap();
    assert!(s.pending.is_empty(), "in sync");
    // A delayed old report does not move the state backwards.
    let s = twin.report(1, BTreeMap::new()).await.unwrap();
    assert_eq!((s.reported_seq, s.reported.clone()), (2, want.clone()));
    t.crash().await;
    let twin = t.get::<DeviceTwin>("sensor-17");
    let s = twin.get().await.unwrap();
    assert_eq!((s.desired_version, s.reported_seq), (1, 2));
    assert!(s.pending.is_empty());
    // Removing a desired setting.
    twin.desire([("mode".to_string(), String::new())].into())
        .await
        .unwrap();
    assert_eq!(twin.get().await.unwrap().desired.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_reserves_and_charges_or_compensates_and_places_once() {
    use durable_examples::order::{Inventory, Order, OrderState, Wallet};
    let register = |h: durable::Host| {
        h.register::<Order>()
            .register::<Inventory>()
            .register::<Wallet>()
    };
    let mut t = TestHost::start(register).await;
    assert_eq!(t.get::<Inventory>("sku-1").restock(5).await.unwrap(), 5);
    assert_eq!(t.get::<Wallet>("ann").deposit(100).await.unwrap(), 100);

    // Enough stock and money: confirmed, both moved once, however often it is placed.
    for _ in 0..3 {
        let s = t
            .get::<Order>("o1")
            .place("sku-1".into(), 2, "ann".into(), 60)
            .await
            .unwrap();
        assert_eq!(s, OrderState::Confirmed);
    }
    assert_eq!(t.get::<Inventory>("sku-1").available().await.unwrap(), 3);
    assert_eq!(t.get::<Wallet>("ann").balance().await.unwrap(), 40);

    // Not enough money: the reservation is given back (compensation).
    let s = t
        .get::<Order>("o2")
        .place("sku-1".into(), 3, "ann".into(), 60)
        .await
        .unwrap();
    assert!(
        matches!(&s, OrderState::Cancelled(why) if why.contains("balance")),
        "{s:?}"
    );
    assert_eq!(t.get::<Inventory>("sku-1").available().await.unwrap(), 3);
    assert_eq!(t.get::<Wallet>("ann").balance().await.unwrap(), 40);

    // Not enough stock: nothing is charged.
    let s = t
        .get::<Order>("o3")
        .place("sku-1".into(), 9, "ann".into(), 1)
        .await
        .unwrap();
    assert!(
        matches!(&s, OrderState::Cancelled(why) if why.contains("stock")),
        "{s:?}"
    );
    assert_eq!(t.get::<Wallet>("ann").balance().await.unwrap(), 40);

    // Everything survives a crash.
    t.crash().await;
    let t = t;
    assert_eq!(
        t.get::<Order>("o1").state().await.unwrap(),
        OrderState::Confirmed
    );
    assert_eq!(t.get::<Inventory>("sku-1").available().await.unwrap(), 3);
    assert_eq!(t.get::<Wallet>("ann").balance().await.unwrap(), 40);
}
