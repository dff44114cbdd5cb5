use durable::durable_object;

#[durable_object]
pub struct Counter {
    pub value: i64,
}

fn main() {
    let _ = Counter { value: 0 }.value;
}
