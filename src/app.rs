//! The state one giftd node shares between its connections and HTTP handlers.
//!
//! Built once by `server::run` and passed around as `Arc<App>`. Besides config, auth, the
//! catalog, rooms, ledger and metrics, it keeps the node's users: each authenticated user's open
//! connections (so private messages such as a thank-you reach every device of the user) and the
//! user's shared rate-limit buckets. Entries exist only while the user has a connection, so the
//! map is bounded by `connections_max`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::fanout::Fanout;
use crate::gift::catalog::Catalog;
use crate::gifting::Inflight;
use crate::ledger::Ledger;
use crate::metrics::{Metrics, OutKind};
use crate::outbox::Outbox;
use crate::protocol::Frame;
use crate::ratelimit::Buckets;
use crate::readiness::DiskReserve;
use crate::room::registry::Registry;
use crate::room::ConnId;

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
    pub metrics: Arc<Metrics>,
    pub inflight: Inflight,
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
        fanout: Arc<dyn Fanout>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> App {
        let catalog =
            Catalog::new(config.catalog()).expect("the catalog was validated with the config");
        App {
            auth: Authenticator::new(&config.auth),
            catalog,
            rooms: Registry::new(config.rooms.rooms_max, metrics.clone()),
            ledger,
            fanout,
            metrics,
            inflight: Inflight::default(),
            shutdown,
            ws_permits: Arc::new(Semaphore::new(config.server.connections_max)),
            disk_reserve: DiskReserve::new(&config.ledger.path, config.ledger.disk_reserve_bytes),
            users: DashMap::new(),
            next_conn: AtomicU64::new(1),
            config,
        }
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
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

    /// Queues a private frame to every connection `user` has on this node.
    pub fn send_to_user(&self, user: &str, kind: OutKind, frame: &Frame) {
        if let Some(entry) = self.users.get(user) {
            for (_, outbox) in &entry.conns {
                outbox.push(kind, frame.clone());
            }
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

    /// Ready to serve: not shutting down, the ledger's last write succeeded, and its disk keeps
    /// its reserve (see `readiness.rs`).
    pub fn is_ready(&self) -> bool {
        !self.shutdown.is_cancelled() && self.ledger.is_ready() && self.disk_reserve.is_kept()
    }
}
