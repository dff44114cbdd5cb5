use durable::{durable_object, Context, ReadContext};

pub struct Counter {
    value: i64,
}

#[durable_object(shards = 4)]
impl Counter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Counter { value: 0 })
    }

    pub async fn get(&self, _ctx: &ReadContext) -> i64 {
        self.value
    }
}

pub struct Gauge {
    value: i64,
}

#[durable_object(name = "a/b")]
impl Gauge {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Gauge { value: 0 })
    }

    pub async fn get(&self, _ctx: &ReadContext) -> i64 {
        self.value
    }
}

pub struct Meter {
    value: i64,
}

#[durable_object(name = "meter", name = "gauge")]
impl Meter {
    fn activate(_ctx: &mut Context) -> Result<Self, durable::Error> {
        Ok(Meter { value: 0 })
    }

    pub async fn get(&self, _ctx: &ReadContext) -> i64 {
        self.value
    }
}

fn main() {}
