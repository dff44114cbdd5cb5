use durable::{durable_object, Context};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    pub async fn id(&self, _ctx: &mut Context) -> i64 {
        self.value
    }

    pub async fn with_deadline(&self, _ctx: &mut Context) {}

    pub async fn __durable_get(&self, _ctx: &mut Context) {}
}

fn main() {}
