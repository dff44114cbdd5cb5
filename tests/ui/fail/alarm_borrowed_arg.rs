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
    async fn release(&mut self, _ctx: &mut Context, seat: u32, user: &str) {
        self.held -= seat;
        let _ = user;
    }
}

fn main() {}
