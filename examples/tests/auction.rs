//! `Auction` under the test harness. The first test is the harness's documentation
//! example: open, bid, move the virtual clock to the end, and the `close` alarm has
//! fixed the winner.

use durable::testing::TestHost;
use durable::CallError;
use durable_examples::auction::{Auction, AuctionError, AuctionState, Bid};
use std::time::Duration;

fn app(e: AuctionError) -> CallError<AuctionError> {
    CallError::Application(e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auction_closes_at_its_end_time() {
    let t = TestHost::start(|h| h.register::<Auction>()).await;
    let lot = t.get::<Auction>("lot-7");
    lot.open(3600, 100).await.unwrap();
    lot.bid("ada".into(), 120).await.unwrap();
    t.advance(Duration::from_secs(3600)).await; // the `close` alarm fires
    let winner = Some(Bid {
        user: "ada".into(),
        amount: 120,
    });
    assert_eq!(lot.status().await.unwrap(), AuctionState::Closed { winner });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bids_must_beat_the_reserve_and_the_high_bid_before_the_end() {
    let mut t = TestHost::start(|h| h.register::<Auction>()).await;
    let lot = t.get::<Auction>("lot-8");
    assert_eq!(
        lot.bid("ada".into(), 10).await,
        Err(app(AuctionError::NotOpen))
    );
    assert_eq!(lot.status().await.unwrap(), AuctionState::NotOpen);
    let ends = lot.open(600, 50).await.unwrap();
    assert_eq!(ends, t.now() + Duration::from_secs(600));
    assert_eq!(
        lot.open(600, 50).await,
        Err(app(AuctionError::AlreadyOpened))
    );

    assert_eq!(
        lot.bid("ada".into(), 49).await,
        Err(app(AuctionError::TooLow { minimum: 50 }))
    );
    assert_eq!(lot.bid("ada".into(), 50).await, Ok(50));
    assert_eq!(
        lot.bid("bob".into(), 50).await,
        Err(app(AuctionError::TooLow { minimum: 51 }))
    );
    assert_eq!(lot.bid("bob".into(), 75).await, Ok(75));
    let high = Some(Bid {
        user: "bob".into(),
        amount: 75,
    });
    assert_eq!(
        lot.status().await.unwrap(),
        AuctionState::Open {
            ends,
            high: high.clone()
        }
    );

    // The high bid and the end survive a crash; the alarm still closes on time.
    t.advance(Duration::from_secs(300)).await;
    t.crash().await;
    let lot = t.get::<Auction>("lot-8");
    t.advance(Duration::from_millis(299_999)).await;
    assert_eq!(lot.bid("ada".into(), 80).await, Ok(80));
    t.advance(Duration::from_millis(1)).await;
    assert_eq!(
        lot.bid("bob".into(), 90).await,
        Err(app(AuctionError::Closed))
    );
    let winner = Some(Bid {
        user: "ada".into(),
        amount: 80,
    });
    assert_eq!(lot.status().await.unwrap(), AuctionState::Closed { winner });
    let closed: i64 = t
        .storage::<Auction>("lot-8")
        .query_row("SELECT closed FROM auction", [], |r| r.get(0))
        .unwrap();
    assert_eq!(closed, 1, "the close alarm ran");
}
