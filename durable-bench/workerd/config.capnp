# workerd baseline of durable-bench: a front worker routing HTTP to a counter Durable
# Object class with SQLite-backed storage on local disk.
#
# The bench runs (see durable-bench/src/baselines.rs):
#   workerd serve config.capnp --socket-addr http=127.0.0.1:PORT \
#     --directory-path do-disk=TEMPDIR
# so the listen address and the storage directory below are placeholders.

using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .counterWorker),
    # Where the Durable Objects' SQLite files live: one directory per class
    # (`uniqueKey`), one `<id>.sqlite` (plus -wal/-shm) per object.
    (name = "do-disk", disk = (path = "/nonexistent/overridden-by-the-bench", writable = true)),
  ],
  sockets = [
    (name = "http", address = "127.0.0.1:8787", http = (), service = "main"),
  ],
);

const counterWorker :Workerd.Worker = (
  modules = [
    (name = "worker.js", esModule = embed "worker.js"),
  ],
  compatibilityDate = "2025-09-01",
  bindings = [
    (name = "COUNTER", durableObjectNamespace = "Counter"),
  ],
  durableObjectNamespaces = [
    # enableSql: a SQLite-backed namespace (`ctx.storage.sql`), as on Cloudflare.
    (className = "Counter", uniqueKey = "durable-bench-counter", enableSql = true),
  ],
  durableObjectStorage = (localDisk = "do-disk"),
);
