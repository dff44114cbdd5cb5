//! Lanes: a host names one QUIC endpoint per shard thread after the hello; each takes
//! the same hello and the same calls as the host's address, and calls on any of them
//! reach the same objects.

mod common;

use common::{exchange_bytes, hello, raw_connection, raw_connection_to, token, HostProcess};
use durable::wire::{self, CallRequest, Request, Response, WireError};
use durable::ObjectId;
use durable_examples::counter::Counter;
use std::net::SocketAddr;

async fn ask(conn: &quinn::Connection, request: &Request) -> Response {
    let answer = exchange_bytes(conn, &wire::encode_frame(request)).await;
    wire::decode_frame(&answer, 1 << 20).unwrap()
}

fn increment(name: &str, by: i64) -> Request {
    Request::Call(CallRequest {
        request_id: wire::new_request_id(),
        class: "Counter".into(),
        object: ObjectId::from_name("Counter", name),
        name: Some(name.into()),
        method: "increment".into(),
        fingerprint: common::method_fingerprint::<Counter>("increment"),
        timeout_ms: 5_000,
        args: postcard::to_allocvec(&(by,)).unwrap(),
    })
}

fn returned(response: Response) -> i64 {
    match response {
        Response::Return(bytes) => postcard::from_bytes(&bytes).unwrap(),
        other => panic!("expected a return, got {other:?}"),
    }
}

async fn lanes_of(host: &HostProcess) -> Vec<u16> {
    let conn = raw_connection(host).await;
    assert_eq!(hello(&conn, &token(host)).await, Response::Welcome);
    match ask(&conn, &Request::Lanes).await {
        Response::Lanes(ports) => ports,
        other => panic!("expected the lanes, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_names_one_lane_per_shard_and_each_serves_any_call_after_a_hello() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--shards", "3"]);
    let ports = lanes_of(&host).await;
    assert_eq!(ports.len(), 3, "one lane per shard: {ports:?}");
    assert!(ports.iter().all(|p| *p != 0 && *p != host.addr.port()));
    let mut distinct = ports.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ports:?}");

    let mut expected = 0;
    for port in &ports {
        let addr = SocketAddr::new(host.addr.ip(), *port);
        // A lane checks the hello like the address: a call first, or a wrong token,
        // is refused and touches nothing.
        let conn = raw_connection_to(&host, addr).await.unwrap();
        assert_eq!(
            ask(&conn, &increment("shared", 100)).await,
            Response::Error(WireError::Unauthenticated)
        );
        let conn = raw_connection_to(&host, addr).await.unwrap();
        assert_eq!(
            hello(&conn, "not the token").await,
            Response::Error(WireError::Unauthenticated)
        );
        // After the hello: any object, whichever shard owns it, on any lane.
        let conn = raw_connection_to(&host, addr).await.unwrap();
        assert_eq!(hello(&conn, &token(&host)).await, Response::Welcome);
        for name in ["shared", "a", "b", "c", "d"] {
            let n = returned(ask(&conn, &increment(name, 1)).await);
            if name == "shared" {
                expected += 1;
                assert_eq!(
                    n, expected,
                    "one object, whichever lane the call came in on"
                );
            }
        }
    }
    // The address sees what the lanes wrote.
    let client = host.client().await;
    assert_eq!(client.get::<Counter>("shared").get().await.unwrap(), 3);
    assert_eq!(client.get::<Counter>("a").get().await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lanes_off_the_host_names_none_and_the_client_calls_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--lanes", "off"]);
    assert_eq!(lanes_of(&host).await, Vec::<u16>::new());
    let client = host.client().await;
    for i in 0..20 {
        let counter = client.get::<Counter>(&format!("o{i}"));
        assert_eq!(counter.increment(2).await.unwrap(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeps_calling_across_a_restart_that_moves_the_lanes() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let before = lanes_of(&host).await;
    let client = host.client().await;
    let names: Vec<String> = (0..16).map(|i| format!("r{i}")).collect();
    for name in &names {
        assert_eq!(client.get::<Counter>(name).increment(1).await.unwrap(), 1);
    }
    let addr = host.addr;
    host.kill9();
    // Its lanes' ports die with it; a restarted host picks new ones.
    let host = HostProcess::start_on(dir.path(), addr);
    let after = lanes_of(&host).await;
    assert_ne!(before, after, "a restarted host has new lanes");
    for name in &names {
        assert_eq!(client.get::<Counter>(name).increment(1).await.unwrap(), 2);
    }
}
