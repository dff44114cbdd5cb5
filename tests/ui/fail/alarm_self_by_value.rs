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
    async fn release(self, _ctx: &mut Context) -> u32 {
        self.held
    }
}

fn main() {}
