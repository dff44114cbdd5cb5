use durable::{alarm, Context};

pub struct Counter {
    value: i64,
}

impl Counter {
    #[alarm]
    pub async fn tick(&mut self, _ctx: &mut Context) {
        self.value += 1;
    }
}

#[alarm]
fn tick() {}

fn main() {
    tick();
}
