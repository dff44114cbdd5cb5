use durable::{durable_object, Context, ReadContext};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    async fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    pub async fn get(&self, _ctx: &ReadContext) -> i64 {
        self.value
    }
}

fn main() {}
