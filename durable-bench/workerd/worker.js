// workerd baseline of durable-bench: the same counter as durable's
// examples/src/counter.rs, as a SQLite-backed Durable Object.
//
//   POST /inc/<name>  -> increment the counter <name> by one, reply with the new value
//   GET  /get/<name>  -> reply with the counter's value
//   GET  /ready       -> "ok", without touching any object (the bench's start-up probe)
//
// The front worker (the default export) reaches the object through its stub over RPC.

import { DurableObject } from "cloudflare:workers";

export class Counter extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    const sql = ctx.storage.sql;
    sql.exec(
      "CREATE TABLE IF NOT EXISTS counter(id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)",
    );
    sql.exec("INSERT OR IGNORE INTO counter VALUES (1, 0)");
    this.value = sql.exec("SELECT value FROM counter WHERE id = 1").one().value;
  }

  // Writes commit at the end of the turn; the output gate holds the reply until the
  // commit has finished.
  increment(by) {
    const value = this.value + by;
    this.ctx.storage.sql.exec("UPDATE counter SET value = ? WHERE id = 1", value);
    this.value = value;
    return value;
  }

  get() {
    return this.value;
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/ready") {
      return new Response("ok");
    }
    const [, op, name] = url.pathname.split("/");
    if (!name) {
      return new Response("not found\n", { status: 404 });
    }
    const stub = env.COUNTER.get(env.COUNTER.idFromName(name));
    if (op === "inc" && request.method === "POST") {
      return new Response(String(await stub.increment(1)));
    }
    if (op === "get" && request.method === "GET") {
      return new Response(String(await stub.get()));
    }
    return new Response("not found\n", { status: 404 });
  },
};
