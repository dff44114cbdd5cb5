use durable::{durable_object, Context, ReadContext};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    // Meant as the constructor, but takes a shared `&Context`.
    fn activate(_ctx: &Context) -> Self {
        Counter { value: 0 }
    }

    pub async fn get(&self, _ctx: &ReadContext) -> i64 {
        self.value
    }
}

fn main() {}
