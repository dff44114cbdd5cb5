// Every accepted shape: a `-> Self` constructor named freely, typed `self`
// receivers, `Self` and paths in argument and result types, several arguments,
// `mut` argument names, owned `'static` types, a crate-local error type, plain
// associated functions and `pub(crate)` methods left alone, and `#[alarm]` handlers
// (consumed by the macro).

use durable::{durable_object, Context, ReadContext};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

#[derive(Debug, Serialize, Deserialize)]
pub enum InventoryError {
    Missing(String),
}

impl std::fmt::Display for InventoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

#[derive(Default, Serialize, Deserialize)]
pub struct Inventory {
    items: BTreeMap<String, u32>,
}

#[durable_object]
impl Inventory {
    pub fn load(_ctx: &mut durable::Context) -> Inventory {
        Inventory::default()
    }

    pub fn empty() -> Self {
        Inventory::default()
    }

    /// Adds `count` of `item`.
    pub async fn add(self: &mut Self, _ctx: &mut Context, mut item: String, count: u32) -> u32 {
        item.make_ascii_lowercase();
        let n = self.items.entry(item).or_default();
        *n += count;
        *n
    }

    pub async fn take(
        &mut self,
        _ctx: &mut Context,
        item: Cow<'static, str>,
    ) -> std::result::Result<u32, InventoryError> {
        self.items
            .remove(item.as_ref())
            .ok_or_else(|| InventoryError::Missing(item.into_owned()))
    }

    pub async fn snapshot(&self, _ctx: &ReadContext) -> Result<Self, durable::Error> {
        Ok(Inventory {
            items: self.items.clone(),
        })
    }

    pub async fn merge(
        &mut self,
        _ctx: &mut Context,
        others: Vec<Self>,
        labels: Option<(u8, [u16; 2])>,
    ) {
        let _ = labels;
        for other in others {
            self.items.extend(other.items);
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.items.len()
    }

    #[durable::alarm]
    #[allow(dead_code)]
    async fn restock(&mut self, _ctx: &mut Context) {}
}

fn main() {
    let _ = Inventory::empty().size();
    let names: Vec<&str> = <Inventory as durable::ObjectClass>::METHODS
        .iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["add", "take", "snapshot", "merge"]);
    fn stub_is_cloneable(c: &InventoryClient) -> InventoryClient {
        c.clone().with_deadline(std::time::Duration::from_secs(1))
    }
    let _ = stub_is_cloneable;
}
