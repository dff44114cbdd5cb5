// `#[durable_object(name = "...")]` renames the class on the wire (and so in object
// ids and HTTP paths); the type and its stub keep their Rust names.

use durable::{durable_object, Context, ReadContext};

pub struct Counter {
    value: i64,
}

#[durable_object(name = "counter-v2")]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    pub async fn get(&self, _ctx: &ReadContext) -> i64 {
        self.value
    }
}

fn main() {
    assert_eq!(<Counter as durable::ObjectClass>::CLASS, "counter-v2");
    let json: Vec<&str> = <Counter as durable::Hosted>::JSON
        .iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(json, ["get"]);
    fn stub(c: &CounterClient) -> durable::ObjectId {
        c.id()
    }
    let _ = stub;
}
