use durable::{durable_object, Context, ReadContext};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    pub async fn add(&mut self, _ctx: &mut Context, by: i64) {
        self.value += by;
    }

    // A `&self` method is read-only: it cannot take the writing context.
    pub async fn get(&self, _ctx: &mut Context) -> i64 {
        self.value
    }

    // And a `&mut self` method cannot take the read-only one.
    pub async fn reset(&mut self, _ctx: &ReadContext) {
        self.value = 0;
    }
}

fn main() {}
