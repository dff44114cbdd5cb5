//! An order workflow across objects with compensation (seed 003): an [`Order`] reserves
//! stock from an [`Inventory`] object, then charges a [`Wallet`]; if the charge fails
//! it releases the reservation and ends cancelled. Each step is a call from the
//! order's turn to another object, so each leaves only after the order's state before
//! it is durable (the output gate), and each is idempotent by the order's id: an order
//! placed again (a retry after a crash) finishes the same way, never reserving or
//! charging twice.

use durable::{durable_object, Context, Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// Where an order is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderState {
    /// Not placed yet.
    New,
    /// Stock is being reserved.
    Reserving,
    /// Stock is reserved; the wallet is being charged.
    Charging,
    /// Reserved and paid.
    Confirmed,
    /// Given up, with the reason; anything reserved was released.
    Cancelled(String),
}

impl OrderState {
    fn code(&self) -> (&'static str, String) {
        match self {
            OrderState::New => ("new", String::new()),
            OrderState::Reserving => ("reserving", String::new()),
            OrderState::Charging => ("charging", String::new()),
            OrderState::Confirmed => ("confirmed", String::new()),
            OrderState::Cancelled(why) => ("cancelled", why.clone()),
        }
    }

    fn from_code(code: &str, why: String) -> OrderState {
        match code {
            "reserving" => OrderState::Reserving,
            "charging" => OrderState::Charging,
            "confirmed" => OrderState::Confirmed,
            "cancelled" => OrderState::Cancelled(why),
            _ => OrderState::New,
        }
    }
}

/// One order (named by its order id): a saga over inventory and wallet objects.
pub struct Order;

fn load(ctx: &mut Context) -> Result<OrderState, Error> {
    let row: Option<(String, String)> =
        ctx.sql()
            .query_opt("SELECT state, why FROM orders WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
    Ok(row.map_or(OrderState::New, |(c, w)| OrderState::from_code(&c, w)))
}

fn save(ctx: &mut Context, state: &OrderState) -> Result<(), Error> {
    let (code, why) = state.code();
    ctx.sql().execute(
        "UPDATE orders SET state = ?1, why = ?2 WHERE id = 1",
        [code, why.as_str()],
    )?;
    Ok(())
}

#[durable_object]
impl Order {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql().migrate(&[
            "CREATE TABLE orders(id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL, why TEXT NOT NULL,
                                 sku TEXT NOT NULL, qty INTEGER NOT NULL, wallet TEXT NOT NULL, price INTEGER NOT NULL);",
        ])?;
        Ok(Order)
    }

    /// Place the order: reserve `qty` of `sku`, charge `price` to `wallet`. Returns the
    /// final state. Placing it again returns the state it reached (and finishes an
    /// order a crash interrupted), with the arguments it was first placed with.
    pub async fn place(
        &mut self,
        ctx: &mut Context,
        sku: String,
        qty: u32,
        wallet: String,
        price: u64,
    ) -> Result<OrderState, Error> {
        if qty == 0 || sku.is_empty() || wallet.is_empty() {
            return Err(Error::new(
                ErrorKind::Invalid,
                "an order needs a sku, a wallet and a quantity",
            ));
        }
        let order_id = ctx.name().unwrap_or_default().to_owned();
        if load(ctx)? == OrderState::New {
            ctx.sql().execute(
                "INSERT INTO orders(id, state, why, sku, qty, wallet, price) VALUES (1, 'reserving', '', ?1, ?2, ?3, ?4)",
                durable::rusqlite::params![sku, qty, wallet, crate::sql::int(price)],
            )?;
        }
        let (sku, qty, wallet, price): (String, u32, String, i64) = ctx.sql().query_row(
            "SELECT sku, qty, wallet, price FROM orders WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let inventory = ctx.object::<Inventory>(&sku);
        if load(ctx)? == OrderState::Reserving {
            // The state above is durable before this call leaves.
            match inventory.reserve(order_id.clone(), qty).await? {
                Ok(()) => save(ctx, &OrderState::Charging)?,
                Err(why) => save(ctx, &OrderState::Cancelled(why))?,
            }
        }
        if load(ctx)? == OrderState::Charging {
            let charged = ctx
                .object::<Wallet>(&wallet)
                .charge(order_id.clone(), price as u64)
                .await?;
            match charged {
                Ok(()) => save(ctx, &OrderState::Confirmed)?,
                Err(why) => {
                    // Compensate: give the stock back, then end cancelled.
                    inventory.release(order_id).await?;
                    save(ctx, &OrderState::Cancelled(why))?;
                }
            }
        }
        load(ctx)
    }

    /// The order's state.
    pub async fn state(&mut self, ctx: &mut Context) -> Result<OrderState, Error> {
        load(ctx)
    }
}

/// Stock of one sku, with reservations by order id.
pub struct Inventory;

#[durable_object]
impl Inventory {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql().migrate(&[
            "CREATE TABLE stock(id INTEGER PRIMARY KEY CHECK (id = 1), available INTEGER NOT NULL);
             INSERT INTO stock VALUES (1, 0);
             CREATE TABLE reservations(order_id TEXT PRIMARY KEY, qty INTEGER NOT NULL);",
        ])?;
        Ok(Inventory)
    }

    /// Add `qty` to the available stock; returns what is available.
    pub async fn restock(&mut self, ctx: &mut Context, qty: u32) -> Result<i64, Error> {
        ctx.sql()
            .execute("UPDATE stock SET available = available + ?1", [qty])?;
        self.available(ctx).await
    }

    /// Reserve `qty` for `order_id` (once: reserving again for the same order changes
    /// nothing). `Ok(Err(why))` when there is not enough.
    pub async fn reserve(
        &mut self,
        ctx: &mut Context,
        order_id: String,
        qty: u32,
    ) -> Result<Result<(), String>, Error> {
        let sql = ctx.sql();
        if sql
            .query_opt(
                "SELECT qty FROM reservations WHERE order_id = ?1",
                [&order_id],
                |r| r.get::<_, i64>(0),
            )?
            .is_some()
        {
            return Ok(Ok(()));
        }
        let available: i64 = sql.query_row("SELECT available FROM stock", [], |r| r.get(0))?;
        if available < i64::from(qty) {
            return Ok(Err(format!("only {available} in stock")));
        }
        sql.execute("UPDATE stock SET available = available - ?1", [qty])?;
        sql.execute(
            "INSERT INTO reservations(order_id, qty) VALUES (?1, ?2)",
            durable::rusqlite::params![order_id, qty],
        )?;
        Ok(Ok(()))
    }

    /// Release `order_id`'s reservation, if it holds one (compensation; idempotent).
    pub async fn release(&mut self, ctx: &mut Context, order_id: String) -> Result<(), Error> {
        let sql = ctx.sql();
        if let Some(qty) = sql.query_opt(
            "SELECT qty FROM reservations WHERE order_id = ?1",
            [&order_id],
            |r| r.get::<_, i64>(0),
        )? {
            sql.execute("UPDATE stock SET available = available + ?1", [qty])?;
            sql.execute("DELETE FROM reservations WHERE order_id = ?1", [&order_id])?;
        }
        Ok(())
    }

    /// Units available (not reserved).
    pub async fn available(&mut self, ctx: &mut Context) -> Result<i64, Error> {
        ctx.sql()
            .query_row("SELECT available FROM stock", [], |r| r.get(0))
    }
}

/// A customer's wallet, charged once per order id.
pub struct Wallet;

#[durable_object]
impl Wallet {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql().migrate(&[
            "CREATE TABLE balance(id INTEGER PRIMARY KEY CHECK (id = 1), amount INTEGER NOT NULL);
             INSERT INTO balance VALUES (1, 0);
             CREATE TABLE charges(order_id TEXT PRIMARY KEY, amount INTEGER NOT NULL);",
        ])?;
        Ok(Wallet)
    }

    /// Add `amount`; returns the balance.
    pub async fn deposit(&mut self, ctx: &mut Context, amount: u64) -> Result<i64, Error> {
        ctx.sql().execute(
            "UPDATE balance SET amount = amount + ?1",
            [crate::sql::int(amount)],
        )?;
        self.balance(ctx).await
    }

    /// Charge `amount` for `order_id` (once). `Ok(Err(why))` when the balance is short.
    pub async fn charge(
        &mut self,
        ctx: &mut Context,
        order_id: String,
        amount: u64,
    ) -> Result<Result<(), String>, Error> {
        let sql = ctx.sql();
        if sql
            .query_opt(
                "SELECT 1 FROM charges WHERE order_id = ?1",
                [&order_id],
                |r| r.get::<_, i64>(0),
            )?
            .is_some()
        {
            return Ok(Ok(()));
        }
        let balance: i64 = sql.query_row("SELECT amount FROM balance", [], |r| r.get(0))?;
        let amount = crate::sql::int(amount);
        if balance < amount {
            return Ok(Err(format!(
                "the balance is {balance}, the order costs {amount}"
            )));
        }
        sql.execute("UPDATE balance SET amount = amount - ?1", [amount])?;
        sql.execute(
            "INSERT INTO charges(order_id, amount) VALUES (?1, ?2)",
            durable::rusqlite::params![order_id, amount],
        )?;
        Ok(Ok(()))
    }

    /// The balance.
    pub async fn balance(&mut self, ctx: &mut Context) -> Result<i64, Error> {
        ctx.sql()
            .query_row("SELECT amount FROM balance", [], |r| r.get(0))
    }
}
