//! Lanes: a host names one QUIC endpoint per shard thread after the hello; each takes
//! the same hello and the same calls as the host's address, and calls on any of them
//! reach the same objects.

mod common;

use common::{
    exchange_bytes, hello, metrics_at, raw_connection, raw_connection_to, token, HostProcess,
};
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

/// How many connections authenticated on `endpoint` (`address` or `lane`), from the
/// metrics of the host whose HTTP gateway is at `http`.
async fn connections_at(http: SocketAddr, token: &str, endpoint: &str) -> f64 {
    let text = metrics_at(http, token).await;
    let series = format!("durable_connections_total{{endpoint=\"{endpoint}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// [`connections_at`] for a host process started with `--http`.
async fn connections(host: &HostProcess, endpoint: &str) -> f64 {
    let http = host.http.expect("the host was started with --http");
    connections_at(http, &token(host), endpoint).await
}

/// Wait (up to 10 s) until `endpoint` of the host whose gateway is at `http` has
/// counted `n` connections.
async fn until_connections_at(http: SocketAddr, token: &str, endpoint: &str, n: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = connections_at(http, token, endpoint).await;
        if now == n {
            return;
        }
        assert!(
            now < n && std::time::Instant::now() < deadline,
            "{now} connections on {endpoint}, expected {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// [`until_connections_at`] for a host process started with `--http`.
async fn until_connections(host: &HostProcess, endpoint: &str, n: f64) {
    let http = host.http.expect("the host was started with --http");
    until_connections_at(http, &token(host), endpoint, n).await
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
    let host = HostProcess::start(dir.path(), &["--shards", "2", "--http", "127.0.0.1:0"]);
    let before = lanes_of(&host).await;
    let client = host.client().await;
    let names: Vec<String> = (0..16).map(|i| format!("r{i}")).collect();
    for round in 1..=4 {
        for name in &names {
            assert_eq!(
                client.get::<Counter>(name).increment(1).await.unwrap(),
                round
            );
        }
    }
    // Calls enough for both lanes: the client is on them when the host dies.
    until_connections(&host, "lane", 2.0).await;
    let addr = host.addr;
    host.kill9();
    // Its lanes' ports die with it; a restarted host picks new ones.
    let host = HostProcess::start_on(dir.path(), addr);
    let after = lanes_of(&host).await;
    assert_ne!(before, after, "a restarted host has new lanes");
    for name in &names {
        assert_eq!(client.get::<Counter>(name).increment(1).await.unwrap(), 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connects_a_lane_only_once_it_has_calls_enough_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--shards", "2", "--http", "127.0.0.1:0"]);
    let client = host.client().await;
    // A few calls, as from a command-line tool: a lane's handshake (a millisecond of its
    // shard thread's CPU) would not pay for itself.
    for i in 0..8 {
        assert_eq!(
            client
                .get::<Counter>(&format!("few{i}"))
                .increment(1)
                .await
                .unwrap(),
            1
        );
    }
    assert_eq!(connections(&host, "address").await, 1.0);
    assert_eq!(
        connections(&host, "lane").await,
        0.0,
        "no lane for eight calls"
    );
    // Many calls over objects of both shards: each lane is connected, once.
    for i in 0..200 {
        let counter = client.get::<Counter>(&format!("many{}", i % 20));
        assert_eq!(counter.increment(1).await.unwrap(), 1 + i / 20);
    }
    until_connections(&host, "lane", 2.0).await;
    for i in 0..100 {
        client
            .get::<Counter>(&format!("many{}", i % 20))
            .increment(1)
            .await
            .unwrap();
    }
    assert_eq!(connections(&host, "lane").await, 2.0);
    assert_eq!(connections(&host, "address").await, 1.0);
}

/// Forward UDP datagrams from `listen` to `to` and back (one socket toward `to` per
/// peer): the host's address seen through a port mapping, which its lanes are not.
async fn relay(listen: SocketAddr, to: SocketAddr) -> SocketAddr {
    use std::collections::HashMap;
    use std::sync::Arc;
    use tokio::net::UdpSocket;
    let front = Arc::new(UdpSocket::bind(listen).await.unwrap());
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut peers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, peer)) = front.recv_from(&mut buf).await else {
                return;
            };
            let back = match peers.get(&peer) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    s.connect(to).await.unwrap();
                    let (s2, front) = (s.clone(), front.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(n) = s2.recv(&mut buf).await {
                            let _ = front.send_to(&buf[..n], peer).await;
                        }
                    });
                    peers.insert(peer, s.clone());
                    s
                }
            };
            let _ = back.send(&buf[..n]).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_the_client_cannot_reach_cost_its_calls_no_wait() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--shards", "2"]);
    assert_eq!(lanes_of(&host).await.len(), 2);
    // The client reaches the host at 127.0.0.2 through the relay; the lanes it is told
    // of are at 127.0.0.2 too, where nothing listens (the host is on 127.0.0.1).
    let front = relay("127.0.0.2:0".parse().unwrap(), host.addr).await;
    for port in lanes_of(&host).await {
        let far = SocketAddr::new(front.ip(), port);
        let tried = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            raw_connection_to(&host, far),
        );
        assert!(
            !matches!(tried.await, Ok(Ok(_))),
            "the lane at {far} must be out of reach"
        );
    }
    let config = durable::ClientConfig::from_data_dir(front, &host.data_dir).unwrap();
    let client = durable::Client::connect(config).await.unwrap();
    let start = std::time::Instant::now();
    let mut slowest = std::time::Duration::ZERO;
    // Past the calls a lane must have before the client tries it, the tries (up to 3 s
    // each to give up) run while the calls go on.
    for i in 0..120 {
        let call = std::time::Instant::now();
        let counter = client.get::<Counter>(&format!("far{}", i % 8));
        assert_eq!(counter.increment(1).await.unwrap(), 1 + i / 8);
        slowest = slowest.max(call.elapsed());
    }
    // Connecting to a lane takes up to 3 s to give up; no call waited for it.
    assert!(
        slowest < std::time::Duration::from_millis(1000),
        "slowest call {slowest:?} (all: {:?})",
        start.elapsed()
    );
}

/// The names of this process's threads that are a host's shards.
fn shard_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .filter(|c| c.starts_with("durable-shard"))
        .collect()
}

/// A host dropped without a shutdown, with a client still connected to its lanes, lets
/// its shard threads end once its runtime does (the lanes' tasks, which run on those
/// threads, would otherwise keep them alive for good).
#[test]
fn a_host_dropped_without_a_shutdown_lets_its_shard_threads_end() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let host = durable::Host::builder(dir.path())
            .register::<Counter>()
            .with_limits(|l| l.shards = 2)
            .http("127.0.0.1:0".parse().unwrap())
            .start()
            .await
            .unwrap();
        assert_eq!(host.lane_addrs().len(), 2);
        let client = durable::Client::connect(host.client_config().unwrap())
            .await
            .unwrap();
        // Calls enough on every lane that each has a connection open.
        for i in 0..16 {
            let counter = client.get::<Counter>(&format!("d{i}"));
            for _ in 0..8 {
                counter.increment(1).await.unwrap();
            }
        }
        let token = std::fs::read_to_string(dir.path().join("tls/token")).unwrap();
        until_connections_at(host.http_addr().unwrap(), token.trim(), "lane", 2.0).await;
        assert!(!shard_threads().is_empty());
        drop(host);
        client
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !shard_threads().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "shard threads still running: {:?}",
            shard_threads()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(client);
}
