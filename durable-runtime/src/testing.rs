//! A test harness for application authors: an in-process host with a virtual clock.
//! Call objects through the same typed stubs as production (delivered in process,
//! through the host's transport-neutral entry, [`RunningHost::local_client`]: no
//! sockets or TLS in the way), move time and fire due alarms deterministically, read
//! an object's storage directly, evict an object, and simulate a crash.
//!
//! ```text
//! // from examples/tests/auction.rs, where it is compiled and run
//! let t = TestHost::start(|h| h.register::<Auction>()).await;
//! let lot = t.get::<Auction>("lot-7");
//! lot.open(3600, 100).await.unwrap();                   // closes in an hour, reserve 100
//! lot.bid("ada".into(), 150).await.unwrap();
//! t.advance(Duration::from_secs(3600)).await;           // the closing alarm fires
//! assert!(matches!(lot.status().await.unwrap(), AuctionState::Closed { .. }));
//! ```

use crate::clock::{Clock, VirtualClock};
use crate::host::{Host, Lanes, RunningHost};
use crate::log::LogConfig;
use durable_client::{Client, ObjectClass, ObjectId};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

type Configure = Arc<dyn Fn(Host) -> Host + Send + Sync>;

/// An in-process host with a virtual clock, its own temporary data directory, and a
/// client whose calls it answers in process. The directory is removed when the harness is dropped.
pub struct TestHost {
    host: Option<RunningHost>,
    client: Client,
    clock: Arc<VirtualClock>,
    dir: PathBuf,
    configure: Configure,
}

impl std::fmt::Debug for TestHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHost")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl TestHost {
    /// Start a host with the classes `configure` registers. The virtual clock starts
    /// at the real time now; objects stay active until [`TestHost::evict`].
    pub async fn start(configure: impl Fn(Host) -> Host + Send + Sync + 'static) -> TestHost {
        let dir =
            std::env::temp_dir().join(format!("durable-test-{:032x}", rand::random::<u128>()));
        let clock = Arc::new(VirtualClock::starting_now());
        let configure: Configure = Arc::new(configure);
        let (host, client) = Self::boot(&dir, &clock, &configure).await;
        TestHost {
            host: Some(host),
            client,
            clock,
            dir,
            configure,
        }
    }

    async fn boot(
        dir: &Path,
        clock: &Arc<VirtualClock>,
        configure: &Configure,
    ) -> (RunningHost, Client) {
        // Its client is in process: no lanes, unless `configure` asks for them.
        let host = configure(Host::builder(dir).lanes(Lanes::Off))
            .clock(clock.clone() as Arc<dyn Clock>)
            .log_config(LogConfig {
                checkpoint_interval: None,
                retention: None,
                ..LogConfig::default()
            })
            .with_limits(|l| {
                l.shards = 1;
                l.idle_timeout = Duration::from_secs(24 * 3600);
            })
            .start()
            .await
            .expect("starting the test host");
        let client = host.local_client(crate::calls::Caller("test".into()));
        (host, client)
    }

    fn host(&self) -> &RunningHost {
        self.host.as_ref().expect("the test host is running")
    }

    /// The client connected to the host.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The typed stub for object `name` of class `C`.
    pub fn get<C: ObjectClass>(&self, name: &str) -> C::Client {
        self.client.get::<C>(name)
    }

    /// Now, on the virtual clock.
    pub fn now(&self) -> SystemTime {
        crate::clock::time_of(self.clock.now_ms())
    }

    /// Move the virtual clock forward by `by`, firing every alarm that falls due on the
    /// way, in due order, each with the clock at its due time; returns once their turns
    /// (and any alarms they scheduled inside the window) have finished.
    pub async fn advance(&self, by: Duration) {
        let target = self.clock.now_ms() + by.as_millis() as u64;
        let host = self.host();
        host.settle_alarms().await;
        while let Some(due) = host.next_alarm_due().await.map(crate::clock::ms_of) {
            if due > target {
                break;
            }
            self.clock.advance_to_ms(due);
            host.settle_alarms().await;
        }
        self.clock.advance_to_ms(target);
        host.settle_alarms().await;
    }

    /// A read-only connection to the database of object `name` of class `C`
    /// (committed state; the object must have been created).
    pub fn storage<C: ObjectClass>(&self, name: &str) -> rusqlite::Connection {
        let path =
            crate::store::object_path(&self.dir, C::CLASS, ObjectId::from_name(C::CLASS, name));
        crate::wal_index::open(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
    }

    /// The pending alarms of object `name` of class `C`, soonest first (read from its
    /// committed storage).
    pub fn pending_alarms<C: ObjectClass>(&self, name: &str) -> Vec<crate::alarms::PendingAlarm> {
        crate::alarms::pending(&self.storage::<C>(name)).expect("reading _durable_alarms")
    }

    /// Evict object `name` of class `C` (drop its instance, close its database);
    /// returns whether it was active. The next call or alarm re-activates it.
    pub async fn evict<C: ObjectClass>(&self, name: &str) -> bool {
        self.host()
            .evict(C::CLASS, ObjectId::from_name(C::CLASS, name))
            .await
    }

    /// Simulate a crash and a restart: in-memory instances, queued calls and the
    /// connection are dropped without a clean shutdown; committed (durable) state and
    /// pending alarms survive. The virtual clock keeps its time.
    pub async fn crash(&mut self) {
        self.crash_for(Duration::ZERO).await;
    }

    /// Simulate a crash, `down` of downtime (the virtual clock moves on), and a
    /// restart: alarms that fell due meanwhile are overdue on start.
    pub async fn crash_for(&mut self, down: Duration) {
        self.client.close();
        if let Some(host) = self.host.take() {
            host.crash().await;
        }
        self.clock.advance(down);
        let (host, client) = Self::boot(&self.dir, &self.clock, &self.configure).await;
        self.host = Some(host);
        self.client = client;
    }

    /// Deliver the alarms already due (after a restart, say) and wait for their turns.
    pub async fn settle(&self) {
        self.host().settle_alarms().await;
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

/// The content digest a host records for an object's file (read-only; the host must
/// not hold the file): for the runtime's own tests that stand in for files an older
/// runtime left (not an API).
#[doc(hidden)]
pub fn content_digest(path: &Path) -> Result<u64, String> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    crate::catalog::content_digest(&conn).map_err(|e| e.to_string())
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.client.close();
        // The host's threads end with the process; its files go now. One of them may be
        // making a new object's spare file in the directory meanwhile, and its removal
        // then fails part way: try again (that thread makes files only in directories
        // that exist, and waits a second after a failure).
        for _ in 0..200 {
            match std::fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => return,
            }
        }
    }
}
