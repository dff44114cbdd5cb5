//! The runtime without the macro: a class implemented by hand against `Hosted`,
//! served by an in-process host over real QUIC, called through `ObjectRef`.

use durable_client::{CallError, Client, MethodInfo, ObjectClass, ObjectRef};
use durable_runtime::__private::{decode_args, encode_result, BoxTurn, TurnOutcome};
use durable_runtime::{ActivateError, Context, Error, Host, Hosted};

struct Tally {
    total: i64,
}

struct TallyClient(ObjectRef);

impl From<ObjectRef> for TallyClient {
    fn from(r: ObjectRef) -> Self {
        TallyClient(r)
    }
}

impl ObjectClass for Tally {
    const CLASS: &'static str = "Tally";
    const METHODS: &'static [MethodInfo] = &[MethodInfo {
        name: "add",
        fingerprint: 1,
        signature: "add(i64)->i64",
    }];
    type Client = TallyClient;
}

impl Hosted for Tally {
    fn activate(ctx: &mut Context) -> Result<Self, ActivateError> {
        let sql = ctx.sql();
        sql.migrate(&["CREATE TABLE t(v INTEGER NOT NULL); INSERT INTO t VALUES (0);"])
            .map_err(|e| ActivateError::from_display(&e))?;
        let total = sql
            .query_row("SELECT v FROM t", [], |r| r.get(0))
            .map_err(|e| ActivateError::from_display(&e))?;
        Ok(Tally { total })
    }

    fn dispatch<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        method: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a> {
        Box::pin(async move {
            match method {
                0 => {
                    let (by,): (i64,) = match decode_args(args) {
                        Ok(v) => v,
                        Err(e) => return e,
                    };
                    encode_result(self.add(ctx, by))
                }
                _ => TurnOutcome::UnknownMethod,
            }
        })
    }
}

impl Tally {
    fn add(&mut self, ctx: &mut Context, by: i64) -> Result<i64, Error> {
        if by < 0 {
            ctx.sql().execute("UPDATE t SET v = v + ?1", [by])?;
            return Err(Error::msg("negative"));
        }
        ctx.sql().execute("UPDATE t SET v = v + ?1", [by])?;
        self.total += by;
        Ok(self.total)
    }
}

impl TallyClient {
    async fn add(&self, by: i64) -> Result<i64, CallError<Error>> {
        self.0.call("add", 1, &(by,)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_written_class_is_served_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::builder(dir.path())
        .register::<Tally>()
        .start()
        .await
        .unwrap();
    let client = Client::connect(host.client_config().unwrap())
        .await
        .unwrap();
    let tally = client.get::<Tally>("t");
    assert_eq!(tally.add(2).await.unwrap(), 2);
    assert_eq!(tally.add(3).await.unwrap(), 5);
    assert_eq!(
        tally.add(-1).await.unwrap_err(),
        CallError::Application(Error::msg("negative"))
    );
    let mut calls = Vec::new();
    for _ in 0..100 {
        let t = client.get::<Tally>("t");
        calls.push(tokio::spawn(async move { t.add(1).await.unwrap() }));
    }
    for c in calls {
        c.await.unwrap();
    }
    client.close();
    host.shutdown().await;

    let host = Host::builder(dir.path())
        .register::<Tally>()
        .start()
        .await
        .unwrap();
    let client = Client::connect(host.client_config().unwrap())
        .await
        .unwrap();
    assert_eq!(client.get::<Tally>("t").add(0).await.unwrap(), 105);
    host.shutdown().await;
}

/// Sends every object whose id starts with an even byte to another host.
struct HalfElsewhere;

impl durable_runtime::Placement for HalfElsewhere {
    fn owner(&self, _class: &str, id: durable_client::ObjectId) -> durable_runtime::Owner {
        if id.as_bytes()[0] % 2 == 0 {
            durable_runtime::Owner::Elsewhere("10.0.0.2:7400".into())
        } else {
            durable_runtime::Owner::Here
        }
    }
}

fn add_request(name: &str, by: i64) -> durable_client::wire::CallRequest {
    durable_client::wire::CallRequest {
        request_id: rand_id(name, by),
        class: "Tally".into(),
        object: durable_client::ObjectId::from_name("Tally", name),
        name: Some(name.into()),
        method: "add".into(),
        fingerprint: 1,
        timeout_ms: 5_000,
        args: postcard::to_stdvec(&(by,)).unwrap(),
    }
}

fn rand_id(name: &str, by: i64) -> [u8; 16] {
    let mut id = [0u8; 16];
    for (i, b) in name.bytes().chain(by.to_le_bytes()).enumerate() {
        id[i % 16] ^= b.wrapping_add(i as u8);
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_neutral_entry_serves_in_process_calls_and_asks_placement_first() {
    use durable_client::wire::{Response, WireError};
    let dir = tempfile::tempdir().unwrap();
    let host = Host::builder(dir.path())
        .register::<Tally>()
        .placement(std::sync::Arc::new(HalfElsewhere))
        .start()
        .await
        .unwrap();
    let caller = durable_runtime::Caller("test".into());
    let (mut here, mut there) = (None, None);
    for i in 0..64 {
        let name = format!("t{i}");
        let id = durable_client::ObjectId::from_name("Tally", &name);
        if id.as_bytes()[0] % 2 == 0 {
            there.get_or_insert(name);
        } else {
            here.get_or_insert(name);
        }
    }
    let (here, there) = (here.unwrap(), there.unwrap());
    let reply = host.call(add_request(&here, 4), &caller).await;
    assert_eq!(reply, Response::Return(postcard::to_stdvec(&4i64).unwrap()));
    // The same request id again: the first answer, applied once.
    let reply = host.call(add_request(&here, 4), &caller).await;
    assert_eq!(reply, Response::Return(postcard::to_stdvec(&4i64).unwrap()));
    let reply = host.call(add_request(&there, 1), &caller).await;
    assert_eq!(
        reply,
        Response::Error(WireError::Moved {
            owner: "10.0.0.2:7400".into()
        })
    );
    assert!(
        !dir.path()
            .join("objects")
            .join("Tally")
            .join(format!(
                "{}.db",
                durable_client::ObjectId::from_name("Tally", &there)
            ))
            .exists(),
        "an object placed elsewhere is never activated here"
    );
    let mut bad = add_request(&here, 1);
    bad.fingerprint = 2;
    assert!(matches!(
        host.call(bad, &caller).await,
        Response::Error(WireError::SchemaMismatch { .. })
    ));
    // The typed stubs over the same entry, in process: results, the method's own
    // errors and framework errors arrive exactly as over QUIC.
    let local = host.local_client(caller.clone());
    assert_eq!(format!("{local:?}"), r#"Client { addr: "in process" }"#);
    let stub = local.get::<Tally>(&here);
    assert_eq!(stub.add(3).await.unwrap(), 7);
    assert!(matches!(stub.add(-1).await, Err(CallError::Application(_))));
    assert_eq!(stub.add(0).await.unwrap(), 7, "the failed call rolled back");
    assert_eq!(
        local.get::<Tally>(&there).add(1).await.unwrap_err(),
        CallError::Moved("10.0.0.2:7400".into())
    );
    host.shutdown().await;
}
