use durable::durable_object;

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Default for Counter {
    fn default() -> Self {
        Counter { value: 0 }
    }
}

fn main() {
    let _ = Counter::default().value;
}
