//! `kill -9` of the host while clients increment: after a restart every value any
//! client was told is still there, and nothing was applied twice.

mod common;

use common::{load_until_killed, HostProcess, Told};
use durable_examples::counter::Counter;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let objects = 8;
    // name -> (highest value a client was told, number of calls sent)
    let told = Told::default();
    for round in 0..3 {
        let host = HostProcess::start(dir.path(), &[]);
        let client = host.client().await;
        // Everything acknowledged in earlier rounds survived the kill.
        let before = told.lock().unwrap().clone();
        for (name, (acked, sent)) in before {
            let value = client.get::<Counter>(&name).get().await.unwrap();
            assert!(
                value >= acked,
                "round {round}: {name} = {value}, but a client was told {acked}"
            );
            assert!(
                value <= sent,
                "round {round}: {name} = {value}, more than the {sent} increments sent"
            );
        }
        // Load on the counters, then kill the host mid-flight.
        load_until_killed(host, "c", objects, 16, Duration::from_millis(400), &told).await;
    }
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let told = told.lock().unwrap().clone();
    assert_eq!(told.len(), objects);
    for (name, (acked, sent)) in told {
        assert!(acked > 0, "{name} never acknowledged anything");
        let value = client.get::<Counter>(&name).get().await.unwrap();
        assert!(
            value >= acked && value <= sent,
            "{name} = {value}, told {acked}, sent {sent}"
        );
    }
    // A clean stop exits 0.
    assert!(host.terminate().success());
}
