use durable::{durable_object, Context};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    pub async fn add(&mut self, _ctx: &mut Context, by: &i64) {
        self.value += *by;
    }

    pub async fn add_boxed(&mut self, _ctx: &mut Context, by: Option<Box<&i64>>) {
        self.value += by.map_or(0, |b| **b);
    }
}

fn main() {}
