use durable::{alarm, durable_object, Context};

pub struct Reservation {
    held: u32,
}

#[durable_object]
impl Reservation {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Reservation { held: 0 })
    }

    #[alarm]
    async fn release(&mut self, _ctx: &mut Context) {
        self.held = 0;
    }

    fn schedule_release(&mut self) {
        self.held = 0;
    }

    #[alarm]
    async fn tick(&self, _ctx: &mut Context) {}

    #[alarm]
    async fn tick_every(&self, _ctx: &mut Context) {}
}

fn main() {}
