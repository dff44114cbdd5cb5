use durable::{durable_object, ReadContext};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    // Not a constructor: it takes no `&mut Context`.
    pub fn new() -> Self {
        Counter { value: 0 }
    }

    pub async fn get(&self, _ctx: &ReadContext) -> i64 {
        self.value
    }
}

fn main() {}
