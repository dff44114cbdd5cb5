//! `SessionStore` under the test harness: sessions vanish when their time to live
//! is up (deleted by their alarm, not just hidden), touching extends them, and each
//! session expires on its own. Time is the virtual clock.

use durable::testing::TestHost;
use durable::CallError;
use durable_examples::session::{SessionError, SessionStore};
use std::time::Duration;

const STORE: &str = "web";

async fn harness() -> TestHost {
    TestHost::start(|h| h.register::<SessionStore>()).await
}

fn pending_alarms(t: &TestHost) -> i64 {
    t.storage::<SessionStore>(STORE)
        .query_row("SELECT count(*) FROM _durable_alarms", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expires_after_its_ttl() {
    let t = harness().await;
    let store = t.get::<SessionStore>(STORE);
    store.put("s1".into(), "ada".into(), 60).await.unwrap();
    assert_eq!(store.get("s1".into()).await.unwrap(), Some("ada".into()));

    t.advance(Duration::from_millis(59_999)).await;
    assert_eq!(store.get("s1".into()).await.unwrap(), Some("ada".into()));
    t.advance(Duration::from_millis(1)).await;
    assert_eq!(store.get("s1".into()).await.unwrap(), None);
    assert_eq!(store.stored().await.unwrap(), 0, "the alarm deleted it");
    assert_eq!(pending_alarms(&t), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touching_extends_a_session() {
    let t = harness().await;
    let store = t.get::<SessionStore>(STORE);
    store.put("s1".into(), "ada".into(), 60).await.unwrap();
    t.advance(Duration::from_secs(50)).await;
    assert!(store.touch("s1".into(), 60).await.unwrap());

    t.advance(Duration::from_secs(59)).await; // 109 s: past the first TTL
    assert_eq!(store.get("s1".into()).await.unwrap(), Some("ada".into()));
    assert_eq!(store.stored().await.unwrap(), 1);
    t.advance(Duration::from_secs(1)).await; // 110 s: 60 s after the touch
    assert_eq!(store.get("s1".into()).await.unwrap(), None);
    assert_eq!(store.stored().await.unwrap(), 0);

    // Nothing to touch: a missing or expired session.
    assert!(!store.touch("s1".into(), 60).await.unwrap());
    assert!(!store.touch("nobody".into(), 60).await.unwrap());
    assert_eq!(store.stored().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_independently_and_removal_cancels_the_alarm() {
    let t = harness().await;
    let store = t.get::<SessionStore>(STORE);
    store.put("a".into(), "1".into(), 10).await.unwrap();
    store.put("b".into(), "2".into(), 20).await.unwrap();
    store.put("c".into(), "3".into(), 30).await.unwrap();
    assert!(store.remove("c".into()).await.unwrap());
    assert!(!store.remove("c".into()).await.unwrap());
    assert_eq!(pending_alarms(&t), 2);

    t.advance(Duration::from_secs(10)).await;
    assert_eq!(store.get("a".into()).await.unwrap(), None);
    assert_eq!(store.get("b".into()).await.unwrap(), Some("2".into()));
    assert_eq!(store.stored().await.unwrap(), 1);
    t.advance(Duration::from_secs(10)).await;
    assert_eq!(store.stored().await.unwrap(), 0);
    assert_eq!(pending_alarms(&t), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_survives_eviction_and_crash() {
    let mut t = harness().await;
    let store = t.get::<SessionStore>(STORE);
    store.put("a".into(), "1".into(), 60).await.unwrap();
    store.put("b".into(), "2".into(), 120).await.unwrap();
    assert!(t.evict::<SessionStore>(STORE).await);
    t.advance(Duration::from_secs(60)).await;
    t.crash().await;
    let store = t.get::<SessionStore>(STORE);
    assert_eq!(store.get("a".into()).await.unwrap(), None);
    assert_eq!(store.get("b".into()).await.unwrap(), Some("2".into()));
    assert_eq!(store.stored().await.unwrap(), 1);
    t.advance(Duration::from_secs(60)).await;
    assert_eq!(store.stored().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_and_ttls_are_refused() {
    let t = harness().await;
    let store = t.get::<SessionStore>(STORE);
    for (key, ttl) in [("", 60), ("k", 0), ("k", 31 * 24 * 3600)] {
        assert!(matches!(
            store.put(key.into(), "v".into(), ttl).await,
            Err(CallError::Application(SessionError::Invalid(_)))
        ));
    }
    assert!(matches!(
        store.get("x".repeat(257)).await,
        Err(CallError::Application(SessionError::Invalid(_)))
    ));
}
