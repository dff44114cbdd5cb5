// A clash the macro cannot see (another impl block): the compiler reports it, on the
// alarm's name.
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
}

impl Reservation {
    pub fn cancel_release(&mut self) {
        self.held = 0;
    }
}

fn main() {}
