//! The state one giftd node shares between its connections and HTTP handlers.
//!
//! Built once by `server::run` and passed around as `Arc<App>`. Besides config, auth, the
//! catalog, rooms, ledger and metrics, it keeps the node's users: each authenticated user's open
//! connections (so private messages such as a thank-you reach every device of the user) and the
//! user's shared rate-limit buckets. Entries exist only while the user has a connection, so the
//! map is bounded by `connections_max`. In a cluster it also holds the node's link to the
//! others (`cluster.rs`), through which private messages reach the user's other nodes and rooms
//! are opened and released cluster-wide.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::Result;
use crate::fanout::{Fanout, LocalFanout};
use crate::gift::catalog::Catalog;
use crate::gifting::Inflight;
use crate::ledger::Ledger;
use crate::metrics::{Metrics, OutKind};
use crate::outbox::Outbox;
use crate::protocol::Frame;
use crate::ratelimit::Buckets;
use crate::readiness::DiskReserve;
use crate::room::registry::Registry;
use crate::room::{ConnId, Room};

struct UserEntry {
    conns: Vec<(ConnId, Outbox)>,
    buckets: Arc<Mutex<Buckets>>,
}

pub struct App {
    pub config: Config,
    pub auth: Authenticator,
    pub catalog: Catalog,
    pub rooms: Registry,
    pub ledger: Arc<dyn Ledger>,
    pub fanout: Arc<dyn Fanout>,
    /// The other nodes, if this node is part of a cluster (`cluster.nats_url`).
    pub cluster: Option<Arc<Cluster>>,
    pub metrics: Arc<Metrics>,
    pub inflight: Inflight,
    /// Cancelled when the node shuts down; cancel it through [`App::shut_down`], which also tells
    /// the connections.
    pub shutdown: CancellationToken,
    /// One permit per open WebSocket, `connections_max` in all.
    pub ws_permits: Arc<Semaphore>,
    pub disk_reserve: DiskReserve,
    users: DashMap<String, UserEntry>,
    next_conn: AtomicU64,
}

impl App {
    pub fn new(
        config: Config,
        ledger: Arc<dyn Ledger>,
        cluster: Option<Arc<Cluster>>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> App {
        let fanout: Arc<dyn Fanout> = match &cluster {
            Some(cluster) => Arc::new(cluster.clone()),
            None => Arc::new(LocalFanout),
        };
        let catalog =
            Catalog::new(config.catalog()).expect("the catalog was validated with the config");
        App {
            auth: Authenticator::new(&config.auth),
            catalog,
            rooms: Registry::new(config.rooms.rooms_max, metrics.clone()),
            ledger,
            fanout,
            cluster,
            metrics,
            inflight: Inflight::default(),
            shutdown,
            ws_permits: Arc::new(Semaphore::new(config.server.connections_max)),
            disk_reserve: DiskReserve::for_ledger(&config.ledger),
            users: DashMap::new(),
            next_conn: AtomicU64::new(1),
            config,
        }
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts a graceful shutdown: cancels [`App::shutdown`] and asks every authenticated
    /// connection to end after answering what it is doing (`Kick::shut_down` in `outbox.rs`).
    /// Its connections are found here rather than each waiting for the token, because such a
    /// wait is 80 bytes in every idle connection's future. A connection that has not
    /// authenticated yet is in no registry, so it waits for the token itself until it
    /// authenticates, then checks the token once more (`connection.rs`): whichever of this
    /// method and its registration came first, one of them sees the other.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
        for entry in self.users.iter() {
            for (_, outbox) in &entry.conns {
                outbox.kick_switch().shut_down();
            }
        }
    }

    /// Records a connection of `user` and returns the user's shared buckets.
    pub fn register_user(&self, user: &str, conn: ConnId, outbox: Outbox) -> Arc<Mutex<Buckets>> {
        let mut entry = self
            .users
            .entry(user.to_owned())
            .or_insert_with(|| UserEntry {
                // Most users have one connection on a node.
                conns: Vec::with_capacity(1),
                buckets: Arc::new(Mutex::new(Buckets::new(&self.config.limits.user))),
            });
        entry.conns.push((conn, outbox));
        entry.buckets.clone()
    }

    pub fn unregister_user(&self, user: &str, conn: ConnId) {
        self.users.remove_if_mut(user, |_, entry| {
            entry.conns.retain(|(id, _)| *id != conn);
            entry.conns.is_empty()
        });
    }

    /// Queues a private frame to every connection `user` has, on this node and on the others.
    pub fn send_to_user(&self, user: &str, kind: OutKind, frame: &Frame) {
        self.send_to_local_user(user, kind, frame);
        if let Some(cluster) = &self.cluster {
            cluster.send_to_user(user, kind, frame);
        }
    }

    /// Queues a private frame to every connection `user` has on this node.
    pub fn send_to_local_user(&self, user: &str, kind: OutKind, frame: &Frame) {
        if let Some(entry) = self.users.get(user) {
            for (_, outbox) in &entry.conns {
                outbox.push(kind, frame.clone());
            }
        }
    }

    /// Registers a newly opened room: on this node, and in a cluster also as the cluster's (or
    /// `room_exists` if another node runs a room of that id).
    pub async fn open_room(self: &Arc<Self>, room: Room) -> Result<Arc<Room>> {
        match &self.cluster {
            None => self.rooms.open(room),
            Some(_) => Cluster::open(self, room).await,
        }
    }

    /// Forgets a room that closed, here and in the cluster.
    pub fn forget_room(&self, room: &Arc<Room>) {
        self.rooms.remove(room);
        if let Some(cluster) = &self.cluster {
            cluster.release(&room.id);
        }
    }

    /// The spending caps of the configuration, as the ledger takes them.
    pub fn cap_policy(&self) -> crate::ledger::CapPolicy {
        let s = &self.config.spending;
        crate::ledger::CapPolicy {
            window_ms: s.window_ms,
            window_coins_max: s.window_coins_max,
            minor_window_coins_max: s.minor_window_coins_max,
        }
    }

    /// The streamer's share of net revenue, in basis points.
    pub fn streamer_share_bps(&self, streamer: &str) -> u32 {
        let split = &self.config.split;
        split
            .streamer_share_bps
            .get(streamer)
            .copied()
            .unwrap_or(split.streamer_share_bps_default)
    }

    /// Ready to serve: not shutting down, the ledger's last write succeeded, its disk keeps its
    /// reserve (see `readiness.rs`), and in a cluster, NATS is connected.
    pub fn is_ready(&self) -> bool {
        !self.shutdown.is_cancelled()
            && self.ledger.is_ready()
            && self.disk_reserve.is_kept()
            && self.cluster.as_ref().is_none_or(|c| c.is_connected())
    }
}

/// An [`App`] on a real SQLite ledger in a temporary directory, for unit tests of the modules
/// that serve connections.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) struct TestApp {
        pub(crate) app: Arc<App>,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for TestApp {
        type Target = Arc<App>;
        fn deref(&self) -> &Arc<App> {
            &self.app
        }
    }

    /// Opens room `id` of `streamer` on `app`, as `open_room` does.
    pub(crate) fn open_room(app: &App, id: &str, streamer: &str) -> Arc<crate::room::Room> {
        let room = crate::room::Room::new(
            id,
            streamer,
            "t",
            &app.config.rooms,
            app.metrics.clone(),
            app.fanout.as_ref(),
        );
        app.rooms.open(room).unwrap()
    }

    /// An app with the default config adjusted by `tweak`.
    pub(crate) fn app(tweak: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.ledger.path = dir.path().join("giftd.db");
        tweak(&mut config);
        config.validate().unwrap();
        let metrics = Arc::new(Metrics::new());
        let ledger = crate::server::open_sqlite_ledger(&config, &metrics).unwrap();
        let app = App::new(config, ledger, None, metrics, CancellationToken::new());
        TestApp {
            app: Arc::new(app),
            _dir: dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::app;
    use super::*;

    #[test]
    fn private_frames_reach_every_connection_of_the_user_and_only_theirs() {
        let app = app(|_| {});
        let (bob_phone, bob_phone_rx) = Outbox::new(8, 1 << 20);
        let (bob_laptop, bob_laptop_rx) = Outbox::new(8, 1 << 20);
        let (carol, carol_rx) = Outbox::new(8, 1 << 20);
        app.register_user("bob", 1, bob_phone);
        app.register_user("bob", 2, bob_laptop);
        app.register_user("carol", 3, carol);
        app.send_to_user("bob", OutKind::Thanks, &Frame::from("thanks"));
        assert!(bob_phone_rx.try_recv().is_some());
        assert!(bob_laptop_rx.try_recv().is_some());
        assert!(carol_rx.try_recv().is_none());

        // A closed connection no longer receives, and the user's entry goes with the last one.
        app.unregister_user("bob", 1);
        app.send_to_user("bob", OutKind::Thanks, &Frame::from("again"));
        assert!(bob_phone_rx.try_recv().is_none());
        assert!(bob_laptop_rx.try_recv().is_some());
        app.unregister_user("bob", 2);
        assert!(!app.users.contains_key("bob"));
    }

    #[test]
    fn a_user_shares_one_set_of_buckets_across_connections() {
        let app = app(|_| {});
        let (a, _ra) = Outbox::new(8, 1 << 20);
        let (b, _rb) = Outbox::new(8, 1 << 20);
        let first = app.register_user("bob", 1, a);
        let second = app.register_user("bob", 2, b);
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn streamer_share_uses_the_override_then_the_default() {
        let app = app(|c| {
            c.split.streamer_share_bps.insert("star".into(), 7000);
        });
        assert_eq!(app.streamer_share_bps("star"), 7000);
        assert_eq!(app.streamer_share_bps("other"), 5000);
    }

    #[test]
    fn readiness_follows_shutdown_and_the_disk_reserve() {
        let ready = app(|_| {});
        assert!(ready.is_ready());
        ready.shut_down();
        assert!(!ready.is_ready());
        let full = app(|c| c.ledger.disk_reserve_bytes = u64::MAX);
        assert!(!full.is_ready());
    }
}
