use durable::{durable_object, Context};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    pub async fn add<T: Into<i64>>(&mut self, _ctx: &mut Context, by: T) {
        self.value += by.into();
    }

    pub async fn sub(&mut self, _ctx: &mut Context, by: impl Into<i64>) {
        self.value -= by.into();
    }
}

fn main() {}
