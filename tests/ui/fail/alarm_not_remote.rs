// An alarm handler is not a remote method, even if `pub`: the stub has no method
// for it.
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
    pub async fn release(&mut self, _ctx: &mut Context) {
        self.held = 0;
    }
}

async fn call(stub: ReservationClient) {
    let _ = stub.release().await;
}

fn main() {
    let _ = call;
}
