use durable::{durable_object, Context, ReadContext};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    pub async fn label(&self, _ctx: &ReadContext, name: &str) -> String {
        format!("{name}: {}", self.value)
    }
}

fn main() {}
