// Every problem in a block is reported at once, each at its own token.
use durable::{durable_object, Context, ReadContext};

pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    fn activate_again(_ctx: &mut Context) -> Self {
        Counter { value: 0 }
    }

    pub fn add(&mut self, by: &i64) {
        self.value += by;
    }

    pub async fn label(self, _ctx: &mut Context, name: &str) -> String {
        format!("{name}: {}", self.value)
    }

    pub async fn id(&self, _ctx: &ReadContext) -> i64 {
        self.value
    }
}

fn main() {}
