use durable::{durable_object, Context};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    fn reactivate(_ctx: &mut Context) -> Counter {
        Counter { value: 0 }
    }
}

fn main() {}
