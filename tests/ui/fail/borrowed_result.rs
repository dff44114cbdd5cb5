use durable::{durable_object, Context, ReadContext};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    pub async fn name(&self, _ctx: &ReadContext) -> &'static str {
        "counter"
    }
}

fn main() {}
