use durable::{durable_object, Context, ReadContext};

pub struct Cell<T> {
    value: T,
}

#[durable_object]
impl Cell<i64> {
    fn activate(_ctx: &mut Context) -> Self {
        Cell { value: 0 }
    }

    pub async fn get(&self, _ctx: &ReadContext) -> i64 {
        self.value
    }
}

fn main() {}
