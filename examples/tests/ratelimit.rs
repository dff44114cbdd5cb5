//! `RateLimiter` under the test harness: a bucket allows its capacity, then limits,
//! and refills with (virtual) time; its state survives eviction and crashes.

use durable::testing::TestHost;
use durable::CallError;
use durable_examples::ratelimit::{Decision, RateLimitError, RateLimiter, RateLimiterClient};
use std::time::Duration;

async fn harness() -> TestHost {
    TestHost::start(|h| h.register::<RateLimiter>()).await
}

async fn allowed(limiter: &RateLimiterClient, hits: u32) -> Vec<u32> {
    let mut remaining = Vec::new();
    for _ in 0..hits {
        match limiter.hit().await.unwrap() {
            Decision::Allowed { remaining: r } => remaining.push(r),
            Decision::Limited { .. } => break,
        }
    }
    remaining
}

fn limited(after: Duration) -> Decision {
    Decision::Limited { retry_after: after }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_defaults_allow_ten_per_minute_then_limit() {
    let t = harness().await;
    let limiter = t.get::<RateLimiter>("ada");
    assert_eq!(
        allowed(&limiter, 10).await,
        (0..10).rev().collect::<Vec<_>>()
    );
    // One token per 6 s.
    assert_eq!(
        limiter.hit().await.unwrap(),
        limited(Duration::from_secs(6))
    );
    t.advance(Duration::from_secs(2)).await;
    assert_eq!(
        limiter.hit().await.unwrap(),
        limited(Duration::from_secs(4))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_refills_over_time_up_to_its_capacity() {
    let t = harness().await;
    let limiter = t.get::<RateLimiter>("ada");
    assert_eq!(allowed(&limiter, 10).await.len(), 10);
    // Limited hits take nothing.
    for _ in 0..5 {
        assert!(matches!(
            limiter.hit().await.unwrap(),
            Decision::Limited { .. }
        ));
    }
    t.advance(Duration::from_millis(5_999)).await;
    assert!(matches!(
        limiter.hit().await.unwrap(),
        Decision::Limited { .. }
    ));
    t.advance(Duration::from_millis(1)).await;
    assert_eq!(
        limiter.hit().await.unwrap(),
        Decision::Allowed { remaining: 0 }
    );
    assert!(matches!(
        limiter.hit().await.unwrap(),
        Decision::Limited { .. }
    ));

    // A long pause fills the bucket, but never beyond its capacity.
    t.advance(Duration::from_secs(3600)).await;
    assert_eq!(allowed(&limiter, 20).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_sets_capacity_and_rate() {
    let t = harness().await;
    let limiter = t.get::<RateLimiter>("api-token-7");
    limiter.configure(3, 1).await.unwrap();
    assert_eq!(allowed(&limiter, 5).await, vec![2, 1, 0]);
    // 3 per second: a token every 333.3 ms, rounded up.
    assert_eq!(
        limiter.hit().await.unwrap(),
        limited(Duration::from_millis(334))
    );
    t.advance(Duration::from_millis(333)).await;
    assert_eq!(
        limiter.hit().await.unwrap(),
        limited(Duration::from_millis(1))
    );
    t.advance(Duration::from_millis(1)).await;
    assert_eq!(
        limiter.hit().await.unwrap(),
        Decision::Allowed { remaining: 0 }
    );

    // Each key is its own object.
    assert_eq!(allowed(&t.get::<RateLimiter>("other"), 20).await.len(), 10);

    for (capacity, per_secs) in [(0, 60), (10, 0), (10, 8 * 24 * 3600)] {
        assert!(matches!(
            limiter.configure(capacity, per_secs).await,
            Err(CallError::Application(RateLimitError::Invalid(_)))
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_survives_eviction_and_crashes() {
    let mut t = harness().await;
    let limiter = t.get::<RateLimiter>("ada");
    limiter.configure(6, 60).await.unwrap();
    assert_eq!(allowed(&limiter, 2).await.len(), 2);
    assert!(t.evict::<RateLimiter>("ada").await);
    assert_eq!(allowed(&limiter, 2).await.len(), 2);
    t.crash().await;
    let limiter = t.get::<RateLimiter>("ada");
    assert_eq!(allowed(&limiter, 10).await, vec![1, 0]);
    t.advance(Duration::from_secs(10)).await;
    assert_eq!(allowed(&limiter, 10).await, vec![0]);
}
