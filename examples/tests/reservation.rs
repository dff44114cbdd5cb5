//! `Flight` under the test harness: holds lapse exactly on time and are released
//! once, confirming keeps the seat and cancels the release, and neither a crash nor an
//! eviction loses a pending release. Time is the harness's virtual clock.

use durable::testing::TestHost;
use durable::CallError;
use durable_examples::reservation::{BookingError, Flight, SeatStatus};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FLIGHT: &str = "LH400";

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn harness() -> TestHost {
    TestHost::start(|h| h.register::<Flight>()).await
}

/// The flight's pending alarms, read from its database.
fn pending_alarms(t: &TestHost) -> i64 {
    t.storage::<Flight>(FLIGHT)
        .query_row("SELECT count(*) FROM _durable_alarms", [], |r| r.get(0))
        .unwrap()
}

/// When each release of `seat` ran, in milliseconds since the epoch.
fn release_times(t: &TestHost, seat: u32) -> Vec<i64> {
    let db = t.storage::<Flight>(FLIGHT);
    let mut stmt = db
        .prepare("SELECT at_ms FROM releases WHERE seat = ?1 ORDER BY at_ms")
        .unwrap();
    let rows = stmt.query_map([seat], |r| r.get(0)).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

fn held_by(user: &str, until: SystemTime) -> SeatStatus {
    SeatStatus::Held {
        user: user.into(),
        until,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_lapses_at_its_end_and_is_released_exactly_once() {
    let t = harness().await;
    let flight = t.get::<Flight>(FLIGHT);
    let until = t.now() + Duration::from_secs(120);
    let hold = flight.hold(14, "ada".into(), 120).await.unwrap();
    assert_eq!(
        (hold.seat, hold.user.as_str(), hold.until),
        (14, "ada", until)
    );
    assert_eq!(flight.status(14).await.unwrap(), held_by("ada", until));

    t.advance(Duration::from_millis(119_999)).await;
    assert_eq!(flight.status(14).await.unwrap(), held_by("ada", until));
    assert_eq!(flight.releases(14).await.unwrap(), 0);

    t.advance(Duration::from_millis(1)).await;
    assert_eq!(flight.status(14).await.unwrap(), SeatStatus::Free);
    assert_eq!(release_times(&t, 14), vec![ms(until)]);

    t.advance(Duration::from_secs(24 * 3600)).await;
    assert_eq!(flight.releases(14).await.unwrap(), 1);
    assert_eq!(pending_alarms(&t), 0);
    // The seat is free for anyone again.
    flight.hold(14, "bob".into(), 60).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_can_hold_again_and_doing_so_extends_the_hold() {
    let t = harness().await;
    let flight = t.get::<Flight>(FLIGHT);
    let start = t.now();
    flight.hold(14, "ada".into(), 60).await.unwrap();
    assert_eq!(
        flight.hold(14, "bob".into(), 60).await,
        Err(CallError::Application(BookingError::HeldByOther {
            seat: 14
        }))
    );

    t.advance(Duration::from_secs(30)).await;
    let extended = flight.hold(14, "ada".into(), 60).await.unwrap();
    assert_eq!(extended.until, start + Duration::from_secs(90));
    // A shorter re-hold never shortens it.
    let again = flight.hold(14, "ada".into(), 10).await.unwrap();
    assert_eq!(again.until, start + Duration::from_secs(90));

    // Past the first hold's end: still held, nothing released.
    t.advance(Duration::from_secs(31)).await;
    assert_eq!(
        flight.status(14).await.unwrap(),
        held_by("ada", start + Duration::from_secs(90))
    );
    assert_eq!(flight.releases(14).await.unwrap(), 0);

    t.advance(Duration::from_secs(29)).await;
    assert_eq!(flight.status(14).await.unwrap(), SeatStatus::Free);
    assert_eq!(
        release_times(&t, 14),
        vec![ms(start + Duration::from_secs(90))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirming_before_the_end_keeps_the_seat_and_cancels_the_release() {
    let t = harness().await;
    let flight = t.get::<Flight>(FLIGHT);
    flight.hold(14, "ada".into(), 120).await.unwrap();
    assert_eq!(pending_alarms(&t), 1);

    t.advance(Duration::from_secs(60)).await;
    assert_eq!(
        flight.confirm(14, "bob".into()).await,
        Err(CallError::Application(BookingError::HeldByOther {
            seat: 14
        }))
    );
    flight.confirm(14, "ada".into()).await.unwrap();
    assert_eq!(pending_alarms(&t), 0, "confirming cancels the release");
    // Confirming again is harmless; nobody else can hold the seat.
    flight.confirm(14, "ada".into()).await.unwrap();
    assert_eq!(
        flight.hold(14, "bob".into(), 60).await,
        Err(CallError::Application(BookingError::AlreadyConfirmed {
            seat: 14
        }))
    );

    t.advance(Duration::from_secs(3600)).await;
    assert_eq!(
        flight.status(14).await.unwrap(),
        SeatStatus::Confirmed { user: "ada".into() }
    );
    assert_eq!(flight.releases(14).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_hold_cannot_be_confirmed() {
    let t = harness().await;
    let flight = t.get::<Flight>(FLIGHT);
    flight.hold(14, "ada".into(), 60).await.unwrap();
    t.advance(Duration::from_secs(60)).await;
    assert_eq!(
        flight.confirm(14, "ada".into()).await,
        Err(CallError::Application(BookingError::NotHeld {
            seat: 14,
            user: "ada".into()
        }))
    );
    assert_eq!(flight.status(14).await.unwrap(), SeatStatus::Free);
    assert_eq!(
        flight.hold(14, "ada".into(), 0).await,
        Err(CallError::Application(BookingError::Invalid(
            "a hold lasts from 1 to 86400 seconds, not 0".into()
        )))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seats_are_released_independently_each_at_its_own_end() {
    let t = harness().await;
    let flight = t.get::<Flight>(FLIGHT);
    let start = t.now();
    flight.hold(1, "ada".into(), 10).await.unwrap();
    flight.hold(2, "bob".into(), 20).await.unwrap();
    flight.hold(3, "cy".into(), 30).await.unwrap();
    flight.confirm(3, "cy".into()).await.unwrap();

    t.advance(Duration::from_secs(10)).await;
    assert_eq!(flight.status(1).await.unwrap(), SeatStatus::Free);
    assert_eq!(
        flight.status(2).await.unwrap(),
        held_by("bob", start + Duration::from_secs(20))
    );
    t.advance(Duration::from_secs(3600)).await;
    assert_eq!(flight.status(2).await.unwrap(), SeatStatus::Free);
    assert_eq!(
        flight.status(3).await.unwrap(),
        SeatStatus::Confirmed { user: "cy".into() }
    );
    assert_eq!(release_times(&t, 1), vec![ms(start) + 10_000]);
    assert_eq!(release_times(&t, 2), vec![ms(start) + 20_000]);
    assert_eq!(release_times(&t, 3), Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_end_still_releases_on_time_afterwards() {
    let mut t = harness().await;
    let until = t.now() + Duration::from_secs(120);
    t.get::<Flight>(FLIGHT)
        .hold(14, "ada".into(), 120)
        .await
        .unwrap();
    t.advance(Duration::from_secs(60)).await;

    t.crash().await;
    let flight = t.get::<Flight>(FLIGHT);
    assert_eq!(flight.status(14).await.unwrap(), held_by("ada", until));
    t.advance(Duration::from_millis(59_999)).await;
    assert_eq!(flight.status(14).await.unwrap(), held_by("ada", until));
    t.advance(Duration::from_millis(1)).await;
    assert_eq!(flight.status(14).await.unwrap(), SeatStatus::Free);
    assert_eq!(release_times(&t, 14), vec![ms(until)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_does_not_lose_the_release() {
    let t = harness().await;
    let until = t.now() + Duration::from_secs(120);
    let flight = t.get::<Flight>(FLIGHT);
    flight.hold(14, "ada".into(), 120).await.unwrap();
    assert!(t.evict::<Flight>(FLIGHT).await);

    // The alarm re-activates the object on its own: no call in between.
    t.advance(Duration::from_secs(120)).await;
    assert_eq!(release_times(&t, 14), vec![ms(until)]);
    assert_eq!(flight.status(14).await.unwrap(), SeatStatus::Free);
    assert_eq!(flight.releases(14).await.unwrap(), 1);
}
