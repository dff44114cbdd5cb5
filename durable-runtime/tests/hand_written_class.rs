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
