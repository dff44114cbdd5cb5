use durable::{durable_object, Context, ReadContext};

type Result<T> = std::result::Result<T, durable::Error>;

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self> {
        Ok(Counter { value: 0 })
    }

    pub async fn get(&self, _ctx: &ReadContext) -> Result<i64> {
        Ok(self.value)
    }
}

fn main() {}
