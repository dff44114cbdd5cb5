use durable::{durable_object, Context, ReadContext};

pub struct Cell<T> {
    value: T,
}

#[durable_object]
impl<T: Default> Cell<T> {
    fn activate(_ctx: &mut Context) -> Self {
        Cell {
            value: T::default(),
        }
    }

    pub async fn is_set(&self, _ctx: &ReadContext) -> bool {
        let _ = &self.value;
        true
    }
}

fn main() {}
