use durable::{durable_object, Context};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    pub async fn add_all(&mut self, _ctx: &mut Context, values: &[i64]) {
        self.value += values.iter().sum::<i64>();
    }
}

fn main() {}
