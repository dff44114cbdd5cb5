//! `kill -9` of the host while clients increment: after a restart every value any
//! client was told is still there, and nothing was applied twice.

mod common;

use common::HostProcess;
use durable_examples::counter::Counter;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let objects = 8;
    // name -> (highest value a client was told, number of calls sent)
    let told: Arc<Mutex<HashMap<String, (i64, i64)>>> = Arc::new(Mutex::new(HashMap::new()));
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
        let mut tasks = Vec::new();
        for t in 0..16 {
            let name = format!("c{}", t % objects);
            let counter = client
                .get::<Counter>(&name)
                .with_deadline(Duration::from_secs(2));
            let told = told.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    told.lock().unwrap().entry(name.clone()).or_insert((0, 0)).1 += 1;
                    match counter.increment(1).await {
                        Ok(v) => {
                            let mut told = told.lock().unwrap();
                            let entry = told.get_mut(&name).unwrap();
                            entry.0 = entry.0.max(v);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        // Let the load build up, then kill the host mid-flight.
        tokio::time::sleep(Duration::from_millis(400)).await;
        host.kill9();
        for t in tasks {
            t.await.unwrap();
        }
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
