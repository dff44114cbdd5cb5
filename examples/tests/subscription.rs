//! `Subscription` under the test harness: a trial ends by its alarm after N days
//! unless the customer subscribed, across crashes too. Time is the virtual clock.

use durable::testing::TestHost;
use durable::CallError;
use durable_examples::subscription::{Plan, Subscription, SubscriptionError};
use std::time::Duration;

const DAY: Duration = Duration::from_secs(24 * 3600);

async fn harness() -> TestHost {
    TestHost::start(|h| h.register::<Subscription>()).await
}

fn pending_alarms(t: &TestHost, name: &str) -> i64 {
    t.storage::<Subscription>(name)
        .query_row("SELECT count(*) FROM _durable_alarms", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_expires_after_its_days_unless_subscribed() {
    let t = harness().await;
    let sub = t.get::<Subscription>("ada");
    assert_eq!(sub.status().await.unwrap(), Plan::None);
    let ends = t.now() + 14 * DAY;
    assert_eq!(sub.start_trial(14).await.unwrap(), Plan::Trial { ends });
    assert_eq!(pending_alarms(&t, "ada"), 1);

    t.advance(14 * DAY - Duration::from_millis(1)).await;
    assert_eq!(sub.status().await.unwrap(), Plan::Trial { ends });
    t.advance(Duration::from_millis(1)).await;
    assert_eq!(sub.status().await.unwrap(), Plan::Expired);
    assert_eq!(pending_alarms(&t, "ada"), 0, "the end_trial alarm ran");

    // The expiry is stored, not just computed: it survives re-activation.
    assert!(t.evict::<Subscription>("ada").await);
    assert_eq!(sub.status().await.unwrap(), Plan::Expired);
    // An expired customer can still subscribe.
    assert_eq!(sub.subscribe().await.unwrap(), Plan::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_during_the_trial_cancels_its_end() {
    let t = harness().await;
    let sub = t.get::<Subscription>("bob");
    sub.start_trial(7).await.unwrap();
    t.advance(3 * DAY).await;
    assert_eq!(sub.subscribe().await.unwrap(), Plan::Active);
    assert_eq!(pending_alarms(&t, "bob"), 0);
    t.advance(30 * DAY).await;
    assert_eq!(sub.status().await.unwrap(), Plan::Active);
    assert_eq!(sub.subscribe().await.unwrap(), Plan::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_gets_one_trial_and_subscribers_none() {
    let t = harness().await;
    let sub = t.get::<Subscription>("cy");
    assert!(matches!(
        sub.start_trial(0).await,
        Err(CallError::Application(SubscriptionError::Invalid(_)))
    ));
    sub.start_trial(1).await.unwrap();
    assert_eq!(
        sub.start_trial(1).await,
        Err(CallError::Application(SubscriptionError::TrialUsed))
    );
    t.advance(DAY).await;
    assert_eq!(
        sub.start_trial(1).await,
        Err(CallError::Application(SubscriptionError::TrialUsed))
    );

    let paying = t.get::<Subscription>("dee");
    paying.subscribe().await.unwrap();
    assert_eq!(
        paying.start_trial(1).await,
        Err(CallError::Application(SubscriptionError::AlreadySubscribed))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_still_ends_after_a_crash() {
    let mut t = harness().await;
    let ends = t.now() + DAY;
    t.get::<Subscription>("eve").start_trial(1).await.unwrap();
    t.advance(DAY / 2).await;
    t.crash().await;
    let sub = t.get::<Subscription>("eve");
    assert_eq!(sub.status().await.unwrap(), Plan::Trial { ends });
    t.advance(DAY / 2).await;
    assert_eq!(pending_alarms(&t, "eve"), 0);
    assert_eq!(sub.status().await.unwrap(), Plan::Expired);
}
