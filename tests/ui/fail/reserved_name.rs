use durable::{durable_object, Context, ReadContext};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    pub async fn id(&self, _ctx: &ReadContext) -> i64 {
        self.value
    }

    pub async fn with_deadline(&self, _ctx: &ReadContext) {}

    pub async fn __durable_get(&self, _ctx: &ReadContext) {}
}

fn main() {}
